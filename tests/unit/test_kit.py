"""Kits without the network: wheels are small fakes, so what is checked is the kit's form, its
signature rules and the bootstrap check (enclave/kit/bootstrap.py, with the real openssl).
tests/integration/test_kit.py builds a real kit and installs it offline."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from enclave.canonical import canonical
from enclave.cli import main
from enclave.errors import EnclaveError, IntegrityError, RollbackRefused, TrustError, UsageError
from enclave.kit import bootstrap
from enclave.kit import build as kitbuild
from enclave.kit.build import build_kit, platform_tags
from enclave.kit.install import install_kit, installed_version, kit_in_bundle, verify_kit
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot
from enclave.trust.state import StateDir
from tests.conftest import Keys, RotateFn, make_root
from tests.unit.test_sbom import validate

PACKAGE = Path(bootstrap.__file__).parent


def fake_wheel(directory: Path, name: str, version: str, extras: Sequence[str] = ()) -> Path:
    """A small wheel pip installs; enclave's requires dep and has the `enclave` command."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Provides-Extra: {e}\n" for e in extras)
    metadata += ("Requires-Dist: dep>=1\n" if name == "enclave" else "") + "\nREADME\n"
    files = {
        f"{name}/__init__.py": f"def main() -> None:\n    print('{name} {version}')\n",
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[console_scripts]\n{name} = {name}:main\n" if name == "enclave" else "",
    }
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
        archive.writestr(f"{info}/RECORD", "".join(f"{m},,\n" for m in files) + f"{info}/RECORD,,\n")
    return path


BuildKit = Callable[..., Path]


