"""Manual attestations: an approver's signed statement that a control on a host is, or is not, a
finding, for what the hardening role cannot check itself (a compensating control at the enclave
boundary, a setting checked by hand).

An attestation is a DSSE envelope (`application/vnd.enclave.attestation+json`) over the OLPC
canonical JSON of `{"_type", "control", "host", "status", "explanation", "time", "expires",
"approver"}`, signed by one key of the trust root's `approver` role (docs/FORMAT.md, "Evidence
package"). `enclave provision --attestations DIR` and `enclave evidence build --attestations DIR`
merge the valid, unexpired ones into the host's CKLB (status, and who and when in the finding
details and comments) and ignore every other one, saying why.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from enclave.canonical import canonical, format_time, parse_time
from enclave.errors import MALFORMED_DOCUMENT, EnclaveError, UsageError
from enclave.fileio import read_regular
from enclave.strictjson import strict_json
from enclave.trust.dsse import Envelope, verify_signatures
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot

PAYLOAD_TYPE = "application/vnd.enclave.attestation+json"
TYPE = "urn:enclave:attestation:v1"
FIELDS = frozenset({"_type", "control", "host", "status", "explanation", "time", "expires", "approver"})
STATUSES = ("not_a_finding", "open")
CONTROL_ID = re.compile(r"(?:UBTU|RHEL)-\d{2}-\d{6}")
HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
DEFAULT_DAYS = 365  # reviewed at least yearly, as a STIG review is
MAX_DAYS = 3 * 365
MAX_EXPLANATION = 4000
MAX_BYTES = 64 * 1024
SKEW = timedelta(minutes=5)  # an attestation signed this far ahead of the verifier's clock still counts
CATALOGUE = ("playbooks", "roles", "enclave_harden", "files", "controls.yml")


@dataclass(frozen=True)
class Attestation:
    file: str
    sha256: str
    control: str
    host: str
    status: str
    explanation: str
    time: str
    expires: str
    approver: str  # keyid of the approver-role key whose signature verified

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Ignored:
    file: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def known_controls() -> set[str]:
    """The control IDs of the hardening role shipped with enclave (its catalogue)."""
    from enclave.resources import data_path

    path = data_path(*CATALOGUE)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        return {str(entry["id"]) for entry in doc["enclave_harden_catalogue"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: cannot read the control catalogue: {exc}") from None


def sign(
    control: str,
    host: str,
    status: str,
    explanation: str,
    key: SigningKey,
    now: datetime,
    days: int = DEFAULT_DAYS,
    root: TrustRoot | None = None,
) -> bytes:
    """The signed attestation (envelope JSON and a newline). UsageError for a bad argument, or
    for a key that is not of `root`'s approver role when a root is given."""
    if not CONTROL_ID.fullmatch(control):
        raise UsageError(f"{control!r}: not a control ID (such as UBTU-22-255020)")
    if control not in known_controls():
        raise UsageError(f"{control}: not a control of enclave_harden (playbooks/.../controls.yml)")
    if not HOST.fullmatch(host):
        raise UsageError(f"--host {host!r}: not a host name")
    if status not in STATUSES:
        raise UsageError(f"--status {status!r}: choose one of {', '.join(STATUSES)}")
    text = explanation.strip()
    if not text or len(text) > MAX_EXPLANATION:
        raise UsageError(f"--explanation: give the reason, in 1 to {MAX_EXPLANATION} characters")
    if not 1 <= days <= MAX_DAYS:
        raise UsageError(f"--expires {days}: between 1 and {MAX_DAYS} days")
    if root is not None and key.keyid not in root.roles["approver"].keyids:
        raise UsageError(
            f"key {key.keyid[:16]}: not a key of the approver role of trust root v{root.version}"
        )
    doc = {
        "_type": TYPE,
        "control": control,
        "host": host,
        "status": status,
        "explanation": text,
        "time": format_time(now),
        "expires": format_time(now + timedelta(days=days)),
        "approver": key.keyid,
    }
    envelope = Envelope(PAYLOAD_TYPE, canonical(doc))
    envelope.sign(key)
    return envelope.to_json() + b"\n"


