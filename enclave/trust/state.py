"""The high side's state: the trusted root and the rollback record, in one directory.

Layout of the state directory (default `/var/lib/enclave`, or `$ENCLAVE_STATE_DIR`, or
`--state-dir`), documented in docs/FORMAT.md section 7:

    root.json       the trusted root as last accepted (`trust update`, or a bundle's trust component)
    rollback.json   per bundle name: highest version accepted, its statement digest, the root version
    receipts.log    the hash-chained receipt log (enclave.trust.receipts)
    .lock           flock()ed by whoever reads-modifies-writes any of the above

Every write is atomic (temporary file, fsync, rename, fsync of the directory), so a crash leaves
the old file or the new one, never a mix. A file that does not parse is refused, never reset:
resetting rollback state silently would re-open every rollback it exists to stop.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave.canonical import canonical
from enclave.errors import MALFORMED_DOCUMENT, RollbackError, RollbackRefused, TrustError, UsageError
from enclave.strictjson import strict_json
from enclave.trust.root import MAX_ROOT_BYTES, TrustRoot

DEFAULT_STATE_DIR = Path("/var/lib/enclave")
STATE_ENV = "ENCLAVE_STATE_DIR"
ROLLBACK_FORMAT = "enclave-rollback/v1"
MAX_ROLLBACK_BYTES = 64 << 20  # hundreds of thousands of bundle names; larger is damage


def default_state_dir() -> Path:
    """`$ENCLAVE_STATE_DIR` when set (tests, non-root operators), else /var/lib/enclave."""
    value = os.environ.get(STATE_ENV)
    return Path(value) if value else DEFAULT_STATE_DIR


# -- semantic versions (semver 2.0.0, section 11) ----------------------------------------------------
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$",
    re.ASCII,
)


@dataclass(frozen=True)
class SemVer:
    """A semantic version. `packaging.version` is not used: it implements PEP 440, which
    rejects pre-releases such as `1.0.0-foo` and orders build metadata (`+a` < `+b`), where
    semver ignores it."""

    core: tuple[int, int, int]
    pre: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> SemVer:
        match = _SEMVER.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH[-PRE][+BUILD])")
        major, minor, patch, pre, _build = match.groups()
        return cls((int(major), int(minor), int(patch)), tuple(pre.split(".")) if pre else ())

    def _key(self) -> tuple[Any, ...]:
        # A release ranks above its pre-releases; identifiers compare numerically when numeric,
        # in ASCII order otherwise, numeric below alphanumeric; a longer list wins a tie.
        if not self.pre:
            return (self.core, 1, ())
        return (self.core, 0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre))

    def __lt__(self, other: SemVer) -> bool:
        return self._key() < other._key()

    def __le__(self, other: SemVer) -> bool:
        return self._key() <= other._key()

    def same_precedence(self, other: SemVer) -> bool:
        return self._key() == other._key()


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` precedes, equals or follows `b` in semver precedence."""
    va, vb = SemVer.parse(a), SemVer.parse(b)
    return 0 if va.same_precedence(vb) else (-1 if va < vb else 1)


# -- the rollback record (pure) ------------------------------------------------------------------------
@dataclass(frozen=True)
class Accepted:
    version: str
    statement_digest: str  # sha256 of the signed statement: names the content exactly
    root_version: int
    time: str


