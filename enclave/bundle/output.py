"""Where a bundle's bytes go: one file, or media volumes of a fixed size.

Either way the output appears only when complete: every part is written under a temporary
name beside its target, synced, and renamed at the end; any failure removes the parts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from enclave.errors import UsageError

MIN_VOLUME = 1024 * 1024


def volume_path(bundle: Path, index: int) -> Path:
    return bundle.with_name(f"{bundle.name}.{index:03d}")


class Sink:
    """Sequential output split into parts of at most `part_size` bytes (None: one part)."""

    def __init__(self, target: Path, part_size: int | None) -> None:
        if part_size is not None and part_size < MIN_VOLUME:
            raise UsageError(f"--volume-size must be at least {MIN_VOLUME} bytes")
        self.target = target
        self.part_size = part_size
        self.finals: list[Path] = []
        self._partials: list[Path] = []
        self._fd = -1
        self._used = 0

    def _final(self, index: int) -> Path:
        return self.target if self.part_size is None else volume_path(self.target, index)

    def _next_part(self) -> None:
        self._close_part()
        final = self._final(len(self.finals))
        if final.exists():
            raise UsageError(f"{final}: already exists; refusing to overwrite")
        partial = final.with_name(f".{final.name}.partial-{os.getpid()}")
        self._fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.finals.append(final)
        self._partials.append(partial)
        self._used = 0

    def _close_part(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _room(self) -> int:
        if self._fd < 0 or (self.part_size is not None and self._used >= self.part_size):
            self._next_part()
        return (self.part_size - self._used) if self.part_size is not None else 1 << 62

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = self._room()
            written = os.write(self._fd, view[:room])
            view = view[written:]
            self._used += written

    def copy_from(self, src: int, offset: int, count: int) -> None:
        """Copy `count` bytes at `offset` of `src` in the kernel (no user-space buffer)."""
        while count > 0:
            room = self._room()
            copied = os.copy_file_range(src, self._fd, min(count, room), offset)
            if copied == 0:
                raise UsageError("input shrank while being copied")
            offset += copied
            count -= copied
            self._used += copied

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
