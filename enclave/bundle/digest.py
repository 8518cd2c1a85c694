"""Content digests: per-chunk digests and the file digest defined from them (FORMAT.md).

A file of at most one chunk has digest H(content), so small files match `sha384sum`.
A larger file has digest H("enclave-chunked-v1" NUL chunk_size NUL H(c0) H(c1) ...), over the
raw chunk digests, so every chunk can be hashed on its own core and the whole still has one
signed digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from enclave.bundle.output import DIRECT_ALIGN, aligned_buffer
from enclave.errors import UsageError

CHUNKED_PREFIX = b"enclave-chunked-v1\x00"
READ_BLOCK = 4 * 1024 * 1024
STREAM_BLOCK = 4 * 1024 * 1024  # one read of `stream_digests`; a power of two
STREAM_DEPTH = 3  # buffers in its ring: how far one hash may run ahead of another


def new_hash(algorithm: str) -> hashlib._Hash:
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise UsageError(f"unknown digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def combine(algorithm: str, chunk_size: int, chunk_digests: Sequence[bytes]) -> bytes:
    """The file digest from its chunk digests (a single chunk's digest is the file's)."""
    if len(chunk_digests) == 1:
        return chunk_digests[0]
    outer = new_hash(algorithm)
    outer.update(CHUNKED_PREFIX + str(chunk_size).encode("ascii") + b"\x00")
    for digest in chunk_digests:
        outer.update(digest)
    return outer.digest()


@dataclass(frozen=True)
class FileDigest:
    size: int
    digest: bytes
    chunks: tuple[bytes, ...]  # one per chunk; a single entry for small files


def hash_range(
    read_into: Callable[[memoryview, int], int], offset: int, length: int, algorithm: str
) -> bytes:
    """Digest of `length` bytes at `offset`, read in blocks through `read_into(view, offset)`.

    hashlib releases the GIL on large updates, so threads hash on every core.
    """
    h = new_hash(algorithm)
    buffer = bytearray(min(READ_BLOCK, max(length, 1)))
    view = memoryview(buffer)
    done = 0
    while done < length:
        want = min(len(buffer), length - done)
        got = read_into(view[:want], offset + done)
        if got <= 0:
            raise OSError(f"short read at offset {offset + done}")
        h.update(view[:got])
        done += got
    return h.digest()


def file_reader(fd: int) -> Callable[[memoryview, int], int]:
    return lambda view, offset: os.preadv(fd, [view], offset)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def digest_files(
    paths: Sequence[Path],
    algorithm: str,
    chunk_size: int,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[FileDigest]:
    """Hash files chunk by chunk on all cores; memory stays at one read block per worker."""

    def task(path: Path, offset: int, length: int) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            digest = hash_range(file_reader(fd), offset, length, algorithm)
        finally:
            os.close(fd)
        if progress is not None:
            progress(length)
        return digest

    sizes = [path.stat().st_size for path in paths]
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        futures: list[list[Future[bytes]]] = [
            [pool.submit(task, path, offset, length) for offset, length in iter_chunks(size, chunk_size)]
            for path, size in zip(paths, sizes, strict=True)
        ]
        results = []
        for size, file_futures in zip(sizes, futures, strict=True):
            chunks = tuple(f.result() for f in file_futures)
            results.append(FileDigest(size, combine(algorithm, chunk_size, chunks), chunks))
        return results


def iter_chunks(size: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each chunk of a file of `size` bytes; one empty chunk for size 0."""
    for index in range(chunk_count(size, chunk_size)):
        offset = index * chunk_size
        yield offset, min(chunk_size, size - offset)


class _Ring:
    """`depth` aligned buffers that one producer fills in order and every consumer reads in order.

    A buffer is refilled only after every consumer released it, so the slowest consumer
    paces the producer while the others run up to `depth` buffers ahead of it: no consumer
    waits for another at each block, only for data, or (through the producer) for a free
    buffer. Memory is `depth` buffers whatever the file's size. A small ring also keeps the
    lanes close together, so a block is still in the CPU caches for its second hash: on the
    project's machine two SHA-256 lanes took 1.8-1.9 CPU seconds per GiB with a ring of
    8 x 4 MiB, 1.4 with 2 x 4 MiB; a whole build was fastest with 2 or 3 x 4 MiB.
    """

    def __init__(self, depth: int, size: int, consumers: int) -> None:
        self.buffers = [aligned_buffer(size) for _ in range(depth)]
        self.lengths = [0] * depth
        # Per consumer: blocks filled and not yet taken; buffers it has released.
        self._ready = [threading.Semaphore(0) for _ in range(consumers)]
        self._free = [threading.Semaphore(depth) for _ in range(consumers)]
        self.failed = False

    def claim(self, index: int) -> mmap.mmap | None:
        """The buffer for block `index`, once every consumer released it (None: failed)."""
        for free in self._free:
            free.acquire()
        return None if self.failed else self.buffers[index % len(self.buffers)]

    def publish(self, index: int, length: int) -> None:
        self.lengths[index % len(self.buffers)] = length
        for ready in self._ready:
            ready.release()

    def take(self, consumer: int, index: int) -> tuple[mmap.mmap, int] | None:
        """Block `index` and its length, for `consumer`, once it is filled (None: failed)."""
        self._ready[consumer].acquire()
        if self.failed:
            return None
        slot = index % len(self.buffers)
        return self.buffers[slot], self.lengths[slot]

    def release(self, consumer: int) -> None:
        self._free[consumer].release()

    def fail(self) -> None:
        """Wake everyone for good: each party waits at most once more before it sees this."""
        self.failed = True
        for semaphore in (*self._ready, *self._free):
            semaphore.release(len(self.buffers) + 1)

    def close(self) -> None:
        for buffer in self.buffers:
            with contextlib.suppress(BufferError):  # a traceback still holds a view: freed with it
                buffer.close()


