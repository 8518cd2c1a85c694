"""CycloneDX 1.6 JSON SBOM of a bundle's content (the model as `machine-learning-model`).

Every hash in it is a digest the bundle statement signs: a file's plain digest in the
bundle's algorithm (for a file of one chunk the subject digest itself, for a larger file the
statement's `plainDigest`), and an image's OCI manifest digest from the statement's image
record. The bundle-format (chunked) digest is kept as the property `enclave:digest:<alg>`.

Deterministic: the serial number is derived from the bundle's name, version and content
digests and nothing depends on the clock but the bundle's `created`, so the same inputs give
the same bytes. Written by hand (the layout is small and fixed) and validated against the
CycloneDX 1.6 schema by cyclonedx-python-lib in the tests.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from enclave.bundle.statement import ComponentEntry, ImageRecord, Member

CDX_ALG = {"sha256": "SHA-256", "sha384": "SHA-384", "sha512": "SHA-512"}
_CDX_TYPE = {
    "model": "machine-learning-model",
    "image": "container",
    "wheelhouse": "library",
    "policy": "data",
    "guard": "data",  # the learned guard: plain data files (vocabulary, weights, self-test, card)
    "trust": "data",
}
# PEP 427 wheel file name: {distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl
_WHEEL = re.compile(
    r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._]*[A-Za-z0-9])?)-(?P<version>[^-/]+)"
    r"(?:-\d[^-/]*)?-[^-/]+-[^-/]+-[^-/]+\.whl"
)


def wheel_purl(filename: str) -> tuple[str, str, str] | None:
    """(name, version, purl) of a wheel file name; None when it is not one."""
    match = _WHEEL.fullmatch(filename)
    if match is None:
        return None
    # purl's pypi type: the PEP 503 normalised name, lowercase with '-'.
    name = re.sub(r"[-_.]+", "-", match["name"]).lower()
    version = match["version"]
    purl = f"pkg:pypi/{quote(name, safe='')}@{quote(version, safe='')}?file_name={quote(filename, safe='')}"
    return name, version, purl


def image_purl(image: ImageRecord) -> tuple[str, str, str]:
    """(repository, tag, purl) of an image: purl type oci, versioned by its manifest digest."""
    repository, tag = image.ref.rsplit(":", 1)  # IMAGE_REF: the tag follows the last colon
    name = repository.rsplit("/", 1)[-1]
    qualifiers = f"repository_url={quote(repository, safe='')}&tag={quote(tag, safe='')}"
    return repository, tag, f"pkg:oci/{name}@{quote(image.manifest_digest, safe='')}?{qualifiers}"


def _props(pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in pairs]


def _file_entry(member: Member, algorithm: str, kind: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": "file",
        "bom-ref": member.name,
        "name": member.name,
        "hashes": [{"alg": CDX_ALG[algorithm], "content": member.plain_digest}],
        "properties": _props(
            [
                ("enclave:size", str(member.size)),
                (f"enclave:digest:{algorithm}", member.digest),
                ("enclave:chunks", str(len(member.chunk_digests()))),
            ]
        ),
    }
    wheel = wheel_purl(member.name.rsplit("/", 1)[-1]) if kind == "wheelhouse" else None
    if wheel is not None:
        name, version, purl = wheel
        entry |= {"type": "library", "name": name, "version": version, "purl": purl}
        entry["properties"].insert(0, {"name": "enclave:member", "value": member.name})
    return entry


def _model_card(facts: Mapping[str, str]) -> dict[str, Any]:
    card: dict[str, Any] = {"properties": _props([(f"gguf:{k}", v) for k, v in sorted(facts.items())])}
    if "general.architecture" in facts:
        card["modelParameters"] = {"modelArchitecture": facts["general.architecture"]}
    return card


def _component(
    component: ComponentEntry,
    by_name: Mapping[str, Member],
    algorithm: str,
    version: str,
    facts: Mapping[str, str] | None,
) -> dict[str, Any]:
    files = [_file_entry(by_name[n], algorithm, component.kind) for n in component.members]
    properties = [
        ("enclave:kind", component.kind),
        ("enclave:files", str(len(files))),
        ("enclave:size", str(sum(by_name[n].size for n in component.members))),
    ]
    if component.format:
        properties.append(("enclave:format", component.format))
    entry: dict[str, Any] = {
        "type": _CDX_TYPE.get(component.kind, "application"),
        "bom-ref": f"component:{component.name}",
        "name": component.name,
        "version": version,
    }
    if component.image is not None:
        repository, tag, purl = image_purl(component.image)
        entry |= {
            "name": repository,
            "version": tag,
            "purl": purl,
            "hashes": [{"alg": "SHA-256", "content": component.image.manifest_digest.split(":", 1)[1]}],
        }
        properties += [
            ("enclave:component", component.name),
            ("enclave:image:id", component.image.id),
            ("enclave:image:platform", component.image.platform),
        ]
    if component.kind == "model" and facts:
        entry["modelCard"] = _model_card(facts)
        if "general.license" in facts:
            entry["licenses"] = [{"license": {"name": facts["general.license"]}}]
        if "general.name" in facts:
            entry["description"] = facts["general.name"]
    entry["properties"] = _props(properties)
    entry["components"] = files
    return entry


def build_sbom(
    name: str,
    version: str,
    created: str,
    algorithm: str,
    components: Sequence[ComponentEntry],
    members: Sequence[Member],
    tool_version: str,
    model_facts: Mapping[str, Mapping[str, str]] | None = None,
) -> bytes:
    """The SBOM of `components` (content `members`); `model_facts` by component name (GGUF)."""
    by_name = {m.name: m for m in members}
    content_id = f"urn:enclave:{name}:{version}:" + ",".join(m.digest for m in members)
    serial = uuid.uuid5(uuid.NAMESPACE_URL, content_id)
    facts = model_facts or {}
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
            "properties": _props([("enclave:digest", algorithm)]),
        },
        "components": [_component(c, by_name, algorithm, version, facts.get(c.name)) for c in components],
    }
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
