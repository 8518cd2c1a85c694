"""Model card facts read from a model file's own metadata, for the SBOM (best effort).

Only GGUF is read (the format of the reference model): its header carries key/value metadata
(`general.architecture`, `general.name`, `general.license`, ...). Reading is bounded in bytes
and entries and never fails the build: a file that is not readable GGUF simply yields no
facts, because the SBOM's model card is descriptive and nothing is decided on it.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

GGUF_MAGIC = b"GGUF"
MAX_HEADER_BYTES = 64 * 1024 * 1024  # tokenizer vocabularies live in the header: a few MiB
MAX_ENTRIES = 1 << 16
MAX_KEPT_VALUE = 1024  # longer strings (chat templates, descriptions) are not copied

# GGUF value types: fixed-size scalars by struct format, then string (8) and array (9).
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


class _Bounded:
    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.used = 0

    def read(self, size: int) -> bytes:
        self.used += size
        if self.used > MAX_HEADER_BYTES:
            raise ValueError("GGUF header larger than the cap")
        data = self.stream.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return data

    def unpack(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]
        return value

    def string(self) -> bytes:
        return self.read(int(self.unpack("<Q")))


def _value(reader: _Bounded, kind: int) -> str | int | float | bool | None:
    """One value; arrays are skipped (None), strings decoded."""
    if kind in _SCALARS:
        return reader.unpack(_SCALARS[kind])
    if kind == _STRING:
        return reader.string().decode("utf-8", errors="replace")
    if kind == _ARRAY:
        item_kind, count = int(reader.unpack("<I")), int(reader.unpack("<Q"))
        if item_kind in _SCALARS:
            reader.read(struct.calcsize(_SCALARS[item_kind]) * count)  # the cap bounds count
        elif item_kind == _STRING:
            for _ in range(count):
                reader.string()
        else:
            raise ValueError(f"GGUF array of type {item_kind}")
        return None
    raise ValueError(f"GGUF value type {kind}")


def gguf_metadata(path: Path) -> dict[str, str]:
    """`general.*` facts and the architecture's context length, as strings; {} when unreadable."""
    try:
        with path.open("rb") as stream:
            reader = _Bounded(stream)
            if reader.read(4) != GGUF_MAGIC:
                return {}
            version = reader.unpack("<I")
            if version not in (2, 3):
                return {}
            reader.unpack("<Q")  # tensor count
            entries = int(reader.unpack("<Q"))
            if entries > MAX_ENTRIES:
                return {}
            found: dict[str, str | int | float | bool] = {}
            for _ in range(entries):
                key = reader.string().decode("utf-8", errors="replace")
                value = _value(reader, int(reader.unpack("<I")))
                if value is not None:
                    found[key] = value
    except (OSError, ValueError, struct.error):
        return {}
    arch = found.get("general.architecture")
    wanted = {k for k in found if k.startswith("general.")}
    if isinstance(arch, str):
        wanted |= {f"{arch}.context_length", f"{arch}.block_count", f"{arch}.embedding_length"} & set(found)
    facts = {}
    for key in sorted(wanted):
        text = str(found[key]).lower() if isinstance(found[key], bool) else str(found[key])
        if len(text) <= MAX_KEPT_VALUE:
            facts[key] = text
    return facts