BlockSink = Callable[[mmap.mmap, int, bool], None]  # (buffer, length, last): see stream_digests


def stream_digests(
    read_into: Callable[[memoryview, int], int],
    size: int,
    algorithm: str,
    chunk_size: int,
    plain: Collection[str],
    progress: Callable[[int], None] | None = None,
    lead: bytes = b"",
    also: BlockSink | None = None,
    block: int = STREAM_BLOCK,
    depth: int = STREAM_DEPTH,
) -> tuple[FileDigest, dict[str, bytes]]:
    """The chunk digests of `size` bytes and their plain digests H(content) for each algorithm
    in `plain`, in one sequential read through `read_into(view, offset)` (which must fill the
    view or raise).

    A plain digest cannot be split, so each hash gets its own thread (hashlib releases the
    GIL) and the chunk hashes run one after the other on one more: they cost the same as the
    plain hash in the bundle's algorithm, so they are never the slower lane. The calling
    thread reads into a ring of aligned buffers (_Ring) that every lane consumes at its own
    pace.

    `also`, when given, is one more lane: it gets every buffer in order, as (buffer, length,
    last), where the buffers hold `lead` followed by the content, `block` bytes each (the last
    one shorter), e.g. to write them out with O_DIRECT while they are hashed; `lead` (shorter
    than `block`) is what the writer had pending before the content.
    """
    if len(lead) >= block or block % DIRECT_ALIGN:
        raise ValueError("lead must be shorter than block, and block a multiple of DIRECT_ALIGN")
    span = len(lead) + size  # bytes through the ring
    blocks = -(-span // block)
    names = sorted(plain)
    plains = {name: new_hash(name) for name in names}
    chunks: list[bytes] = []
    chunk = new_hash(algorithm)

    def content(index: int, length: int) -> tuple[int, int, int]:
        """Where the content sits in block `index`: (start, end) in the buffer, file offset."""
        first = max(0, index * block - len(lead))
        start = first + len(lead) - index * block
        return start, length, first

    def chunk_update(view: memoryview, offset: int) -> None:
        nonlocal chunk
        done = 0
        while done < len(view):  # a block may straddle a chunk boundary when there is a lead
            at = offset + done
            take = min(len(view) - done, chunk_size - at % chunk_size)
            chunk.update(view[done : done + take])
            done += take
            if (at + take) % chunk_size == 0 or at + take == size:
                chunks.append(chunk.digest())
                chunk = new_hash(algorithm)
        if progress is not None:
            progress(len(view))

    def plain_update(h: hashlib._Hash) -> Callable[[memoryview, int], None]:
        return lambda view, _: h.update(view)

    updates = [chunk_update, *(plain_update(plains[name]) for name in names)]
    ring = _Ring(min(depth, max(blocks, 1)), block, len(updates) + (also is not None))
    errors: list[BaseException] = []

    def lane(consumer: int) -> None:
        try:
            for index in range(blocks):
                taken = ring.take(consumer, index)
                if taken is None:
                    return
                buffer, length = taken
                if consumer < len(updates):
                    start, end, offset = content(index, length)
                    with memoryview(buffer) as view:
                        updates[consumer](view[start:end], offset)
                elif also is not None:
                    also(buffer, length, index == blocks - 1)
                ring.release(consumer)
        except BaseException as exc:  # handed to the reading thread
            errors.append(exc)
            ring.fail()

    threads = [
        threading.Thread(target=lane, args=(i,), name=f"digest-lane-{i}", daemon=True)
        for i in range(len(updates) + (also is not None))
    ]
    for thread in threads:
        thread.start()
    try:
        for index in range(blocks):
            buffer = ring.claim(index)
            if buffer is None:
                break
            length = min(block, span - index * block)
            start, end, offset = content(index, length)
            if index == 0:
                buffer[: len(lead)] = lead
            if end > start:
                with memoryview(buffer) as view:
                    read_into(view[start:end], offset)
            ring.publish(index, length)
    except BaseException:
        ring.fail()
        raise
    finally:
        for thread in threads:
            thread.join()
        ring.close()
    if errors:
        raise errors[0]
    if size == 0:
        chunks.append(chunk.digest())
    return FileDigest(size, combine(algorithm, chunk_size, chunks), tuple(chunks)), {
        name: h.digest() for name, h in plains.items()
    }
