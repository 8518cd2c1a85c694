"""The canonical tar layout of a bundle (FORMAT.md, "Archive"): header bytes and name rules.

A bundle's tar stream is fully determined by its signed statement and content: every header
is the canonical header below, so a verifier re-creates each header and compares bytes, and
no header field (mtime, owner, pax records) can carry unsigned changes.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from enclave.errors import IntegrityError, UnsafeArchiveError

BLOCK = 512
RECORD = 20 * BLOCK  # the end of the archive is zero-padded to a multiple of this
USTAR_MAX_SIZE = 8**11 - 1
PAX_NAME = b"././@PaxHeader"
MAX_NAME_BYTES = 4096
MAX_SEGMENT_BYTES = 255  # NAME_MAX of every filesystem a bundle is extracted to
MAX_EXTENDED_HEADER = 64 * 1024
REGULAR, PAX = b"0", b"x"  # the only typeflags the format writes (FORMAT.md 1.1)
PAX_KEYS = ("path", "size")  # the only pax records it writes, in this order
# Typeflags the format never writes, named in the refusal (everything else: "type X").
_KINDS = {
    b"\x00": "an old-style regular file",
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a FIFO",
    b"7": "a contiguous file",
    b"g": "a pax global header",
    b"L": "a GNU long name",
    b"K": "a GNU long link name",
    b"S": "a GNU sparse file",
}
# FORMAT.md 1.2, "control character": C0, DEL and C1 controls, the line and paragraph
# separators and the bidirectional formatting characters (listed, so that no verifier depends
# on its Unicode database's version to agree).
CONTROL_CHARACTERS = frozenset(
    [
        *range(0x00, 0x20),
        *range(0x7F, 0xA0),
        0x061C,
        0x200E,
        0x200F,
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    ]
)
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
    elif "\\" in name or any(ord(c) in CONTROL_CHARACTERS for c in name):
        reason = "backslash or control character"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        reason = "'..', '.' or empty path segment"
    elif any(len(part.encode("utf-8", "surrogateescape")) > MAX_SEGMENT_BYTES for part in name.split("/")):
        reason = f"a path segment longer than {MAX_SEGMENT_BYTES} bytes"
    elif unicodedata.normalize("NFC", name) != name:
        reason = "not in Unicode NFC form"
    else:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            reason = "not valid UTF-8"
    if reason:
        raise UnsafeArchiveError(f"member {name!r}: unsafe name ({reason})")


def check_tree(names: Iterable[str]) -> None:
    """Refuse a set of member names that cannot all be files of one tree: a name that is also
    another's directory (`a` and `a/x`), compared by collision key (UnsafeArchiveError)."""
    files: dict[str, str] = {}
    directories: dict[str, str] = {}
    for name in names:
        key = collision_key(name)
        files.setdefault(key, name)
        segments = key.split("/")
        for depth in range(1, len(segments)):
            directories.setdefault("/".join(segments[:depth]), name)
    for key, name in files.items():
        if key in directories:
            raise UnsafeArchiveError(
                f"member {name!r}: also a directory of member {directories[key]!r} (a file cannot be both)"
            )


# -- reading headers: what may be parsed at all (FORMAT.md 1.1, 5 step 4) -------------------------
def kind_of(typeflag: bytes) -> str:
    return _KINDS.get(typeflag, f"type {typeflag!r}")


def octal_field(field: bytes) -> int | None:
    """An octal number field as the format writes it (digits, then NUL or space); None for
    anything else, base-256 included."""
    digits = field.rstrip(b"\x00 ")
    if not digits or digits.strip(b"01234567"):
        return None
    return int(digits, 8)


def checksum_ok(block: bytes) -> bool:
    """The ustar checksum: the unsigned sum of the 512 bytes with the chksum field as spaces."""
    recorded = octal_field(block[148:156])
    return recorded is not None and recorded == sum(block[:148]) + 8 * 32 + sum(block[156:])


def check_header_block(block: bytes, where: str, after_pax: bool = False) -> int:
    """Check one 512-byte header block before any parser acts on it, in this order: the
    checksum (IntegrityError: not a header); the typeflag is `0` or `x`, and `0` after an `x`
    (UnsafeArchiveError); an `x` header's size field is octal and at most MAX_EXTENDED_HEADER
    (UnsafeArchiveError). Returns the size of an `x` header's records (0 for a `0` header)."""
    if not checksum_ok(block):
        raise IntegrityError(f"{where}: tar header checksum mismatch (not a tar header)")
    typeflag = block[156:157]
    if typeflag not in (REGULAR, PAX) or (after_pax and typeflag != REGULAR):
        what = "a second extended header in a row" if typeflag == PAX else kind_of(typeflag)
        name = block[:100].split(b"\x00", 1)[0].decode("utf-8", "replace")
        raise UnsafeArchiveError(
            f"{where}: {what} ({name!r}): a bundle holds only regular files (typeflag '0') and pax"
            " extended headers (typeflag 'x')"
        )
    if typeflag == REGULAR:
        return 0
    size = octal_field(block[124:136])
    if size is None:
        raise UnsafeArchiveError(f"{where}: extended tar header with a size field that is not octal")
    if size > MAX_EXTENDED_HEADER:
        raise UnsafeArchiveError(
            f"{where}: extended tar header of {size} bytes exceeds the {MAX_EXTENDED_HEADER} byte cap"
        )
    return size


def check_pax_records(data: bytes, where: str) -> None:
    """An `x` header's records: only `path` then `size`, each at most once, each well formed
    (`"%d %s=%s\\n"`, the length counting the whole record), nothing else (UnsafeArchiveError)."""
    seen: list[str] = []
    at = 0
    while at < len(data):
        space = data.find(b" ", at, at + 21)
        length_text = data[at:space] if space > at else b""
        if not length_text.isdigit() or length_text.startswith(b"0"):
            raise UnsafeArchiveError(f"{where}: malformed pax record at byte {at}")
        end = at + int(length_text)
        record = data[space + 1 : end]
        if end > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise UnsafeArchiveError(f"{where}: malformed pax record at byte {at}")
        key = record.split(b"=", 1)[0].decode("ascii", "replace")
        if key not in PAX_KEYS or key in seen or (seen and PAX_KEYS.index(key) < PAX_KEYS.index(seen[-1])):
            raise UnsafeArchiveError(
                f"{where}: pax record {key!r}: only 'path' then 'size', each at most once, are allowed"
            )
        value = record[len(key) + 1 : -1]
        if not value or (key == "size" and not value.isdigit()):
            raise UnsafeArchiveError(f"{where}: pax record {key!r} with an empty or malformed value")
        seen.append(key)
        at = end
