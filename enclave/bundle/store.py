"""The high side's content store: every verified chunk kept once, by digest.

Layout under `STATE_DIR/store/`:
- `objects/ALG/HH/HEX`: one chunk of verified content (a whole file when it is one chunk),
  written only from bytes whose digest was just checked, read-only;
- `bundles/NAME/VERSION.dsse.json`: the envelope of every bundle version accepted here, so a
  differential bundle can name its base and `gc --keep N` knows what is still referenced.

Objects are chunks, not files, so a new version of a large file that changed in a few places
needs only its changed chunks (issue: differential bundles).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

from enclave.bundle.digest import default_workers, file_reader, hash_range
from enclave.bundle.statement import HEX_LENGTH, BundleStatement
from enclave.errors import IntegrityError, UsageError
from enclave.trust.dsse import Envelope
from enclave.trust.state import atomic_write, compare_versions, fsync_dir

_by_version = cmp_to_key(compare_versions)


@dataclass(frozen=True)
class StoredBundle:
    name: str
    version: str
    statement: BundleStatement
    statement_digest: str  # sha256 of the signed payload


@dataclass(frozen=True)
class StoreReport:
    objects: int
    bytes: int
    damaged: tuple[str, ...]  # object paths whose content no longer matches their name


class ContentStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.objects = path / "objects"
        self.bundles = path / "bundles"

    @classmethod
    def under(cls, state_dir: Path) -> ContentStore:
        return cls(state_dir / "store")

    # -- objects ----------------------------------------------------------------------------------
    def object_path(self, algorithm: str, digest: str) -> Path:
        if (
            algorithm not in HEX_LENGTH
            or len(digest) != HEX_LENGTH[algorithm]
            or digest.strip("0123456789abcdef")
        ):
            raise IntegrityError(f"not a {algorithm} digest: {digest!r}")
        return self.objects / algorithm / digest[:2] / digest

    def has(self, algorithm: str, digest: str) -> bool:
        return self.object_path(algorithm, digest).is_file()

    def put_verified(self, algorithm: str, digest: str, data: memoryview) -> None:
        """Keep a chunk whose digest the caller has just checked. Idempotent; never partial."""
        target = self.object_path(algorithm, digest)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{digest[:16]}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
        try:
            view = data
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(temporary, target)

    def keep_tree(self, tree: Path, statement: BundleStatement) -> int:
        """Keep every chunk of a verified, not yet published tree; returns bytes added."""
        added = 0
        buffer = bytearray(statement.chunk_size)
        for member in statement.members:
            fd = os.open(tree / member.name, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                for index, digest in enumerate(member.chunk_digests()):
                    if self.has(statement.digest, digest):
                        continue
                    view = memoryview(buffer)[: member.chunk_length(index, statement.chunk_size)]
                    if os.preadv(fd, [view], index * statement.chunk_size) != len(view):
                        raise IntegrityError(f"{tree / member.name}: changed before it was published")
                    self.put_verified(statement.digest, digest, view)
                    added += len(view)
            finally:
                os.close(fd)
        if self.objects.is_dir():
            fsync_dir(self.objects)
        return added

    def read_verified(self, algorithm: str, digest: str, view: memoryview) -> None:
        """Fill `view` with the stored chunk, re-checking its digest: a damaged or missing
        object fails closed (IntegrityError naming it), never hands back unchecked bytes."""
        path = self.object_path(algorithm, digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise IntegrityError(f"{path}: base content missing from the store") from None
        try:
            if os.fstat(fd).st_size != len(view) or os.preadv(fd, [view], 0) != len(view):
                raise IntegrityError(f"{path}: stored object has the wrong size (damaged)")
        finally:
            os.close(fd)
        if hashlib.new(algorithm, view).hexdigest() != digest:
            raise IntegrityError(f"{path}: stored object does not match its digest (damaged)")

    def iter_objects(self) -> Iterator[tuple[str, str, Path]]:
        if not self.objects.is_dir():
            return
        for algorithm_dir in sorted(self.objects.iterdir()):
            for path in sorted(algorithm_dir.glob("??/*")):
                if not path.name.startswith("."):
                    yield algorithm_dir.name, path.name, path

    def verify(self, workers: int | None = None) -> StoreReport:
        """Re-hash every object (all cores); name every damaged one."""
        entries = list(self.iter_objects())

        def damaged(entry: tuple[str, str, Path]) -> str | None:
            algorithm, digest, path = entry
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                actual = hash_range(file_reader(fd), 0, os.fstat(fd).st_size, algorithm).hex()
            finally:
                os.close(fd)
            return None if actual == digest else str(path)

        with ThreadPoolExecutor(workers or default_workers()) as pool:
            bad = tuple(p for p in pool.map(damaged, entries) if p is not None)
        return StoreReport(len(entries), sum(p.stat().st_size for _, _, p in entries), bad)

    # -- accepted bundles ---------------------------------------------------------------------------
    def record(self, envelope_raw: bytes) -> StoredBundle:
        """Remember an accepted bundle version (its envelope; the statement is inside)."""
        bundle = _stored(envelope_raw)
        directory = self.bundles / bundle.name
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / f"{bundle.version}.dsse.json", envelope_raw)
        return bundle

    def accepted(self) -> list[StoredBundle]:
        found = []
        if self.bundles.is_dir():
            for path in sorted(self.bundles.glob("*/*.dsse.json")):
                found.append(_stored(path.read_bytes(), str(path)))
        return found

    def find(self, statement_digest: str) -> StoredBundle | None:
        return next((b for b in self.accepted() if b.statement_digest == statement_digest), None)

    def gc(self, keep: int) -> tuple[int, int]:
        """Keep the objects of the last `keep` versions of each bundle; returns (objects, bytes) removed."""
        if keep < 1:
            raise UsageError("--keep must be at least 1")
        by_name: dict[str, list[StoredBundle]] = {}
        for bundle in self.accepted():
            by_name.setdefault(bundle.name, []).append(bundle)
        live: set[tuple[str, str]] = set()
        for versions in by_name.values():
            ordered = sorted(versions, key=lambda b: _by_version(b.version))
            for old in ordered[:-keep]:
                (self.bundles / old.name / f"{old.version}.dsse.json").unlink()
            for bundle in ordered[-keep:]:
                algorithm = bundle.statement.digest
                live |= {(algorithm, c) for m in bundle.statement.members for c in m.chunk_digests()}
        removed = freed = 0
        for algorithm, digest, path in list(self.iter_objects()):
            if (algorithm, digest) not in live:
                freed += path.stat().st_size
                path.unlink()
                removed += 1
        if self.objects.is_dir():
            fsync_dir(self.objects)
        return removed, freed


def _stored(envelope_raw: bytes, source: str = "envelope") -> StoredBundle:
    envelope = Envelope.from_json(envelope_raw, source)
    statement = BundleStatement.from_payload(envelope.payload)
    digest = hashlib.sha256(envelope.payload).hexdigest()
    return StoredBundle(statement.name, statement.version, statement, digest)