@pytest.fixture
def make_kit(tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> BuildKit:
    own = fake_wheel(
        tmp_path / "wheels", "enclave", "0.1.0", ["provision", "runtime", "images", "all", "dev"]
    )
    deps = [
        fake_wheel(tmp_path / "wheels", "dep", "1.2"),
        fake_wheel(tmp_path / "wheels", "other_dep", "2.0"),
    ]

    def dependencies(wheel: Path, extras: Sequence[str], python: str, platforms: Sequence[str]) -> list[Path]:
        assert wheel == own
        return deps

    monkeypatch.setattr(kitbuild, "project_wheel", lambda: own)
    monkeypatch.setattr(kitbuild, "dependencies", dependencies)
    counter = iter(range(100))

    def _make(signers: Sequence[SigningKey] | None = None, **options: object) -> Path:
        out = tmp_path / f"kit{next(counter)}"
        build_kit(out, list(signers or (keys.ecdsa, keys.mldsa)), **options)  # type: ignore[arg-type]
        return out

    return _make


@pytest.fixture
def root(keys: Keys, tmp_path: Path) -> Path:
    return make_root(keys, tmp_path / "root.json")


def now() -> datetime:
    return datetime.now(UTC)


def bootstrap_code(kit: Path, root: Path) -> int:
    return bootstrap.main([str(kit), "--trust", str(root)])


def test_a_kit_is_signed_hash_pinned_and_complete(
    make_kit: BuildKit, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = make_kit(extras=["provision"], python="3.12", platforms=["manylinux_2_28_x86_64"])
    names = sorted(p.name for p in kit.iterdir())
    assert names == sorted(
        ["dep-1.2-py3-none-any.whl", "enclave-0.1.0-py3-none-any.whl", "other_dep-2.0-py3-none-any.whl",
         "install.sh", "kit.dsse.json", "requirements.txt", "sbom.cdx.json", "verify-kit.py"]
    )  # fmt: skip
    pins = [line for line in (kit / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    sha = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in kit.glob("*.whl")}
    assert pins == [
        f"dep==1.2 --hash=sha256:{sha['dep-1.2-py3-none-any.whl']}",
        f"enclave[provision]==0.1.0 --hash=sha256:{sha['enclave-0.1.0-py3-none-any.whl']}",
        f"other-dep==2.0 --hash=sha256:{sha['other_dep-2.0-py3-none-any.whl']}",
    ]
    assert (kit / "verify-kit.py").read_bytes() == (PACKAGE / "bootstrap.py").read_bytes()
    assert (kit / "install.sh").read_bytes() == (PACKAGE / "install.sh").read_bytes()
    assert (kit / "install.sh").stat().st_mode & 0o111
    sbom = validate((kit / "sbom.cdx.json").read_bytes())  # CycloneDX 1.6, strictly
    wheels = {c["name"]: c for c in sbom["components"]}["wheels"]
    assert {c.get("purl", "").split("?")[0] for c in wheels["components"]} == {
        "pkg:pypi/dep@1.2", "pkg:pypi/enclave@0.1.0", "pkg:pypi/other-dep@2.0"
    }  # fmt: skip
    verified = verify_kit(kit, TrustRoot.load(root), now())
    assert (verified.statement.python, verified.statement.extras) == ("3.12", ("provision",))
    assert verified.statement.platforms == ("manylinux_2_28_x86_64",)
    assert len(verified.signers) == 2 and len(verified.statement.files) == 7  # all but kit.dsse.json
    assert bootstrap_code(kit, root) == 0
    out = capsys.readouterr().out
    assert (
        "signed by 1 ECDSA P-384 key(s)" in out and "7 files" in out and "(ML-DSA-87) not checked here" in out
    )


def test_build_options_are_checked(make_kit: BuildKit, keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(
        UsageError,
        match=re.escape("--extras nope: not an extra of enclave (have: all, images, provision, runtime)"),
    ):
        make_kit(extras=["nope"])
    with pytest.raises(UsageError, match="--extras dev"):
        make_kit(extras=["dev"])
    with pytest.raises(UsageError, match=re.escape("--python 3.10")):
        make_kit(python="3.10")
    kit = make_kit()
    with pytest.raises(UsageError, match="already exists"):
        build_kit(kit, [keys.ecdsa])
    with pytest.raises(UsageError, match="give --key"):
        build_kit(tmp_path / "unsigned", [])
    assert not list(tmp_path.glob(".kit*"))  # no staging directory left behind


def test_platform_tags_admit_older_glibc() -> None:
    tags = platform_tags(["manylinux_2_28_x86_64", "win_amd64"])
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-1] == "win_amd64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags and len(tags) == len(set(tags))


def _wheel(kit: Path) -> Path:
    return next(kit.glob("dep-*.whl"))


def _alter(kit: Path) -> None:
    data = bytearray(_wheel(kit).read_bytes())
    data[10] ^= 1
    _wheel(kit).write_bytes(bytes(data))


def _resign(kit: Path, edit: Callable[[dict[str, object]], None], signers: Sequence[SigningKey]) -> None:
    envelope = Envelope.from_json((kit / "kit.dsse.json").read_bytes())
    doc = json.loads(envelope.payload)
    edit(doc)
    fresh = Envelope(IN_TOTO_PAYLOAD_TYPE, canonical(doc))
    for key in signers:
        fresh.sign(key)
    (kit / "kit.dsse.json").write_bytes(fresh.to_json())


def _rename_first(doc: dict[str, object]) -> None:
    subject, files = doc["subject"], doc["predicate"]["files"]  # type: ignore[index]
    subject[0]["name"] = files[0]["name"] = "../escape"  # type: ignore[index]


DAMAGE: dict[str, tuple[Callable[[Path, Keys], object], int, str]] = {
    "altered wheel": (lambda kit, _k: _alter(kit), 3, "dep-1.2-py3-none-any.whl: differs"),
    "extra file": (lambda kit, _k: (kit / "evil-1.0-py3-none-any.whl").write_bytes(b"x"), 3, "extra file"),
    "missing file": (lambda kit, _k: _wheel(kit).unlink(), 3, "missing file"),
    "statement edited": (
        lambda kit, _k: (kit / "kit.dsse.json").write_bytes(
            (kit / "kit.dsse.json").read_bytes().replace(b'"payload":"', b'"payload":"IA', 1)
        ),
        4,
        "",
    ),
    "untrusted signer": (lambda kit, k: _resign(kit, lambda _d: None, [k.stranger]), 4, "bundle"),
    "bad name, signed": (lambda kit, k: _resign(kit, _rename_first, [k.ecdsa, k.mldsa]), 3, "not a kit file"),
}  # fmt: skip


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_kit_is_refused_by_both_checks(
    damage: str, make_kit: BuildKit, root: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = make_kit()
    change, code, message = DAMAGE[damage]
    change(kit, keys)
    assert bootstrap_code(kit, root) == code
    err = capsys.readouterr().err
    assert err.startswith("verify-kit: REFUSED: ") and message in err
    with pytest.raises(EnclaveError) as caught:
        verify_kit(kit, TrustRoot.load(root), now())
    assert caught.value.exit_code == code and message in str(caught.value)


def test_the_bootstrap_checks_ecdsa_only_enclave_the_whole_rule(
    make_kit: BuildKit, root: Path, keys: Keys
) -> None:
    kit = make_kit(signers=[keys.ecdsa])  # threshold 2 and the hybrid rule are not met
    assert bootstrap_code(kit, root) == 0  # what the bootstrap can check holds: docs say so
    with pytest.raises(TrustError, match="1 of threshold 2"):
        verify_kit(kit, TrustRoot.load(root), now())
    only_pq = make_kit(signers=[keys.mldsa])
    assert bootstrap_code(only_pq, root) == 4


def test_an_expired_root_refuses_the_kit(make_kit: BuildKit, keys: Keys, tmp_path: Path) -> None:
    kit = make_kit()
    old = make_root(keys, tmp_path / "old.json", expires=datetime.now(UTC) - timedelta(days=1))
    assert bootstrap_code(kit, old) == 4
    with pytest.raises(TrustError, match="expired"):
        verify_kit(kit, TrustRoot.load(old), now())


def test_a_bad_signature_by_a_trusted_key_is_refused(make_kit: BuildKit, root: Path) -> None:
    kit = make_kit()
    doc = json.loads((kit / "kit.dsse.json").read_bytes())
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[-1] ^= 1
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    (kit / "kit.dsse.json").write_text(json.dumps(doc))
    assert bootstrap_code(kit, root) == 4


def test_install_refuses_a_kit_for_another_python(make_kit: BuildKit, root: Path) -> None:
    other = "3.12" if sys.version_info[:2] != (3, 12) else "3.11"
    verified = verify_kit(make_kit(python=other), TrustRoot.load(root), now())
    with pytest.raises(UsageError, match="the kit is for Python"):
        install_kit(verified)


def test_an_older_kit_is_a_downgrade_refused_unless_asked(
    make_kit: BuildKit, root: Path, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    python = venv / "bin" / "python"
    install_kit(verify_kit(make_kit(), TrustRoot.load(root), now()), python)  # enclave 0.1.0
    older = fake_wheel(tmp_path / "old-wheels", "enclave", "0.0.9", ["provision", "runtime", "images", "all"])
    monkeypatch.setattr(kitbuild, "project_wheel", lambda: older)
    monkeypatch.setattr(kitbuild, "dependencies", lambda *_args: [])
    build_kit(tmp_path / "old-kit", [keys.ecdsa, keys.mldsa])
    verified = verify_kit(tmp_path / "old-kit", TrustRoot.load(root), now())
    assert verified.statement.version == "0.0.9"
    with pytest.raises(RollbackRefused, match=r"0\.0\.9 is older than the 0\.1\.0 installed"):
        install_kit(verified, python)
    assert installed_version(python) == "0.1.0"  # nothing was touched
    install_kit(verified, python, allow_downgrade=True)
    assert installed_version(python) == "0.0.9"


def test_a_kit_is_judged_by_the_stored_root_not_an_older_given_one(
    make_kit: BuildKit, root: Path, keys: Keys, rotate: RotateFn, tmp_path: Path
) -> None:
    kit = make_kit()  # signed by ecdsa and mldsa
    assert main(["kit", "verify", str(kit), "--trust", str(root), "--state-dir", str(tmp_path / "none")]) == 2
    state = tmp_path / "state"
    assert main(["kit", "verify", str(kit), "--trust", str(root)]) == 0  # no root stored yet
    # This host rotated to v2, which revokes the ECDSA key that signed the kit.
    v2 = rotate(root, [keys.root], add={"bundle": [keys.stranger]}, revoke=[keys.ecdsa])
    StateDir.open(state).store_root(TrustRoot.load(v2))
    assert main(["kit", "verify", str(kit), "--trust", str(root), "--state-dir", str(state)]) == 4


def test_a_kit_travels_in_a_bundle(make_kit: BuildKit, root: Path, keys: Keys, tmp_path: Path) -> None:
    kit = make_kit()
    manifest = tmp_path / "bundle.yaml"
    manifest.write_text(
        "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: upgrade, version: 1.0.0}\n"
        f"spec:\n  components:\n    - {{name: enclave-kit, kind: wheelhouse, path: {kit}}}\n"
    )
    assert main(["bundle", "build", str(manifest), "--out", str(tmp_path / "out"),
                 "--key", str(keys.path("ecdsa")), "--key", str(keys.path("mldsa"))]) == 0  # fmt: skip
    published = tmp_path / "published"
    bundle = tmp_path / "out" / "upgrade-1.0.0.bundle"
    assert main(["bundle", "verify", str(bundle), "--trust", str(root), "--extract-to", str(published)]) == 0
    trusted = TrustRoot.load(root)
    found = kit_in_bundle(published, trusted, now())
    assert found == published / "content" / "enclave-kit"
    assert verify_kit(found, trusted, now()).statement.name == "enclave"
    with pytest.raises(UsageError, match=re.escape("wheelhouse components ['enclave-kit']")):
        kit_in_bundle(published, trusted, now(), "other")
    wheel = _wheel(found)
    wheel.chmod(0o644)
    _alter(found)
    with pytest.raises(IntegrityError, match="differs from the bundle's signed statement"):
        kit_in_bundle(published, trusted, now())


# -- verify-kit.py and install.sh on the high side's own python3 and sh ----------------------------
# verify-kit.py runs before anything of the kit, on the host's python3: RHEL 9's is 3.9, Ubuntu
# 22.04's 3.10 (enclave/kit/bootstrap.py's docstring, docs/OPERATIONS.md 15).
OLDEST = (3, 9)
# What the standard library gained after 3.9 that code like verify-kit.py reaches for; grammar
# (match, except*) is ast.parse(feature_version=)'s to refuse. Both are best effort (parenthesised
# context managers pass ast.parse, for one): the real check is the run on a 3.9 or 3.10 found here.
NEWER_NAMES: dict[str, frozenset[str]] = {
    "datetime": frozenset({"UTC"}),
    "enum": frozenset({"StrEnum", "ReprEnum", "verify", "member", "nonmember", "global_enum"}),
    "typing": frozenset({"Self", "Never", "LiteralString", "TypeAlias", "ParamSpec", "TypeGuard",
                         "Concatenate", "assert_never", "Required", "NotRequired", "override"}),
    "itertools": frozenset({"pairwise", "batched"}),
    "hashlib": frozenset({"file_digest"}),
    "contextlib": frozenset({"chdir", "aclosing"}),
    "asyncio": frozenset({"TaskGroup", "timeout", "Runner"}),
}  # fmt: skip
NEWER_MODULES = frozenset({"tomllib"})
NEWER_KEYWORDS = {"zip": {"strict"}, "dataclass": {"slots", "kw_only", "match_args"}}


def needs_newer_python(source: str) -> list[str]:
    """What in `source` needs more than Python 3.9's grammar and standard library."""
    try:
        tree = ast.parse(source, feature_version=OLDEST)
    except SyntaxError as exc:
        return [f"line {exc.lineno}: not Python 3.9 syntax: {exc.msg}"]
    problems: list[str] = []
    modules: list[tuple[int, str]] = []
    local: dict[str, str] = {}  # name bound by `import M` -> M
    future = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules += [(node.lineno, a.name) for a in node.names]
            for alias in node.names:  # `import a.b` binds a, `import a.b as c` binds c to a.b
                top = alias.name.split(".")[0]
                local[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            modules.append((node.lineno, module))
            future |= module == "__future__" and any(a.name == "annotations" for a in node.names)
            problems += [f"line {node.lineno}: {module}.{a.name} is newer than Python 3.9"
                         for a in node.names if a.name in NEWER_NAMES.get(module, ())]  # fmt: skip
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.attr in NEWER_NAMES.get(local.get(node.value.id, ""), ()):
                problems.append(f"line {node.lineno}: {node.value.id}.{node.attr} is newer than Python 3.9")
        elif isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            problems += [f"line {node.lineno}: {name}({k.arg}=) is newer than Python 3.9"
                         for k in node.keywords if k.arg in NEWER_KEYWORDS.get(name, ())]  # fmt: skip
            if name in ("isinstance", "issubclass") and isinstance(node.args[-1], ast.BinOp):
                problems.append(f"line {node.lineno}: {name}(x, A | B) needs Python 3.10")
    for line, module in modules:
        top = module.split(".")[0]
        if top not in sys.stdlib_module_names:
            problems.append(f"line {line}: {module} is not in the standard library")
        elif module in NEWER_MODULES:
            problems.append(f"line {line}: {module} is newer than Python 3.9")
    if not future:  # annotations (`X | None`, `tuple[str, ...]`) must stay unevaluated
        problems.append("no `from __future__ import annotations`")
    return problems


def test_the_bootstrap_keeps_to_python_3_9_and_the_standard_library() -> None:
    assert needs_newer_python((PACKAGE / "bootstrap.py").read_text(encoding="utf-8")) == []
    assert bootstrap.MIN_PYTHON == OLDEST


@pytest.mark.parametrize(
    "source",
    [
        "match x:\n    case 1:\n        pass\n",
        "from datetime import UTC, datetime\n",
        "import datetime as dt\nnow = dt.datetime.now(dt.UTC)\n",
        "import itertools\nitertools.pairwise([])\n",
        "pairs = list(zip([1], [2], strict=True))\n",
        "from dataclasses import dataclass\n@dataclass(slots=True)\nclass A:\n    x: int\n",
        "ok = isinstance(1, int | str)\n",
        "import tomllib\n",
        "import yaml\n",
        "from . import sibling\n",
        "try:\n    pass\nexcept* OSError:\n    pass\n",
    ],
)
def test_the_python_3_9_check_catches_each_kind(source: str) -> None:
    future = "from __future__ import annotations\n"
    assert needs_newer_python(future + source), source
    assert needs_newer_python("x: int | None = None\n") == ["no `from __future__ import annotations`"]
    assert needs_newer_python(future + "x: int | None = None\nflags = 1 | 2\n") == []


def older_pythons() -> dict[str, str]:
    """'3.9' and '3.10' -> an interpreter of that version found here (PATH, pyenv), if any."""
    candidates = [shutil.which(f"python3.{minor}") for minor in (9, 10)]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += [
        str(p) for p in sorted(pyenv.glob("3.9*/bin/python3")) + sorted(pyenv.glob("3.10*/bin/python3"))
    ]
    found: dict[str, str] = {}
    for candidate in filter(None, candidates):
        try:
            proc = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                  capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        except OSError:
            continue
        version = proc.stdout.strip()
        if proc.returncode == 0 and version in ("3.9", "3.10"):
            found.setdefault(version, candidate)
    return found


def run_isolated(python: str, *argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -I -S`: no site-packages at all, no PYTHON* variables, no script directory."""
    return subprocess.run([python, "-I", "-S", *map(str, argv)], capture_output=True, text=True, cwd=cwd,
                          timeout=120, check=False)  # fmt: skip


def test_the_kits_verify_kit_runs_isolated_on_the_oldest_python_here(
    make_kit: BuildKit, root: Path, tmp_path: Path
) -> None:
    kit = make_kit()
    olds = older_pythons()
    for python in [sys.executable, *olds.values()]:
        shown = run_isolated(python, kit / "verify-kit.py", "--help", cwd=tmp_path)
        assert shown.returncode == 0 and "Needs Python 3.9 or later" in shown.stdout, shown.stderr
        checked = run_isolated(python, kit / "verify-kit.py", kit, "--trust", root, cwd=tmp_path)
        assert checked.returncode == 0 and "signed by 1 ECDSA P-384 key(s)" in checked.stdout, checked.stderr
    damaged = make_kit()
    _alter(damaged)
    for python in [sys.executable, *olds.values()]:
        refused = run_isolated(python, kit / "verify-kit.py", damaged, "--trust", root, cwd=tmp_path)
        assert refused.returncode == 3 and "dep-1.2-py3-none-any.whl: differs" in refused.stderr
    if not olds:
        pytest.skip("no Python 3.9 or 3.10 here: verify-kit.py ran on this Python only")


def _shells() -> list[list[str]]:
    """A plain POSIX sh (dash where there is one) and bash in POSIX mode."""
    found = [[shutil.which("dash") or "sh"]]
    return found + ([["bash", "--posix"]] if shutil.which("bash") else [])


def install_sh(shell: Sequence[str], kit: Path, venv: Path, python: str) -> subprocess.CompletedProcess[str]:
    """`sh KIT/install.sh VENV` with PYTHON=python, no pip or Python variables of this session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run(
        [*shell, str(kit / "install.sh"), str(venv)],
        capture_output=True,
        text=True,
        env=env | {"PYTHON": python},
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize("shell", _shells(), ids=lambda s: " ".join([Path(s[0]).name, *s[1:]]))
def test_install_sh_refuses_another_python_before_making_the_venv(
    shell: list[str], make_kit: BuildKit, tmp_path: Path
) -> None:
    other = "3.12" if sys.version_info[:2] != (3, 12) else "3.11"
    kit = make_kit(python=other)
    pythons = {"{}.{}".format(*sys.version_info[:2]): sys.executable} | older_pythons()
    for version, python in pythons.items():  # the kit's Python is read by each, 3.9 included
        proc = install_sh(shell, kit, tmp_path / "venv", python)
        assert proc.returncode == 2, proc.stderr
        assert f"the kit is for CPython {other}; {python} is Python {version}" in proc.stderr
        assert f"set PYTHON=python{other}" in proc.stderr and not (tmp_path / "venv").exists()


def test_install_sh_in_plain_sh_installs_offline(make_kit: BuildKit, tmp_path: Path) -> None:
    kit = make_kit()  # for this Python
    sh, venv = _shells()[0], tmp_path / "venv"
    proc = install_sh(sh, kit, venv, sys.executable)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "enclave 0.1.0"  # the venv's `enclave --version`
    pip_list = [str(venv / "bin" / "python"), "-m", "pip", "--isolated", "list", "--format=freeze"]
    listed = subprocess.run(pip_list, capture_output=True, text=True, timeout=120, check=True).stdout
    assert {"dep==1.2", "enclave==0.1.0", "other_dep==2.0"} <= set(listed.replace("-", "_").split())
    again = install_sh(sh, kit, venv, "/nonexistent/python3")
    assert again.returncode == 0, again.stderr  # an existing venv: its own python, PYTHON unused
    for version, python in older_pythons().items():  # an existing venv of another Python
        old = tmp_path / f"venv-{version}"
        (old / "bin").mkdir(parents=True)
        (old / "bin" / "python").symlink_to(python)
        refused = install_sh(sh, kit, old, sys.executable)
        assert refused.returncode == 2 and f"is Python {version} (give a new VENV)" in refused.stderr


def test_the_build_requirement_admits_only_a_setuptools_that_reads_the_license() -> None:
    """The kit's own wheel is built from pyproject.toml (enclave.images.wheels): `license` as an
    SPDX string (PEP 639) needs setuptools 77, which `requires` must say for builds without
    isolation (`pip wheel --no-build-isolation` with setuptools 76 fails on it)."""
    pyproject = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    floors = [re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", r) for r in pyproject["build-system"]["requires"]]
    (floor,) = [int(m[1]) for m in floors if m]
    assert isinstance(pyproject["project"]["license"], str) and floor >= 77
    import setuptools
    from setuptools.config.pyprojecttoml import read_configuration

    if int(setuptools.__version__.split(".")[0]) >= floor:  # a setuptools the floor admits reads it
        read_configuration(PACKAGE.parents[1] / "pyproject.toml")
