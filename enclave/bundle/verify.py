"""The archive half of a verification: the envelope, then every header and byte in one pass.

enclave.admission takes the trust decisions (the root, the envelope's signatures, rollback) and
calls this module for the rest, in this order (FORMAT.md, "Verification"):
1. the first member is the envelope (read here; its signatures are judged by the admission
   before one byte of content is read);
2. every tar header (the envelope's too, before its signatures): its raw block first
   (checksum, typeflag `0` or `x`, an extended header's size cap and records), then a safe
   name, listed in the statement, in order, the signed size, byte-identical to the canonical
   header;
3. every chunk of every member hashed on all cores; with extraction, a chunk is written
   to the staging directory only after its digest matched;
4. the archive ends exactly where the statement says; then the staging directory is
   published by one rename. Any failure removes it.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tarfile
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from enclave.bundle.digest import default_workers, digest_files, hash_range, new_hash
from enclave.bundle.output import aligned_buffer, aligned_length, direct_suits, open_direct, pwrite_all
from enclave.bundle.source import ArchiveSource
from enclave.bundle.statement import BundleStatement, Member, base_of
from enclave.bundle.store import ContentStore, StoreStaging
from enclave.bundle.tarformat import (
    BLOCK,
    ENVELOPE_NAME,
    PAX,
    check_header_block,
    check_name,
    check_pax_records,
    collision_key,
    member_header,
    padding,
    trailer_size,
)
from enclave.errors import EnclaveError, IntegrityError, TrustError, UnsafeArchiveError, UsageError
from enclave.progress import Progress
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, MAX_ENVELOPE, Envelope
from enclave.trust.state import StateDir

if TYPE_CHECKING:  # volumes imports this module; check_archive only names its index type
    from enclave.bundle.volumes import VolumeIndex

DEFAULT_MAX_BYTES = 1 << 42  # 4 TiB: the "endless data" cap; --max-size changes it


@dataclass(frozen=True)
class EnvelopeMember:
    envelope: Envelope
    raw: bytes
    end: int  # offset just past the envelope's data and padding
    info: tarfile.TarInfo


def check_raw_header(source: ArchiveSource, offset: int) -> None:
    """The header (or `x` + ustar pair) at `offset`, checked before tarfile parses it: only the
    typeflags and pax records the format writes, an extended header's size capped before it
    is read, checksums (tarformat.check_header_block). A truncated or zero block is left to
    the end-of-archive checks."""
    after_pax = False
    while offset + BLOCK <= source.size:
        block = source.read_exact(offset, BLOCK, "a tar header")
        if block == bytes(BLOCK):
            return
        where = f"{source.locate(offset)}: tar header at offset {offset}"
        size = check_header_block(block, where, after_pax)
        if after_pax or block[156:157] != PAX:
            return
        if offset + BLOCK + size > source.size:
            return  # truncated inside the records: tarfile and the trailer check say so (3)
        check_pax_records(source.read_exact(offset + BLOCK, size, "an extended tar header"), where)
        offset += BLOCK + size + padding(size)
        after_pax = True


def _check_type(info: tarfile.TarInfo) -> None:
    if info.isreg():
        return
    kind = (
        "symlink" if info.issym() else
        "hardlink" if info.islnk() else
        "device" if info.isdev() else
        "directory" if info.isdir() else
        "FIFO" if info.isfifo() else
        f"type {info.type!r}"
    )  # fmt: skip
    raise UnsafeArchiveError(f"member {info.name!r}: {kind} members are not allowed")


def open_archive(source: ArchiveSource) -> tarfile.TarFile:
    check_raw_header(source, 0)
    try:
        return tarfile.open(fileobj=source.open(), mode="r:")
    except tarfile.TarError as exc:
        raise IntegrityError(f"{source.name}: not a bundle (tar: {exc})") from None


def _check_header(source: ArchiveSource, info: tarfile.TarInfo, mode: int, mtime: int) -> None:
    expected = member_header(info.name, info.size, mode, mtime)
    actual = source.read_exact(info.offset, info.offset_data - info.offset, "a tar header")
    if actual != expected:
        raise IntegrityError(
            f"member {info.name!r}: tar header is not the canonical one (unsigned fields changed)"
        )
    pad = padding(info.size)
    if pad and source.read_exact(info.offset_data + info.size, pad, "padding") != b"\x00" * pad:
        raise IntegrityError(f"member {info.name!r}: non-zero padding after its data")


def read_envelope(source: ArchiveSource, tar: tarfile.TarFile | None = None) -> EnvelopeMember:
    """The first member, which must be the DSSE envelope; checked for shape, not trust."""
    tar = tar or open_archive(source)
    info = tar.next()  # tarfile has read the first header already; this hands it over
    if info is None:
        raise TrustError(f"{source.name}: empty archive: no {ENVELOPE_NAME}")
    _check_type(info)
    if info.name != ENVELOPE_NAME:
        raise TrustError(
            f"{source.name}: first member is {info.name!r}, not {ENVELOPE_NAME}: no signatures to check"
        )
    if info.size > MAX_ENVELOPE:
        raise UnsafeArchiveError(f"{ENVELOPE_NAME}: {info.size} bytes exceeds the {MAX_ENVELOPE} byte cap")
    if info.offset_data + info.size > source.size:
        raise IntegrityError(f"{source.name}: truncated inside {ENVELOPE_NAME}")
    raw = source.read_exact(info.offset_data, info.size, ENVELOPE_NAME)
    envelope = Envelope.from_json(raw, ENVELOPE_NAME, MAX_ENVELOPE, UnsafeArchiveError)
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise TrustError(
            f"{ENVELOPE_NAME}: payloadType {envelope.payload_type!r} is not {IN_TOTO_PAYLOAD_TYPE}"
        )
    end = info.offset_data + info.size + padding(info.size)
    return EnvelopeMember(envelope, raw, end, info)


class ChunkSource(Protocol):
    """Where a differential bundle's base chunks come from (the content store, or for a
    co-signer the base's statement alone: build.BaseChunks)."""

    def read_verified(self, algorithm: str, digest: str, view: memoryview) -> None: ...


