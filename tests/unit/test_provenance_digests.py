"""Plain digests: what the build computes in its one hashing read, how the statement signs them
(`plainDigest`, present exactly for multi-chunk members, parsed strictly), and what they are
for: standard tools compare them; `bundle verify` checks the chunks (FORMAT.md, "Provenance
documents", why the plain digest is not re-checked there)."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from enclave.admission import Admission
from enclave.bundle.build import SourceFile, _hash_inputs, _plain_wanted
from enclave.bundle.digest import combine, digest_files
from enclave.bundle.statement import BundleStatement, ComponentEntry, Member
from enclave.errors import EnclaveError, IntegrityError
from tests.conftest import BuildFn, Keys
from tests.tarsurgery import resign

MIB = 1 << 20
NOW = datetime.now(UTC)


def source(path: Path, name: str = "content/c/f") -> SourceFile:
    return SourceFile(name, path, 0o644, path.stat())


@pytest.mark.parametrize(
    ("size", "chunk"),
    [
        (0, MIB),
        (1, MIB),
        (MIB - 1, MIB),
        (MIB, MIB),
        (MIB + 1, MIB),
        (3 * MIB + 5, MIB),
        (17 * MIB + 3, 8 * MIB),
    ],
)
def test_one_streamed_read_gives_chunk_and_plain_digests(size: int, chunk: int, tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(size)
    path.write_bytes(data)
    (hashed,) = _hash_inputs([source(path)], [frozenset({"sha384", "sha256"})], "sha384", chunk, 2, None)
    (reference,) = digest_files([path], "sha384", chunk)
    assert hashed.digest == reference  # the same chunks and bundle-format digest as the parallel path
    assert hashed.plain == {"sha384": hashlib.sha384(data).digest(), "sha256": hashlib.sha256(data).digest()}


def test_files_that_need_no_plain_digest_keep_the_parallel_path(tmp_path: Path) -> None:
    paths = []
    for i, size in enumerate([10, 3 * MIB, 5]):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(os.urandom(size))
    wants = [frozenset(), frozenset({"sha384"}), frozenset({"sha256"})]
    hashed = _hash_inputs([source(p) for p in paths], wants, "sha384", MIB, 2, None)
    assert [h.digest for h in hashed] == digest_files(paths, "sha384", MIB)
    assert [set(h.plain) for h in hashed] == [set(), {"sha384"}, {"sha256"}]
    assert hashed[1].plain["sha384"] == hashlib.sha384(paths[1].read_bytes()).digest()


@pytest.mark.parametrize(
    ("size", "model", "algorithm", "wanted"),
    [
        (10, False, "sha384", set()),  # one chunk: its digest is the plain one
        (3 * MIB, False, "sha384", {"sha384"}),  # several chunks: SBOM and SLSA need the plain one
        (10, True, "sha384", {"sha256"}),  # model file: the OpenSSF signature needs SHA-256
        (3 * MIB, True, "sha384", {"sha384", "sha256"}),
        (10, True, "sha256", set()),  # a sha256 bundle's one-chunk digest serves both
        (3 * MIB, True, "sha256", {"sha256"}),
    ],
)
def test_which_plain_digests_a_file_needs(
    size: int, model: bool, algorithm: str, wanted: set[str], tmp_path: Path
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\0" * size)
    assert _plain_wanted(source(path), algorithm, MIB, model) == wanted


def _statement() -> BundleStatement:
    chunks = tuple(hashlib.sha384(bytes([i])).hexdigest() for i in range(3))
    digest = combine("sha384", MIB, [bytes.fromhex(c) for c in chunks]).hex()
    members = (
        Member("content/c/big", 3 * MIB, 0o644, digest, chunks, "ab" * 48),
        Member("content/c/small", 5, 0o644, "cd" * 48),
    )
    component = ComponentEntry("c", "files", tuple(m.name for m in members))
    return BundleStatement("n", "1.0.0", "2026-01-01T00:00:00Z", "sha384", MIB, (component,), members)


def _edited(edit: Any) -> bytes:
    doc = json.loads(_statement().to_payload())
    edit(doc["predicate"]["members"])
    return json.dumps(doc).encode()


def test_plain_digest_round_trips_in_the_statement() -> None:
    payload = _statement().to_payload()
    parsed = BundleStatement.from_payload(payload)
    assert parsed.members[0].plain == "ab" * 48 and parsed.members[0].plain_digest == "ab" * 48
    assert parsed.members[1].plain == "" and parsed.members[1].plain_digest == "cd" * 48
    assert b'"plainDigest"' in payload and payload.count(b'"plainDigest"') == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m[0].pop("plainDigest"), r"members\[0\]\.plainDigest is missing"),
        (lambda m: m[1].update(plainDigest="cd" * 48), r"members\[1\]: chunks and plainDigest are only"),
        (lambda m: m[0].update(plainDigest="AB" * 48), r"plainDigest is not a lowercase hex sha384"),
        (lambda m: m[0].update(plainDigest="ab" * 32), r"plainDigest is not a lowercase hex sha384"),
        (lambda m: m[0].update(plainDigest=7), r"plainDigest must be a string"),
    ],
)
def test_plain_digest_is_parsed_strictly(edit: Any, message: str) -> None:
    with pytest.raises(IntegrityError, match=message) as caught:
        BundleStatement.from_payload(_edited(edit))
    assert caught.value.exit_code == 3


def _weights(statement: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = next(
        m for m in statement["predicate"]["members"] if m["name"] == "content/weights/model.gguf"
    )
    return entry


def test_verify_refuses_a_signed_statement_without_the_plain_digest(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    bundle = resign(build(), keys, tmp_path / "t.bundle", lambda s: _weights(s).pop("plainDigest"))
    with pytest.raises(EnclaveError, match="plainDigest is missing") as caught:
        Admission(trust=root_path, at=NOW).verify(bundle)
    assert caught.value.exit_code == 3


def test_plain_digest_is_an_attestation_that_standard_tools_check(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    """verify checks every chunk on all cores; it does not re-hash whole files sequentially, so
    a builder who signs a wrong plainDigest gets a bundle that verifies, and the first standard
    tool that compares the file (sha384sum, a CycloneDX or SLSA checker) refuses it. Content
    that differs from what was signed is never accepted either way: the chunks bind it."""
    bundle = resign(build(), keys, tmp_path / "t.bundle", lambda s: _weights(s).update(plainDigest="0" * 96))
    target = tmp_path / "x"
    result = Admission(trust=root_path, at=NOW).verify(bundle, extract_to=target)
    signed = next(m for m in result.statement.members if m.name == "content/weights/model.gguf")
    actual = hashlib.sha384((target / "content/weights/model.gguf").read_bytes()).hexdigest()
    assert signed.plain == "0" * 96 != actual
