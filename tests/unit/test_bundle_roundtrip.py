"""Build -> verify -> extract round trips, reproducibility, co-signing and inspection."""

from __future__ import annotations

import filecmp
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enclave.admission import Admission
from enclave.bundle.build import sign_bundle
from enclave.bundle.digest import digest_files
from enclave.bundle.inspect import inspect_bundle
from enclave.errors import ThresholdNotMet, TrustError
from enclave.trust.root import TrustRoot
from tests.conftest import BuildFn, Keys, write_inputs
from tests.tarsurgery import split

NOW = datetime.now(UTC)


@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512"])
def test_round_trip_publishes_exact_tree(
    build: BuildFn, root_path: Path, tmp_path: Path, digest: str
) -> None:
    bundle = build(digest=digest)
    target = tmp_path / "published"
    result = Admission(trust=root_path, at=NOW).verify(bundle, extract_to=target)
    assert result.statement.digest == digest
    source = bundle.parent.parent / bundle.parent.name.replace("out", "src")
    for rel in [
        "weights/model.gguf",
        "weights/config.json",
        "playbooks/site.yml",
        "playbooks/roles/r/main.yml",
    ]:
        component = "site" if rel.startswith("playbooks") else "weights"
        inner = rel.split("/", 1)[1]
        assert filecmp.cmp(source / rel, target / "content" / component / inner, shallow=False)
    assert (target / "content/policy/policy.yaml").read_text() == "rules: []\n"
    assert (target / "BUNDLE.dsse.json").is_file() and (target / "sbom.cdx.json").is_file()
    assert not list(tmp_path.glob(".published.staging-*"))


def test_large_file_has_chunk_digests_that_define_its_digest(build: BuildFn) -> None:
    doc = inspect_bundle([build()])
    weights = next(m for m in doc["members"] if m["name"] == "content/weights/model.gguf")
    assert weights["chunks"] == 4  # 3 MiB + 123 bytes at 1 MiB chunks


def test_digest_of_a_loose_file_matches_the_signed_one(build: BuildFn, tmp_path: Path) -> None:
    bundle = build()
    source = bundle.parent.parent / bundle.parent.name.replace("out", "src") / "weights"
    (model,) = digest_files([source / "model.gguf"], "sha384", 1 << 20)
    (small,) = digest_files([source / "config.json"], "sha384", 1 << 20)
    members = {m["name"]: m["digest"] for m in inspect_bundle([bundle])["members"]}
    assert members["content/weights/model.gguf"] == model.digest.hex()
    # a single-chunk file's digest is its plain digest, so sha384sum agrees
    assert (
        members["content/weights/config.json"]
        == hashlib.sha384((source / "config.json").read_bytes()).hexdigest()
    )
    assert small.digest.hex() == members["content/weights/config.json"]


def test_reproducible_build(
    build: BuildFn, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    src = write_inputs(tmp_path / "same")
    first = build(source=src)
    second = build(source=src)
    a, b = split(first), split(second)
    envelope_a, envelope_b = (json.loads(x[0].data) for x in (a, b))
    assert envelope_a["payload"] == envelope_b["payload"]  # identical statement
    assert [(p.header, p.data) for p in a[1:]] == [
        (p.header, p.data) for p in b[1:]
    ]  # identical content bytes
    # ECDSA (RFC 6979) alone is deterministic, so an ECDSA-only bundle is byte-identical
    ecdsa_only = [build(signers=(keys.ecdsa,), source=src).read_bytes() for _ in range(2)]
    assert ecdsa_only[0] == ecdsa_only[1]


def test_cosign_meets_hybrid_threshold_without_touching_content(
    build: BuildFn, keys: Keys, root_path: Path
) -> None:
    bundle = build(signers=(keys.ecdsa,))
    root = TrustRoot.load(root_path)
    before = split(bundle)
    with pytest.raises(ThresholdNotMet, match="hybrid"):
        Admission(trust=root, at=NOW).verify(bundle)
    sign_bundle(bundle, keys.mldsa, show_progress=False)
    after = split(bundle)
    assert [(p.header, p.data) for p in before[1:]] == [(p.header, p.data) for p in after[1:]]
    result = Admission(trust=root, at=NOW).verify(bundle)
    assert {k.keyid for k in result.signers} == {keys.ecdsa.keyid, keys.mldsa.keyid}


def test_cosigning_twice_with_one_key_is_refused(build: BuildFn, keys: Keys) -> None:
    bundle = build()
    before = bundle.read_bytes()
    with pytest.raises(TrustError, match="already signed"):
        sign_bundle(bundle, keys.ecdsa, show_progress=False)
    assert bundle.read_bytes() == before


def test_inspect_labels_signers_against_a_root(build: BuildFn, keys: Keys, root_path: Path) -> None:
    doc = inspect_bundle([build()], TrustRoot.load(root_path))
    assert [(s["keyid"], s["valid"]) for s in doc["signatures"]] == [
        (keys.ecdsa.keyid, True),
        (keys.mldsa.keyid, True),
    ]
    assert {c["name"]: c["kind"] for c in doc["components"]} == {
        "weights": "model",
        "policy": "policy",
        "site": "playbooks",
    }
