"""Shared helpers for the monitoring agent's tests: a real bundle, built, signed (ECDSA P-384 +
ML-DSA-87) and published with `Admission(...).verify(extract_to=...)`, a trust root with bundle and
audit roles, real hardening files, and the agent's real audit log.

(Named test_* only so it sits among the files it serves; it defines no tests.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from enclave.admission import Admission
from enclave.runtime.agent.daemon import AgentConfig
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot, sign_document
from tests.conftest import BuildFn, Keys

WEIGHTS = "content/weights/model.gguf"  # 3 MiB + 123 bytes: four 1 MiB chunks

_AUDIT: dict[str, SigningKey] = {}


def audit_key() -> SigningKey:
    if "key" not in _AUDIT:
        _AUDIT["key"] = SigningKey.generate("ecdsa-p384")
    return _AUDIT["key"]


def make_agent_root(keys: Keys, path: Path, audit: SigningKey) -> Path:
    """The bundle role of tests/conftest.py (2 of 3, hybrid) plus an audit role."""
    signed = TrustRoot.create(
        {
            "root": [keys.root.public],
            "bundle": [keys.ecdsa.public, keys.mldsa.public, keys.ecdsa2.public],
            "audit": [audit.public],
        },
        {"bundle": 2},
        datetime.now(UTC) + timedelta(days=30),
        hybrid_roles=("bundle",),
    )
    path.write_bytes(sign_document(signed, [keys.root]))
    return path


@dataclass
class Site:
    """A deployed bundle tree and everything the agent needs to watch it."""

    tree: Path
    bundle: Path
    root: Path
    audit_key: Path
    log: Path
    etc: Path  # stands in for /etc: the hardening files
    hardening_files: tuple[Path, ...] = field(default=())

    def config(self, **changes: object) -> AgentConfig:
        base: dict[str, object] = {
            "bundle_dir": self.tree,
            "trust": self.root,
            "audit_log": self.log,
            "audit_key": self.audit_key,
            "hardening_files": self.hardening_files,
            "docker": _no_docker,
        }
        base.update(changes)
        return AgentConfig(**base)  # type: ignore[arg-type]

    @property
    def weights(self) -> Path:
        return self.tree / WEIGHTS


def _no_docker() -> object:
    raise AssertionError("the docker engine must not be contacted when no image is signed")


def make_etc(base: Path) -> tuple[Path, ...]:
    (base / "ssh").mkdir(parents=True)
    (base / "ssh" / "sshd_config").write_text("PermitRootLogin no\nPasswordAuthentication no\n")
    (base / "sudoers").write_text("root ALL=(ALL:ALL) ALL\n")
    (base / "sudoers").chmod(0o440)
    (base / "sudoers.d").mkdir()
    (base / "sudoers.d" / "ops").write_text("%ops ALL=(ALL) /usr/bin/systemctl\n")
    return (base / "ssh" / "sshd_config", base / "sudoers", base / "sudoers.d", base / "absent.conf")


def deploy(keys: Keys, build: BuildFn, tmp_path: Path) -> Site:
    bundle = build()
    audit = audit_key()
    key_path = tmp_path / "audit.key"
    if not key_path.exists():
        audit.write(key_path, None)
    root = make_agent_root(keys, tmp_path / "agent-root.json", audit)
    tree = tmp_path / "deployed"
    Admission(trust=root).verify(bundle, extract_to=tree)
    (tmp_path / "var").mkdir()
    etc = tmp_path / "etc"
    return Site(tree, bundle, root, key_path, tmp_path / "var" / "agent.log", etc, make_etc(etc))


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))
