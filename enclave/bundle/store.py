"""The high side's content store: every verified file or chunk kept once, by digest.

Layout under `STATE_DIR/store/`:
- `files/ALG/CHUNKSIZE/HH/HEX`: a published file, kept as a hard link to the verified file of
  the extracted tree (same inode: no second copy of its bytes). HEX is the member's signed
  digest (FORMAT.md section 2), which depends on CHUNKSIZE (decimal bytes) for a multi-chunk
  file. Used whenever the extracted tree and the store are on one filesystem.
- `objects/ALG/HH/HEX`: one chunk of verified content (a whole file when it is one chunk),
  written only from bytes whose digest was just checked, read-only. Used when the tree is
  extracted to another filesystem (a hard link cannot cross it).
- `bundles/NAME/VERSION.dsse.json`: the envelope of every bundle version accepted here, so a
  differential bundle can name its base, a chunk can be found inside a file object, and
  `gc --keep N` knows what is still referenced.

A differential bundle needs chunks, not files: a chunk is read from `objects/`, or else from a
file object at the offset the accepted statements give it, and re-hashed either way (a file
object shares its inode with a published file that an operator can edit in place).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

from enclave.bundle.digest import default_workers, digest_files, file_reader, hash_range
from enclave.bundle.output import direct_suits, open_direct, pwrite_all
from enclave.bundle.statement import HEX_LENGTH, MAX_CHUNK, MIN_CHUNK, BundleStatement
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


@dataclass(frozen=True)
class StoredObject:
    algorithm: str
    digest: str  # objects/: the chunk's digest; files/: the file's section-2 digest
    path: Path
    chunk_size: int | None  # files/ only: the chunk size that digest is defined with


@dataclass(frozen=True)
class _FileChunk:
    """Where a chunk lies inside a file object, from an accepted statement."""

    path: Path
    offset: int
    file_size: int


class ContentStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.objects = path / "objects"
        self.files = path / "files"
        self.bundles = path / "bundles"
        self._lock = threading.Lock()
        # (algorithm, chunk digest) -> its places in file objects; built on the first chunk not
        # found in objects/ (verify threads share it), dropped when the accepted set changes.
        self._chunks_in_files: dict[tuple[str, str], dict[_FileChunk, None]] | None = None

    @classmethod
    def under(cls, state_dir: Path) -> ContentStore:
        return cls(state_dir / "store")

    # -- objects ----------------------------------------------------------------------------------
    def object_path(self, algorithm: str, digest: str) -> Path:
        _check_digest(algorithm, digest)
        return self.objects / algorithm / digest[:2] / digest

    def file_path(self, algorithm: str, chunk_size: int, digest: str) -> Path:
        _check_digest(algorithm, digest)
        return self.files / algorithm / str(chunk_size) / digest[:2] / digest

    def has(self, algorithm: str, digest: str) -> bool:
        """Whether the chunk is here: as a chunk object or inside a file object (not re-hashed)."""
        if self.object_path(algorithm, digest).is_file():
            return True
        return any(place.path.is_file() for place in self._places(algorithm, digest))

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

    def staging(self, statement: BundleStatement, extracted: Path | None = None) -> StoreStaging:
        """Where a bundle being verified is kept, only by `commit` (see StoreStaging)."""
        return StoreStaging(self, statement, extracted)

    def read_verified(self, algorithm: str, digest: str, view: memoryview) -> None:
        """Fill `view` with the stored chunk, re-checking its digest: a damaged or missing
        object fails closed (IntegrityError naming it), never hands back unchecked bytes.

        The chunk object is tried first, then every file object holding the chunk; the first
        whose bytes match is used. When none does, a damaged one is named before a missing one.
        """
        chunk_object = self.object_path(algorithm, digest)
        damaged: IntegrityError | None = None
        try:
            _read_checked(chunk_object, None, algorithm, digest, view)
            return
        except FileNotFoundError:
            pass
        except IntegrityError as exc:
            damaged = exc
        in_files = self._places(algorithm, digest)  # only now: a chunk-only store never builds it
        for place in in_files:
            try:
                _read_checked(place.path, place, algorithm, digest, view)
                return
            except FileNotFoundError:
                pass
            except IntegrityError as exc:
                damaged = damaged or exc
        # Missing everywhere: name where it was looked for, the chunk object and the file object
        # the accepted statements place it in (a store holds one or the other).
        also = f" (nor in {in_files[0].path})" if in_files else ""
        raise damaged or IntegrityError(f"{chunk_object}: base content missing from the store{also}")

    def entries(self) -> Iterator[StoredObject]:
        """Every chunk object, then every file object (names starting with '.' are not objects)."""
        for algorithm_dir in _subdirs(self.objects):
            for path in sorted(algorithm_dir.glob("??/*")):
                if not path.name.startswith("."):
                    yield StoredObject(algorithm_dir.name, path.name, path, None)
        for algorithm_dir in _subdirs(self.files):
            for size_dir in _subdirs(algorithm_dir):
                chunk_size = int(size_dir.name) if size_dir.name.isdigit() else 0  # 0: junk, damaged
                for path in sorted(size_dir.glob("??/*")):
                    if not path.name.startswith("."):
                        yield StoredObject(algorithm_dir.name, path.name, path, chunk_size)

    def verify(self, workers: int | None = None) -> StoreReport:
        """Re-hash every object on all cores (a file object with its section-2 digest, chunk by
        chunk); name every damaged one: wrong content, not a regular file, unreadable."""
        workers = workers or default_workers()
        entries = list(self.entries())

        def damaged(entry: StoredObject) -> bool:
            if entry.algorithm not in HEX_LENGTH:
                return True
            try:
                if not stat.S_ISREG(os.lstat(entry.path).st_mode):
                    return True
                if entry.chunk_size is None:
                    fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
                    try:
                        actual = hash_range(file_reader(fd), 0, os.fstat(fd).st_size, entry.algorithm)
                    finally:
                        os.close(fd)
                elif not MIN_CHUNK <= entry.chunk_size <= MAX_CHUNK:
                    return True
                else:  # one file: its chunks on all cores
                    found = digest_files([entry.path], entry.algorithm, entry.chunk_size, workers)
                    actual = found[0].digest
            except OSError:
                return True
            return actual.hex() != entry.digest

        chunks = [e for e in entries if e.chunk_size is None]
        with ThreadPoolExecutor(workers) as pool:
            bad = [e for e, d in zip(chunks, pool.map(damaged, chunks), strict=True) if d]
        bad += [e for e in entries if e.chunk_size is not None and damaged(e)]
        order = {e.path: n for n, e in enumerate(entries)}
        bad.sort(key=lambda e: order[e.path])
        return StoreReport(len(entries), sum(_size(e.path) for e in entries), tuple(str(e.path) for e in bad))

    # -- accepted bundles ---------------------------------------------------------------------------
    def record(self, envelope_raw: bytes) -> StoredBundle:
        """Remember an accepted bundle version (its envelope; the statement is inside)."""
        bundle = _stored(envelope_raw)
        directory = self.bundles / bundle.name
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / f"{bundle.version}.dsse.json", envelope_raw)
        with self._lock:
            self._chunks_in_files = None
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
        """Keep the objects of the last `keep` versions of each bundle: the chunk objects of
        their chunk digests and the file objects of their members' digests (with their chunk
        size). Returns (objects removed, bytes freed); a file object's bytes count only when it
        was the file's last name (a published tree may still hold the inode)."""
        if keep < 1:
            raise UsageError("keep at least 1 version")
        by_name: dict[str, list[StoredBundle]] = {}
        for bundle in self.accepted():
            by_name.setdefault(bundle.name, []).append(bundle)
        live_chunks: set[tuple[str, str]] = set()
        live_files: set[tuple[str, int, str]] = set()
        for versions in by_name.values():
            ordered = sorted(versions, key=lambda b: _by_version(b.version))
            for old in ordered[:-keep]:
                (self.bundles / old.name / f"{old.version}.dsse.json").unlink()
            for bundle in ordered[-keep:]:
                algorithm, chunk_size = bundle.statement.digest, bundle.statement.chunk_size
                for member in bundle.statement.members:
                    live_chunks |= {(algorithm, c) for c in member.chunk_digests()}
                    live_files.add((algorithm, chunk_size, member.digest))
        with self._lock:
            self._chunks_in_files = None
        removed = freed = 0
        parents: set[Path] = set()
        for entry in list(self.entries()):
            if entry.chunk_size is None:
                live = (entry.algorithm, entry.digest) in live_chunks
            else:
                live = (entry.algorithm, entry.chunk_size, entry.digest) in live_files
            if live:
                continue
            with contextlib.suppress(FileNotFoundError):
                info = os.lstat(entry.path)
                entry.path.unlink()
                freed += info.st_size if info.st_nlink == 1 else 0
                removed += 1
                parents.add(entry.path.parent)
        for directory in sorted(parents):
            fsync_dir(directory)
        return removed, freed

    def _places(self, algorithm: str, digest: str) -> list[_FileChunk]:
        """The file objects (and offsets) that hold this chunk, per the accepted statements."""
        with self._lock:
            if self._chunks_in_files is None:
                index: dict[tuple[str, str], dict[_FileChunk, None]] = {}
                for bundle in self.accepted():
                    statement = bundle.statement
                    chunk = statement.chunk_size
                    for member in statement.members:
                        path = self.file_path(statement.digest, chunk, member.digest)
                        for n, chunk_digest in enumerate(member.chunk_digests()):
                            places = index.setdefault((statement.digest, chunk_digest), {})
                            places[_FileChunk(path, n * chunk, member.size)] = None
                self._chunks_in_files = index
            return list(self._chunks_in_files.get((algorithm, digest), {}))


