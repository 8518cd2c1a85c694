"""What the report shows, computed from the package's own files only (`summary.json`): per host
the controls by category and status, the bundles admitted and refused, the gateway's decisions
over time and per rule, every held request with its approvers, the audit logs' verification.
Every count carries the package path of the file it was counted from, so the page can link it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from enclave.canonical import format_time
from enclave.errors import MALFORMED_DOCUMENT, EnclaveError
from enclave.strictjson import strict_json
from enclave.trust.dsse import Envelope
from enclave.trust.receipts import analyse_log
from enclave.trust.trusted import TrustedRoot

CATEGORIES = ("CAT I", "CAT II", "CAT III")
CATEGORY_OF_SEVERITY = {"high": "CAT I", "medium": "CAT II", "low": "CAT III"}
STATUSES = ("open", "not_a_finding", "not_applicable", "not_reviewed")
# Gateway decision series, in the order the page stacks them.
SERIES = ("allowed", "refused", "held", "approved", "denied", "expired", "withheld")
OF_DECISION = {"allow": "allowed", "refuse": "refused", "hold": "held", "approve": "approved"}
OF_DECISION |= {"deny": "denied", "expire": "expired"}
BUCKETS = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)  # seconds; the first giving <= MAX_BUCKETS
MAX_BUCKETS = 48
MAX_LINE = 1 << 20
UNREADABLE: tuple[type[Exception], ...] = (EnclaveError, *MALFORMED_DOCUMENT)


def in_window(time: str | None, window: tuple[str | None, str | None]) -> bool:
    """Whether a `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` time is in the window (inclusive, whole seconds)."""
    since, until = window
    if time is None:
        return since is None and until is None
    moment = time[:19]
    return (since is None or moment >= since[:19]) and (until is None or moment <= until[:19])


def _time(text: str) -> datetime:
    return datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)


# -- receipts -------------------------------------------------------------------------------------------
def receipts(path: Path) -> list[dict[str, Any]]:
    """One entry per readable receipt of the log (unreadable lines are the verifier's findings)."""
    found = []
    for index, line in enumerate(path.read_bytes().split(b"\n")):
        if not line:
            continue
        try:
            envelope = Envelope.from_json(line, f"{path}:{index + 1}", MAX_LINE)
            doc = strict_json(envelope.payload, MAX_LINE)
            bundle = doc["bundle"]
            found.append(
                {
                    "line": index + 1,
                    "seq": doc["log"]["seq"],
                    "time": str(doc["time"]),
                    "result": str(doc["result"]),
                    "mode": str(doc.get("mode", "admission")),
                    "name": bundle.get("name"),
                    "version": bundle.get("version"),
                    "digest": (bundle.get("digest") or {}).get("sha256"),
                    "files": [Path(str(f.get("path", ""))).name for f in bundle.get("files", [])],
                    "signers": [
                        {"keyid": s["keyid"], "scheme": s.get("scheme"), "roles": s.get("roles", [])}
                        for s in doc.get("signers", [])
                    ],
                    "claimed": list(bundle.get("signatureKeyids", [])),
                    "error": (doc.get("error") or {}).get("message"),
                    "exitCode": doc.get("exitCode"),
                    "receiptSigners": [s.keyid for s in envelope.signatures],
                }
            )
        except UNREADABLE:
            continue
    return found


def _bundles(package: Path, rel: str | None, window: tuple[str | None, str | None]) -> dict[str, Any]:
    if rel is None:
        return {"source": None, "events": [], "admitted": 0, "refused": 0, "rechecked": 0}
    events = [e for e in receipts(package / rel) if in_window(e["time"], window)]
    admitted = sum(1 for e in events if e["result"] == "verified" and e["mode"] == "admission")
    refused = sum(1 for e in events if e["result"] != "verified")
    return {
        "source": rel,
        "events": events,
        "admitted": admitted,
        "refused": refused,
        "rechecked": len(events) - admitted - refused,
    }


def _receipt_chain(package: Path, rel: str | None, root: TrustedRoot) -> dict[str, Any]:
    if rel is None:
        return {"source": None, "ok": True, "receipts": 0, "problems": [], "warnings": []}
    report = analyse_log((package / rel).read_bytes(), rel, root)
    doc = report.to_dict()
    doc["problems"] = report.problems + report.trust_problems
    return {"source": rel} | {
        k: doc[k] for k in ("ok", "receipts", "signed", "unsigned", "problems", "warnings")
    }


# -- hosts ----------------------------------------------------------------------------------------------
def _hosts(
    package: Path, checklists: dict[str, dict[str, str]], reports: Sequence[str]
) -> list[dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    for rel in reports:
        doc = json.loads((package / rel).read_bytes())
        bundle = doc.get("bundle") or {}
        for host, run in (doc.get("hosts") or {}).items():
            runs[host] = {
                "report": rel,
                "result": run.get("result"),
                "reason": run.get("reason"),
                "mode": doc.get("mode"),
                "started": doc.get("started"),
                "bundle": f"{bundle.get('name')} {bundle.get('version')}",
            }
    hosts = []
    for host in sorted(set(checklists) | set(runs)):
        entry: dict[str, Any] = {"host": host, "run": runs.get(host), "checklist": None}
        if host in checklists:
            rel = checklists[host]["effective"]
            counts = {cat: dict.fromkeys(STATUSES, 0) for cat in CATEGORIES}
            findings = []
            doc = json.loads((package / rel).read_bytes())
            for stig in doc["stigs"]:
                for rule in stig["rules"]:
                    category = CATEGORY_OF_SEVERITY.get(rule["severity"], "CAT II")
                    counts[category][rule["status"]] = counts[category].get(rule["status"], 0) + 1
                    if rule["status"] == "open":
                        findings.append(_finding(rule, category))
            findings.sort(key=lambda f: (CATEGORIES.index(f["category"]), f["id"]))
            entry["checklist"] = {
                "source": checklists[host]["source"],
                "effective": rel,
                "attested": rel != checklists[host]["source"],
                "counts": counts,
                "open": findings,
            }
        hosts.append(entry)
    hosts.sort(key=_worst_first)
    return hosts


def _finding(rule: dict[str, Any], category: str) -> dict[str, Any]:
    return {
        "id": rule["rule_version"],
        "vuln": rule["group_id"],
        "rule": rule["rule_id"],
        "title": rule["rule_title"],
        "severity": rule["severity"],
        "category": category,
        "ccis": list(rule.get("ccis") or []),
        "details": rule.get("finding_details") or "",
        "fix": rule.get("fix_text") or "",
        "attested": str(rule.get("finding_details") or "").startswith("Manual attestation"),
    }


def _worst_first(host: dict[str, Any]) -> tuple[Any, ...]:
    checklist = host["checklist"]
    if checklist is None:
        return (1, 0, 0, 0, host["host"])
    opened = [-checklist["counts"][cat]["open"] for cat in CATEGORIES]
    return (0, *opened, host["host"])


# -- gateway --------------------------------------------------------------------------------------------
def _records(path: Path) -> list[dict[str, Any]]:
    found = []
    if path.is_file():
        for line in path.read_bytes().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                found.append(doc)
    return found


def series_of(record: dict[str, Any]) -> tuple[str, str] | None:
    """(series, detail) of a record the page counts: a decision, an access refusal, a withheld
    answer; None for any other record."""
    event = record.get("event")
    if event == "decision" and record.get("decision") in OF_DECISION:
        series = OF_DECISION[str(record["decision"])]
        detail = f"refused by {record.get('layer') or 'request checks'}" if series == "refused" else series
        return series, detail
    if event == "access" and record.get("decision") == "refuse":
        return "refused", "refused by access control"
    if event == "answer":
        return "withheld", "answer withheld by the guard"
    return None


def _gateway(package: Path, exported: dict[str, Any]) -> dict[str, Any]:
    folder = exported["dir"]
    records_rel = f"{folder}/records.jsonl"
    verification_rel = f"{folder}/verification.json"
    records = _records(package / records_rel)
    totals: Counter[str] = Counter()
    details: Counter[str] = Counter()
    by_rule: dict[str, Counter[str]] = {}
    times: list[tuple[datetime, str]] = []
    for record in records:
        seen = series_of(record)
        if seen is None:
            continue
        series, detail = seen
        totals[series] += 1
        details[detail] += 1
        rule = str(record.get("rule") or record.get("reason") or "(none)")
        by_rule.setdefault(rule, Counter())[series] += 1
        if isinstance(record.get("time"), str):
            times.append((_time(record["time"]), series))
    verification = json.loads((package / verification_rel).read_bytes())
    return {
        "log": exported["log"],
        "dir": folder,
        "records": records_rel,
        "verificationFile": verification_rel,
        "checkpointsFile": f"{folder}/checkpoints.jsonl",
        "recordCount": len(records),
        "totals": {s: totals[s] for s in SERIES},
        "details": dict(sorted(details.items())),
        "byRule": {rule: {s: c[s] for s in SERIES} for rule, c in sorted(by_rule.items())},
        "timeline": _timeline(times),
        "held": _held(records),
        "checks": verification.get("checks") or {},
        "verification": {
            k: verification.get(k)
            for k in (
                "ok",
                "records",
                "checkpoints",
                "verified_checkpoints",
                "covered_records",
                "unproven_records",
                "last_checkpoint",
                "problems",
                "warnings",
                "log_id",
            )
        },
    }


def _timeline(times: list[tuple[datetime, str]]) -> dict[str, Any]:
    if not times:
        return {"bucketSeconds": 0, "buckets": []}
    start, end = min(t for t, _ in times), max(t for t, _ in times)
    span = (end - start).total_seconds()
    size = next((b for b in BUCKETS if span / b < MAX_BUCKETS), BUCKETS[-1])
    origin = datetime.fromtimestamp(int(start.timestamp()) // size * size, UTC)
    count = int((end - origin).total_seconds() // size) + 1
    buckets = [dict.fromkeys(SERIES, 0) for _ in range(count)]
    for moment, series in times:
        buckets[int((moment - origin).total_seconds() // size)][series] += 1
    return {
        "bucketSeconds": size,
        "buckets": [
            {"start": format_time(origin + timedelta(seconds=i * size)), "counts": b}
            for i, b in enumerate(buckets)
        ],
    }


def _held(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    held: dict[str, dict[str, Any]] = {}
    for record in records:
        request = record.get("id")
        event, decision = record.get("event"), record.get("decision")
        if event == "decision" and decision == "hold":
            held[str(request)] = {
                "id": request,
                "rule": record.get("rule"),
                "layer": record.get("layer"),
                "requester": record.get("requester"),
                "heldAt": record.get("time"),
                "seq": record.get("seq"),
                "outcome": "pending",
                "resolvedAt": None,
                "approvals": [],
                "deciders": [],
            }
        entry = held.get(str(request))
        if entry is None:
            continue
        if event == "approval":
            entry["approvals"].append(
                {
                    "approver": record.get("approver"),
                    "decision": record.get("decision"),
                    "signedTime": record.get("signed_time"),
                    "recordedTime": record.get("time"),
                    "seq": record.get("seq"),
                }
            )
        elif event == "decision" and decision in ("approve", "deny", "expire"):
            entry["outcome"] = OF_DECISION[str(decision)]
            entry["resolvedAt"] = record.get("time")
            entry["deciders"] = list(record.get("approvers") or [])
    return sorted(held.values(), key=lambda h: str(h["heldAt"]))


# -- the whole ------------------------------------------------------------------------------------------
def summary(
    package: Path,
    *,
    created: str,
    window: tuple[str | None, str | None],
    root: TrustedRoot,
    signer: str,
    receipts: str | None,
    statements: list[dict[str, Any]],
    reports: Sequence[str],
    checklists: dict[str, dict[str, str]],
    attestations: dict[str, Any],
    audits: Sequence[dict[str, Any]],
    notes: list[str],
) -> dict[str, Any]:
    hosts = _hosts(package, checklists, reports)
    bundles = _bundles(package, receipts, window)
    gateways = [_gateway(package, exported) for exported in audits]
    open_by_category = {
        cat: sum(h["checklist"]["counts"][cat]["open"] for h in hosts if h["checklist"]) for cat in CATEGORIES
    }
    return {
        "format": "enclave-evidence-summary/v1",
        "created": created,
        "window": {"since": window[0], "until": window[1]},
        "signer": signer,
        "trustRoot": {"version": root.version, "digest": root.digest, "source": "trust/root.json"},
        "totals": {
            "hosts": len(hosts),
            "openFindings": open_by_category,
            "admitted": bundles["admitted"],
            "refused": bundles["refused"],
            "decisions": sum(sum(g["totals"].values()) for g in gateways),
            "held": sum(len(g["held"]) for g in gateways),
            "auditLogsVerified": all(g["verification"]["ok"] for g in gateways),
        },
        "hosts": hosts,
        "bundles": bundles,
        "receipts": _receipt_chain(package, receipts, root),
        "statements": statements,
        "reports": list(reports),
        "gateways": gateways,
        "attestations": attestations,
        "notes": notes,
    }