class _ContentCheck:
    """Schedules chunk checks on a thread pool, bounded in memory, and records the first failure."""

    def __init__(
        self,
        source: ArchiveSource,
        statement: BundleStatement,
        staging: Path | None,
        workers: int,
        progress: Progress | None,
        store: ChunkSource | None = None,
        keep: StoreStaging | None = None,
        index: VolumeIndex | None = None,
    ) -> None:
        self.store = store
        self.keep = keep
        self.index = index
        self.source = source
        self.statement = statement
        self.staging = staging
        self.direct = staging is not None and direct_suits(staging)
        # Extracting, two threads more than cores: a chunk's direct write waits on the disk, not
        # a core, and meanwhile the other threads keep every core hashing. With one more, two
        # writes at once left a core idle: 4 GiB, 2 cores, median of 3 interleaved runs,
        # SHA-384 4.13 s (+1) vs 3.95 s (+2), SHA-256 3.89 vs 3.60; +4 or +6 gained little more
        # and cost a 16 MiB buffer each. Peak RSS 85 -> 100 MiB.
        threads = workers + 2 if staging is not None else workers
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.window = threading.BoundedSemaphore(threads * 2)
        self.local = threading.local()
        self.lock = threading.Lock()
        self.remaining: dict[str, int] = {}
        self.failure: EnclaveError | None = None
        self.futures: list[Future[None]] = []
        self.progress = progress

    def submit_member(self, member: Member, data_offset: int | None) -> None:
        """Schedule every chunk: carried ones from the archive at `data_offset` (their bytes are
        concatenated there), the others (differential bundles) from the content store."""
        digests = member.chunk_digests()
        target = self.staging / member.name if self.staging else None
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.ftruncate(fd, member.size)
                if member.size == 0:
                    os.fchmod(fd, member.mode)
            finally:
                os.close(fd)
        self.remaining[member.name] = len(digests)
        chunk = self.statement.chunk_size
        position = {index: n for n, index in enumerate(member.carried_chunks())}
        for index, expected in enumerate(digests):
            if self.failure is not None:
                return
            length = member.chunk_length(index, chunk)
            offset = (
                None
                if data_offset is None or index not in position
                else data_offset + position[index] * chunk
            )
            self.window.acquire()
            args = (member, index, offset, length, expected, target)
            self.futures.append(self.pool.submit(self._check, *args))

    def _buffer(self, length: int) -> mmap.mmap:
        """This thread's chunk buffer, page-aligned with room for a direct write of `length`."""
        buffer: mmap.mmap | None = getattr(self.local, "buffer", None)
        if buffer is None or len(buffer) < aligned_length(length):
            buffer = aligned_buffer(length)
            self.local.buffer = buffer
        return buffer

    def _check(
        self, member: Member, index: int, offset: int | None, length: int, expected: str, target: Path | None
    ) -> None:
        try:
            if self.failure is not None:
                return
            algorithm = self.statement.digest
            if offset is None:  # a base chunk: from the store, its digest re-checked there
                if self.store is None:
                    raise IntegrityError(
                        f"member {member.name!r}: chunk {index} is in the base; no content store"
                    )
                buffer = self._buffer(length)
                view = memoryview(buffer)[:length]
                self.store.read_verified(algorithm, expected, view)
                digest = bytes.fromhex(expected)
            elif target is None:
                digest = hash_range(self.source.pread_into, offset, length, algorithm)
            else:
                buffer = self._buffer(length)
                view = memoryview(buffer)[:length]
                if self.source.pread_into(view, offset) != length:
                    raise IntegrityError(
                        f"{self.source.locate(offset)}: truncated inside member {member.name!r}"
                    )
                hasher = new_hash(algorithm)
                hasher.update(view)
                digest = hasher.digest()
            if digest.hex() != expected:
                where = f"chunk {index} " if member.chunks else ""
                volume = self._volumes(offset, length) if offset is not None else ""
                raise IntegrityError(f"member {member.name!r}: {where}digest mismatch{volume}")
            if target is not None:
                view.release()
                self._write(target, member, index, buffer, length)
                if self.keep is not None:  # a base chunk too: put() skips one the store holds as a chunk
                    self.keep.put(expected, buffer, length)
            if self.progress is not None:
                self.progress(length)
        except EnclaveError as exc:
            self._fail(exc)
        except OSError as exc:
            self._fail(IntegrityError(f"member {member.name!r}: {exc.strerror or exc}"))
        finally:
            self.window.release()

    def _volumes(self, offset: int, length: int) -> str:
        """` [in VOLUME]`: the volume holding the damaged bytes of a chunk ("" for a single
        file). A chunk may span volumes: then, with the signed volume index, the spanned
        volumes whose signed digest fails (only on this failure path); without it, all of them."""
        if len(self.source.paths) == 1:
            return ""
        first = self.source.paths.index(self.source.locate(offset))
        last = self.source.paths.index(self.source.locate(offset + max(length, 1) - 1))
        spanned = self.source.paths[first : last + 1]
        index = self.index
        if len(spanned) > 1 and index is not None:
            signed = {v.name: v.digest for v in index.volumes}

            def damaged(path: Path) -> bool:
                (found,) = digest_files([path], index.algorithm, index.chunk_size)
                return path.name in signed and found.digest.hex() != signed[path.name]

            spanned = [p for p in spanned if damaged(p)] or spanned
        names = [p.name for p in spanned]
        return f" [in {names[0]}]" if len(names) == 1 else f" [in {', '.join(names)}: the chunk spans them]"

    def _write(self, target: Path, member: Member, index: int, buffer: mmap.mmap, length: int) -> None:
        """Write one verified chunk from the buffer it was hashed in; the member's last chunk
        written also cuts the file to its size, sets its mode and syncs it.

        The write is O_DIRECT where the filesystem allows (output.open_direct): the chunk goes
        from this buffer to the device without a page-cache copy or write-back. A chunk starts
        at index * chunkSize (aligned); the file's final chunk is written rounded up to the
        alignment and the excess is truncated once every chunk is in. The fsync stays: it is
        what makes the file durable (metadata, the device's write cache) before the publish.
        """
        fd, direct = open_direct(target, os.O_WRONLY | os.O_NOFOLLOW, direct=self.direct)
        try:
            pwrite_all(fd, buffer, length, index * self.statement.chunk_size, direct)
            with self.lock:
                self.remaining[member.name] -= 1
                last = self.remaining[member.name] == 0
            if last:
                if direct and member.size != aligned_length(member.size):
                    os.ftruncate(fd, member.size)
                os.fchmod(fd, member.mode)
                os.fsync(fd)
        finally:
            os.close(fd)

    def _fail(self, error: EnclaveError) -> None:
        with self.lock:
            self.failure = self.failure or error

    def finish(self) -> None:
        self.pool.shutdown(wait=True)
        if self.failure is not None:
            raise self.failure

    def abort(self) -> None:
        self._fail(IntegrityError("verification aborted"))
        self.pool.shutdown(wait=True, cancel_futures=True)


