"""A bundle with every kind of component the provenance documents describe (a model, an image
exported from the real Docker engine, a wheelhouse, a policy), checked end to end with the
standard tools only: CycloneDX 1.6 validation, securesystemslib DSSE with root.json's ECDSA
key, in-toto/SLSA protobuf schemas, `model_signing verify`, and the image's hash in the SBOM
equal to the OCI manifest blob's SHA-256 as carried in the bundle."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from packageurl import PackageURL
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.signer import Key, SSlibKey  # type: ignore[attr-defined]

from enclave.admission import Admission
from enclave.bundle.build import build_bundle
from enclave.images.collect import collect_images
from tests.conftest import Keys, make_root

pytestmark = pytest.mark.integration

NAME = f"enclave-provenance-itest-{os.getpid()}"


@pytest.fixture(scope="module")
def image_ref(docker_engine: None) -> Iterator[str]:
    """A one-file image imported into the engine (nothing pulled, never run); removed after."""
    client = docker.from_env(timeout=900)
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        payload = os.urandom(4096)
        info = tarfile.TarInfo("etc/payload")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    client.api.import_image_from_data(data.getvalue(), repository=NAME, tag="1.0")
    try:
        yield f"{NAME}:1.0"
    finally:
        for image in client.images.list(name=NAME):
            client.images.remove(image.id, force=True)
        client.close()


def test_every_document_checks_with_standard_tools(
    image_ref: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENCLAVE_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "src"
    (src / "weights").mkdir(parents=True)
    (src / "weights" / "model.gguf").write_bytes(os.urandom(3 * 1024 * 1024 + 1))
    (src / "wheels").mkdir()
    (src / "wheels" / "tiny_pkg-0.3.0-py3-none-any.whl").write_bytes(b"PK")
    (src / "policy.yaml").write_text("rules: []\n")
    (src / "bundle.yaml").write_text(
        "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: full, version: 2.0.0}\n"
        "spec:\n  chunkSize: 1MiB\n  components:\n"
        "    - {name: weights, kind: model, path: ./weights, format: gguf}\n"
        f"    - {{name: app, kind: image, ref: {image_ref}}}\n"
        "    - {name: wheels, kind: wheelhouse, path: ./wheels}\n"
        "    - {name: policy, kind: policy, path: ./policy.yaml}\n"
    )
    bundle = build_bundle(
        src / "bundle.yaml",
        tmp_path / "out",
        [keys.ecdsa, keys.mldsa],
        show_progress=False,
        images=collect_images,
    )
    root_path = make_root(keys, tmp_path / "root.json")
    tree = tmp_path / "published"
    Admission(trust=root_path).verify(bundle, extract_to=tree)

    # CycloneDX: schema-valid; the image is a container whose hash is its manifest blob's SHA-256
    sbom_text = (tree / "sbom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom_text) is None
    components = {c["bom-ref"]: c for c in json.loads(sbom_text)["components"]}
    image = components["component:app"]
    assert image["type"] == "container" and image["version"] == "1.0"
    manifest_hex = image["hashes"][0]["content"]
    blob = tree / "content" / "app" / "blobs" / "sha256" / manifest_hex
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == manifest_hex
    assert PackageURL.from_string(image["purl"]).version == f"sha256:{manifest_hex}"
    wheel = components["component:wheels"]["components"][0]
    assert PackageURL.from_string(wheel["purl"]).to_dict()["name"] == "tiny-pkg"
    for component in components.values():
        for entry in component["components"]:
            digest = hashlib.sha384((tree / entry["bom-ref"]).read_bytes()).hexdigest()
            assert entry["hashes"] == [{"alg": "SHA-384", "content": digest}]

    # DSSE (securesystemslib) with the ECDSA key as root.json stores it, for both envelopes
    signed = json.loads(root_path.read_text())["signed"]
    loaded = [SSlibKey.from_dict(k, dict(signed["keys"][k])) for k in signed["roles"]["bundle"]["keyids"]]
    ecdsa: list[Key] = [k for k in loaded if k.keytype == "ecdsa"]
    for name in ("BUNDLE.dsse.json", "provenance.dsse.json"):
        verified = SslibEnvelope.from_dict(json.loads((tree / name).read_text())).verify(ecdsa, 1)
        assert list(verified) == [keys.ecdsa.keyid], name

    # SLSA provenance v1 by the in-toto protobuf schemas; the image is a resolved dependency
    provenance = json.loads(
        base64.b64decode(json.loads((tree / "provenance.dsse.json").read_text())["payload"])
    )
    json_format.Parse(json.dumps(provenance), statement_pb2.Statement())
    predicate = json_format.Parse(json.dumps(provenance["predicate"]), provenance_pb2.Provenance())
    dependencies = {d.name: d for d in predicate.build_definition.resolved_dependencies}
    assert dependencies[image_ref].digest["sha256"] == manifest_hex

    # OpenSSF model signing, with the bundle key's PEM from root.json
    pem = tmp_path / "bundle-key.pem"
    pem.write_text(signed["keys"][keys.ecdsa.keyid]["keyval"]["public"])
    command = [sys.executable, "-m", "model_signing", "verify", "key", str(tree / "content" / "weights")]
    command += ["--signature", str(tree / "model-signatures" / "weights.sig"), "--public_key", str(pem)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
