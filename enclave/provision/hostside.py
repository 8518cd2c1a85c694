"""Runs ON the enclave host (python3 -c SOURCE OP, a JSON request on stdin, a JSON answer on
stdout), so the host re-hashes what it received itself before anything uses it.

Standard library only, Python 3.8+, no import from enclave: the source of this file is what is
sent. `combine` must stay byte-for-byte the rule of enclave.bundle.digest (a unit test pins
them together).

Operations:
- state:  for each file, the size of the finished file (if any) and of its `.part`, with the
          digests of the .part's whole chunks and of its trailing partial chunk, so the
          controller can resume a cut transfer from the last byte that is still right.
- verify: re-hash each file (finished or .part) chunk by chunk against the signed digests; a
          good .part is renamed to its final name and made read-only; a bad file is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from typing import Any

CHUNKED_PREFIX = b"enclave-chunked-v1\x00"
BLOCK = 4 * 1024 * 1024
PART = ".part"


def combine(algorithm: str, chunk_size: int, chunk_digests: list[bytes]) -> bytes:
    if len(chunk_digests) == 1:
        return chunk_digests[0]
    outer = hashlib.new(algorithm)
    outer.update(CHUNKED_PREFIX + str(chunk_size).encode("ascii") + b"\x00")
    for digest in chunk_digests:
        outer.update(digest)
    return outer.digest()


def hash_range(fd: int, offset: int, length: int, algorithm: str) -> bytes:
    h = hashlib.new(algorithm)
    done = 0
    while done < length:
        data = os.pread(fd, min(BLOCK, length - done), offset + done)
        if not data:
            raise OSError(f"short read at offset {offset + done}")
        h.update(data)
        done += len(data)
    return h.digest()


def _path(root: str, name: str) -> str:
    # Names come from the signed statement, already checked on the controller; refuse anything
    # that could leave the bundle directory all the same.
    if name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"unsafe member name {name!r}")
    return os.path.join(root, name)


def _size(path: str) -> int | None:
    try:
        return os.lstat(path).st_size if os.path.isfile(path) and not os.path.islink(path) else None
    except OSError:
        return None


def state(request: dict[str, Any]) -> dict[str, Any]:
    algorithm, chunk = request["algorithm"], int(request["chunk_size"])
    answer: dict[str, Any] = {}
    for item in request["files"]:
        path = _path(request["root"], item["name"])
        entry: dict[str, Any] = {"final": _size(path), "part": None}
        part_size = _size(path + PART)
        if part_size is not None:
            whole = min(part_size // chunk, -(-int(item["size"]) // chunk))
            fd = os.open(path + PART, os.O_RDONLY)
            try:
                chunks = [hash_range(fd, i * chunk, chunk, algorithm).hex() for i in range(whole)]
                tail_len = part_size - whole * chunk
                tail = hash_range(fd, whole * chunk, tail_len, algorithm).hex() if tail_len > 0 else None
            finally:
                os.close(fd)
            entry["part"] = {"size": part_size, "chunks": chunks, "tail": tail}
        answer[item["name"]] = entry
    return {"files": answer}


def verify_file(path: str, item: dict[str, Any], algorithm: str, chunk: int) -> str | None:
    """None when `path` holds exactly the signed content, else why not."""
    size = int(item["size"])
    actual = _size(path)
    if actual != size:
        return f"size {actual}, signed {size}"
    expected = item["chunks"] or [item["digest"]]
    digests = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for index, want in enumerate(expected):
            offset = index * chunk
            got = hash_range(fd, offset, min(chunk, size - offset), algorithm)
            if got.hex() != want:
                return f"chunk {index} digest mismatch"
            digests.append(got)
    finally:
        os.close(fd)
    if combine(algorithm, chunk, digests).hex() != item["digest"]:
        return "file digest mismatch"
    return None


def verify(request: dict[str, Any]) -> dict[str, Any]:
    algorithm, chunk = request["algorithm"], int(request["chunk_size"])
    answer: dict[str, Any] = {}
    for item in request["files"]:
        path = _path(request["root"], item["name"])
        source = path + PART if _size(path + PART) is not None else path
        try:
            error = verify_file(source, item, algorithm, chunk)
        except OSError as exc:
            error = str(exc)
        if error is not None:
            with contextlib.suppress(OSError):
                os.unlink(source)  # never leave bytes that failed their digest where they could be used
            answer[item["name"]] = {"ok": False, "error": error}
            continue
        fd = os.open(source, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(source, int(item["mode"]) & 0o555)
        if source != path:
            os.replace(source, path)
        answer[item["name"]] = {"ok": True, "error": None}
    return {"files": answer}


def main(operation: str) -> int:
    request = json.loads(sys.stdin.read())
    handler = {"state": state, "verify": verify}[operation]
    sys.stdout.write(json.dumps(handler(request)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