def _walk_members(
    source: ArchiveSource, tar: tarfile.TarFile, statement: BundleStatement, content: _ContentCheck
) -> int:
    """Check every header after the envelope and schedule its chunks; returns the end offset."""
    seen: dict[str, str] = {ENVELOPE_NAME.casefold(): ENVELOPE_NAME}
    expected = 0
    end = tar.offset
    while True:
        if content.failure is not None:  # a chunk already failed: report that, not what follows
            raise content.failure
        check_raw_header(source, tar.offset)
        try:
            info = tar.next()
        except tarfile.TarError as exc:
            raise IntegrityError(
                f"{source.locate(tar.offset)}: corrupt tar header at offset {tar.offset}: {exc}"
            ) from None
        if info is None:
            break
        _check_type(info)
        check_name(info.name)
        key = collision_key(info.name)
        if key in seen:
            raise UnsafeArchiveError(f"member {info.name!r}: duplicate of (or collides with) {seen[key]!r}")
        seen[key] = info.name
        index = statement.index.get(info.name)
        if index is None:
            raise IntegrityError(f"member {info.name!r}: not in the signed statement (extra member)")
        expected = _skip_base_members(statement, expected, content)
        if index != expected:
            missing = statement.members[expected].name
            raise IntegrityError(
                f"member {missing!r}: missing or out of order (found {info.name!r} in its place)"
            )
        member = statement.members[index]
        if info.size != member.archive_size(statement.chunk_size):
            raise IntegrityError(
                f"member {info.name!r}: size {info.size} in the archive,"
                f" {member.archive_size(statement.chunk_size)} signed"
            )
        if info.offset_data + info.size > source.size:
            raise IntegrityError(f"{source.locate(source.size - 1)}: truncated inside member {info.name!r}")
        _check_header(source, info, member.mode, statement.mtime)
        content.submit_member(member, info.offset_data)
        expected += 1
        end = info.offset_data + info.size + padding(info.size)
    expected = _skip_base_members(statement, expected, content)
    if expected < len(statement.members):
        raise IntegrityError(
            f"member {statement.members[expected].name!r}: signed but missing from the archive"
        )
    return end


