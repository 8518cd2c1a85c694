"""The one strict JSON reader of every signed or trusted document (docs/FORMAT.md, "Parses
strictly"), and of the gateway's request bodies, approvals and audit records."""

from __future__ import annotations

import json
import re
from typing import Any

from enclave.errors import DocumentLimitError

MAX_JSON_DEPTH = 32  # the deepest signed or trusted document nests 5 levels
# A string, or an unterminated one to the end: possessive, so the scan is linear on any input.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_A_BRACKET = re.compile(rb"[^\[\]{}]+")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate key {key!r}")
        doc[key] = value
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The one strict JSON reader of every signed or trusted document (FORMAT.md, "Parses
    strictly"): at most `max_bytes` and `max_depth` levels of nesting (DocumentLimitError, checked
    before parsing), UTF-8 without a byte-order mark, RFC 8259 JSON with no duplicate key in
    any object and no NaN or Infinity. Raises a ValueError (MALFORMED_DOCUMENT) otherwise."""
    if len(data) > max_bytes:
        raise DocumentLimitError(f"{len(data)} bytes exceeds the {max_bytes} byte cap")
    brackets = _NOT_A_BRACKET.sub(b"", _JSON_STRING.sub(b"", data))
    depth = deepest = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    if deepest > max_depth:
        raise DocumentLimitError(f"nested more than {max_depth} levels deep")
    if data.startswith(b"\xef\xbb\xbf"):
        raise ValueError("a UTF-8 byte-order mark is not allowed")
    text = data.decode("utf-8")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:  # not reached under MAX_JSON_DEPTH; never a traceback either way
        raise DocumentLimitError(f"nested more than {max_depth} levels deep") from None
