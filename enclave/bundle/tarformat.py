"""The canonical tar layout of a bundle (FORMAT.md, "Archive"): header bytes and name rules.

A bundle's tar stream is fully determined by its signed statement and content: every header
is the canonical header below, so a verifier re-creates each header and compares bytes, and
no header field (mtime, owner, pax records) can carry unsigned changes.
"""

from __future__ import annotations

import unicodedata

from enclave.errors import UnsafeArchiveError

BLOCK = 512
RECORD = 20 * BLOCK  # the end of the archive is zero-padded to a multiple of this
USTAR_MAX_SIZE = 8**11 - 1
PAX_NAME = b"././@PaxHeader"
MAX_NAME_BYTES = 4096
ENVELOPE_NAME = "BUNDLE.dsse.json"
SBOM_NAME = "sbom.cdx.json"
CONTENT_PREFIX = "content/"


def padding(size: int) -> int:
    return -size % BLOCK


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def _ustar(name: bytes, size: int, mode: int, mtime: int, typeflag: bytes) -> bytes:
    header = bytearray(BLOCK)
    header[0:100] = name[:100].ljust(100, b"\x00")
    header[100:108] = _octal(mode, 8)
    header[108:116] = _octal(0, 8)
    header[116:124] = _octal(0, 8)
    header[124:136] = _octal(size if size <= USTAR_MAX_SIZE else 0, 12)
    header[136:148] = _octal(mtime, 12)
    header[148:156] = b" " * 8
    header[156:157] = typeflag
    header[257:263] = b"ustar\x00"
    header[263:265] = b"00"
    header[329:337] = _octal(0, 8)
    header[337:345] = _octal(0, 8)
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length += 1
    return str(length).encode() + body


def member_header(name: str, size: int, mode: int, mtime: int) -> bytes:
    """The exact header bytes (with a pax header first when needed) of one regular file."""
    encoded = name.encode("utf-8")
    records = b""
    if len(encoded) > 100 or not name.isascii():
        records += _pax_record("path", name)
    if size > USTAR_MAX_SIZE:
        records += _pax_record("size", str(size))
    ustar = _ustar(encoded if not records else name.encode("ascii", "replace"), size, mode, mtime, b"0")
    if not records:
        return ustar
    pax = _ustar(PAX_NAME, len(records), 0o644, mtime, b"x") + records + b"\x00" * padding(len(records))
    return pax + ustar


def trailer_size(offset: int) -> int:
    """Zero bytes after the last member that ends at `offset`: two blocks, then to a RECORD."""
    end = offset + 2 * BLOCK
    return end + (-end % RECORD) - offset


def member_span(name: str, size: int, mode: int, mtime: int) -> int:
    return len(member_header(name, size, mode, mtime)) + size + padding(size)


def collision_key(name: str) -> str:
    """Names that may land on one file on a case-insensitive or normalising filesystem."""
    return unicodedata.normalize("NFC", name).casefold()


def check_name(name: str) -> None:
    """Refuse any member name that could escape, collide or confuse (UnsafeArchiveError)."""
    reason = None
    if not name or len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        reason = "empty or too long"
    elif name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        reason = "absolute path"
    elif "\\" in name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        reason = "backslash or control character"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        reason = "'..', '.' or empty path segment"
    elif unicodedata.normalize("NFC", name) != name:
        reason = "not in Unicode NFC form"
    else:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            reason = "not valid UTF-8"
    if reason:
        raise UnsafeArchiveError(f"member {name!r}: unsafe name ({reason})")
