"""The trust roots a bundle carries in its `trust` components (FORMAT.md section 7).

Read before the bundle's signatures are checked, through the not yet trusted statement: each
root is self-authenticating (trust.trusted applies it only as a valid rotation of the root
already trusted), and every read here is bounded and placed exactly where the statement says.
"""

from __future__ import annotations

from enclave.bundle.source import ArchiveSource
from enclave.bundle.statement import BundleStatement
from enclave.bundle.tarformat import member_header, member_span
from enclave.errors import EnclaveError, TrustError, UnsafeArchiveError
from enclave.trust.root import MAX_ROOT_BYTES, TrustRoot
from enclave.trust.rotation import MAX_ROTATIONS


def roots_in_bundle(source: ArchiveSource, envelope_end: int, payload: bytes) -> list[TrustRoot]:
    """The roots in the bundle's `trust` components, located through the (not yet trusted)
    statement. An unreadable statement yields none: the signature check decides about it.
    Each root is parsed strictly; `apply_chain` then authenticates it against the trusted root."""
    try:
        statement = BundleStatement.from_payload(payload)
    except EnclaveError:
        return []
    wanted = {name for c in statement.components if c.kind == "trust" for name in c.members}
    if not wanted:
        return []
    if len(wanted) > MAX_ROTATIONS:
        raise TrustError(f"{source.name}: {len(wanted)} trust roots: more than {MAX_ROTATIONS} rotations")
    roots: list[TrustRoot] = []
    offset = envelope_end
    mtime = statement.mtime
    for member in statement.members:
        if member.name in wanted:
            if member.size > MAX_ROOT_BYTES:
                raise UnsafeArchiveError(
                    f"member {member.name!r}: trust root of {member.size} bytes exceeds "
                    f"the {MAX_ROOT_BYTES} byte cap"
                )
            header = member_header(member.name, member.size, member.mode, mtime)
            if source.read_exact(offset, len(header), f"the header of {member.name}") != header:
                raise TrustError(f"member {member.name!r}: not where the statement places it")
            data = source.read_exact(offset + len(header), member.size, member.name)
            roots.append(TrustRoot.from_json(data, f"{source.name}: {member.name}", UnsafeArchiveError))
        offset += member_span(member.name, member.size, member.mode, mtime)
    return roots
