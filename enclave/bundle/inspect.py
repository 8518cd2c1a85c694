"""Describe a bundle without trusting it: components, members, sizes, digests, signers, and
its provenance documents (SBOM summary, SLSA provenance, OpenSSF model signatures).

Nothing here decides trust; `--trust` only labels which signatures a root would accept. The
provenance documents sit right after the envelope, so only they are read (each checked against
its signed digest first: a mismatch is an integrity failure); content is not read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from enclave.bundle.modelsig import MAX_SIGNATURE_BYTES, SIGNATURE_DIR, parse_signature
from enclave.bundle.provenance import MAX_PROVENANCE_BYTES, PROVENANCE_NAME, parse_provenance
from enclave.bundle.source import ArchiveSource
from enclave.bundle.statement import BundleStatement, Member, base_of
from enclave.bundle.tarformat import CONTENT_PREFIX, SBOM_NAME, member_header, member_span
from enclave.bundle.verify import read_envelope
from enclave.errors import IntegrityError, UnsafeArchiveError
from enclave.trust.dsse import pae
from enclave.trust.root import TrustRoot

MAX_SBOM_BYTES = 64 * 1024 * 1024


def inspect_bundle(paths: list[Path], root: TrustRoot | None = None) -> dict[str, Any]:
    with ArchiveSource(paths) as source:
        member = read_envelope(source)
        size = source.size
        statement = BundleStatement.from_payload(member.envelope.payload)
        documents = read_documents(source, member.end, statement)
        cards = read_guard_cards(source, member.end, statement)
    message = pae(member.envelope.payload_type, member.envelope.payload)
    signers = []
    for signature in member.envelope.signatures:
        entry: dict[str, Any] = {"keyid": signature.keyid}
        if root is not None:
            key = root.keys.get(signature.keyid)
            roles = [name for name, role in root.roles.items() if signature.keyid in role.keyids]
            entry["algorithm"] = key.scheme if key else "unknown"
            entry["roles"] = roles
            entry["valid"] = bool(key and key.verify(signature.sig, message))
        signers.append(entry)
    members = {m.name: m for m in statement.members}
    return {
        "bundle": source.name,
        "size": size,
        "name": statement.name,
        "version": statement.version,
        "created": statement.created,
        "digest": statement.digest,
        "chunkSize": statement.chunk_size,
        "statementDigest": {"sha256": hashlib.sha256(member.envelope.payload).hexdigest()},
        "signatures": signers,
        "contentBytes": statement.total_size,
        "components": [
            {
                "name": c.name,
                "kind": c.kind,
                "format": c.format,
                "files": len(c.members),
                "bytes": sum(members[n].size for n in c.members),
            }
            for c in statement.components
        ],
        "members": [
            {
                "name": m.name,
                "size": m.size,
                "mode": f"{m.mode:04o}",
                "digest": m.digest,
                "plainDigest": m.plain_digest,  # H(content): what sha384sum and the SBOM show
                "chunks": len(m.chunk_digests()),
            }
            | ({"carried": list(m.carried)} if m.carried is not None else {})
            for m in statement.members
        ],
        **statement.extra,
        **_differential(statement),
        **describe_documents(documents, root),
        "guards": [describe_guard(statement, name, data) for name, data in cards.items()],
    }


MAX_GUARD_CARD_BYTES = 1024 * 1024
GUARD_CARD = "card.json"


def guard_cards(statement: BundleStatement) -> set[str]:
    """The model cards of the bundle's learned guards (a guard component's card.json)."""
    return {
        name
        for c in statement.components
        if c.kind == "guard"
        for name in c.members
        if name.rsplit("/", 1)[-1] == GUARD_CARD
    }


def read_guard_cards(
    source: ArchiveSource, envelope_end: int, statement: BundleStatement
) -> dict[str, bytes]:
    """Each guard's model card, read from the content where the statement places it and checked
    against its signed digest before it is parsed."""
    wanted = guard_cards(statement)
    found: dict[str, bytes] = {}
    offset = envelope_end
    for member in statement.members:
        if not wanted - set(found):
            break
        if member.name in wanted:
            found[member.name] = _read_member(source, offset, member, statement)
        offset += member_span(member.name, member.size, member.mode, statement.mtime)
    return found


def describe_guard(statement: BundleStatement, card_member: str, data: bytes) -> dict[str, Any]:
    """The guard's model card in brief: what it was trained and evaluated on, and how it did."""
    directory = card_member.rsplit("/", 1)[0]
    manifest = next((m for m in statement.members if m.name == f"{directory}/guard.json"), None)
    try:
        card = json.loads(data)
        evaluation = card.get("evaluation") or {}
        summary = {
            "member": card_member,
            "manifestDigest": f"{statement.digest}:{manifest.digest}" if manifest else None,
            "corpus": card["corpus"],
            "thresholds": card["thresholds"],
            "outOfFold": card["out_of_fold"],
            "evaluationCorpus": card.get("evaluation_corpus"),
            "overlap": card.get("overlap"),
            "evaluation": {
                key: evaluation[key]
                for key in ("stopped", "right_action", "benign_stopped", "benign_band", "allow")
                if key in evaluation
            },
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{card_member}: not a guard model card: {exc!r}") from None
    return summary


def _is_document(name: str) -> bool:
    return name in (SBOM_NAME, PROVENANCE_NAME) or name.startswith(SIGNATURE_DIR)


def _cap(name: str) -> int:
    if name.endswith("/" + GUARD_CARD):
        return MAX_GUARD_CARD_BYTES
    if name == SBOM_NAME:
        return MAX_SBOM_BYTES
    return MAX_PROVENANCE_BYTES if name == PROVENANCE_NAME else MAX_SIGNATURE_BYTES


def read_documents(source: ArchiveSource, envelope_end: int, statement: BundleStatement) -> dict[str, bytes]:
    """The provenance documents, located through the statement (they precede the content) and
    each checked against its signed digest before it is parsed."""
    found: dict[str, bytes] = {}
    offset, mtime = envelope_end, statement.mtime
    for member in statement.members:
        if member.name.startswith(CONTENT_PREFIX):
            break
        if _is_document(member.name):
            found[member.name] = _read_member(source, offset, member, statement)
        offset += member_span(member.name, member.size, member.mode, mtime)
    return found


def _read_member(source: ArchiveSource, offset: int, member: Member, statement: BundleStatement) -> bytes:
    if member.size > _cap(member.name):
        raise UnsafeArchiveError(
            f"member {member.name!r}: {member.size} bytes exceeds the {_cap(member.name)} byte cap"
        )
    header = member_header(member.name, member.size, member.mode, statement.mtime)
    if source.read_exact(offset, len(header), f"the header of {member.name}") != header:
        raise IntegrityError(f"member {member.name!r}: not where the statement places it")
    data = source.read_exact(offset + len(header), member.size, member.name)
    if Member.of_bytes(member.name, data, statement.digest, statement.chunk_size).digest != member.digest:
        raise IntegrityError(f"member {member.name!r}: digest mismatch")
    return data


def _sbom_summary(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
        components = []
        hashes = 0
        for c in doc["components"]:
            files = c.get("components", [])
            hashes += len(c.get("hashes", [])) + sum(len(f.get("hashes", [])) for f in files)
            components.append({"name": c["name"], "type": c["type"], "files": len(files)})
        return {
            "member": SBOM_NAME,
            "format": f"{doc['bomFormat']} {doc['specVersion']}",
            "serialNumber": doc["serialNumber"],
            "components": components,
            "hashes": hashes,
        }
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{SBOM_NAME}: not a CycloneDX SBOM: {exc!r}") from None


def describe_documents(documents: dict[str, bytes], root: TrustRoot | None) -> dict[str, Any]:
    """The `sbom`, `provenance` and `modelSignatures` parts of inspect's output (None / []
    for a bundle built before they existed)."""
    sbom = _sbom_summary(documents[SBOM_NAME]) if SBOM_NAME in documents else None
    provenance = None
    if PROVENANCE_NAME in documents:
        provenance = {"member": PROVENANCE_NAME} | parse_provenance(documents[PROVENANCE_NAME]).summary(root)
    signatures = []
    ecdsa = [k for k in root.role_keys("bundle").values() if k.algorithm == "ecdsa-p384"] if root else []
    for name, data in documents.items():
        if not name.startswith(SIGNATURE_DIR):
            continue
        signature = parse_signature(data, name)
        entry: dict[str, Any] = {
            "member": name,
            "component": name.removeprefix(SIGNATURE_DIR).removesuffix(".sig"),
            "format": "OpenSSF model-signing v1.0 (Sigstore bundle v0.3)",
            "files": len(signature.resources),
            "digest": {"sha256": signature.root},
            "keyHint": signature.hint,
        }
        if root is not None:
            signer = next((k for k in ecdsa if signature.signed_by(k)), None)
            entry |= {"signer": signer.keyid if signer else None, "valid": signer is not None}
        signatures.append(entry)
    return {"sbom": sbom, "provenance": provenance, "modelSignatures": signatures}


def document_lines(doc: dict[str, Any]) -> list[str]:
    """Human lines for the provenance documents in an inspect_bundle result (for the CLI)."""
    lines = []
    sbom = doc.get("sbom")
    if sbom:
        kinds = ", ".join(f"{c['name']} ({c['type']}, {c['files']} files)" for c in sbom["components"])
        lines.append(
            f"  sbom: {sbom['member']} {sbom['format']}, {sbom['hashes']} hashes, {sbom['serialNumber']}"
        )
        lines.append(f"    {kinds}")
    else:
        lines.append("  sbom: none")
    provenance = doc.get("provenance")
    if provenance:
        p = provenance
        signed = ", ".join(
            s["keyid"][:16] + (f" valid={s['valid']}" if "valid" in s else "") for s in p["signatures"]
        )
        lines += [
            f"  provenance: {p['member']} {p['predicateType']}",
            f"    builder {p['builder']}, build type {p['buildType']}",
            f"    manifest {p['manifest']['name']}, {p['startedOn']} .. {p['finishedOn']}",
            f"    {p['subjects']} subjects, {p['resolvedDependencies']} resolved dependencies",
            f"    signed by {signed or 'nobody'}",
        ]
    else:
        lines.append("  provenance: none")
    for sig in doc.get("modelSignatures", []):
        valid = f", signer {str(sig['signer'])[:16]} valid={sig['valid']}" if "valid" in sig else ""
        lines += [
            f"  model signature: {sig['member']} ({sig['format']}) over content/{sig['component']}/",
            f"    {sig['files']} files, sha256 {sig['digest']['sha256']}",
            f"    key hint {sig['keyHint'][:16]}{valid}",
        ]
    if not doc.get("modelSignatures"):
        lines.append("  model signatures: none")
    for guard in doc.get("guards", []):
        lines += guard_lines(guard)
    return lines


def guard_lines(guard: dict[str, Any]) -> list[str]:
    """Human lines for one learned guard's model card in an inspect_bundle result."""
    trained = sum(guard["corpus"]["counts"].values())
    limits = guard["thresholds"]
    lines = [
        f"  learned guard: {guard['member']} (guard.json {guard['manifestDigest']})",
        f"    trained on {trained} prompts ({guard['corpus']['digest']}); "
        f"thresholds band {limits['band']} stop {limits['stop']}",
    ]
    evaluation = guard["evaluation"]
    if evaluation:
        parts = [
            f"stopped {_rate(evaluation['stopped'])}",
            f"right action {_rate(evaluation['right_action'])}",
            f"benign stopped {_rate(evaluation['benign_stopped'])}",
        ]
        if "discussion" in evaluation.get("allow", {}):
            parts.append(f"discussion stopped {_rate(evaluation['allow']['discussion'])}")
        lines.append("    held-out evaluation: " + ", ".join(parts))
    return lines


def _rate(r: dict[str, Any]) -> str:
    low, high = r["ci95"]
    return f"{100 * r['rate']:.1f}% [{100 * low:.1f}, {100 * high:.1f}] of {r['n']}"


def _differential(statement: BundleStatement) -> dict[str, Any]:
    """What a differential bundle saves, and what it needs from its base."""
    base = base_of(statement)
    if base is None:
        return {}
    chunk = statement.chunk_size
    carried = sum(m.archive_size(chunk) for m in statement.members)
    needed = [
        {
            "member": m.name,
            "chunks": len(m.chunk_digests()) - len(m.carried_chunks()),
            "bytes": m.size - m.archive_size(chunk),
        }
        for m in statement.members
        if m.carried is not None
    ]
    return {
        "differential": {
            "base": {
                "name": base.name,
                "version": base.version,
                "statementDigest": {"sha256": base.statement_digest},
            },
            "bytesCarried": carried,
            "bytesFromBase": statement.total_size - carried,
            "fromBase": needed,
        }
    }
