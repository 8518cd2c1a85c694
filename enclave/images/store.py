"""A content-addressed store of image blobs on the low side: `ROOT/blobs/sha256/<hex>`.

Bundle builds read image content from here: a blob's file name is its SHA-256, written once
(hash while streaming, then link into place; an existing blob is never replaced, so a file a
concurrent build is reading never changes under it), and re-hashed before a build reuses it.
The store is a cache: deleting it costs one `docker save` per image at the next build.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from enclave.bundle.digest import file_reader, hash_range
from enclave.images.layout import blob_path, sha256_digest

CHUNK = 1024 * 1024
CACHE_ENV = "ENCLAVE_CACHE_DIR"
STALE_SECONDS = 86400  # a partial blob older than this has no live writer


def sha256_file(path: Path) -> str:
    """`sha256:<hex>` of a file, read in blocks (the bundle code's reader)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return "sha256:" + hash_range(file_reader(fd), 0, os.fstat(fd).st_size, "sha256").hex()
    finally:
        os.close(fd)


def cache_root() -> Path:
    """$ENCLAVE_CACHE_DIR, else $XDG_CACHE_HOME/enclave, else ~/.cache/enclave."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "enclave"


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"

    def path(self, digest: str) -> Path:
        return self.root / blob_path(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def intact(self, digests: Iterable[str]) -> bool:
        """Re-hash cached blobs; False (and the bad blob removed) when one is missing or corrupt."""
        for digest in digests:
            path = self.path(digest)
            try:
                actual = sha256_file(path)
            except FileNotFoundError:
                return False
            if actual != digest:
                path.unlink(missing_ok=True)
                return False
        return True

    def add_stream(self, source: BinaryIO) -> tuple[str, int]:
        """Copy `source` into the store, hashing as it goes; returns (digest, size)."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.blobs, prefix=".incoming-")
        try:
            h = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = "sha256:" + h.hexdigest()
            self._place(Path(temporary), digest)
            return digest, size
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)

    def add_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        if not self.has(digest):
            self.blobs.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=self.blobs, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                self._place(Path(temporary), digest)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
        return digest

    def _place(self, temporary: Path, digest: str) -> None:
        os.chmod(temporary, 0o644)
        # A hard link fails if the name exists: the blob already there (same bytes) stays.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, self.path(digest))

    def remove_incoming(self) -> None:
        """Drop partial files of writers that died (no process holds them for long)."""
        if not self.blobs.is_dir():
            return
        for partial in self.blobs.glob(".incoming-*"):
            with contextlib.suppress(OSError):
                if partial.stat().st_mtime < time.time() - STALE_SECONDS:
                    partial.unlink()
