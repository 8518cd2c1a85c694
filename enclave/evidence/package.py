"""The evidence package's signed manifest, its verification and its tar copy.

`evidence.dsse.json` is a DSSE envelope (`application/vnd.enclave.evidence+json`, signed by a key
of the trust root's `audit` role) over the OLPC canonical JSON of the manifest: every other file
of the package by path, size and SHA-384, and where it came from (docs/FORMAT.md, "Evidence
package"). `verify` needs nothing but the package and the trust root: a bad or missing signature
is a TrustError (4); a file changed, missing, added, or not a regular file is an IntegrityError
(3) naming it. A package given as its `.tar` is read the same way, member by member.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from enclave.canonical import canonical, parse_time
from enclave.errors import MALFORMED_DOCUMENT, IntegrityError, TrustError, UsageError
from enclave.fileio import read_regular
from enclave.strictjson import strict_json
from enclave.trust.dsse import Envelope, verify_signatures
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot
from enclave.trust.state import fsync_dir

MANIFEST = "evidence.dsse.json"
PAYLOAD_TYPE = "application/vnd.enclave.evidence+json"
TYPE = "urn:enclave:evidence:v1"
FIELDS = frozenset({"_type", "created", "builder", "trustRoot", "window", "files", "notes"})
FILE_FIELDS = frozenset({"path", "size", "sha384", "source"})
MAX_MANIFEST = 64 * 1024 * 1024
MAX_PROBLEMS = 50
BLOCK = 1 << 20
_PATH = re.compile(r"[A-Za-z0-9._@+=-]+(?:/[A-Za-z0-9._@+=-]+)*")
_HEX384 = re.compile(r"[0-9a-f]{96}")


def safe_path(path: str) -> bool:
    """A relative POSIX path without `.`/`..` parts, in a portable alphabet."""
    return bool(_PATH.fullmatch(path)) and not any(p in (".", "..") for p in path.split("/"))


def digest_file(path: Path) -> tuple[int, str]:
    """(size, SHA-384 hex) of a file, read in blocks."""
    with path.open("rb") as handle:
        return _digest(handle)


def _digest(handle: IO[bytes]) -> tuple[int, str]:
    hasher = hashlib.sha384()
    size = 0
    while block := handle.read(BLOCK):
        hasher.update(block)
        size += len(block)
    return size, hasher.hexdigest()


def sign_manifest(doc: dict[str, Any], key: SigningKey) -> bytes:
    envelope = Envelope(PAYLOAD_TYPE, canonical(doc))
    envelope.sign(key)
    return envelope.to_json() + b"\n"


@dataclass
class Report:
    """What `verify` found."""

    package: str
    created: str = ""
    signers: list[str] = field(default_factory=list)
    trust_root: dict[str, Any] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


Opener = Callable[[], IO[bytes]]


@dataclass
class _Tree:
    """The package's files: relative path -> how to open it; and what is not a regular file."""

    files: dict[str, Opener] = field(default_factory=dict)
    odd: list[str] = field(default_factory=list)


def _directory_tree(directory: Path) -> _Tree:
    tree = _Tree()
    for top, dirs, names in os.walk(directory):
        base = Path(top)
        for name in sorted(dirs):
            if (base / name).is_symlink():
                tree.odd.append(str((base / name).relative_to(directory)))
        for name in sorted(names):
            path = base / name
            rel = path.relative_to(directory).as_posix()
            if path.is_symlink() or not path.is_file():
                tree.odd.append(rel)
            else:
                tree.files[rel] = lambda path=path: path.open("rb")  # type: ignore[misc]
    return tree


def _tar_tree(archive: tarfile.TarFile, name: str) -> tuple[_Tree, str]:
    tree = _Tree()
    top = ""
    for member in archive.getmembers():
        parts = member.name.split("/", 1)
        top = top or parts[0]
        if parts[0] != top or not safe_path(member.name):
            raise IntegrityError(f"{name}: member {member.name!r} is outside the package directory {top!r}")
        if member.isdir():
            continue
        rel = parts[1] if len(parts) == 2 else ""
        if not member.isfile() or not rel:
            tree.odd.append(member.name)
            continue
        if rel in tree.files:
            raise IntegrityError(f"{name}: member {member.name!r} appears twice")
        tree.files[rel] = lambda member=member: _extract(archive, member)  # type: ignore[misc]
    return tree, top


