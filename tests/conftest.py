"""Shared fixtures: real keys, a real trust root, and a real bundle built from small inputs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from enclave.bundle.build import build_bundle
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot, sign_document

MANIFEST = """\
apiVersion: enclave/v1
kind: Bundle
metadata: {{name: {name}, version: {version}}}
spec:
  digest: {digest}
  chunkSize: 1MiB
  components:
    - {{name: weights, kind: model, path: ./weights, format: gguf}}
    - {{name: policy, kind: policy, path: ./policy.yaml}}
    - {{name: site, kind: playbooks, path: ./playbooks}}
"""


@dataclass
class Keys:
    root: SigningKey
    ecdsa: SigningKey
    mldsa: SigningKey
    ecdsa2: SigningKey
    stranger: SigningKey
    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("keys")
    made = {
        "root": SigningKey.generate("ecdsa-p384"),
        "ecdsa": SigningKey.generate("ecdsa-p384"),
        "mldsa": SigningKey.generate("ml-dsa-87"),
        "ecdsa2": SigningKey.generate("ecdsa-p384"),
        "stranger": SigningKey.generate("ecdsa-p384"),
    }
    for name, key in made.items():
        key.write(directory / name, None)
    return Keys(dir=directory, **made)


def make_root(
    keys: Keys,
    path: Path,
    threshold: int = 2,
    expires: datetime | None = None,
    bundle: tuple[SigningKey, ...] | None = None,
    hybrid: bool = True,
) -> Path:
    members = bundle or (keys.ecdsa, keys.mldsa, keys.ecdsa2)
    signed = TrustRoot.create(
        {"root": [keys.root.public], "bundle": [k.public for k in members]},
        {"bundle": threshold},
        expires or datetime.now(UTC) + timedelta(days=30),
        hybrid_roles=("bundle",) if hybrid else (),
    )
    path.write_bytes(sign_document(signed, [keys.root]))
    return path


@pytest.fixture
def root_path(keys: Keys, tmp_path: Path) -> Path:
    return make_root(keys, tmp_path / "root.json")


def write_inputs(base: Path, weights_size: int = 3 * 1024 * 1024 + 123) -> Path:
    """A small bundle source tree: a multi-chunk weights file, a policy, some playbooks."""
    (base / "weights").mkdir(parents=True)
    (base / "weights" / "model.gguf").write_bytes(os.urandom(weights_size))
    (base / "weights" / "config.json").write_text('{"layers": 2}\n')
    (base / "policy.yaml").write_text("rules: []\n")
    (base / "playbooks" / "roles" / "r").mkdir(parents=True)
    (base / "playbooks" / "site.yml").write_text("- hosts: all\n")
    (base / "playbooks" / "roles" / "r" / "main.yml").write_text("---\n")
    return base


def bundle_with_trust(tmp_path: Path, roots: Sequence[Path], signers: Sequence[SigningKey]) -> Path:
    """A real bundle whose `trust` component (after 3 MiB of weights) carries `roots`."""
    src = write_inputs(tmp_path / "src-trust")
    (src / "trust").mkdir()
    for root in roots:
        (src / "trust" / root.name).write_bytes(root.read_bytes())
    (src / "bundle.yaml").write_text(
        MANIFEST.format(name="carrier", version="2.0.0", digest="sha384")
        + "    - {name: trust, kind: trust, path: ./trust}\n"
    )
    return build_bundle(src / "bundle.yaml", tmp_path / "out-trust", list(signers), show_progress=False)


BuildFn = Callable[..., Path]


@pytest.fixture
def build(keys: Keys, tmp_path: Path) -> BuildFn:
    """Build a real bundle; returns its path. Signed by ECDSA + ML-DSA unless told otherwise."""
    counter = iter(range(1000))

    def _build(
        signers: tuple[SigningKey, ...] | None = None,
        digest: str = "sha384",
        name: str = "demo",
        version: str = "1.0.0",
        source: Path | None = None,
    ) -> Path:
        n = next(counter)
        src = source or write_inputs(tmp_path / f"src{n}")
        manifest = src / "bundle.yaml"
        if not manifest.exists():
            manifest.write_text(MANIFEST.format(name=name, version=version, digest=digest))
        return build_bundle(
            manifest, tmp_path / f"out{n}", list(signers or (keys.ecdsa, keys.mldsa)), show_progress=False
        )

    return _build


@pytest.fixture(autouse=True)
def state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own verifier state directory (rollback record, trusted root,
    receipts) instead of /var/lib/enclave, so no state leaks between tests or onto the host."""
    directory = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("ENCLAVE_STATE_DIR", str(directory))
    return directory


RotateFn = Callable[..., Path]


@pytest.fixture
def rotate() -> RotateFn:
    """Write root N+1 of the root at `old` (its keys and thresholds, plus `add`, minus `revoke`)
    signed by `signers`; returns its path (`N.root.json` beside `old` unless `out` is given)."""
    from enclave.trust.rotation import next_root

    def _rotate(
        old: Path,
        signers: Sequence[SigningKey],
        add: dict[str, list[SigningKey]] | None = None,
        revoke: Sequence[SigningKey] = (),
        thresholds: dict[str, int] | None = None,
        expires: datetime | None = None,
        out: Path | None = None,
    ) -> Path:
        signed = next_root(
            TrustRoot.load(old),
            expires or datetime.now(UTC) + timedelta(days=30),
            {role: [k.public for k in keys] for role, keys in (add or {}).items()},
            [k.keyid for k in revoke],
            thresholds,
        )
        path = out or old.with_name(f"{signed['version']}.root.json")
        path.write_bytes(sign_document(signed, list(signers)))
        return path

    return _rotate


@pytest.fixture
def shm(tmp_path: Path) -> Iterator[Path]:
    """A directory on another filesystem than tmp_path (tmpfs): where the content store cannot
    hard-link an extracted tree, so it keeps chunk copies."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on tmp_path's filesystem")
    directory = Path(tempfile.mkdtemp(prefix="enclave-test-", dir="/dev/shm"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
