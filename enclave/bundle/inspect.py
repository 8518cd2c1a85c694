"""Describe a bundle without trusting it: components, members, sizes, digests, signers.

Nothing here decides trust; `--trust` only labels which signatures a root would accept.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from enclave.bundle.source import ArchiveSource
from enclave.bundle.statement import BundleStatement
from enclave.bundle.verify import read_envelope
from enclave.trust.dsse import pae
from enclave.trust.root import TrustRoot


def inspect_bundle(paths: list[Path], root: TrustRoot | None = None) -> dict[str, Any]:
    with ArchiveSource(paths) as source:
        member = read_envelope(source)
        size = source.size
    statement = BundleStatement.from_payload(member.envelope.payload)
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
                "chunks": len(m.chunk_digests()),
            }
            for m in statement.members
        ],
        **statement.extra,
    }
