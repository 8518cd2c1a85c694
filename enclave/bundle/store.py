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

import contextlib
import hashlib
import mmap
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

from enclave.bundle.digest import default_workers, file_reader, hash_range
from enclave.bundle.output import direct_suits, open_direct, pwrite_all
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

    def staging(self, algorithm: str) -> StoreStaging:
        """A place to write chunks as they are verified, kept only by `commit` (see StoreStaging)."""
        return StoreStaging(self, algorithm)

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


class StoreStaging:
    """Chunks written into the store while a bundle is verified, objects only after `commit`.

    `verify --extract-to` writes each verified chunk here from the buffer it was hashed in,
    alongside its extracted copy, instead of re-reading the extracted tree afterwards: every
    byte is read once. Nothing here is an object (iter_objects, has and read_verified never see
    it) until `commit`, which runs only after every check passed, so a failed run still adds
    nothing; `discard` removes the directory, and a killed verifier's directory (its PID gone)
    is removed by the next staging. Files are fsynced before commit renames them, as in
    put_verified.
    """

    def __init__(self, store: ContentStore, algorithm: str) -> None:
        self.store = store
        self.algorithm = algorithm
        for stale in store.path.glob(".staging-*"):
            pid = stale.name.split("-")[1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(stale, ignore_errors=True)
        self.path = store.path / f".staging-{os.getpid()}-{secrets.token_hex(4)}"
        self._new_store = not store.path.exists()  # discard() removes it again: a failed run adds nothing
        store.path.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(mode=0o700)
        self.direct = direct_suits(self.path)
        self._lock = threading.Lock()
        self._staged: set[str] = set()

    def put(self, digest: str, buffer: mmap.mmap, length: int) -> None:
        """Stage buffer[:length], a chunk whose digest the caller has just checked (thread-safe).
        The buffer is page-aligned with room for a direct write rounded up (output.aligned_buffer)."""
        self.store.object_path(self.algorithm, digest)  # validates the digest's form
        with self._lock:
            if digest in self._staged or self.store.has(self.algorithm, digest):
                return
            self._staged.add(digest)
        fd, direct = open_direct(
            self.path / digest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444, self.direct
        )
        try:
            if pwrite_all(fd, buffer, length, 0, direct) != length:
                os.ftruncate(fd, length)
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self) -> int:
        """Make every staged chunk an object; returns the number added."""
        directories: set[Path] = set()
        for digest in sorted(self._staged):
            target = self.store.object_path(self.algorithm, digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path / digest, target)
            directories |= {target.parent, target.parent.parent, self.store.objects}
        for directory in sorted(directories, reverse=True):  # the renames, then new directories
            fsync_dir(directory)
        self.discard()
        return len(self._staged)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._new_store:
            with contextlib.suppress(OSError):  # not empty: objects were committed
                self.store.path.rmdir()