def _check_digest(algorithm: str, digest: str) -> None:
    """A digest's form, before it becomes part of a path."""
    if (
        algorithm not in HEX_LENGTH
        or len(digest) != HEX_LENGTH[algorithm]
        or digest.strip("0123456789abcdef")
    ):
        raise IntegrityError(f"not a {algorithm} digest: {digest!r}")


def _read_checked(
    path: Path, place: _FileChunk | None, algorithm: str, digest: str, view: memoryview
) -> None:
    """Fill `view` from a chunk object (`place` None: the whole file) or from a file object at
    `place.offset`, and check the digest. FileNotFoundError when the object is not there."""
    offset, size = (0, len(view)) if place is None else (place.offset, place.file_size)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot read the stored object: {exc.strerror or exc}") from None
    try:
        if os.fstat(fd).st_size != size or os.preadv(fd, [view], offset) != len(view):
            raise IntegrityError(f"{path}: stored object has the wrong size (damaged)")
    finally:
        os.close(fd)
    if hashlib.new(algorithm, view).hexdigest() != digest:
        raise IntegrityError(f"{path}: stored object does not match its digest (damaged)")


def _subdirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return 0


def _stored(envelope_raw: bytes, source: str = "envelope") -> StoredBundle:
    envelope = Envelope.from_json(envelope_raw, source)
    statement = BundleStatement.from_payload(envelope.payload)
    digest = hashlib.sha256(envelope.payload).hexdigest()
    return StoredBundle(statement.name, statement.version, statement, digest)


