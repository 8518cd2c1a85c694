"""The admitted bundles' signed statements and documents (SBOM, provenance, guard model cards),
found in the state directory's content store or in a published bundle directory. A document is
copied only when its bytes match the digest its signed statement gives it; otherwise the package
says it was left out, and why."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from enclave.bundle.provenance import PROVENANCE_NAME
from enclave.bundle.statement import BundleStatement, Member
from enclave.bundle.store import ContentStore
from enclave.bundle.tarformat import CONTENT_PREFIX, ENVELOPE_NAME, SBOM_NAME
from enclave.errors import EnclaveError, UsageError
from enclave.fileio import read_regular
from enclave.trust.dsse import MAX_ENVELOPE, Envelope, verify_signatures
from enclave.trust.root import TrustRoot

GUARD_CARD = "card.json"  # enclave.guard.model.CARD (not imported: that module needs numpy)
MAX_DOCUMENT = 256 * 1024 * 1024


class Stage(Protocol):
    def copy(self, rel: str, source: Path) -> str: ...

    def write(self, rel: str, data: bytes, source: str = ...) -> str: ...


@dataclass(frozen=True)
class Found:
    """One admitted bundle: its envelope file and where its members' bytes can be read."""

    envelope: Path
    statement: BundleStatement
    digest: str  # sha256 of the signed statement payload, as receipts name it
    origin: str  # "content store" or "published directory"
    locate: Callable[[Member], list[Path]]

    @property
    def name(self) -> str:
        return self.statement.name

    @property
    def version(self) -> str:
        return self.statement.version


def _parse(path: Path, origin: str, locate: Callable[[BundleStatement, Member], list[Path]]) -> Found:
    envelope = Envelope.from_json(read_regular(path, "bundle envelope", MAX_ENVELOPE), str(path))
    statement = BundleStatement.from_payload(envelope.payload)
    return Found(
        path,
        statement,
        hashlib.sha256(envelope.payload).hexdigest(),
        origin,
        lambda member: locate(statement, member),
    )


def stored(state_dir: Path) -> Iterator[Found]:
    """Every version the content store accepted (`store/bundles/NAME/VERSION.dsse.json`)."""
    store = ContentStore.under(state_dir)

    def locate(statement: BundleStatement, member: Member) -> list[Path]:
        places = [store.file_path(statement.digest, statement.chunk_size, member.digest)]
        if not member.chunks:  # one chunk: also kept as a chunk object
            places.append(store.object_path(statement.digest, member.digest))
        return places

    if store.bundles.is_dir():
        for path in sorted(store.bundles.glob("*/*.dsse.json")):
            yield _parse(path, "content store", locate)


def published(directory: Path) -> Found:
    """A directory `enclave bundle verify --extract-to` published."""
    envelope = directory / ENVELOPE_NAME
    if not envelope.is_file():
        raise UsageError(f"{directory}: no {ENVELOPE_NAME}: not a published bundle directory")
    return _parse(envelope, "published directory", lambda _statement, member: [directory / member.name])


def documents(statement: BundleStatement) -> list[tuple[str, str]]:
    """(kind, member name) of the documents an assessor wants, those the bundle has."""
    wanted = [("sbom", SBOM_NAME), ("provenance", PROVENANCE_NAME)]
    wanted += [
        ("guard card", f"{CONTENT_PREFIX}{c.name}/{GUARD_CARD}")
        for c in statement.components
        if c.kind == "guard"
    ]
    names = {m.name for m in statement.members}
    return [(kind, name) for kind, name in wanted if name in names]


def package(stage: Stage, found: Found, root: TrustRoot, notes: list[str]) -> dict[str, Any]:
    """Copy the envelope and the documents into `bundles/NAME-VERSION/`; the facts about them."""
    statement = found.statement
    folder = f"bundles/{statement.name}-{statement.version}"
    envelope_rel = stage.copy(f"{folder}/{ENVELOPE_NAME}", found.envelope)
    envelope = Envelope.from_json(found.envelope.read_bytes(), str(found.envelope))
    check = root.check_role("bundle", verify_signatures(envelope, root.role_keys("bundle")).keys)
    members = {m.name: m for m in statement.members}
    copied: dict[str, list[str]] = {}
    for kind, name in documents(statement):
        verified = _verified(found, members[name], statement)
        if verified is None:
            notes.append(
                f"{statement.name} {statement.version}: {name} not found with its signed digest in the "
                f"{found.origin}: left out"
            )
            continue
        place, data = verified
        copied.setdefault(kind, []).append(stage.write(f"{folder}/{name}", data, str(place.resolve())))
    return {
        "name": statement.name,
        "version": statement.version,
        "created": statement.created,
        "digest": found.digest,
        "origin": found.origin,
        "statement": envelope_rel,
        "components": [{"name": c.name, "kind": c.kind} for c in statement.components],
        "signatures": {
            "met": check.met,
            "explain": check.explain(),
            "signers": [{"keyid": k.keyid, "scheme": k.scheme} for k in check.signers],
            "trustRoot": root.version,
        },
        "documents": copied,
    }


def _verified(found: Found, member: Member, statement: BundleStatement) -> tuple[Path, bytes] | None:
    """The first place holding exactly the member's signed bytes, and those bytes (copied as
    they were checked: nothing can change them in between)."""
    for place in found.locate(member):
        try:
            data = read_regular(place, "bundle document", MAX_DOCUMENT)
        except EnclaveError:
            continue
        if Member.of_bytes(member.name, data, statement.digest, statement.chunk_size).digest == member.digest:
            return place, data
    return None