def _skip_base_members(statement: BundleStatement, expected: int, content: _ContentCheck) -> int:
    """Members a differential bundle does not carry at all: every chunk comes from the store."""
    while expected < len(statement.members) and not statement.members[expected].in_archive:
        content.submit_member(statement.members[expected], None)
        expected += 1
    return expected


def _check_trailer(source: ArchiveSource, end: int) -> None:
    want = trailer_size(end)
    if source.size < end + want:
        raise IntegrityError(
            f"{source.locate(source.size - 1)}: truncated (end-of-archive marker incomplete)"
        )
    if source.size > end + want:
        raise IntegrityError(
            f"{source.locate(source.size - 1)}: {source.size - end - want} unexpected bytes after the archive"
        )
    if source.read_exact(end, want, "the end-of-archive marker") != b"\x00" * want:
        raise IntegrityError(f"{source.locate(end)}: non-zero bytes in the end-of-archive marker")


def staging_dir(target: Path, needed: int) -> Path:
    """A fresh directory beside `target` that verified chunks are written to, published by `publish`."""
    if target.exists() or target.is_symlink():
        raise UsageError(f"{target}: already exists; extraction needs a new directory")
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise UsageError(f"{parent}: {needed} bytes needed to extract, {free} free")
    _remove_stale_staging(parent, target.name)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-{os.getpid()}-", dir=parent))


