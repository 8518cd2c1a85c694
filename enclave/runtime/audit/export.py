"""`enclave audit export LOG --out DIR`: a self-contained forensic package.

The package lets an auditor re-check everything offline with nothing but the package:
records and checkpoints as stored, inclusion proofs of every record and consistency proofs
between checkpoints (RFC 9162), the trust root and public keys, the policies in force
(recovered from gateway-start records), the model digests, and the verifier's own output.
It is built in a staging directory and published by rename, so DIR is complete or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enclave.errors import UsageError
from enclave.fileio import published_directory
from enclave.runtime.audit.verify import Analysis, LogVerificationError, check_log, checkpoints_path
from enclave.trust.root import TrustRoot

PACKAGE_FORMAT = "enclave-audit-export/v1"


def export(
    log: Path,
    out: Path,
    trust: Path,
    *,
    inclusion_proofs: bool = True,
    user: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Path:
    """Write the package to `out` (which must not exist, or be empty) and return `out`.

    `user`: `records.jsonl` and the inclusion proofs then hold only the records of that user
    (docs/GATEWAY.md 12.4): every record naming them, and every record about a request they
    made; each still proves itself against the signed checkpoints.

    `since`/`until` (`YYYY-MM-DDTHH:MM:SSZ`, inclusive): likewise only the records written in
    that window, and every record about a request decided in it (`enclave evidence build`).

    A log that fails verification is still exported (that is when forensics matter most),
    with the findings in verification.json; then LogVerificationError (exit 3) is raised
    after the package is complete, naming it.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out}: exists and is not an empty directory")
    analysis = check_log(log, trust)
    root_bytes = trust.read_bytes()
    with published_directory(out) as staging:
        selected = None if user is None else user_records(analysis.entries, user)
        if since is not None or until is not None:
            in_window = window_records(analysis.entries, since, until)
            selected = in_window if selected is None else selected & in_window
        _write_package(
            staging,
            log,
            analysis,
            TrustRoot.load(trust),
            root_bytes,
            inclusion_proofs,
            selected,
            user,
            (since, until),
        )
    report = analysis.report
    if not report.ok:
        raise LogVerificationError(
            f"audit log does not verify: {report.problems[0]} (forensic package written to {out})", report
        )
    return out


def user_records(entries: list[bytes], user: str) -> set[int]:
    """The seqs of the records of one user: those naming them (`user.name`) and those about a
    request they made (the same `id`: outcomes, approvals, answers)."""
    docs = _parsed(entries)
    mine = {seq for seq, doc in docs if isinstance(doc.get("user"), dict) and doc["user"].get("name") == user}
    return _with_requests(docs, mine)


def window_records(entries: list[bytes], since: str | None, until: str | None) -> set[int]:
    """The seqs of the records written between `since` and `until` (inclusive, whole seconds),
    and of every record about a request decided in that window (its outcome, approvals)."""
    docs = _parsed(entries)
    inside = {
        seq
        for seq, doc in docs
        if isinstance(doc.get("time"), str)
        and (since is None or doc["time"][:19] >= since[:19])
        and (until is None or doc["time"][:19] <= until[:19])
    }
    return _with_requests(docs, inside)


def _parsed(entries: list[bytes]) -> list[tuple[int, dict[str, Any]]]:
    docs = []
    for seq, entry in enumerate(entries):
        with contextlib.suppress(ValueError):
            doc = json.loads(entry)
            if isinstance(doc, dict):
                docs.append((seq, doc))
    return docs


def _with_requests(docs: list[tuple[int, dict[str, Any]]], chosen: set[int]) -> set[int]:
    """`chosen` and every record about a request whose decision is among them."""
    ids = {doc.get("id") for seq, doc in docs if seq in chosen and doc.get("event") == "decision"} - {None}
    return chosen | {seq for seq, doc in docs if doc.get("id") in ids}


def _write_package(
    target: Path,
    log: Path,
    analysis: Analysis,
    root: TrustRoot,
    root_bytes: bytes,
    inclusion_proofs: bool,
    selected: set[int] | None = None,
    user: str | None = None,
    window: tuple[str | None, str | None] = (None, None),
) -> None:
    report = analysis.report
    files: dict[str, bytes] = {}
    files["records.jsonl"] = b"".join(
        entry + b"\n" for seq, entry in enumerate(analysis.entries) if selected is None or seq in selected
    )
    files["checkpoints.jsonl"] = b"".join(cp.line + b"\n" for cp in analysis.checkpoints)
    files["root.json"] = root_bytes
    for role in ("audit", "approver"):
        for keyid, key in root.role_keys(role).items():
            files[f"keys/{role}/{keyid}.pem"] = key.pem.encode("ascii")
    for digest, text in analysis.policies.items():
        files[f"policies/{digest.replace(':', '-')}.yaml"] = text.encode("utf-8")
    files["model_digests.json"] = _json(report.model_digests)
    files["proofs/consistency.json"] = _json(_consistency(analysis))
    files["verification.json"] = _json(report.to_dict())
    files["package.json"] = _json(
        {
            "format": PACKAGE_FORMAT,
            "exported": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "log": str(log),
            "checkpoints_file": str(checkpoints_path(log)),
            "log_id": report.log_id,
            "records": report.records,
            "root_hash": report.root_hash,
            "trust_root_version": root.version,
            "trust_root_digest": root.digest,
            "selected": None
            if selected is None
            else {"user": user, "records": len(selected)}
            | ({"since": window[0], "until": window[1]} if window != (None, None) else {}),
        }
    )
    sums: dict[str, str] = {}
    for name, data in files.items():
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    if inclusion_proofs:
        # Streamed: n records x log2(n) hashes would not fit in memory for a large log.
        name = "proofs/inclusion.jsonl"
        hasher = hashlib.sha256()
        with (target / name).open("wb") as out:
            for line in _inclusion(analysis, selected):
                hasher.update(line)
                out.write(line)
        sums[name] = hasher.hexdigest()
    (target / "SHA256SUMS").write_text("".join(f"{sums[n]}  {n}\n" for n in sorted(sums)))


def _consistency(analysis: Analysis) -> list[dict[str, Any]]:
    tree = analysis.tree
    heads = sorted(
        {cp.head.tree_size: cp for cp in analysis.checkpoints if cp.head.tree_size <= tree.size}.values(),
        key=lambda cp: cp.head.tree_size,
    )
    proofs = []
    for earlier, later in itertools.pairwise(heads):
        first, second = earlier.head.tree_size, later.head.tree_size
        if first == 0:
            continue
        proofs.append(
            {
                "first": {"tree_size": first, "root_hash": earlier.head.root_hash, "where": earlier.where},
                "second": {"tree_size": second, "root_hash": later.head.root_hash, "where": later.where},
                "proof": [h.hex() for h in tree.consistency_proof(first, second)],
            }
        )
    return proofs


def _inclusion(analysis: Analysis, selected: set[int] | None = None) -> Iterator[bytes]:
    """One line per record covered by the last matching checkpoint: its audit path."""
    last = analysis.report.last_checkpoint
    if last is None:
        return
    size = int(last["tree_size"])
    tree = analysis.tree
    for index in range(size):
        if selected is not None and index not in selected:
            continue
        proof = tree.inclusion_proof(index, size)
        line = {
            "seq": index,
            "leaf_hash": tree.leaves[index].hex(),
            "tree_size": size,
            "root_hash": last["root_hash"],
            "proof": [h.hex() for h in proof],
        }
        yield json.dumps(line, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")
