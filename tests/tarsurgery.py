"""Test helper: take a real bundle apart and put it back together with one thing changed."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave.bundle.tarformat import member_header, padding, trailer_size
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope
from tests.conftest import Keys


@dataclass
class Part:
    name: str
    header: bytes  # raw header bytes as found (or crafted)
    data: bytes
    mtime: int
    mode: int

    @classmethod
    def regular(cls, name: str, data: bytes, mtime: int, mode: int = 0o644) -> Part:
        return cls(name, member_header(name, len(data), mode, mtime), data, mtime, mode)

    @classmethod
    def raw(cls, info: tarfile.TarInfo, data: bytes = b"") -> Part:
        """A member with any type/name, written by Python's tarfile (for unsafe cases)."""
        info.size = len(data)
        return cls(info.name, info.tobuf(tarfile.PAX_FORMAT), data, int(info.mtime), info.mode)

    def with_data(self, data: bytes) -> Part:
        return Part.regular(self.name, data, self.mtime, self.mode)

    def renamed(self, name: str) -> Part:
        return Part.regular(name, self.data, self.mtime, self.mode)


def split(path: Path) -> list[Part]:
    blob = path.read_bytes()
    parts = []
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        for info in tar:
            data = blob[info.offset_data : info.offset_data + info.size]
            parts.append(
                Part(info.name, blob[info.offset : info.offset_data], data, int(info.mtime), info.mode)
            )
    return parts


def join(parts: list[Part], path: Path) -> Path:
    out = bytearray()
    for part in parts:
        out += part.header + part.data + b"\x00" * padding(len(part.data))
    out += b"\x00" * trailer_size(len(out))
    path.write_bytes(bytes(out))
    return path


def resign(bundle: Path, keys: Keys, out: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    """Change the statement and sign it again with the trusted build keys (an insider's bundle).
    `edit` changes the statement in place, or returns the new payload bytes (for what a dict
    cannot hold, such as a duplicate key)."""
    parts = split(bundle)
    statement = json.loads(base64.b64decode(json.loads(parts[0].data)["payload"]))
    payload = edit(statement)
    if not isinstance(payload, bytes):
        payload = json.dumps(statement, sort_keys=True).encode()
    envelope = Envelope(IN_TOTO_PAYLOAD_TYPE, payload)
    envelope.sign(keys.ecdsa)
    envelope.sign(keys.mldsa)
    return join([parts[0].with_data(envelope.to_json()), *parts[1:]], out)
