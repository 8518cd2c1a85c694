"""Opening the files a command is given: a bundle, a volume, a key, a root, a manifest, a policy.

Each must be a regular file. A directory fails later with an unhelpful error, and a FIFO or a
character device would block `open(2)` or `read(2)` for ever, so the file is opened with
O_NONBLOCK (which never waits for a FIFO's writer) and checked with fstat(2) before a byte is
read; O_NONBLOCK is then cleared (it means nothing for a regular file). Errors are UsageError
(exit 2) naming the file: what was given is at fault, not the program.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from enclave.errors import EnclaveError, UsageError, os_error_class

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def os_error(exc: OSError, path: Path | str | None = None, what: str = "") -> EnclaveError:
    """The one-line typed error for `exc`: naming the file (`path`, else the error's own
    filename) and what was being done with it; IntegrityError when the data is at fault
    (errors.DATA_ERRNOS), else UsageError."""
    name = path if path is not None else exc.filename
    where = f"{name}: " if name is not None else ""
    if exc.filename2 is not None and path is None:
        where = f"{exc.filename} -> {exc.filename2}: "
    doing = f"{what}: " if what else ""
    reason = exc.strerror or type(exc).__name__
    return os_error_class(exc)(f"{where}{doing}{reason}")


def kind_of(mode: int) -> str:
    """'a directory', 'a FIFO', ... for a mode that is not a regular file's."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: Path | str, what: str = "file") -> int:
    """A read-only descriptor of `path`, which must be a regular file (else UsageError)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error(exc, path, f"cannot read {what}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(f"{path}: {kind_of(mode)}, not a regular file: a {what} must be a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path | str, what: str = "file", limit: int | None = None) -> bytes:
    """The bytes of the regular file `path`: all of them, or at most `limit` + 1 (so that a
    caller with a size cap sees that it is exceeded without reading more)."""
    fd = open_regular(path, what)
    try:
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read() if limit is None else handle.read(limit + 1)
    except OSError as exc:
        raise os_error(exc, path, f"cannot read {what}") from None
    finally:
        os.close(fd)


def require_regular(path: Path | str, what: str = "file") -> None:
    """Refuse anything but a regular file at `path` (following links), without opening it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise os_error(exc, path, f"cannot read {what}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"{path}: {kind_of(mode)}, not a regular file: a {what} must be a regular file")


@contextmanager
def published_directory(out: Path) -> Iterator[Path]:
    """A staging directory beside `out` to fill; when the block ends without an error it
    becomes `out` by one rename (an empty `out` is replaced), on any error it is removed. So a
    reader never sees half a package and a failed run leaves nothing behind."""
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
