"""SLSA Provenance v1 in the bundle: an in-toto statement that in-toto-attestation's protobuf
schema (Statement v1, SLSA Provenance v1) accepts, in a DSSE envelope that securesystemslib's
independent DSSE implementation verifies with the ECDSA key from root.json (as it does the
bundle envelope); subjects, dependencies and parameters as FORMAT.md says; and inspect."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import Key, SSlibKey  # type: ignore[attr-defined]

from enclave.admission import Admission
from enclave.bundle.build import build_bundle
from enclave.bundle.inspect import document_lines, inspect_bundle
from enclave.bundle.modelsig import parse_signature
from enclave.bundle.provenance import BUILD_TYPE, BUILDER_ID, parse_provenance, provenance_signers
from enclave.bundle.statement import BundleStatement
from enclave.errors import IntegrityError
from enclave.trust.root import TrustRoot
from tests.conftest import BuildFn, Keys, write_inputs
from tests.tarsurgery import Part, join, split

NOW = datetime.now(UTC)


def ecdsa_keys_from_root(root_path: Path) -> list[Key]:
    """The bundle role's keys as securesystemslib loads them from root.json (ECDSA only: its
    `ecdsa`/`ecdsa-sha2-nistp384` form; it has no ML-DSA verifier)."""
    signed = json.loads(root_path.read_text())["signed"]
    return [
        SSlibKey.from_dict(keyid, dict(signed["keys"][keyid]))
        for keyid in signed["roles"]["bundle"]["keyids"]
        if signed["keys"][keyid]["keytype"] == "ecdsa"
    ]


def extract(bundle: Path, root_path: Path, target: Path) -> Path:
    Admission(trust=root_path, at=NOW).verify(bundle, extract_to=target)
    return target


def provenance_of(tree: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        base64.b64decode(json.loads((tree / "provenance.dsse.json").read_text())["payload"])
    )
    return doc


def test_bundle_envelope_verifies_with_securesystemslib(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    parts = split(build())
    envelope = SslibEnvelope.from_dict(json.loads(parts[0].data))
    verified = envelope.verify(ecdsa_keys_from_root(root_path), 1)
    assert list(verified) == [keys.ecdsa.keyid]
    assert BundleStatement.from_payload(envelope.payload).name == "demo"
    # one flipped payload byte and the independent implementation refuses it too
    doc = json.loads(parts[0].data)
    payload = bytearray(base64.b64decode(doc["payload"]))
    payload[40] ^= 1
    doc["payload"] = base64.b64encode(bytes(payload)).decode()
    with pytest.raises(VerificationError):
        SslibEnvelope.from_dict(doc).verify(ecdsa_keys_from_root(root_path), 1)


def test_provenance_envelope_verifies_with_securesystemslib(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    tree = extract(build(), root_path, tmp_path / "x")
    raw = (tree / "provenance.dsse.json").read_text()
    assert [s["keyid"] for s in json.loads(raw)["signatures"]] == [keys.ecdsa.keyid]  # deterministic
    verified = SslibEnvelope.from_dict(json.loads(raw)).verify(ecdsa_keys_from_root(root_path), 1)
    assert list(verified) == [keys.ecdsa.keyid]
    stranger = [k for k in ecdsa_keys_from_root(root_path) if k.keyid != keys.ecdsa.keyid]
    with pytest.raises(VerificationError):
        SslibEnvelope.from_dict(json.loads(raw)).verify(stranger, 1)


def test_provenance_is_slsa_v1_by_the_in_toto_schema(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    tree = extract(build(), root_path, tmp_path / "x")
    doc = provenance_of(tree)
    # in-toto-attestation's protobuf definitions, strict: an unknown field anywhere fails
    statement = json_format.Parse(json.dumps(doc), statement_pb2.Statement())
    Statement.copy_from_pb(statement).validate()
    assert statement.predicate_type == "https://slsa.dev/provenance/v1"
    predicate = json_format.Parse(json.dumps(doc["predicate"]), provenance_pb2.Provenance())
    assert predicate.build_definition.build_type == BUILD_TYPE
    assert predicate.run_details.builder.id == BUILDER_ID
    started = doc["predicate"]["runDetails"]["metadata"]["startedOn"]
    assert predicate.run_details.metadata.started_on.ToJsonString() == started


def test_provenance_subjects_and_dependencies_carry_plain_digests(
    build: BuildFn, root_path: Path, tmp_path: Path
) -> None:
    bundle = build()
    statement = BundleStatement.from_payload(base64.b64decode(json.loads(split(bundle)[0].data)["payload"]))
    tree = extract(bundle, root_path, tmp_path / "x")
    doc = provenance_of(tree)
    # subjects: every member but the envelope and the provenance itself; digests as sha384sum
    expected = {
        m.name: hashlib.sha384((tree / m.name).read_bytes()).hexdigest()
        for m in statement.members
        if m.name != "provenance.dsse.json"
    }
    assert {s["name"]: s["digest"]["sha384"] for s in doc["subject"]} == expected
    assert any(m.chunks for m in statement.members)  # the fixture has a multi-chunk file
    definition = doc["predicate"]["buildDefinition"]
    dependencies = {d["annotations"]["member"]: d for d in definition["resolvedDependencies"]}
    content = [m.name for m in statement.members if m.name.startswith("content/")]
    assert sorted(dependencies) == sorted(content)
    assert (
        dependencies["content/weights/model.gguf"]["name"] == "weights/model.gguf"
    )  # relative to the manifest
    assert dependencies["content/site/roles/r/main.yml"]["name"] == "playbooks/roles/r/main.yml"
    for name, dependency in dependencies.items():
        assert dependency["digest"] == {"sha384": expected[name]}
    manifest = bundle.parent.parent / bundle.parent.name.replace("out", "src") / "bundle.yaml"
    assert definition["externalParameters"]["manifest"] == {
        "name": "bundle.yaml",
        "digest": {"sha384": hashlib.sha384(manifest.read_bytes()).hexdigest()},
        "document": yaml.safe_load(manifest.read_text()),
    }
    assert definition["internalParameters"] == {"digest": "sha384", "chunkSize": 1 << 20}
    assert doc["predicate"]["runDetails"]["metadata"]["startedOn"] == statement.created


def test_digest_override_is_an_external_parameter(keys: Keys, tmp_path: Path) -> None:
    src = write_inputs(tmp_path / "src")
    (src / "bundle.yaml").write_text(
        "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: o, version: 1.0.0}\n"
        "spec:\n  components:\n    - {name: p, kind: policy, path: ./policy.yaml}\n"
    )
    bundle = build_bundle(
        src / "bundle.yaml", tmp_path / "out", [keys.ecdsa], digest="sha512", show_progress=False
    )
    provenance = next(p for p in split(bundle) if p.name == "provenance.dsse.json")
    doc = json.loads(base64.b64decode(json.loads(provenance.data)["payload"]))
    assert doc["predicate"]["buildDefinition"]["externalParameters"]["digest"] == "sha512"
    assert list(doc["subject"][0]["digest"]) == ["sha512"]


def test_reproducible_build_times_come_from_source_date_epoch(
    build: BuildFn, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    src = write_inputs(tmp_path / "same")
    first, second = (split(build(source=src)) for _ in range(2))
    assert [(p.name, p.data) for p in first[1:]] == [(p.name, p.data) for p in second[1:]]
    provenance = next(p for p in first if p.name == "provenance.dsse.json")
    metadata = json.loads(base64.b64decode(json.loads(provenance.data)["payload"]))["predicate"]["runDetails"]
    assert metadata["metadata"] == {"startedOn": "2026-01-01T00:00:00Z", "finishedOn": "2026-01-01T00:00:00Z"}


def test_provenance_signers_prefer_deterministic_keys(keys: Keys) -> None:
    assert provenance_signers([keys.mldsa, keys.ecdsa, keys.ecdsa2]) == [keys.ecdsa, keys.ecdsa2]
    assert provenance_signers([keys.mldsa]) == [keys.mldsa]  # never unsigned


def test_inspect_shows_sbom_provenance_and_model_signature(
    build: BuildFn, keys: Keys, root_path: Path
) -> None:
    bundle = build()
    doc = inspect_bundle([bundle], TrustRoot.load(root_path))
    assert doc["sbom"]["format"] == "CycloneDX 1.6"
    assert {c["name"]: c["type"] for c in doc["sbom"]["components"]} == {
        "weights": "machine-learning-model",
        "policy": "data",
        "site": "application",
    }
    assert doc["provenance"]["predicateType"] == "https://slsa.dev/provenance/v1"
    assert doc["provenance"]["signatures"] == [{"keyid": keys.ecdsa.keyid, "valid": True}]
    (signature,) = doc["modelSignatures"]
    assert signature["member"] == "model-signatures/weights.sig"
    assert (signature["component"], signature["files"]) == ("weights", 2)
    assert (signature["signer"], signature["valid"]) == (keys.ecdsa.keyid, True)
    text = "\n".join(document_lines(doc))
    assert "model signature: model-signatures/weights.sig" in text and "valid=True" in text
    # without a root: described, not judged
    bare = inspect_bundle([bundle])
    assert "valid" not in bare["modelSignatures"][0] and "valid" not in bare["provenance"]["signatures"][0]


def test_inspect_of_a_bundle_whose_root_does_not_hold_the_signer(
    build: BuildFn, keys: Keys, tmp_path: Path
) -> None:
    from tests.conftest import make_root

    other = make_root(keys, tmp_path / "other.json", bundle=(keys.ecdsa2, keys.mldsa))
    doc = inspect_bundle([build()], TrustRoot.load(other))
    assert doc["modelSignatures"][0]["valid"] is False
    assert doc["provenance"]["signatures"] == [{"keyid": keys.ecdsa.keyid, "valid": False}]


@pytest.mark.parametrize("name", ["sbom.cdx.json", "provenance.dsse.json", "model-signatures/weights.sig"])
def test_inspect_refuses_a_document_that_is_not_the_signed_one(
    name: str, build: BuildFn, tmp_path: Path
) -> None:
    parts = split(build())
    i = next(n for n, p in enumerate(parts) if p.name == name)
    data = bytearray(parts[i].data)
    data[len(data) // 2] ^= 0x01
    parts[i] = Part(parts[i].name, parts[i].header, bytes(data), parts[i].mtime, parts[i].mode)
    with pytest.raises(IntegrityError, match=f"member '{name}': digest mismatch") as caught:
        inspect_bundle([join(parts, tmp_path / "t.bundle")])
    assert caught.value.exit_code == 3


def test_model_signature_needs_an_ecdsa_build_key(build: BuildFn, keys: Keys) -> None:
    bundle = build(signers=(keys.mldsa,))
    names = [p.name for p in split(bundle)]
    assert names[:3] == ["BUNDLE.dsse.json", "sbom.cdx.json", "provenance.dsse.json"]
    assert not any(n.startswith("model-signatures/") for n in names)
    assert inspect_bundle([bundle])["modelSignatures"] == []
    assert "  model signatures: none" in document_lines(inspect_bundle([bundle]))


def _model_signature(build: BuildFn) -> dict[str, Any]:
    part = next(p for p in split(build()) if p.name == "model-signatures/weights.sig")
    doc: dict[str, Any] = json.loads(part.data)
    return doc


def _repayload(doc: dict[str, Any], edit: Any) -> None:
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    edit(statement)
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()


MODEL_SIGNATURE_DAMAGE: dict[str, tuple[Any, str]] = {
    "empty object": (lambda d: d.clear(), "mediaType is missing"),
    "other media type": (lambda d: d.update(mediaType="application/json"), "mediaType is not"),
    "two signatures": (
        lambda d: d["dsseEnvelope"]["signatures"].append(d["dsseEnvelope"]["signatures"][0]),
        "exactly one signature",
    ),
    "bad base64": (lambda d: d["dsseEnvelope"].update(payload="@@@"), "not an OpenSSF model signature"),
    "other predicate": (
        lambda d: _repayload(d, lambda s: s.update(predicateType="https://slsa.dev/provenance/v1")),
        "not an in-toto statement of https://model_signing/signature/v1.0",
    ),
    "shard serialisation": (
        lambda d: _repayload(d, lambda s: s["predicate"]["serialization"].update(method="shards")),
        "not method files with sha256",
    ),
    "resource digest changed": (
        lambda d: _repayload(d, lambda s: s["predicate"]["resources"][0].update(digest="00" * 32)),
        "subject digest is not the one its resources define",
    ),
    "resource digest not hex": (
        lambda d: _repayload(d, lambda s: s["predicate"]["resources"][0].update(digest="zz" * 32)),
        "not an OpenSSF model signature",
    ),
}


@pytest.mark.parametrize("case", list(MODEL_SIGNATURE_DAMAGE))
def test_a_malformed_model_signature_is_refused_in_one_line(case: str, build: BuildFn) -> None:
    edit, message = MODEL_SIGNATURE_DAMAGE[case]
    doc = _model_signature(build)
    edit(doc)
    with pytest.raises(IntegrityError, match=message) as caught:
        parse_signature(json.dumps(doc).encode(), "model-signatures/weights.sig")
    assert str(caught.value).startswith("model-signatures/weights.sig: not an OpenSSF model signature")
    assert "\n" not in str(caught.value)


def test_a_model_signature_by_another_key_does_not_count(build: BuildFn, keys: Keys) -> None:
    signature = parse_signature(json.dumps(_model_signature(build)).encode(), "s")
    assert signature.signed_by(keys.ecdsa.public)
    assert not signature.signed_by(keys.ecdsa2.public)  # other key: hint and signature differ
    assert not signature.signed_by(keys.mldsa.public)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{}", "not a DSSE envelope"),
        (
            json.dumps(
                {
                    "payload": base64.b64encode(b"[]").decode(),
                    "payloadType": "application/vnd.in-toto+json",
                    "signatures": [],
                }
            ).encode(),
            "not an in-toto Statement v1",
        ),
        (
            json.dumps(
                {
                    "payload": base64.b64encode(
                        json.dumps(
                            {
                                "_type": "https://in-toto.io/Statement/v1",
                                "subject": [],
                                "predicateType": "https://slsa.dev/provenance/v1",
                                "predicate": {},
                            }
                        ).encode()
                    ).decode(),
                    "payloadType": "application/vnd.in-toto+json",
                    "signatures": [],
                }
            ).encode(),
            "missing field 'buildDefinition'",
        ),
    ],
)
def test_a_malformed_provenance_is_refused_in_one_line(data: bytes, message: str) -> None:
    with pytest.raises(IntegrityError, match=message) as caught:
        parse_provenance(data)
    assert str(caught.value).startswith("provenance.dsse.json: ") and "\n" not in str(caught.value)
