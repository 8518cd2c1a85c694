"""Audit log verification: hash chain, signed checkpoints, Merkle roots, forks, truncation.

`analyse` is pure (bytes in, findings out) and shared by `verify_log` (the auditor's command)
and the writer (which refuses to append to a log that does not verify).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from enclave.errors import IntegrityError, TrustError, UsageError
from enclave.runtime.audit.records import (
    AGENT_CHECK,
    CHECKPOINT_PAYLOAD_TYPE,
    FAILED_RESULTS,
    TAIL_ACCEPTED,
    TreeHead,
    agent_check_problem,
    parse_record,
)
from enclave.trust.dsse import Envelope, verify_signatures
from enclave.trust.keys import PublicKey
from enclave.trust.merkle import GENESIS_PREV, MerkleTree, leaf_hash, verify_consistency
from enclave.trust.trusted import TrustedRoot

MAX_PROBLEMS = 50  # a log with every line changed should not print a million lines
MAX_FAILED_CHECKS = 20  # the most recent failing agent checks shown in a report


class LogVerificationError(IntegrityError):
    """The log failed verification (exit code 3); `report` holds every finding."""

    def __init__(self, message: str, report: AuditReport) -> None:
        super().__init__(message)
        self.report = report


def checkpoints_path(log: Path) -> Path:
    return log.with_name(log.name + ".checkpoints")


@dataclass(frozen=True)
class Checkpoint:
    where: str  # file:line
    head: TreeHead
    signers: tuple[str, ...]
    line: bytes


@dataclass
class AuditReport:
    """What `verify_log` found. `ok` is False when any problem was found."""

    log: str
    records: int = 0
    log_id: str | None = None
    root_hash: str = ""
    checkpoints: int = 0
    verified_checkpoints: int = 0
    covered_records: int = 0  # records under the largest checkpoint that matches
    unproven_records: int = 0  # records after it: nothing proves who wrote them
    accepted_tails: list[dict[str, Any]] = field(default_factory=list)  # TAIL_ACCEPTED records
    witness_saved: str | None = None  # where --save-witness appended the last checkpoint
    last_checkpoint: dict[str, Any] | None = None
    decisions: dict[str, int] = field(default_factory=dict)
    policy_digests: list[str] = field(default_factory=list)
    model_digests: list[str] = field(default_factory=list)
    checks: dict[str, dict[str, int]] = field(default_factory=dict)  # agent check -> result -> count
    failed_checks: list[str] = field(default_factory=list)  # the last failing agent checks, LOG:line
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


@dataclass
class Analysis:
    report: AuditReport
    entries: list[bytes]  # complete record lines, without newline
    tree: MerkleTree
    checkpoints: list[Checkpoint]  # signature-valid checkpoints, file order
    last_record: dict[str, Any] | None
    torn_bytes: int  # bytes after the last newline of LOG
    policies: dict[str, str]  # policy digest -> policy text, from gateway-start records


class _Findings:
    def __init__(self, report: AuditReport) -> None:
        self.report = report
        self.dropped = 0

    def problem(self, text: str) -> None:
        if len(self.report.problems) < MAX_PROBLEMS:
            self.report.problems.append(text)
        else:
            self.dropped += 1

    def finish(self) -> None:
        if self.dropped:
            self.report.problems.append(f"... and {self.dropped} more problems")


def analyse(
    name: str,
    data: bytes,
    checkpoint_sources: Sequence[tuple[str, bytes | None]],
    keys: Mapping[str, PublicKey],
    accept: Callable[[Sequence[PublicKey]], str | None],
) -> Analysis:
    """Check records and checkpoints.

    `checkpoint_sources`: (name, bytes or None when the file is missing); `accept(signers)`
    returns None when the valid signers meet the audit role, else the reason they do not.
    """
    report = AuditReport(log=name)
    found = _Findings(report)
    entries, torn = _lines(data)
    if torn:
        report.warnings.append(
            f"{name}: the last {len(torn)} bytes are an incomplete line (a write cut short by a crash); "
            "ignored: no response is sent before its record is complete and synced"
        )
    leaves: list[bytes] = []
    prev = GENESIS_PREV
    last: dict[str, Any] | None = None
    policies: dict[str, str] = {}
    policy_digests: dict[str, None] = {}
    model_digests: dict[str, None] = {}
    for index, entry in enumerate(entries):
        where = f"{name}:{index + 1}"
        digest = leaf_hash(entry)
        leaves.append(digest)
        try:
            record = parse_record(entry)
        except ValueError as exc:
            found.problem(f"{where}: unreadable record ({exc}): the line was modified")
            prev = digest.hex()
            last = None
            continue
        if record["seq"] != index:
            found.problem(
                f"{where}: seq {record['seq']} where {index} was expected: "
                "records deleted, inserted or reordered"
            )
        if record["prev"] != prev:
            found.problem(
                f"{where}: prev does not match the hash of the record before it: "
                "that record was modified, or records were deleted or reordered"
            )
        prev = digest.hex()
        last = record
        if index == 0:
            if record["event"] != "log-open" or not isinstance(record.get("log_id"), str):
                found.problem(f"{where}: the first record must be the log-open event carrying log_id")
            else:
                report.log_id = record["log_id"]
        if record["event"] == TAIL_ACCEPTED:
            _accepted_tail(where, record, leaves, report, found)
        malformed = agent_check_problem(record)
        if malformed is not None:
            found.problem(f"{where}: {malformed}: the line was modified or written by a broken agent")
        else:
            _tally_check(where, record, report)
        _tally(record, report, policies, policy_digests, model_digests)
    report.records = len(entries)
    report.policy_digests = list(policy_digests)
    report.model_digests = list(model_digests)
    tree = MerkleTree(leaves)
    report.root_hash = tree.root().hex()
    checkpoints = _checkpoints(checkpoint_sources, keys, accept, report, found)
    _against_records(name, checkpoints, tree, report, found)
    found.finish()
    return Analysis(report, entries, tree, checkpoints, last, len(torn), policies)


def _lines(data: bytes) -> tuple[list[bytes], bytes]:
    parts = data.split(b"\n")
    torn = parts.pop()  # b"" when the data ends with a newline
    return parts, torn


def _tally(
    record: dict[str, Any],
    report: AuditReport,
    policies: dict[str, str],
    policy_digests: dict[str, None],
    model_digests: dict[str, None],
) -> None:
    decision = record.get("decision")
    if record["event"] == "decision" and isinstance(decision, str):
        report.decisions[decision] = report.decisions.get(decision, 0) + 1
    policy = record.get("policy_digest")
    if isinstance(policy, str):
        policy_digests[policy] = None
        text = record.get("policy")
        if isinstance(text, str):
            policies[policy] = text
    model = record.get("model_digest")
    if isinstance(model, str):
        model_digests[model] = None


def _tally_check(where: str, record: dict[str, Any], report: AuditReport) -> None:
    if record["event"] != AGENT_CHECK:
        return
    results = report.checks.setdefault(record["check"], {})
    results[record["result"]] = results.get(record["result"], 0) + 1
    if record["result"] in FAILED_RESULTS:
        report.failed_checks.append(f"{where}: {record['check']} {record['result']}: {record['summary']}")
        del report.failed_checks[:-MAX_FAILED_CHECKS]


def _checkpoints(
    sources: Sequence[tuple[str, bytes | None]],
    keys: Mapping[str, PublicKey],
    accept: Callable[[Sequence[PublicKey]], str | None],
    report: AuditReport,
    found: _Findings,
) -> list[Checkpoint]:
    valid: list[Checkpoint] = []
    for source, data in sources:
        if data is None:
            found.problem(f"{source}: missing: the signed checkpoints of this log were deleted")
            continue
        lines, torn = _lines(data)
        if torn:
            report.warnings.append(f"{source}: incomplete last line ({len(torn)} bytes) ignored")
        largest = -1
        for index, line in enumerate(lines):
            where = f"{source}:{index + 1}"
            report.checkpoints += 1
            try:
                envelope = Envelope.from_json(line, where)
                if envelope.payload_type != CHECKPOINT_PAYLOAD_TYPE:
                    raise TrustError(f"{where}: payload type {envelope.payload_type!r} is not a checkpoint")
                head = TreeHead.from_payload(envelope.payload)
            except (TrustError, ValueError) as exc:
                found.problem(f"{where}: unreadable checkpoint ({exc})")
                continue
            signers = verify_signatures(envelope, keys).keys
            refusal = accept(signers)
            if refusal is not None:
                found.problem(f"{where}: checkpoint not signed by the audit role: {refusal}")
                continue
            if report.log_id is not None and head.log_id != report.log_id:
                found.problem(f"{where}: checkpoint belongs to log {head.log_id}, not {report.log_id}")
                continue
            if head.tree_size < largest:
                found.problem(
                    f"{where}: checkpoint of size {head.tree_size} after one of size {largest}: "
                    "checkpoints reordered, or an old checkpoint re-inserted"
                )
            largest = max(largest, head.tree_size)
            valid.append(Checkpoint(where, head, tuple(k.keyid for k in signers), line))
            report.verified_checkpoints += 1
    return valid


def _against_records(
    name: str, checkpoints: list[Checkpoint], tree: MerkleTree, report: AuditReport, found: _Findings
) -> None:
    matching: list[Checkpoint] = []
    by_size: dict[int, Checkpoint] = {}
    for cp in checkpoints:
        size = cp.head.tree_size
        other = by_size.get(size)
        if other is not None and other.head.root_hash != cp.head.root_hash:
            found.problem(
                f"fork: {other.where} and {cp.where} are signed checkpoints of the same size {size} "
                "with different roots: two histories of this log exist"
            )
        by_size.setdefault(size, cp)
        if size > tree.size:
            found.problem(
                f"{cp.where}: signed checkpoint covers {size} records but {name} has {tree.size}: "
                f"{size - tree.size} records were cut off the end (truncation)"
            )
        elif tree.root(size).hex() != cp.head.root_hash:
            found.problem(
                f"{cp.where}: the first {size} records do not match this signed checkpoint: "
                "a record among them was modified, deleted or reordered"
            )
        else:
            matching.append(cp)
    # Consistency between successive checkpoints (RFC 9162 2.1.4): a later tree head must
    # extend an earlier one. Proofs come from the records, so they exist when the records
    # match the later head; an earlier head they do not extend is a fork by the signer.
    ordered = sorted({cp.head.tree_size: cp for cp in checkpoints}.values(), key=lambda c: c.head.tree_size)
    for earlier, later in itertools.pairwise(ordered):
        first, second = earlier.head.tree_size, later.head.tree_size
        if first == 0 or later not in matching:
            continue
        proof = tree.consistency_proof(first, second)
        if not verify_consistency(
            first, second, bytes.fromhex(earlier.head.root_hash), bytes.fromhex(later.head.root_hash), proof
        ):
            found.problem(
                f"fork: {earlier.where} (size {first}) is not consistent with {later.where} (size {second}): "
                "the log was rewritten after the earlier checkpoint was signed"
            )
    if matching:
        best = max(matching, key=lambda c: c.head.tree_size)
        report.covered_records = best.head.tree_size
        report.last_checkpoint = {
            "where": best.where,
            "tree_size": best.head.tree_size,
            "root_hash": best.head.root_hash,
            "time": best.head.time,
            "signers": list(best.signers),
        }
    if not checkpoints and tree.size:
        found.problem(f"{name}: no valid signed checkpoint: nothing anchors these records")
    uncovered = tree.size - report.covered_records
    if uncovered > 0 and checkpoints:
        report.unproven_records = uncovered
        report.warnings.append(unproven_warning(name, report.covered_records, tree.size))


def unproven_warning(name: str, covered: int, size: int) -> str:
    return (
        f"{name}: UNPROVEN: {size - covered} record(s) after the last signed checkpoint (seq {covered}.."
        f"{size - 1}): nothing proves who wrote them (anyone able to write the file can append records "
        "with a correct seq and prev), and nothing protects them against truncation until a later "
        "checkpoint covers them"
    )


def _accepted_tail(
    where: str, record: dict[str, Any], leaves: list[bytes], report: AuditReport, found: _Findings
) -> None:
    """An operator's acceptance of records no checkpoint covered (docs/GATEWAY.md 5.4): its
    hashes must name the records before it, and the auditor must hear of it every time."""
    first, last, hashes = record.get("first_seq"), record.get("last_seq"), record.get("leaf_hashes")
    if (
        not isinstance(first, int)
        or not isinstance(last, int)
        or not isinstance(hashes, list)
        or not 0 <= first <= last < len(leaves) - 1
        or hashes != [leaf.hex() for leaf in leaves[first : last + 1]]
    ):
        found.problem(f"{where}: {TAIL_ACCEPTED} record does not name the records before it by their hashes")
        return
    count = last - first + 1
    report.accepted_tails.append({"where": where, "first_seq": first, "last_seq": last, "records": count})
    report.warnings.append(
        f"{where}: an operator accepted {count} record(s) (seq {first}..{last}) that no signed checkpoint "
        f"covered when the {record.get('component', 'writer')} started ({TAIL_ACCEPTED}): they are "
        "proven only from then on; check that the writer wrote them (a crash) and nobody else"
    )


# -- entry points --------------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what}: {exc.strerror}") from None


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None


def check_log(
    log: Path, trust: Path | TrustedRoot, witness: Iterable[Path] = (), now: datetime | None = None
) -> Analysis:
    """Analyse LOG, LOG.checkpoints and any witness checkpoint files; never raises on findings.
    `trust`: the root (a file is loaded and checked current as of `now`)."""
    trusted = trust if isinstance(trust, TrustedRoot) else TrustedRoot.load(trust, now)
    data = _read(log, "audit log")
    sidecar = checkpoints_path(log)
    sources: list[tuple[str, bytes | None]] = [(str(sidecar), _read_optional(sidecar))]
    for path in witness:
        sources.append((str(path), _read(path, "witness checkpoint file")))
    return analyse(
        str(log), data, sources, trusted.role_keys("audit"), lambda signers: trusted.accepts("audit", signers)
    )


def verify_log(
    log: Path,
    trust: Path | TrustedRoot,
    witness: Iterable[Path] = (),
    *,
    require_checkpointed: bool = False,
    save_witness: Path | None = None,
) -> AuditReport:
    """`enclave audit verify LOG --trust root.json`: raise IntegrityError unless the log verifies.

    `witness`: checkpoint files kept elsewhere (e.g. an earlier export's checkpoints.jsonl, or
    a file `save_witness` keeps); they detect truncation and forks that the log's own checkpoint
    file no longer shows. `require_checkpointed`: records after the last signed checkpoint
    (unproven) are a failure, not a warning. `save_witness`: the log is also checked against that
    file when it exists, then, if it verified, its last matching checkpoint is appended to it.
    The raised error carries the full report as `.report`.
    """
    sources = list(witness)
    if save_witness is not None and save_witness.exists() and save_witness not in sources:
        sources.append(save_witness)
    analysis = check_log(log, trust, sources)
    report = analysis.report
    if require_checkpointed and report.unproven_records:
        report.problems.append(
            f"{log}: {report.unproven_records} record(s) after the last signed checkpoint "
            f"(seq {report.covered_records}..{report.records - 1}) are unproven (--require-checkpointed)"
        )
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more problems)" if len(report.problems) > 1 else ""
        raise LogVerificationError(f"audit log does not verify: {report.problems[0]}{more}", report)
    if save_witness is not None:
        _save_witness(analysis, save_witness)
        report.witness_saved = str(save_witness)
    return report


def _save_witness(analysis: Analysis, path: Path) -> None:
    """Append the last matching checkpoint line to `path`, unless it is already its last line."""
    best = analysis.report.last_checkpoint
    if best is None:
        return
    line = next(cp.line for cp in analysis.checkpoints if cp.where == best["where"])
    existing = _read_optional(path) or b""
    if existing.endswith(b"\n" + line + b"\n") or existing == line + b"\n":
        return
    prefix = b"" if not existing or existing.endswith(b"\n") else b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, prefix + line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the witness checkpoint: {exc.strerror}") from None


def report_json(report: AuditReport) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True)
