"""`enclave kit verify` and `enclave kit install`: the full check of a kit, then pip, offline.

The full check is the bootstrap's (enclave/kit/bootstrap.py: the statement's format and every
file's size, SHA-256 and SHA-384, nothing extra) with the signature rule of a bundle in place
of the bootstrap's ECDSA-only one: the trust root valid now, a threshold of distinct keys of
its `bundle` role, and with the hybrid rule one ECDSA P-384 and one ML-DSA-87 signature.

`kit install --bundle-dir DIR` takes the kit from a bundle that `enclave bundle verify
--extract-to DIR` published: the bundle's envelope is checked against the trust root again,
the kit component's files are re-hashed against the bundle's signed statement, then the kit
itself is checked as above. Only then does pip run: `--no-index --find-links KIT
--require-hashes`, into the environment of `--python` (default: the one enclave runs in).
A kit older than the enclave already installed there is a downgrade, refused (RollbackRefused,
exit 5) unless the operator asks for it: an older signed kit lying on the media is no way back
to a version with known holes.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from enclave.bundle.digest import digest_files
from enclave.bundle.statement import BundleStatement
from enclave.bundle.tarformat import CONTENT_PREFIX, ENVELOPE_NAME
from enclave.errors import (
    EnclaveError,
    IntegrityError,
    ProvisionError,
    RollbackRefused,
    TrustError,
    UsageError,
)
from enclave.fileio import read_regular, require_regular
from enclave.kit import bootstrap
from enclave.kit.bootstrap import STATEMENT, KitError, Statement
from enclave.kit.build import REQUIREMENTS
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, MAX_ENVELOPE, Envelope
from enclave.trust.root import TrustRoot
from enclave.trust.state import SemVer
from enclave.trust.trusted import TrustedRoot

PIP_TIMEOUT = 1800  # seconds
_ERRORS: dict[int, type[EnclaveError]] = {2: UsageError, 3: IntegrityError, 4: TrustError}


@dataclass(frozen=True)
class VerifiedKit:
    path: Path
    statement: Statement
    signers: tuple[str, ...]  # keyids
    bytes: int


def _envelope(path: Path, root: TrustRoot, now: datetime) -> tuple[Envelope, tuple[str, ...]]:
    """The envelope at `path`, its signatures meeting the root's bundle role now."""
    envelope = Envelope.from_json(read_regular(path, "signed statement", MAX_ENVELOPE), str(path))
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise TrustError(f"{path}: payloadType {envelope.payload_type!r} is not {IN_TOTO_PAYLOAD_TYPE}")
    trusted = TrustedRoot(root, now)
    trusted.check_current()
    check = trusted.require("bundle", envelope, str(path))
    return envelope, tuple(k.keyid for k in check.signers)


def verify_kit(kit: Path, root: TrustRoot, now: datetime) -> VerifiedKit:
    """Check `kit` fully (module docstring); raises the typed errors."""
    if not kit.is_dir():
        raise UsageError(f"{kit}: not a kit directory")
    envelope, signers = _envelope(kit / STATEMENT, root, now)
    try:
        statement = bootstrap.read_statement(envelope.payload)
        total = bootstrap.check_files(kit, statement)
    except KitError as exc:
        raise _ERRORS.get(exc.code, IntegrityError)(str(exc)) from None
    return VerifiedKit(kit, statement, signers, total)


def kit_in_bundle(bundle_dir: Path, root: TrustRoot, now: datetime, component: str | None = None) -> Path:
    """The kit directory inside a published bundle, after its files were re-hashed against the
    bundle's signed statement (the kit's own check follows in verify_kit)."""
    envelope, _signers = _envelope(bundle_dir / ENVELOPE_NAME, root, now)
    statement = BundleStatement.from_payload(envelope.payload)
    kits = [c for c in statement.components if c.kind == "wheelhouse" and component in (None, c.name)]
    if len(kits) != 1:
        have = [c.name for c in statement.components if c.kind == "wheelhouse"]
        raise UsageError(
            f"{bundle_dir}: {statement.name} {statement.version} has wheelhouse components {have or 'none'}"
            + ("; name one with --component" if len(have) > 1 else "")
        )
    members = [statement.members[statement.index[name]] for name in kits[0].members]
    paths = [bundle_dir / m.name for m in members]
    for path in paths:
        require_regular(path, "kit file")
    for member, path, found in zip(
        members, paths, digest_files(paths, statement.digest, statement.chunk_size), strict=True
    ):
        if found.size != member.size or found.digest.hex() != member.digest:
            raise IntegrityError(f"{path}: differs from the bundle's signed statement")
    return bundle_dir / f"{CONTENT_PREFIX}{kits[0].name}"


def _run_python(python: Path, *argv: str) -> str:
    """What `python` prints (stripped) for `argv`; a Python that cannot run is a UsageError."""
    try:
        proc = subprocess.run([str(python), *argv], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError(f"{python}: cannot run this Python: {exc}") from None
    return proc.stdout.strip()


def python_version(python: Path) -> str:
    return _run_python(python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])")


_INSTALLED = (
    "import importlib.metadata as m\n"
    "try:\n    print(m.version('enclave'))\n"
    "except m.PackageNotFoundError:\n    pass\n"
)


def installed_version(python: Path) -> str | None:
    """The enclave version installed in `python`'s environment, or None."""
    return _run_python(python, "-I", "-c", _INSTALLED) or None


def check_not_older(kit_version: str, installed: str | None, where: str) -> None:
    """RollbackRefused if `kit_version` is older than `installed` (versions compared as semver)."""
    if installed is None:
        return
    try:
        older = SemVer.parse(kit_version) < SemVer.parse(installed)
    except ValueError as exc:
        raise UsageError(f"enclave {kit_version} against the installed {installed}: {exc}") from None
    if older:
        raise RollbackRefused(
            f"the kit's enclave {kit_version} is older than the {installed} installed in {where}: "
            "a downgrade (--allow-downgrade if that is what you mean)",
            name="enclave", version=kit_version, accepted=installed,
        )  # fmt: skip


def install_kit(verified: VerifiedKit, python: Path | None = None, allow_downgrade: bool = False) -> str:
    """pip, offline, from the verified kit into `python`'s environment; returns pip's last line."""
    interpreter = python or Path(sys.executable)
    have = python_version(interpreter)
    if have != verified.statement.python:
        want = verified.statement.python
        raise UsageError(f"{verified.path}: the kit is for Python {want}; {interpreter} is Python {have}")
    if not allow_downgrade:
        where = f"{interpreter}'s environment"
        check_not_older(verified.statement.version, installed_version(interpreter), where)
    command = [str(interpreter), "-m", "pip", "--isolated", "install", "--no-index"]
    command += ["--find-links", str(verified.path), "--require-hashes", "--no-cache-dir"]
    command += ["--disable-pip-version-check", "--no-input", "-r", str(verified.path / REQUIREMENTS)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise ProvisionError(f"pip install took more than {PIP_TIMEOUT} s") from None
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    if proc.returncode != 0:
        error = IntegrityError if "DO NOT MATCH THE HASHES" in proc.stderr else ProvisionError
        raise error(
            f"pip install from {verified.path} failed (exit {proc.returncode}): {(lines or ['?'])[-1]}"
        )
    return (lines or ["installed"])[-1]
