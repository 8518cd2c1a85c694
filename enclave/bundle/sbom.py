"""CycloneDX 1.6 JSON SBOM of a bundle's content (the model as `machine-learning-model`).

Deterministic: the serial number is derived from the bundle's name, version and content
digests, so the same inputs give the same bytes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

from enclave.bundle.statement import ComponentEntry, Member

_CDX_ALG = {"sha256": "SHA-256", "sha384": "SHA-384", "sha512": "SHA-512"}
_CDX_TYPE = {
    "model": "machine-learning-model",
    "image": "container",
    "wheelhouse": "library",
    "policy": "data",
    "trust": "data",
}


def build_sbom(
    name: str,
    version: str,
    created: str,
    algorithm: str,
    components: Sequence[ComponentEntry],
    members: Sequence[Member],
    tool_version: str,
) -> bytes:
    by_name = {m.name: m for m in members}
    content_id = f"urn:enclave:{name}:{version}:" + ",".join(m.digest for m in members)
    serial = uuid.uuid5(uuid.NAMESPACE_URL, content_id)
    cdx_components = []
    for component in components:
        files = []
        for member_name in component.members:
            member = by_name[member_name]
            entry: dict[str, object] = {
                "type": "file",
                "bom-ref": member.name,
                "name": member.name,
                "properties": [
                    {"name": "enclave:size", "value": str(member.size)},
                    {"name": f"enclave:digest:{algorithm}", "value": member.digest},
                ],
            }
            if not member.chunks:  # a single-chunk digest is the plain file digest
                entry["hashes"] = [{"alg": _CDX_ALG[algorithm], "content": member.digest}]
            files.append(entry)
        properties = [{"name": "enclave:kind", "value": component.kind}]
        if component.format:
            properties.append({"name": "enclave:format", "value": component.format})
        cdx_components.append(
            {
                "type": _CDX_TYPE.get(component.kind, "application"),
                "bom-ref": f"component:{component.name}",
                "name": component.name,
                "version": version,
                "properties": properties,
                "components": files,
            }
        )
    doc = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": serial.urn,
        "version": 1,
        "metadata": {
            "timestamp": created,
            "tools": {"components": [{"type": "application", "name": "enclave", "version": tool_version}]},
            "component": {
                "type": "application",
                "bom-ref": f"bundle:{name}",
                "name": name,
                "version": version,
            },
        },
        "components": cdx_components,
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
