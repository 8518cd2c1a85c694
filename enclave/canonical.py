"""Canonical JSON bytes and UTC times, as every signed document of enclave writes them.

`canonical` is OLPC canonical JSON, the form TUF signs (docs/FORMAT.md section 4); times
are RFC 3339 in UTC to the second, `YYYY-MM-DDTHH:MM:SSZ`. Pure functions, no I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from securesystemslib.formats import encode_canonical

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def canonical(obj: Any) -> bytes:
    """OLPC canonical JSON, as TUF signs it."""
    data = encode_canonical(obj)
    assert isinstance(data, str)
    return data.encode("utf-8")


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(text: str) -> datetime:
    try:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"time {text!r} is not YYYY-MM-DDTHH:MM:SSZ") from None
