"""Auditors check a bundle's provenance with standard tools, not ours: the real
`model_signing verify key` (OpenSSF model-signing 1.1) accepts the extracted weights with the
bundle's ECDSA P-384 key from root.json and refuses them after one byte changes; coreutils
`sha384sum` agrees with the SBOM for a multi-chunk file. (CycloneDX: test_sbom.py; DSSE with
securesystemslib: test_provenance.py.) Local tools only, so these are unit tests."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from model_signing import hashing
from model_signing._signing.signing import Payload

from enclave.admission import Admission
from enclave.bundle.build import build_bundle
from enclave.bundle.modelsig import payload_for
from tests.conftest import Keys

MIB = 1 << 20
MANIFEST = """\
apiVersion: enclave/v1
kind: Bundle
metadata: {{name: tools, version: 1.0.0}}
spec:
  digest: {digest}
  chunkSize: 1MiB
  components:
    - {{name: weights, kind: model, path: ./weights, format: gguf}}
    - {{name: policy, kind: policy, path: ./policy.yaml}}
"""


def model_tree(base: Path) -> Path:
    """Names whose order differs between strings and paths ("a-b" < "a/b" as strings), a
    multi-chunk file, an empty file, and a .gitattributes model_signing skips by default."""
    weights = base / "weights"
    (weights / "a").mkdir(parents=True)
    (weights / "model.gguf").write_bytes(os.urandom(2 * MIB + 99))
    (weights / "a-b").write_text("dash\n")
    (weights / "a" / "b").write_text("slash\n")
    (weights / "empty").write_bytes(b"")
    (weights / ".gitattributes").write_text("*.gguf filter=lfs\n")
    (base / "policy.yaml").write_text("rules: []\n")
    return base


def bundle_tree(keys: Keys, root_path: Path, tmp_path: Path, digest: str = "sha384") -> Path:
    src = model_tree(tmp_path / "src")
    (src / "bundle.yaml").write_text(MANIFEST.format(digest=digest))
    bundle = build_bundle(
        src / "bundle.yaml", tmp_path / "out", [keys.ecdsa, keys.mldsa], show_progress=False
    )
    target = tmp_path / "published"
    Admission(trust=root_path).verify(bundle, extract_to=target)
    return target


def public_key_from_root(root_path: Path, keyid: str, out: Path) -> Path:
    """The auditor's key: the PEM root.json holds for that keyid (never a key from the bundle)."""
    out.write_text(json.loads(root_path.read_text())["signed"]["keys"][keyid]["keyval"]["public"])
    return out


def model_signing_verify(tree: Path, public_key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "model_signing",
            "verify",
            "key",
            str(tree / "content" / "weights"),
            "--signature",
            str(tree / "model-signatures" / "weights.sig"),
            "--public_key",
            str(public_key),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("digest", ["sha384", "sha256"])
def test_model_signing_accepts_the_extracted_weights_and_refuses_one_changed_byte(
    keys: Keys, root_path: Path, tmp_path: Path, digest: str
) -> None:
    tree = bundle_tree(keys, root_path, tmp_path, digest)
    pem = public_key_from_root(root_path, keys.ecdsa.keyid, tmp_path / "bundle-ecdsa.pub")
    accepted = model_signing_verify(tree, pem)
    assert accepted.returncode == 0, accepted.stderr
    assert "Verification succeeded" in accepted.stdout

    model = tree / "content" / "weights" / "model.gguf"
    original = model.read_bytes()
    changed = bytearray(original)
    changed[MIB + 12345] ^= 0x01  # one bit, in the second chunk
    model.write_bytes(bytes(changed))
    refused = model_signing_verify(tree, pem)
    assert refused.returncode == 1
    # (the message is a list's repr of byte strings, so its quoting varies with the digests)
    assert "Hash mismatch for" in refused.stderr and "model.gguf" in refused.stderr


def test_model_signing_refuses_added_or_removed_files_and_other_keys(
    keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    tree = bundle_tree(keys, root_path, tmp_path)
    weights = tree / "content" / "weights"
    pem = public_key_from_root(root_path, keys.ecdsa.keyid, tmp_path / "k.pub")
    other = public_key_from_root(root_path, keys.ecdsa2.keyid, tmp_path / "other.pub")
    refused = model_signing_verify(tree, other)
    assert refused.returncode == 1 and "Key mismatch" in refused.stderr

    (weights / "extra.bin").write_bytes(b"x")
    refused = model_signing_verify(tree, pem)
    assert refused.returncode == 1 and "Extra files" in refused.stderr
    (weights / "extra.bin").unlink()

    shutil.move(weights / "a" / "b", tmp_path / "b")
    refused = model_signing_verify(tree, pem)
    assert refused.returncode == 1 and "Missing files" in refused.stderr
    shutil.move(tmp_path / "b", weights / "a" / "b")
    assert model_signing_verify(tree, pem).returncode == 0  # the control: back as built


def _library_payload(directory: Path) -> dict[str, Any]:
    """What model_signing itself would sign for this directory (its default hashing config)."""
    manifest = hashing.Config().hash(directory)  # type: ignore[no-untyped-call]
    doc: dict[str, Any] = json_format.MessageToDict(Payload(manifest).statement.pb)
    return doc


def test_our_payload_is_the_one_model_signing_computes(keys: Keys, root_path: Path, tmp_path: Path) -> None:
    tree = bundle_tree(keys, root_path, tmp_path)
    weights = tree / "content" / "weights"
    sha256 = {
        p.relative_to(weights).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in weights.rglob("*")
        if p.is_file()
    }
    ours = json.loads(payload_for("weights", sha256))
    theirs = _library_payload(weights)
    # model_signing lists ignore_paths from a frozenset (any order); everything else is equal
    for doc in (ours, theirs):
        doc["predicate"]["serialization"]["ignore_paths"] = sorted(
            doc["predicate"]["serialization"]["ignore_paths"]
        )
    assert ours == theirs
    assert [r["name"] for r in ours["predicate"]["resources"]] == ["a/b", "a-b", "empty", "model.gguf"]
    # and it is the payload the bundle carries
    signature = json.loads((tree / "model-signatures" / "weights.sig").read_text())
    assert json.loads(base64.b64decode(signature["dsseEnvelope"]["payload"])) == json.loads(
        payload_for("weights", sha256)
    )


def test_sha384sum_agrees_with_the_sbom_for_a_multi_chunk_file(
    keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    tree = bundle_tree(keys, root_path, tmp_path)
    sbom = json.loads((tree / "sbom.cdx.json").read_text())
    files = {f["name"]: f for c in sbom["components"] for f in c["components"]}
    entry = files["content/weights/model.gguf"]
    assert {p["name"]: p["value"] for p in entry["properties"]}["enclave:chunks"] == "3"
    out = subprocess.run(
        ["sha384sum", str(tree / "content/weights/model.gguf")], capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[0] == entry["hashes"][0]["content"]