def _remove_stale_staging(parent: Path, name: str) -> None:
    """Remove staging directories left by a verifier that was killed (its PID is gone)."""
    for candidate in parent.glob(f".{name}.staging-*"):
        pid = candidate.name.split("-")[-2] if candidate.name.count("-") >= 2 else ""
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(candidate, ignore_errors=True)


def publish(staging: Path, target: Path, envelope_raw: bytes) -> None:
    """The verified staging directory, with the envelope, renamed to `target` (one rename, fsynced)."""
    (staging / ENVELOPE_NAME).write_bytes(envelope_raw)
    os.chmod(staging / ENVELOPE_NAME, 0o644)
    for directory in sorted({p for p in staging.rglob("*") if p.is_dir()} | {staging}, reverse=True):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.chmod(staging, 0o755)
    if target.exists():
        raise UsageError(f"{target}: appeared during verification; not replaced")
    os.rename(staging, target)
    fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def content_store(state: StateDir | None, statement: BundleStatement, keep: bool) -> ContentStore | None:
    """The store this verification reads (differential) or fills (publishing); checks the base."""
    base = base_of(statement)
    if state is None:
        if base is not None:
            raise UsageError(
                f"{ENVELOPE_NAME}: a differential bundle needs the state directory's content store"
            )
        return None
    store = ContentStore.under(state.path)
    if base is not None and store.find(base.statement_digest) is None:
        raise IntegrityError(
            f"{ENVELOPE_NAME}: base {base.name} {base.version} (statement {base.statement_digest[:16]})"
            " was never verified here: its content is not in the store"
        )
    return store if (keep or base is not None) else None


def check_archive(
    source: ArchiveSource,
    tar: tarfile.TarFile,
    envelope: EnvelopeMember,
    statement: BundleStatement,
    staging: Path | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    store: ChunkSource | None = None,
    keep: StoreStaging | None = None,
    index: VolumeIndex | None = None,
) -> None:
    """Everything but the signatures: headers, order, sizes, chunk digests, the exact end.

    With `staging`, verified chunks are written there (and only verified chunks). With `store`,
    a differential bundle's base chunks are read from it. With `keep` (and `staging`), each
    verified chunk is also handed to it, from the same buffer (it writes the chunk, or nothing
    when it will keep the extracted files by hard link), for the caller to commit to the store
    once everything passed.
    """
    _check_header(source, envelope.info, 0o644, statement.mtime)  # its header was read before trust
    progress = Progress("verify", statement.total_size) if show_progress else None
    workers = workers or default_workers()
    content = _ContentCheck(source, statement, staging, workers, progress, store, keep, index)
    try:
        try:
            end = _walk_members(source, tar, statement, content)
            _check_trailer(source, end)
        except BaseException:
            content.abort()
            raise
        content.finish()
    finally:
        if progress is not None:
            progress.finish()
