"""enclave on the high side, installed from a kit with no index reachable (issue 18, points 2-3).

One kit is built per module, for this Python and `--extras provision`: the project's wheel
from this source tree, every dependency fetched once by pip from its default index into
/var/tmp (the kit build's cache, keyed by the requirements, the pins, Python and platforms;
reruns take seconds). Then, offline: the bootstrap check (standard library and openssl), a
clean virtual environment installed with `pip --isolated --no-index --require-hashes`, and
from that install `enclave bundle build|verify|inspect` and `enclave provision --help`. A kit
with one altered wheel is refused by the bootstrap check, by `enclave kit verify` and by pip;
a kit carried in a bundle is installed by `enclave kit install --bundle-dir`. A second kit,
without extras, is installed by its own install.sh: a verify-only box with no Ansible or Docker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from enclave.kit import bootstrap
from enclave.resources import FOLDERS
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot, sign_document
from tests.unit.test_package_data import shipped_sources, tree

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CACHE = Path("/var/tmp/enclave-test-kit-cache")  # ENCLAVE_CACHE_DIR of the kit build
TRUSTED_VERIFIER = Path(bootstrap.__file__)  # the copy that "came with root.json"
EXTRAS = "provision"
TIMEOUT = 1800


@dataclass(frozen=True)
class Built:
    kit: Path
    root: Path
    keys: Path  # a.pem (ECDSA P-384), b.pem (ML-DSA-87): the bundle role
    work: Path


def run(
    command: Sequence[str | Path], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )


def offline_env(work: Path) -> dict[str, str]:
    """No pip configuration, no index, nothing of this checkout on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "ENCLAVE_STATE_DIR": str(work / "state")}
    return env


def pip_install(venv: Path, kit: Path, work: Path) -> subprocess.CompletedProcess[str]:
    made = run([sys.executable, "-m", "venv", venv], work)
    assert made.returncode == 0, made.stderr
    return run(
        [venv / "bin" / "python", "-m", "pip", "--isolated", "install", "--no-index", "--find-links", kit,
         "--require-hashes", "--no-cache-dir", "--disable-pip-version-check", "-r", kit / "requirements.txt"],
        work,
        offline_env(work),
    )  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("kit")
    keys = work / "keys"
    made = {"a": SigningKey.generate("ecdsa-p384"), "b": SigningKey.generate("ml-dsa-87")}
    for name, key in made.items():
        key.write(keys / name, None)
    root_key = SigningKey.generate("ecdsa-p384")
    signed = TrustRoot.create(
        {"root": [root_key.public], "bundle": [k.public for k in made.values()]},
        {"bundle": 2},
        datetime.now(UTC) + timedelta(days=30),
        hybrid_roles=("bundle",),
    )
    (work / "root.json").write_bytes(sign_document(signed, [root_key]))
    kit = work / "kit"
    env = dict(os.environ, ENCLAVE_CACHE_DIR=str(CACHE))
    command: list[str | Path] = [sys.executable, "-m", "enclave.cli", "kit", "build", "--out", kit]
    command += ["--extras", EXTRAS]
    proc = run([*command, "--key", keys / "a", "--key", keys / "b"], REPO, env)
    assert proc.returncode == 0, proc.stderr
    return Built(kit, work / "root.json", keys, work)


@pytest.fixture(scope="module")
def venv(built: Built) -> Path:
    """enclave installed from the kit alone into a clean virtual environment."""
    target = built.work / "venv"
    proc = pip_install(target, built.kit, built.work)
    assert proc.returncode == 0, proc.stderr
    return target


def notes_manifest(directory: Path, name: str, more_components: str = "") -> Path:
    """A bundle manifest `name` 1.0.0 of a small `notes` folder (plus `more_components`, YAML lines)."""
    (directory / "notes").mkdir()
    (directory / "notes" / "README").write_text(f"{name}\n")
    manifest = directory / "bundle.yaml"
    manifest.write_text(
        f"apiVersion: enclave/v1\nkind: Bundle\nmetadata: {{name: {name}, version: 1.0.0}}\n"
        "spec:\n  components:\n    - {name: notes, kind: files, path: ./notes}\n" + more_components
    )
    return manifest


