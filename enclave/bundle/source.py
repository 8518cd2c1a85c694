"""Random access to a bundle's bytes, whether one file or a run of media volumes.

Verification streams from here: tar headers through a seekable file view, content chunks
through `pread_into` from many threads at once. Volumes are never reassembled on disk.
"""

from __future__ import annotations

import bisect
import io
import os
from collections.abc import Sequence
from pathlib import Path

from enclave.errors import IntegrityError, UsageError
from enclave.fileio import open_regular


class ArchiveSource:
    """The concatenation of `paths`, read with positional reads (thread-safe)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        if not paths:
            raise UsageError("no bundle file given")
        self.paths = list(paths)
        self._fds: list[int] = []
        self._starts: list[int] = []
        total = 0
        try:
            for path in self.paths:  # a regular file: a FIFO or device would block (fileio)
                fd = open_regular(path, "bundle")
                self._fds.append(fd)
                self._starts.append(total)
                total += os.fstat(fd).st_size
        except BaseException:
            self.close()
            raise
        self.size = total

    @property
    def name(self) -> str:
        return (
            str(self.paths[0])
            if len(self.paths) == 1
            else f"{self.paths[0]} (+{len(self.paths) - 1} volumes)"
        )

    def locate(self, offset: int) -> Path:
        """The file holding byte `offset` (names the bad volume in errors)."""
        index = max(0, bisect.bisect_right(self._starts, offset) - 1)
        return self.paths[index]

    def pread_into(self, view: memoryview, offset: int) -> int:
        """Fill `view` from `offset` across file boundaries; returns bytes read (short at EOF)."""
        done = 0
        while done < len(view) and offset + done < self.size:
            at = offset + done
            index = bisect.bisect_right(self._starts, at) - 1
            got = os.preadv(self._fds[index], [view[done:]], at - self._starts[index])
            if got <= 0:
                raise IntegrityError(f"{self.paths[index]}: short read (file changed or truncated)")
            done += got
        return done

    def read_exact(self, offset: int, length: int, what: str) -> bytes:
        buffer = bytearray(length)
        if self.pread_into(memoryview(buffer), offset) != length:
            raise IntegrityError(f"{self.locate(offset)}: truncated while reading {what}")
        return bytes(buffer)

    def open(self) -> io.BufferedReader:
        """A seekable read-only file view, for the tar header parser."""
        return io.BufferedReader(_RawView(self), buffer_size=64 * 1024)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> ArchiveSource:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _RawView(io.RawIOBase):
    def __init__(self, source: ArchiveSource) -> None:
        self._source = source
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._source.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        got = self._source.pread_into(memoryview(buffer).cast("B"), self._pos)
        self._pos += got
        return got