def _extract(archive: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    handle = archive.extractfile(member)
    assert handle is not None  # a regular file member
    return handle


def verify(path: Path, root: TrustRoot, now: datetime | None = None) -> Report:
    """Check the manifest's signature (TrustError), then every file (IntegrityError naming the
    first file at fault; `.details` holds the whole report). `path`: the package directory or
    its tar."""
    root.check_signed()
    if now is not None and now >= root.expires:
        warning = f"{root.source}: trust root v{root.version} has expired (the signatures are still checked)"
    else:
        warning = ""
    if path.is_dir():
        return _verify_tree(path, _directory_tree(path), root, warning)
    if not path.is_file():
        raise UsageError(f"{path}: no such evidence package (a directory or its .tar)")
    try:
        with tarfile.open(path, "r:") as archive:
            tree, top = _tar_tree(archive, str(path))
            return _verify_tree(path, tree, root, warning, prefix=f"{top}/")
    except tarfile.TarError as exc:
        raise IntegrityError(f"{path}: not a readable tar: {exc}") from None


def _verify_tree(path: Path, tree: _Tree, root: TrustRoot, warning: str, prefix: str = "") -> Report:
    report = Report(str(path))
    if warning:
        report.warnings.append(warning)
    where = f"{path}:{prefix}{MANIFEST}" if prefix else str(path / MANIFEST)
    opener = tree.files.pop(MANIFEST, None)
    if opener is None:
        raise IntegrityError(f"{where}: missing: not an evidence package, or the manifest was removed")
    with opener() as handle:
        data = handle.read(MAX_MANIFEST + 1)
    envelope = Envelope.from_json(data, where, MAX_MANIFEST)
    if envelope.payload_type != PAYLOAD_TYPE:
        raise TrustError(f"{where}: payload type {envelope.payload_type!r} is not an evidence manifest")
    check = root.check_role("audit", verify_signatures(envelope, root.role_keys("audit")).keys)
    if not check.met:
        raise TrustError(
            f"{where}: manifest not signed by the audit role of trust root v{root.version}: {check.explain()}"
        )
    report.signers = [k.keyid for k in check.signers]
    report.trust_root = {"version": root.version, "digest": root.digest}
    doc = _manifest(envelope.payload, where)
    report.created = doc["created"]
    listed = {entry["path"]: entry for entry in doc["files"]}
    for rel in sorted(set(listed) | set(tree.files)):
        shown = f"{prefix}{rel}"
        entry = listed.get(rel)
        if entry is None:
            report.problems.append(f"{shown}: not in the signed manifest (a file was added)")
            continue
        if rel not in tree.files:
            report.problems.append(f"{shown}: missing (the manifest lists it)")
            continue
        with tree.files[rel]() as handle:
            size, digest = _digest(handle)
        report.files += 1
        report.bytes += size
        if (size, digest) != (entry["size"], entry["sha384"]):
            report.problems.append(
                f"{shown}: changed (SHA-384 {digest[:16]}..., {size} bytes; signed "
                f"{entry['sha384'][:16]}..., {entry['size']} bytes)"
            )
    report.problems += [f"{prefix}{rel}: not a regular file" for rel in tree.odd]
    if report.problems:
        count = len(report.problems)
        more = f" (and {count - 1} more)" if count > 1 else ""
        error = IntegrityError(f"evidence package {path} does not verify: {report.problems[0]}{more}")
        error.details = report.to_dict()
        raise error
    return report


def _manifest(payload: bytes, where: str) -> dict[str, Any]:
    """The manifest, parsed strictly (TrustError: a signed manifest that is malformed was
    signed by a key that should not have signed it)."""
    try:
        doc = strict_json(payload, MAX_MANIFEST)
        if not isinstance(doc, dict) or set(doc) != FIELDS or doc["_type"] != TYPE:
            raise ValueError(f"fields must be exactly {', '.join(sorted(FIELDS))}")
        parse_time(doc["created"])
        if not isinstance(doc["files"], list):
            raise ValueError("files must be a list")
        seen: set[str] = set()
        for entry in doc["files"]:
            if not isinstance(entry, dict) or set(entry) != FILE_FIELDS:
                raise ValueError(f"each file needs exactly {', '.join(sorted(FILE_FIELDS))}")
            rel, size, digest = entry["path"], entry["size"], entry["sha384"]
            if not isinstance(rel, str) or not safe_path(rel) or rel == MANIFEST or rel in seen:
                raise ValueError(f"file path {rel!r} is unsafe or repeated")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"{rel}: size must be a non-negative integer")
            if not isinstance(digest, str) or not _HEX384.fullmatch(digest):
                raise ValueError(f"{rel}: sha384 must be 96 lowercase hex digits")
            seen.add(rel)
    except MALFORMED_DOCUMENT as exc:
        raise TrustError(f"{where}: not an evidence manifest: {exc}") from None
    return doc


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a package directory, without checking anything (for display)."""
    envelope = Envelope.from_json(read_regular(directory / MANIFEST, "evidence manifest", MAX_MANIFEST))
    return _manifest(envelope.payload, str(directory / MANIFEST))


def write_tar(directory: Path, target: Path, mtime: int) -> None:
    """A deterministic tar of `directory` (its name as the top folder; sorted; owner root;
    modes 0644/0755; one mtime), written next to it under a temporary name, then renamed."""
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with temporary.open("wb") as out:
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
                for rel, is_dir in _entries(directory):
                    info = tarfile.TarInfo(f"{directory.name}/{rel}" if rel else directory.name)
                    info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
                    if is_dir:
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        archive.addfile(info)
                        continue
                    info.mode, info.size = 0o644, (directory / rel).stat().st_size
                    with (directory / rel).open("rb") as handle:
                        archive.addfile(info, handle)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
        fsync_dir(target.parent)
    finally:
        temporary.unlink(missing_ok=True)


def _entries(directory: Path) -> Iterator[tuple[str, bool]]:
    yield "", True
    for path in sorted(directory.rglob("*"), key=lambda p: p.relative_to(directory).as_posix()):
        yield path.relative_to(directory).as_posix(), path.is_dir()