def enclave(venv: Path, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([venv / "bin" / "enclave", *args], cwd, offline_env(cwd))


def test_the_bootstrap_check_accepts_the_kit(built: Built) -> None:
    proc = run([sys.executable, "-I", TRUSTED_VERIFIER, built.kit, "--trust", built.root], built.work)
    assert proc.returncode == 0, proc.stderr
    assert "signed by 1 ECDSA P-384 key(s) of the bundle role" in proc.stdout
    assert (built.kit / "verify-kit.py").read_bytes() == TRUSTED_VERIFIER.read_bytes()
    lines = (built.kit / "requirements.txt").read_text().splitlines()
    pins = [line for line in lines if not line.startswith("#")]
    assert len(pins) == len(list(built.kit.glob("*.whl"))) and all(
        "==" in p and " --hash=sha256:" in p for p in pins
    )
    assert any(p.startswith(f"enclave[{EXTRAS}]==") for p in pins)
    assert any(p.startswith("ansible-core==") for p in pins) and not any(
        p.startswith("docker==") for p in pins
    )


def test_an_offline_install_runs_the_core_commands(built: Built, venv: Path, tmp_path: Path) -> None:
    assert enclave(venv, "--version", cwd=tmp_path).stdout.startswith("enclave ")
    assert enclave(venv, "kit", "verify", built.kit, "--trust", built.root, cwd=tmp_path).returncode == 0
    manifest = notes_manifest(
        tmp_path, "offline",
        "    - {name: policy, kind: policy, path: 'enclave:bundles/policy/default.yaml'}\n"
        "    - {name: site, kind: playbooks, path: 'enclave:playbooks'}\n",
    )  # fmt: skip
    keys = ["--key", str(built.keys / "a"), "--key", str(built.keys / "b")]
    steps: list[list[str | Path]] = [
        ["bundle", "build", manifest, "--out", tmp_path / "out", *keys],
        ["bundle", "inspect", tmp_path / "out" / "offline-1.0.0.bundle", "--trust", built.root],
        ["bundle", "verify", tmp_path / "out" / "offline-1.0.0.bundle", "--trust", built.root,
         "--extract-to", tmp_path / "published"],
        ["provision", "--help"],
    ]  # fmt: skip
    for step in steps:
        proc = enclave(venv, *step, cwd=tmp_path)
        assert proc.returncode == 0, (step, proc.stderr)
    assert (tmp_path / "published" / "content" / "site" / "site.yml").read_bytes() == (
        REPO / "playbooks" / "site.yml"
    ).read_bytes()
    assert "--inventory" in proc.stdout
    # What this box was not given says which extra to install, in one line.
    serve = enclave(venv, "gateway", "serve", "--policy", "p", "--upstream", "u", "--audit-log", "l",
                    "--audit-key", "k", cwd=tmp_path)  # fmt: skip
    assert serve.returncode == 2 and serve.stderr.count("\n") == 1
    assert "needs enclave[runtime] (aiohttp is not installed)" in serve.stderr
    assert run([venv / "bin" / "python", "-c", "import docker"], tmp_path).returncode != 0


def test_the_installed_package_data_is_the_top_level_folders(venv: Path) -> None:
    (data,) = venv.glob("lib/python3.*/site-packages/enclave/_data")
    for folder in FOLDERS:
        assert not (data / folder).is_symlink()
        assert tree(data / folder) == shipped_sources(folder), folder
    assert not (data / "bundles" / "guard" / "corpus").exists()


def test_a_kit_with_one_altered_wheel_is_refused(built: Built, tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    shutil.copytree(built.kit, kit)
    wheel = next(kit.glob("pyyaml-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 1
    wheel.write_bytes(bytes(data))
    check = run([sys.executable, "-I", TRUSTED_VERIFIER, kit, "--trust", built.root], tmp_path)
    assert check.returncode == 3 and f"{wheel.name}: differs from the signed kit statement" in check.stderr
    own = run([sys.executable, "-m", "enclave.cli", "kit", "verify", kit, "--trust", built.root], REPO)
    assert own.returncode == 3 and wheel.name in own.stderr
    pip = pip_install(tmp_path / "venv", kit, tmp_path)
    assert pip.returncode != 0 and "DO NOT MATCH THE HASHES" in pip.stderr
    assert not (tmp_path / "venv" / "bin" / "enclave").exists()


def test_the_next_version_travels_in_a_bundle(built: Built, venv: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "bundle.yaml"
    manifest.write_text(
        "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: enclave-upgrade, version: 1.0.0}\n"
        f"spec:\n  components:\n    - {{name: enclave-kit, kind: wheelhouse, path: {built.kit}}}\n"
    )
    bundle = tmp_path / "out" / "enclave-upgrade-1.0.0.bundle"
    keys = ["--key", str(built.keys / "a"), "--key", str(built.keys / "b")]
    published = tmp_path / "published"
    steps: list[list[str | Path]] = [
        ["bundle", "build", manifest, "--out", tmp_path / "out", *keys],
        ["bundle", "verify", bundle, "--trust", built.root, "--extract-to", published],
    ]
    for step in steps:
        proc = enclave(venv, *step, cwd=tmp_path)
        assert proc.returncode == 0, (step, proc.stderr)
    fresh = tmp_path / "fresh"
    assert run([sys.executable, "-m", "venv", fresh], tmp_path).returncode == 0
    install: list[str | Path] = ["kit", "install", "--bundle-dir", published, "--trust", built.root]
    install += ["--python", fresh / "bin" / "python"]
    proc = enclave(venv, *install, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "verified and installed" in proc.stdout
    assert run([fresh / "bin" / "enclave", "--version"], tmp_path).returncode == 0
    wheel = next((published / "content" / "enclave-kit").glob("jinja2-*.whl"))
    wheel.chmod(0o644)
    wheel.write_bytes(wheel.read_bytes()[:-1])
    proc = enclave(venv, *install, cwd=tmp_path)
    assert proc.returncode == 3 and "differs from the bundle's signed statement" in proc.stderr


def test_a_core_kit_makes_a_verify_only_box_through_install_sh(built: Built, tmp_path: Path) -> None:
    """No extra: enclave and its core dependencies only, installed by the kit's own install.sh
    (after the bootstrap check): it builds and verifies bundles, and has no Ansible, Docker,
    SSH or web server to offer an attacker; asking for them names the extra."""
    kit = tmp_path / "core-kit"
    env = dict(os.environ, ENCLAVE_CACHE_DIR=str(CACHE))
    command: list[str | Path] = [sys.executable, "-m", "enclave.cli", "kit", "build", "--out", kit]
    proc = run([*command, "--key", built.keys / "a", "--key", built.keys / "b"], REPO, env)
    assert proc.returncode == 0, proc.stderr
    check = run([sys.executable, "-I", TRUSTED_VERIFIER, kit, "--trust", built.root], tmp_path)
    assert check.returncode == 0, check.stderr
    target = tmp_path / "opt-enclave"
    install_env = offline_env(tmp_path) | {"PYTHON": sys.executable}
    installed = run(["sh", kit / "install.sh", target], tmp_path, install_env)
    assert installed.returncode == 0, installed.stderr
    python = target / "bin" / "python"
    for module in ("ansible", "ansible_runner", "paramiko", "docker", "aiohttp", "numpy", "openpyxl"):
        assert run([python, "-c", f"import {module}"], tmp_path).returncode != 0, module
    manifest = notes_manifest(tmp_path, "core")
    keys = ["--key", str(built.keys / "a"), "--key", str(built.keys / "b")]
    bundle = tmp_path / "out" / "core-1.0.0.bundle"
    for step in (
        ["bundle", "build", manifest, "--out", tmp_path / "out", *keys],
        ["bundle", "verify", bundle, "--trust", built.root, "--extract-to", tmp_path / "published"],
    ):
        proc = enclave(target, *step, cwd=tmp_path)
        assert proc.returncode == 0, (step, proc.stderr)
    preflight = enclave(target, "preflight", "--inventory", tmp_path / "hosts.yml", cwd=tmp_path)
    assert preflight.returncode == 2 and "needs enclave[provision]" in preflight.stderr