def _links_work(source: Path, target: Path) -> bool:
    """Whether a file in `source` can be hard-linked into `target`: one filesystem (st_dev), one
    mount (a bind mount gives EXDEV), and a filesystem with hard links. A probe file is linked
    and removed before any content is written, so the choice is made once, up front, and a
    commit never meets EXDEV half-way."""
    if os.stat(source).st_dev != os.stat(target).st_dev:
        return False
    probe = source / f".enclave-link-probe-{os.getpid()}-{secrets.token_hex(8)}"
    linked = target / probe.name
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        os.link(probe, linked, follow_symlinks=False)
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
        linked.unlink(missing_ok=True)
    return True


class StoreStaging:
    """A bundle being verified, kept in the store only by `commit`, after every check passed.

    Two ways, chosen once here when the staging starts (`links`):
    - links: the extraction staging directory `extracted` and the store are on one filesystem.
      Nothing is written while verifying; `commit` hard-links each verified, fsynced member file
      of `extracted` as `files/ALG/CHUNKSIZE/HH/DIGEST`, before the tree is published by rename
      (the link is to the inode, so the rename and a later removal of the tree leave it). The
      content reaches the disk once.
    - chunks (another filesystem, or no extraction): `verify --extract-to` writes each verified
      chunk here from the buffer it was hashed in, alongside its extracted copy, instead of
      re-reading the tree afterwards; `commit` renames them to `objects/`.
    Nothing here is an object (entries, has and read_verified never see it) until `commit`, so
    a failed run adds nothing; `discard` removes the directory, and a killed verifier's
    directory (its PID gone) is removed by the next staging. Chunk files are fsynced before
    commit renames them, as in put_verified; new store directories are fsynced after.
    """

    def __init__(self, store: ContentStore, statement: BundleStatement, extracted: Path | None) -> None:
        self.store = store
        self.statement = statement
        self.algorithm = statement.digest
        self.extracted = extracted
        for stale in store.path.glob(".staging-*"):
            pid = stale.name.split("-")[1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(stale, ignore_errors=True)
        self.path = store.path / f".staging-{os.getpid()}-{secrets.token_hex(4)}"
        self._new_store = not store.path.exists()  # discard() removes it again: a failed run adds nothing
        store.path.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(mode=0o700)
        self.links = extracted is not None and _links_work(extracted, self.path)
        self.direct = direct_suits(self.path)
        self._lock = threading.Lock()
        self._staged: set[str] = set()

    def put(self, digest: str, buffer: mmap.mmap, length: int) -> None:
        """Stage buffer[:length], a chunk whose digest the caller has just checked (thread-safe).
        The buffer is page-aligned with room for a direct write rounded up (output.aligned_buffer).

        Only a chunk the store lacks as a chunk object is staged: one held only inside a file
        object is copied too, so every version kept this way is whole in `objects/` and gc can
        drop an older version's file objects. With `links`, nothing: the file is kept at commit.
        """
        if self.links:
            return
        target = self.store.object_path(self.algorithm, digest)  # validates the digest's form
        with self._lock:
            if digest in self._staged or target.is_file():
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
        """Make the verified content objects; returns the number added."""
        added, directories = self._link_files() if self.links else self._move_chunks()
        # The new entries, then the directories made for them (deepest first), are durable.
        for directory in sorted(directories, reverse=True):
            fsync_dir(directory)
        self.discard()
        return added

    def _move_chunks(self) -> tuple[int, set[Path]]:
        directories: set[Path] = set()
        for digest in sorted(self._staged):
            target = self.store.object_path(self.algorithm, digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path / digest, target)
            directories |= {target.parent, target.parent.parent, self.store.objects, self.store.path}
        return len(self._staged), directories

    def _link_files(self) -> tuple[int, set[Path]]:
        extracted = self.extracted
        if extracted is None:  # links is only set with an extraction directory
            raise IntegrityError("no extracted tree to keep")
        chunk_size = self.statement.chunk_size
        directories: set[Path] = set()
        added = 0
        for member in self.statement.members:
            target = self.store.file_path(self.algorithm, chunk_size, member.digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(extracted / member.name, target, follow_symlinks=False)
            except FileExistsError:
                continue  # kept already (an earlier version, or two members with one content)
            added += 1
            size_dir = target.parent.parent
            directories |= {target.parent, size_dir, size_dir.parent, self.store.files, self.store.path}
        return added, directories

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._new_store:
            with contextlib.suppress(OSError):  # not empty: objects were committed
                self.store.path.rmdir()
