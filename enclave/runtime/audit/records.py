"""The audit log's line formats: records, checkpoints and their hashes (pure, no I/O).

Two files of JSON lines (docs/GATEWAY.md, "Audit log format"):

- `LOG`: records, `{"v":1,"seq":N,"prev":HEX,"time":...,"event":...,...}`. A record's *entry*
  is its line's exact bytes without the newline; its hash is the RFC 9162 leaf hash of the
  entry; `prev` is the previous record's hash (64 zeros for seq 0). Record seq N is leaf N.
- `LOG.checkpoints`: one DSSE envelope per line over a signed tree head (log id, tree size,
  root hash, time). Kept apart from the records so that cutting records off the end of `LOG`
  leaves a checkpoint behind that still names the lost size.

Hashes are over stored bytes, so a verifier never re-serialises JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from enclave.strictjson import strict_json
from enclave.trust.dsse import Envelope
from enclave.trust.merkle import leaf_hash

RECORD_FORMAT = 1
CHECKPOINT_PAYLOAD_TYPE = "application/vnd.enclave.audit-checkpoint+json"
CHECKPOINT_FORMAT = "enclave-audit-checkpoint/v1"

# Fields the writer sets; callers may not supply them.
RESERVED = frozenset({"v", "seq", "prev", "time"})
REQUIRED = ("v", "seq", "prev", "time", "event")

# The monitoring agent's check results (docs/GATEWAY.md, "Monitoring agent"). `error` means
# the check could not run; it counts as a failure (fail closed).
AGENT_CHECK = "agent-check"
CHECK_RESULTS = ("pass", "fail", "error", "not_applicable")
FAILED_RESULTS = frozenset({"fail", "error"})

# Written when an operator lets a writer continue a log whose last records no checkpoint
# covers (docs/GATEWAY.md 5.4): names those records by their leaf hashes.
TAIL_ACCEPTED = "unproven-tail-accepted"


def encode(obj: dict[str, Any]) -> bytes:
    """Canonical line bytes: sorted keys, no spaces, ASCII only (so the bytes are unambiguous)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "ascii"
    )


def now_text(moment: datetime | None = None) -> str:
    """UTC time with microseconds: 2026-01-02T03:04:05.123456Z."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_record(seq: int, prev: str, time: str, fields: dict[str, Any]) -> bytes:
    clash = RESERVED.intersection(fields)
    if clash:
        raise ValueError(f"record fields {sorted(clash)} are set by the log")
    return encode({**fields, "v": RECORD_FORMAT, "seq": seq, "prev": prev, "time": time})


def record_hash(entry: bytes) -> bytes:
    return leaf_hash(entry)


@dataclass(frozen=True)
class TreeHead:
    log_id: str
    tree_size: int
    root_hash: str  # hex
    time: str

    def payload(self) -> bytes:
        return encode(
            {
                "format": CHECKPOINT_FORMAT,
                "log_id": self.log_id,
                "root_hash": self.root_hash,
                "time": self.time,
                "tree_size": self.tree_size,
            }
        )

    @classmethod
    def from_payload(cls, payload: bytes) -> TreeHead:
        doc = json.loads(payload)
        if not isinstance(doc, dict) or set(doc) != {"format", "log_id", "root_hash", "time", "tree_size"}:
            raise ValueError("tree head needs exactly format, log_id, root_hash, time, tree_size")
        if doc["format"] != CHECKPOINT_FORMAT:
            raise ValueError(f"unknown checkpoint format {doc['format']!r}")
        size = doc["tree_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("tree_size must be a non-negative integer")
        root = doc["root_hash"]
        if not isinstance(root, str) or len(root) != 64 or any(c not in "0123456789abcdef" for c in root):
            raise ValueError("root_hash must be 64 lowercase hex digits")
        if not isinstance(doc["log_id"], str) or not isinstance(doc["time"], str):
            raise ValueError("log_id and time must be strings")
        return cls(doc["log_id"], size, root, doc["time"])


def checkpoint_line(envelope: Envelope) -> bytes:
    return envelope.to_json()


# A record holds at most an approval envelope (ML-DSA-87: ~9 KB) and a guard verdict; far below.
MAX_RECORD_BYTES = 1 << 20


def parse_record(entry: bytes) -> dict[str, Any]:
    """Parse one record line (without newline) strictly; raises ValueError."""
    doc = strict_json(entry, MAX_RECORD_BYTES)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    seq, prev = doc["seq"], doc["prev"]
    if doc["v"] != RECORD_FORMAT:
        raise ValueError(f"unknown record format v={doc['v']!r}")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ValueError("seq must be a non-negative integer")
    if not isinstance(prev, str) or len(prev) != 64:
        raise ValueError("prev must be 64 hex digits")
    if not isinstance(doc["event"], str) or not isinstance(doc["time"], str):
        raise ValueError("event and time must be strings")
    return doc


def agent_check_problem(record: dict[str, Any]) -> str | None:
    """Why an `agent-check` record is malformed, or None. Other events are not checked here."""
    if record["event"] != AGENT_CHECK:
        return None
    for key in ("check", "result", "summary"):
        if not isinstance(record.get(key), str):
            return f"agent-check record needs a string {key!r}"
    if record["result"] not in CHECK_RESULTS:
        return f"agent-check result {record['result']!r} is not one of {', '.join(CHECK_RESULTS)}"
    findings = record.get("findings")
    if not isinstance(findings, list) or not all(isinstance(f, dict) for f in findings):
        return "agent-check record needs a list of findings"
    return None