def attestation_files(paths: Iterable[Path]) -> list[Path]:
    """The files given: each file as it is, each directory's `*.json` files in name order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.glob("*.json")) if not p.name.startswith("."))
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"{path}: no such attestation file or directory")
    return found


def check(data: bytes, name: str, root: TrustRoot, now: datetime) -> Attestation:
    """One attestation, valid and unexpired at `now`; EnclaveError saying why not."""
    envelope = Envelope.from_json(data, name, MAX_BYTES)
    if envelope.payload_type != PAYLOAD_TYPE:
        raise UsageError(f"{name}: payload type {envelope.payload_type!r} is not an attestation")
    try:
        doc = strict_json(envelope.payload, MAX_BYTES)
        if not isinstance(doc, dict) or set(doc) != FIELDS or doc["_type"] != TYPE:
            raise ValueError(f"fields must be exactly {', '.join(sorted(FIELDS))}")
        if canonical(doc) != envelope.payload:
            raise ValueError("payload is not canonical JSON")
        if not all(isinstance(doc[k], str) for k in FIELDS):
            raise ValueError("every field must be a string")
        signed, expires = parse_time(doc["time"]), parse_time(doc["expires"])
    except MALFORMED_DOCUMENT as exc:
        raise UsageError(f"{name}: not an attestation: {exc}") from None
    if not CONTROL_ID.fullmatch(doc["control"]) or doc["status"] not in STATUSES:
        raise UsageError(f"{name}: bad control {doc['control']!r} or status {doc['status']!r}")
    if not HOST.fullmatch(doc["host"]) or not doc["explanation"].strip():
        raise UsageError(f"{name}: bad host or empty explanation")
    verified = verify_signatures(envelope, root.role_keys("approver")).keyids
    if doc["approver"] not in verified:
        raise UsageError(
            f"{name}: not signed by an approver-role key of trust root v{root.version} "
            f"(names {doc['approver'][:16]}, valid approver signatures: {len(verified)})"
        )
    if expires <= now:
        raise UsageError(f"{name}: expired at {doc['expires']}")
    if signed > now + SKEW or expires <= signed:
        raise UsageError(f"{name}: signed at {doc['time']}, after now or after its expiry")
    return Attestation(
        name,
        hashlib.sha256(data).hexdigest(),
        doc["control"],
        doc["host"],
        doc["status"],
        doc["explanation"],
        doc["time"],
        doc["expires"],
        doc["approver"],
    )


def load(paths: Sequence[Path], root: TrustRoot, now: datetime) -> tuple[list[Attestation], list[Ignored]]:
    """Every attestation under `paths`: the valid, unexpired ones, and the others with why."""
    valid: list[Attestation] = []
    ignored: list[Ignored] = []
    for path in attestation_files(paths):
        try:
            valid.append(check(read_regular(path, "attestation", MAX_BYTES), str(path), root, now))
        except EnclaveError as exc:
            ignored.append(Ignored(str(path), str(exc)))
    return valid, ignored


def merge(
    doc: MutableMapping[str, Any], host: str, attestations: Sequence[Attestation]
) -> tuple[list[Attestation], list[Ignored]]:
    """Apply `host`'s attestations to a CKLB document in place (the newest per control wins);
    returns those applied and those for controls the checklist does not have."""
    rules: dict[str, MutableMapping[str, Any]] = {
        str(rule["rule_version"]): rule for stig in doc.get("stigs", []) for rule in stig.get("rules", [])
    }
    newest: dict[str, Attestation] = {}
    for item in sorted((a for a in attestations if a.host == host), key=lambda a: (a.time, a.file)):
        newest[item.control] = item
    applied: list[Attestation] = []
    missing: list[Ignored] = []
    for control, item in sorted(newest.items()):
        rule = rules.get(control)
        if rule is None:
            missing.append(Ignored(item.file, f"{control} is not in the checklist of {host}"))
            continue
        before = f"{rule.get('status')}: {rule.get('finding_details', '')}"
        rule["status"] = item.status
        rule["finding_details"] = (
            f"Manual attestation ({item.status}) by approver key {item.approver} at {item.time}, "
            f"expires {item.expires}: {item.explanation}\nAutomated result before it: {before}"
        )
        note = f"attested {item.status} by {item.approver[:16]} at {item.time} (sha256 {item.sha256[:16]})"
        rule["comments"] = f"{rule['comments']}; {note}" if rule.get("comments") else note
        applied.append(item)
    return applied, missing


def for_hosts(attestations: Sequence[Attestation], hosts: Iterable[str]) -> list[Ignored]:
    """Attestations for a host that has no checklist here: ignored, saying so."""
    known = set(hosts)
    return [Ignored(a.file, f"no checklist for host {a.host}") for a in attestations if a.host not in known]


def summary(applied: Mapping[str, Sequence[Attestation]], ignored: Sequence[Ignored]) -> list[str]:
    """One line per attestation, for a terminal."""
    lines = [
        f"attestation {a.file}: {a.control} on {host} = {a.status} (approver {a.approver[:16]})"
        for host, items in applied.items()
        for a in items
    ]
    lines += [
        f"attestation ignored: {i.reason if i.reason.startswith(i.file) else f'{i.file}: {i.reason}'}"
        for i in ignored
    ]
    return lines