@dataclass(frozen=True)
class RollbackState:
    """What the high side has accepted. `root_version`: the highest root version ever trusted."""

    root_version: int = 0
    bundles: Mapping[str, Accepted] = field(default_factory=dict)

    def check(self, name: str, version: str, statement_digest: str, root_version: int) -> str:
        """Raise RollbackRefused unless `name` `version` may be accepted; returns the decision."""
        try:
            candidate = SemVer.parse(version)
        except ValueError as exc:
            raise RollbackRefused(
                f"bundle {name}: {exc}: the rollback check cannot run",
                name=name,
                version=version,
                accepted=None,
            ) from None
        self._check_root(root_version)
        known = self.bundles.get(name)
        if known is None:
            return f"rollback: first version of {name} seen here"
        if root_version < known.root_version:
            raise RollbackRefused(
                f"bundle {name}: trust root version {root_version} is older than version "
                f"{known.root_version} that accepted {known.version}",
                name=name,
                version=version,
                accepted=known.version,
            )
        accepted = SemVer.parse(known.version)
        if candidate < accepted:
            raise RollbackRefused(
                f"bundle {name}: version {version} is older than {known.version} already accepted (rollback)",
                name=name,
                version=version,
                accepted=known.version,
            )
        if candidate.same_precedence(accepted):
            if statement_digest != known.statement_digest:
                raise RollbackRefused(
                    f"bundle {name}: version {version} was accepted before with different content "
                    f"(statement sha256 {known.statement_digest[:16]}, now {statement_digest[:16]})",
                    name=name,
                    version=version,
                    accepted=known.version,
                )
            return f"rollback: {name} {version} is the version already accepted (same content)"
        return f"rollback: {name} {version} is newer than {known.version}"

    def accept(
        self, name: str, version: str, statement_digest: str, root_version: int, time: str
    ) -> RollbackState:
        self.check(name, version, statement_digest, root_version)
        bundles = dict(self.bundles)
        bundles[name] = Accepted(version, statement_digest, root_version, time)
        return RollbackState(max(self.root_version, root_version), bundles)

    def with_root(self, root_version: int) -> RollbackState:
        self._check_root(root_version)
        return RollbackState(root_version, self.bundles)

    def _check_root(self, root_version: int) -> None:
        if root_version < self.root_version:
            raise RollbackRefused(
                f"trust root version {root_version} is older than version {self.root_version} "
                "already trusted here (root rollback)",
                name=None,
                version=None,
                accepted=None,
            )

    def _body(self) -> dict[str, Any]:
        return {
            "format": ROLLBACK_FORMAT,
            "rootVersion": self.root_version,
            "bundles": {
                name: {
                    "version": a.version,
                    "statementDigest": a.statement_digest,
                    "rootVersion": a.root_version,
                    "time": a.time,
                }
                for name, a in sorted(self.bundles.items())
            },
        }

    def to_json(self) -> bytes:
        # The checksum (over the other three fields) catches storage corruption that still parses
        # (a flipped digit in a version); it is not a defence against someone who can write the file.
        body = self._body()
        doc = {**body, "sha256": hashlib.sha256(canonical(body)).hexdigest()}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, source: str) -> RollbackState:
        try:
            return cls._parse(strict_json(data, MAX_ROLLBACK_BYTES))
        except MALFORMED_DOCUMENT as exc:
            raise RollbackError(
                f"{source}: rollback state is corrupted ({exc}); refusing to verify without it: "
                "restore it from a backup (removing it would forget every version accepted)"
            ) from None

    @classmethod
    def _parse(cls, doc: Any) -> RollbackState:
        if not isinstance(doc, dict) or set(doc) != {"format", "rootVersion", "bundles", "sha256"}:
            raise ValueError("expected exactly format, rootVersion, bundles, sha256")
        if doc["format"] != ROLLBACK_FORMAT:
            raise ValueError(f"unknown format {doc['format']!r}")
        body = {k: v for k, v in doc.items() if k != "sha256"}
        if hashlib.sha256(canonical(body)).hexdigest() != doc["sha256"]:
            raise ValueError("checksum mismatch")
        bundles: dict[str, Accepted] = {}
        for name, entry in doc["bundles"].items():
            if set(entry) != {"version", "statementDigest", "rootVersion", "time"}:
                raise ValueError(f"bundle {name}: unexpected fields")
            if not all(isinstance(entry[k], str) for k in ("version", "statementDigest", "time")):
                raise ValueError(f"bundle {name}: version, statementDigest and time must be strings")
            SemVer.parse(entry["version"])
            bundles[name] = Accepted(
                entry["version"], entry["statementDigest"], _count(entry["rootVersion"]), entry["time"]
            )
        return cls(_count(doc["rootVersion"]), bundles)


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("root versions must be non-negative integers")
    return value


