"""Content digests: per-chunk digests and the file digest defined from them (FORMAT.md).

A file of at most one chunk has digest H(content), so small files match `sha384sum`.
A larger file has digest H("enclave-chunked-v1" NUL chunk_size NUL H(c0) H(c1) ...), over the
raw chunk digests, so every chunk can be hashed on its own core and the whole still has one
signed digest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from enclave.errors import UsageError

CHUNKED_PREFIX = b"enclave-chunked-v1\x00"
READ_BLOCK = 4 * 1024 * 1024


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
