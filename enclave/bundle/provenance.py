"""SLSA Provenance v1 of a bundle build: an in-toto Statement v1 in a DSSE envelope.

The envelope is signed by the build's ECDSA P-384 keys (see provenance_signers; co-signers
later sign only BUNDLE.dsse.json; the provenance's bytes are covered by the bundle statement).
Subjects are the bundle's members, resolved dependencies the build's inputs, each with the
plain digest in the bundle's algorithm (what a standard tool computes), external parameters
the manifest (parsed, with the digest of its bytes). Like the bundle statement the payload is
OLPC canonical JSON, and the only clock it reads is the build's `created` time (or
SOURCE_DATE_EPOCH), so reproducible builds stay byte-identical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from enclave.bundle.digest import new_hash
from enclave.bundle.manifest import Manifest
from enclave.bundle.sbom import image_purl
from enclave.bundle.statement import ComponentEntry, Member
from enclave.canonical import canonical
from enclave.errors import EnclaveError, IntegrityError
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope, verify_signatures
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot

PROVENANCE_NAME = "provenance.dsse.json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
# Our own URIs (SLSA asks for a URI naming the build's template and the build platform). The
# builder is the enclave CLI on the integrator's host: SLSA Build L1 (provenance exists and is
# signed by the integrator's keys), not L2+ (no hosted build platform vouches for it).
BUILD_TYPE = "urn:enclave:build-type:bundle:v1"
BUILDER_ID = "urn:enclave:builder:enclave-cli"
MAX_PROVENANCE_BYTES = 64 * 1024 * 1024


def source_names(manifest: Manifest, files: Sequence[tuple[str, Path]]) -> dict[str, str]:
    """Each content member's input file, relative to the manifest's directory (POSIX form):
    names that mean the same on any host, so the provenance does not depend on where the
    source tree was checked out."""
    base = manifest.source.resolve().parent
    return {name: Path(os.path.relpath(path, base)).as_posix() for name, path in files}


def provenance_statement(
    manifest: Manifest,
    algorithm: str,
    digest_override: str | None,
    components: Sequence[ComponentEntry],
    outputs: Sequence[Member],
    sources: Mapping[str, str],
    started: str,
    finished: str,
    tool_version: str,
) -> dict[str, Any]:
    """The provenance statement. `outputs`: every bundle member but the envelope and this
    document; `sources`: content member -> input path (members of image components have none:
    their input is the image, listed by its digest)."""
    manifest_digest = new_hash(algorithm)
    manifest_digest.update(manifest.raw)
    external: dict[str, Any] = {
        "manifest": {
            "name": manifest.source.name,
            "digest": {algorithm: manifest_digest.hexdigest()},
            "document": yaml.safe_load(manifest.raw),
        }
    }
    if digest_override is not None:
        external["digest"] = digest_override
    by_name = {m.name: m for m in outputs}
    dependencies: list[dict[str, Any]] = []
    for component in components:
        if component.image is not None:
            image = component.image
            dependencies.append(
                {
                    "name": image.ref,
                    "uri": image_purl(image)[2],
                    "digest": {"sha256": image.manifest_digest.split(":", 1)[1]},
                    "annotations": {
                        "component": component.name,
                        "imageId": image.id,
                        "platform": image.platform,
                    },
                }
            )
            continue
        for name in component.members:
            dependencies.append(
                {
                    "name": sources[name],
                    "digest": {algorithm: by_name[name].plain_digest},
                    "annotations": {"member": name},
                }
            )
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": m.name, "digest": {algorithm: m.plain_digest}} for m in outputs],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {"digest": algorithm, "chunkSize": manifest.chunk_size},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"enclave": tool_version}},
                "metadata": {"startedOn": started, "finishedOn": finished},
            },
        },
    }


def provenance_signers(keys: Sequence[SigningKey]) -> list[SigningKey]:
    """The build keys that sign the provenance: the ECDSA P-384 ones, else all of them.

    ECDSA signs deterministically (RFC 6979) while ML-DSA-87 signatures are randomised, and
    the provenance's digest is in the bundle statement: signing it with ML-DSA too would make
    every build's statement different and end reproducible builds. Nothing is lost: the
    hybrid-signed bundle statement already binds these bytes, and standard DSSE verifiers
    (securesystemslib, in-toto) know ECDSA, not ML-DSA.
    """
    classical = [k for k in keys if k.public.algorithm == "ecdsa-p384"]
    return classical or list(keys)


def sign_provenance(statement: Mapping[str, Any], keys: Sequence[SigningKey]) -> bytes:
    """The DSSE envelope (serialised like the bundle envelope), signed by provenance_signers."""
    envelope = Envelope(IN_TOTO_PAYLOAD_TYPE, canonical(dict(statement)))
    for key in provenance_signers(keys):
        envelope.sign(key)
    return envelope.to_json()


@dataclass(frozen=True)
class Provenance:
    envelope: Envelope
    statement: dict[str, Any]
    facts: dict[str, Any]  # what inspect shows, read once by parse_provenance

    def summary(self, root: TrustRoot | None = None) -> dict[str, Any]:
        """The facts; with a root, which signatures its `bundle` role keys verify."""
        signatures: list[dict[str, Any]] = [{"keyid": s.keyid} for s in self.envelope.signatures]
        if root is not None:
            valid = set(verify_signatures(self.envelope, root.role_keys("bundle")).keyids)
            for entry in signatures:
                entry["valid"] = entry["keyid"] in valid
        return self.facts | {"signatures": signatures}


def _facts(statement: Any) -> dict[str, Any]:
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise ValueError("not an in-toto Statement v1")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise ValueError(f"predicateType is not {PREDICATE_TYPE}")
    if not isinstance(statement.get("subject"), list):
        raise ValueError("subject is not a list")
    definition = statement["predicate"]["buildDefinition"]
    run = statement["predicate"]["runDetails"]
    manifest = definition["externalParameters"]["manifest"]
    metadata = run.get("metadata", {})
    facts = {
        "predicateType": PREDICATE_TYPE,
        "buildType": definition["buildType"],
        "builder": run["builder"]["id"],
        "startedOn": metadata.get("startedOn"),
        "finishedOn": metadata.get("finishedOn"),
        "manifest": {"name": manifest["name"], "digest": manifest["digest"]},
        "subjects": len(statement["subject"]),
        "resolvedDependencies": len(definition.get("resolvedDependencies", [])),
    }
    if not all(isinstance(facts[k], str) for k in ("buildType", "builder")):
        raise ValueError("buildType and builder.id must be strings")
    return facts


def parse_provenance(data: bytes, where: str = PROVENANCE_NAME) -> Provenance:
    """Read the provenance envelope (for inspect); IntegrityError naming `where` if it is not one."""
    try:
        envelope = Envelope.from_json(data, where)
        if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise ValueError(f"payloadType {envelope.payload_type!r}")
        statement = json.loads(envelope.payload)
        facts = _facts(statement)
    except EnclaveError as exc:
        raise IntegrityError(str(exc)) from None
    except KeyError as exc:
        raise IntegrityError(f"{where}: not a SLSA provenance v1 statement: missing field {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError, ValueError) as exc:
        raise IntegrityError(f"{where}: not a SLSA provenance v1 statement: {exc}") from None
    return Provenance(envelope, statement, facts)