# -- the directory (I/O) ----------------------------------------------------------------------------------
def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so that a crash at any point leaves the old or the new file."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateDir:
    """The state directory. Read-modify-write sequences run under `locked()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.root_path = path / "root.json"
        self.rollback_path = path / "rollback.json"
        self.receipts_path = path / "receipts.log"
        self._lock_path = path / ".lock"

    @classmethod
    def open(cls, path: Path | None = None) -> StateDir:
        """The state directory at `path` (default: `default_state_dir()`), created if missing."""
        path = path or default_state_dir()
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as exc:
            raise UsageError(f"{path}: cannot create the state directory: {exc.strerror}") from None
        if not path.is_dir():
            raise UsageError(f"{path}: the state directory is not a directory")
        if not os.access(path, os.W_OK):
            raise UsageError(f"{path}: the state directory is not writable (use another, or set {STATE_ENV})")
        return cls(path)

    @classmethod
    def existing(cls, path: Path | None = None) -> StateDir:
        """The state directory at `path` (default: `default_state_dir()`), which must exist:
        for commands that only read it (`store ls|verify|gc`), so that a mistyped --state-dir
        is an error (2), never a new empty directory reported as healthy."""
        path = path or default_state_dir()
        if not path.is_dir():
            what = "not a directory" if path.exists() else "does not exist"
            raise UsageError(f"{path}: {what}: no state directory there (check the path, or {STATE_ENV})")
        return cls(path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes; stale temporary files of crashed writers are removed."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for stale in self.path.glob(".*.tmp-*"):  # every writer holds this lock: these are orphans
                stale.unlink(missing_ok=True)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self, path: Path, limit: int) -> bytes | None:
        """The file's bytes, at most `limit` + 1 of them (the parser refuses more); None: absent."""
        try:
            with path.open("rb") as handle:
                return handle.read(limit + 1)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise RollbackError(f"{path}: is a directory, not a state file") from None
        except OSError as exc:
            raise UsageError(f"{path}: cannot read state: {exc.strerror}") from None

    def read_root(self) -> TrustRoot | None:
        """The stored trusted root, its signatures checked (not its expiry: see TrustRoot.check_signed)."""
        data = self._read(self.root_path, MAX_ROOT_BYTES)
        if data is None:
            return None
        root = TrustRoot.from_json(data, str(self.root_path))
        root.check_signed()
        recorded = self.read_rollback().root_version
        if root.version < recorded:
            raise RollbackError(
                f"{self.root_path}: trust root version {root.version} is older than version {recorded} "
                "trusted here before (root.json was replaced by an older root)"
            )
        return root

    def read_rollback(self) -> RollbackState:
        """The rollback record; none yet only in a directory with no trusted root either. A root
        without a record is a damaged state directory (the record was deleted or lost): refused
        until the operator restores it (docs/OPERATIONS.md), never started afresh."""
        data = self._read(self.rollback_path, MAX_ROLLBACK_BYTES)
        if data is not None:
            return RollbackState.from_json(data, str(self.rollback_path))
        if os.path.lexists(self.root_path):
            raise RollbackError(
                f"{self.rollback_path}: missing while {self.root_path} is there: the state directory is "
                "damaged; refusing to verify without it: restore it from a backup (docs/OPERATIONS.md)"
            )
        return RollbackState()

    def _write(
        self, stored: TrustRoot | None, root: TrustRoot, before: RollbackState, after: RollbackState
    ) -> None:
        """Store `root` (when it is not `stored`) and the record `after` (when it is not `before`).
        The root goes first, so a crash between the two leaves a root newer than recorded:
        consistent. Except in a new directory: then the record goes first, so that a crash never
        leaves a root without a record (which read_rollback refuses as damage)."""
        new = not self.rollback_path.exists()
        writes = []
        if stored is None or stored.digest != root.digest:
            writes.append((self.root_path, root.to_json()))
        if after != before or new:
            writes.append((self.rollback_path, after.to_json()))
        if new:
            writes.reverse()
        for path, data in writes:
            atomic_write(path, data)

    def store_root(self, root: TrustRoot) -> None:
        """Make `root` the trusted root. Call under `locked()`."""
        stored = self.read_root()
        rollback = self.read_rollback()
        self._write(stored, root, rollback, rollback.with_root(root.version))

    def accept(
        self, anchor: str | None, root: TrustRoot, name: str, version: str, statement_digest: str, time: str
    ) -> str:
        """Record an accepted bundle and the root that accepted it; returns the rollback decision.

        `anchor`: digest of the stored root when verification started (None: none stored).
        Re-checked under the lock, so two verifiers racing cannot both pass an old version, and
        a root rotated by someone else meanwhile (maybe revoking a signer) is not overwritten.
        """
        with self.locked():
            stored = self.read_root()
            if (stored.digest if stored else None) != anchor:
                raise TrustError(
                    f"{self.root_path}: the trusted root changed during this verification; run it again"
                )
            rollback = self.read_rollback()
            decision = rollback.check(name, version, statement_digest, root.version)
            accepted = rollback.accept(name, version, statement_digest, root.version, time)
            self._write(stored, root, rollback, accepted)
        return decision
