"""Held requests that survive a restart (docs/GATEWAY.md 12.6).

The audit log says what happened to a held request (hold, approvals, approve / deny / expire)
but not what it asked: it keeps hashes, never prompts. The request's bytes are needed to run it
after approval, so each pending held request also has a journal file of its own,
`HELD_DIR/req-ID.json` (directory 0700, file 0600, written atomically and fsync'd before the
`hold` record, removed once the request is decided). At start the gateway reads the journal and
lets the log decide: a request is restored, with its original expiry and the approvals already
recorded, only when the log has its `hold` record with the same request hash, and no
`approve`, `deny` or `expire` record. An `approve` record means the stored request was (or may
have been) forwarded, so it is never forwarded again: each held request runs at most once.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave.errors import MALFORMED_DOCUMENT, UsageError
from enclave.fileio import os_error
from enclave.runtime.audit.records import parse_record
from enclave.runtime.gateway.approvals import Held
from enclave.runtime.gateway.inspect import request_hash
from enclave.trust.state import atomic_write, fsync_dir

JOURNAL_FORMAT = "enclave-held/v1"
_ID = re.compile(r"^req-[0-9a-f]{32}$")
_ID_IN_RECORD = re.compile(rb'"id":"(req-[0-9a-f]{32})"')
_DECIDED = frozenset({"approve", "deny", "expire"})


@dataclass(frozen=True)
class Entry:
    """One journalled held request, as written when it was held."""

    id: str
    request_hash: str
    method: str
    path: str
    body: bytes
    rule_id: str
    rule_description: str
    required: int
    requester: str | None  # the requester's signing keyid, if any
    user: dict[str, Any] | None  # the requester's identity record
    client: str | None
    created: float
    expires: float

    @classmethod
    def of(cls, held: Held, client: str | None) -> Entry:
        return cls(
            held.id, held.request_hash, held.method, held.path, held.body, held.rule.id,
            held.rule.description, held.required, held.requester, held.user, client,
            held.created, held.expires,
        )  # fmt: skip

    def to_json(self) -> bytes:
        doc = {
            "format": JOURNAL_FORMAT,
            "id": self.id,
            "request_hash": self.request_hash,
            "method": self.method,
            "path": self.path,
            "body_b64": base64.b64encode(self.body).decode("ascii"),
            "rule": self.rule_id,
            "rule_description": self.rule_description,
            "approvals_required": self.required,
            "requester": self.requester,
            "user": self.user,
            "client": self.client,
            "created": self.created,
            "expires": self.expires,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Entry:
        doc = json.loads(data)
        if doc["format"] != JOURNAL_FORMAT or not _ID.match(doc["id"]):
            raise ValueError("not a held-request journal entry")
        entry = cls(
            id=doc["id"],
            request_hash=str(doc["request_hash"]),
            method=str(doc["method"]),
            path=str(doc["path"]),
            body=base64.b64decode(doc["body_b64"], validate=True),
            rule_id=str(doc["rule"]),
            rule_description=str(doc["rule_description"]),
            required=int(doc["approvals_required"]),
            requester=doc["requester"],
            user=doc["user"],
            client=doc["client"],
            created=float(doc["created"]),
            expires=float(doc["expires"]),
        )
        if request_hash(entry.method, entry.path, entry.body) != entry.request_hash:
            raise ValueError("the stored request bytes do not match its hash")
        return entry


class HeldJournal:
    """The directory of pending held requests' bytes. Blocking I/O: call from a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            info = os.lstat(directory)
        except OSError as exc:
            raise os_error(exc, directory, "cannot create the held-request directory") from None
        if not stat.S_ISDIR(info.st_mode):
            raise UsageError(f"{directory}: the held-request directory must be a directory, not a link")
        if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(directory, 0o700)  # prompts live here: nobody else reads them
        elif stat.S_IMODE(info.st_mode) & 0o077:
            raise UsageError(f"{directory}: readable by others; it holds request bodies (chmod 700)")

    def _file(self, request_id: str) -> Path:
        if not _ID.match(request_id):
            raise ValueError(f"bad request id {request_id!r}")
        return self.directory / f"{request_id}.json"

    def write(self, entry: Entry) -> None:
        atomic_write(self._file(entry.id), entry.to_json(), 0o600)

    def remove(self, request_id: str) -> None:
        self._file(request_id).unlink(missing_ok=True)
        fsync_dir(self.directory)

    def load(self) -> tuple[list[Entry], list[tuple[str, str]]]:
        """Every entry, and the files that could not be read (name, reason). Leftover temporary
        files of an interrupted write are removed: the entry they were to become was never
        followed by its `hold` record."""
        entries: list[Entry] = []
        bad: list[tuple[str, str]] = []
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith("."):
                path.unlink(missing_ok=True)
                continue
            try:
                entry = Entry.from_json(path.read_bytes())
                if path.name != f"{entry.id}.json":
                    raise ValueError("file name and id differ")
                entries.append(entry)
            except OSError as exc:
                bad.append((path.name, exc.strerror or str(exc)))
            except MALFORMED_DOCUMENT as exc:
                bad.append((path.name, str(exc) or type(exc).__name__))
        return entries, bad

    def discard(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)


@dataclass
class Resolution:
    restore: list[tuple[Entry, list[dict[str, Any]]]] = field(default_factory=list)  # with approvals
    discard: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)


def resolve(entries: list[Entry], log: Path) -> Resolution:
    """What the (verified) audit log says about each journalled request."""
    wanted = {e.id: e for e in entries}
    holds: dict[str, str] = {}
    decided: dict[str, str] = {}
    approvals: dict[str, list[dict[str, Any]]] = {i: [] for i in wanted}
    if wanted:
        with log.open("rb") as handle:
            for line in handle:
                found = _ID_IN_RECORD.search(line)
                if found is None or found.group(1).decode() not in wanted:
                    continue
                try:
                    record = parse_record(line.rstrip(b"\n"))
                except ValueError:
                    continue  # a torn last line: the writer cut it at start
                request_id = record.get("id")
                if record["event"] == "decision" and request_id in wanted:
                    if record.get("decision") == "hold":
                        holds[request_id] = str(record.get("request_hash"))
                    elif record.get("decision") in _DECIDED:
                        decided[request_id] = str(record["decision"])
                elif record["event"] == "approval" and request_id in wanted:
                    approvals[request_id].append(record)
    result = Resolution()
    for entry in entries:
        if entry.id in decided:
            result.discard.append((entry.id, f"already decided ({decided[entry.id]})"))
        elif entry.id not in holds:
            result.discard.append(
                (entry.id, "no hold record: the gateway stopped before the hold was recorded")
            )
        elif holds[entry.id] != entry.request_hash:
            result.discard.append((entry.id, "the journalled request's hash differs from the hold record's"))
        else:
            result.restore.append((entry, approvals[entry.id]))
    return result
