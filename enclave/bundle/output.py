"""Where a bundle's bytes go: one file, or media volumes of a fixed size.

Either way the output appears only when complete: every part is written under a temporary
name beside its target, synced, and renamed at the end; any failure removes the parts.

Bytes are written with O_DIRECT from one page-aligned buffer where the filesystem allows it
(or from the caller's own aligned buffers: `detach`, `write_blocks`).
Buffered writes of gigabytes go through page-cache write-back, which on the project's VM disk
has run at a quarter of what the device takes directly (docs/PERFORMANCE.md, "Bundle build
and verify"). O_DIRECT is not durability: each part is still fsynced before it is renamed.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from enclave.errors import UsageError

MIN_VOLUME = 1024 * 1024
DIRECT_ALIGN = 4096  # O_DIRECT offsets, lengths and buffer addresses: a multiple of this
WRITE_BLOCK = 16 * 1024 * 1024  # one direct write; a multiple of DIRECT_ALIGN


def volume_path(bundle: Path, index: int) -> Path:
    return bundle.with_name(f"{bundle.name}.{index:03d}")


def aligned_length(length: int) -> int:
    """`length` rounded up to DIRECT_ALIGN."""
    return -(-length // DIRECT_ALIGN) * DIRECT_ALIGN


def aligned_buffer(size: int) -> mmap.mmap:
    """A zero-filled, page-aligned buffer of at least `size` bytes (rounded up to DIRECT_ALIGN)."""
    return mmap.mmap(-1, aligned_length(max(size, 1)))


def direct_suits(directory: Path) -> bool:
    """Whether files in `directory` should be written with O_DIRECT: on a filesystem backed
    by a block device. Virtual ones (major device number 0: tmpfs, overlayfs, NFS, FUSE, and
    btrfs) keep buffered writes: there O_DIRECT is unsupported, emulated or no faster."""
    return os.major(os.stat(directory).st_dev) != 0


def open_direct(path: Path, flags: int, mode: int = 0o600, direct: bool = True) -> tuple[int, bool]:
    """Open for writing, with O_DIRECT when `direct` and the filesystem takes it.

    Returns (fd, direct). A direct fd needs aligned writes: see `pwrite_all`.
    """
    if direct:
        try:
            return os.open(path, flags | os.O_DIRECT, mode), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this filesystem has no O_DIRECT
                raise
    return os.open(path, flags, mode), False


def pwrite_all(fd: int, buffer: mmap.mmap, length: int, position: int, direct: bool) -> int:
    """Write buffer[:length] at `position`; returns the file size this write may have reached.

    With `direct`, `position` must be aligned and the write is rounded up to DIRECT_ALIGN (the
    buffer must have the room); bytes past `length` are garbage the caller truncates away.
    """
    span = aligned_length(length) if direct else length
    view = memoryview(buffer)[:span]
    try:
        while view:
            written = os.pwrite(fd, view, position)
            view, position = view[written:], position + written
    finally:
        view.release()
    return position


class Sink:
    """Sequential output split into parts of at most `part_size` bytes (None: one part)."""

    def __init__(self, target: Path, part_size: int | None) -> None:
        if part_size is not None and part_size < MIN_VOLUME:
            raise UsageError(f"a volume must be at least {MIN_VOLUME} bytes")
        self.target = target
        self.part_size = part_size
        self.finals: list[Path] = []
        self._partials: list[Path] = []
        self._fd = -1
        self._direct = False
        self._used = 0  # bytes of the current part, written or in the buffer
        self._buffer = aligned_buffer(WRITE_BLOCK)
        self._fill = 0  # bytes in the buffer; they belong at offset _used - _fill of the part

    def _final(self, index: int) -> Path:
        return self.target if self.part_size is None else volume_path(self.target, index)

    def _next_part(self) -> None:
        self._close_part()
        final = self._final(len(self.finals))
        if final.exists():
            raise UsageError(f"{final}: already exists; refusing to overwrite")
        partial = final.with_name(f".{final.name}.partial-{os.getpid()}")
        self._fd, self._direct = open_direct(
            partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, direct_suits(partial.parent)
        )
        self.finals.append(final)
        self._partials.append(partial)
        self._used = 0

    def _flush(self) -> None:
        """Write the buffer. Only a part's last write can be short of WRITE_BLOCK, so every
        direct write starts aligned; its rounded-up tail is cut off by the truncate."""
        if not self._fill:
            return
        start = self._used - self._fill
        reached = pwrite_all(self._fd, self._buffer, self._fill, start, self._direct)
        if reached != self._used:
            os.ftruncate(self._fd, self._used)
        self._fill = 0

    def _close_part(self) -> None:
        if self._fd >= 0:
            self._flush()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _room(self) -> int:
        """Bytes that fit before the buffer must be flushed or the part ends."""
        if self._fd < 0 or (self.part_size is not None and self._used >= self.part_size):
            self._next_part()
        part_room = (self.part_size - self._used) if self.part_size is not None else 1 << 62
        return min(part_room, WRITE_BLOCK - self._fill)

    def _advance(self, count: int) -> None:
        self._fill += count
        self._used += count
        if self._fill == WRITE_BLOCK:
            self._flush()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            count = min(self._room(), len(view))
            self._buffer[self._fill : self._fill + count] = view[:count]
            view = view[count:]
            self._advance(count)

    def copy_from(
        self, src: int, offset: int, count: int, progress: Callable[[int], None] | None = None
    ) -> None:
        """Copy `count` bytes at `offset` of `src`: read straight into the write buffer."""
        while count > 0:
            want = min(self._room(), count)
            with memoryview(self._buffer)[self._fill : self._fill + want] as view:
                got = os.preadv(src, [view], offset)
            if got == 0:
                raise UsageError("input shrank while being copied")
            offset += got
            count -= got
            self._advance(got)
            if progress is not None:
                progress(got)

    def detach(self) -> bytes:
        """Write the whole DIRECT_ALIGN blocks of the buffer and hand back the rest (fewer than
        DIRECT_ALIGN bytes, which the output no longer holds), so the caller can write them
        again in front of its own bytes from its own aligned buffers (`write_blocks`).
        Single-file output only."""
        if self.part_size is not None:
            raise ValueError("detach() is for single-file output")
        if self._fd < 0:
            self._next_part()
        whole = self._fill - self._fill % DIRECT_ALIGN
        rest = bytes(self._buffer[whole : self._fill])
        self._fill = whole
        self._used -= len(rest)
        self._flush()  # the buffer's start is aligned, so this write ends exactly at _used
        return rest

    def write_blocks(self, buffer: mmap.mmap, length: int) -> None:
        """Write buffer[:length], whole DIRECT_ALIGN blocks from an aligned buffer, straight to
        the output at its current position, which `detach` left aligned (no copy)."""
        if self.part_size is not None or self._fill or length % DIRECT_ALIGN:
            raise ValueError("write_blocks() needs a detached single-file output and whole blocks")
        self._used = pwrite_all(self._fd, buffer, length, self._used, self._direct)

    def skip(self, count: int) -> None:
        """Start the output `count` bytes in; `write_at` fills them in later (one part only)."""
        if self.part_size is not None or self._fd >= 0:
            raise ValueError("skip() is for the start of a single-file output")
        self._next_part()
        # The buffer starts at the aligned offset below `count`, so direct writes stay
        # aligned; its first bytes stand for skipped ones until write_at() replaces them.
        self._used = count
        self._fill = count % DIRECT_ALIGN

    def write_at(self, offset: int, data: bytes) -> None:
        """Fill skipped bytes: those still in the buffer are replaced there (the buffer is
        written later and would otherwise overwrite them), the rest are written now."""
        buffered_from = self._used - self._fill
        end = offset + len(data)
        if end > buffered_from:
            cut = max(offset, buffered_from)
            self._buffer[cut - buffered_from : end - buffered_from] = data[cut - offset :]
            data = data[: cut - offset]
        if data:
            fd = os.open(self._partials[-1], os.O_WRONLY)  # buffered: `data` need not be aligned
            try:
                view = memoryview(data)
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
            finally:
                os.close(fd)

    def publish(self) -> list[Path]:
        self._close_part()
        for partial, final in zip(self._partials, self.finals, strict=True):
            os.rename(partial, final)
        directory = os.open(self.target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return self.finals

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for partial in self._partials:
            partial.unlink(missing_ok=True)


@contextlib.contextmanager
def open_output(target: Path, part_size: int | None = None) -> Iterator[Sink]:
    """A sink whose parts appear at `target` (or `target.000`, ...) only on success."""
    if part_size is None and target.exists():
        raise UsageError(f"{target}: already exists; refusing to overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    sink = Sink(target, part_size)
    try:
        yield sink
        sink.publish()
    except BaseException:
        sink.discard()
        raise
