"""Verification receipts: content, signatures, the hash-chained log and its tampering."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from enclave.cli import main
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot, sign_document
from tests.conftest import BuildFn, Keys


@pytest.fixture(scope="module")
def audit_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningKey, Path]:
    directory = tmp_path_factory.mktemp("audit-key")
    key = SigningKey.generate("ml-dsa-87")
    key.write(directory / "audit", None)
    return key, directory / "audit"


@pytest.fixture
def audited_root(keys: Keys, audit_key: tuple[SigningKey, Path], tmp_path: Path) -> Path:
    """The usual root, plus an audit role holding `audit_key`."""
    from datetime import UTC, datetime, timedelta

    signed = TrustRoot.create(
        {
            "root": [keys.root.public],
            "bundle": [keys.ecdsa.public, keys.mldsa.public, keys.ecdsa2.public],
            "audit": [audit_key[0].public],
        },
        {"bundle": 2},
        datetime.now(UTC) + timedelta(days=30),
    )
    path = tmp_path / "root.json"
    path.write_bytes(sign_document(signed, [keys.root]))
    return path


def lines(state_dir: Path) -> list[bytes]:
    return (state_dir / "receipts.log").read_bytes().splitlines()


def payload(line: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(base64.b64decode(json.loads(line)["payload"]))
    return doc


def test_receipt_of_a_verified_bundle(
    build: BuildFn,
    keys: Keys,
    audited_root: Path,
    audit_key: tuple[SigningKey, Path],
    tmp_path: Path,
    state_dir: Path,
) -> None:
    bundle = build()
    out = tmp_path / "receipt.json"
    args = ["bundle", "verify", str(bundle), "--trust", str(audited_root)]
    assert main([*args, "--receipt", str(out), "--audit-key", str(audit_key[1])]) == 0
    (line,) = lines(state_dir)
    assert out.read_bytes() == line + b"\n", "the receipt file is its log line"
    envelope = json.loads(line)
    assert [s["keyid"] for s in envelope["signatures"]] == [audit_key[0].keyid]
    receipt = payload(line)
    root = TrustRoot.load(audited_root)
    assert receipt["result"] == "verified" and receipt["exitCode"] == 0 and receipt["error"] is None
    assert receipt["bundle"]["name"] == "demo" and receipt["bundle"]["version"] == "1.0.0"
    assert receipt["bundle"]["digestOf"] == "statement"
    statement = base64.b64decode(json.loads(_envelope_member(bundle))["payload"])
    assert receipt["bundle"]["digest"]["sha256"] == hashlib.sha256(statement).hexdigest()
    assert {(s["keyid"], tuple(s["roles"])) for s in receipt["signers"]} == {
        (keys.ecdsa.keyid, ("bundle",)),
        (keys.mldsa.keyid, ("bundle",)),
    }
    assert receipt["trustRoot"] == {"version": 1, "digest": root.digest, "expires": root.signed["expires"]}
    assert receipt["verifier"]["tool"] == "enclave" and receipt["verifier"]["version"]
    assert receipt["mode"] == "admission" and receipt["time"].endswith("Z")
    assert any(c.startswith("content:") for c in receipt["checks"])
    assert any(c.startswith("rollback:") for c in receipt["checks"])
    assert receipt["log"] == {"seq": 0, "prev": "0" * 64}
    assert main(["receipts", "verify", "--require-signed"]) == 0


def _envelope_member(bundle: Path) -> bytes:
    import tarfile

    with tarfile.open(bundle) as tar:
        member = tar.extractfile("BUNDLE.dsse.json")
        assert member is not None
        return member.read()


def test_receipt_of_a_failed_verification(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path, state_dir: Path
) -> None:
    bundle = build(signers=(keys.stranger, keys.mldsa))
    out = tmp_path / "receipt.json"
    assert main(["bundle", "verify", str(bundle), "--trust", str(root_path), "--receipt", str(out)]) == 4
    receipt = payload(out.read_bytes().rstrip(b"\n"))
    assert receipt["result"] == "failed" and receipt["exitCode"] == 4
    assert receipt["error"]["type"] == "TrustError" and "not accepted" in receipt["error"]["message"]
    assert receipt["bundle"]["signatureKeyids"] == [keys.stranger.keyid, keys.mldsa.keyid]
    assert receipt["bundle"]["name"] is None, "unsigned claims are not recorded as facts"
    assert receipt["signers"] == []


def test_receipt_of_a_file_that_is_no_bundle_names_its_bytes(
    root_path: Path, tmp_path: Path, state_dir: Path
) -> None:
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"not a tar at all" * 100)
    assert main(["bundle", "verify", str(junk), "--trust", str(root_path)]) == 3
    receipt = payload(lines(state_dir)[0])
    assert receipt["bundle"]["digestOf"] == "files"
    assert receipt["bundle"]["digest"]["sha256"] == hashlib.sha256(junk.read_bytes()).hexdigest()
    assert receipt["exitCode"] == 3


def test_every_verification_is_chained(build: BuildFn, keys: Keys, root_path: Path, state_dir: Path) -> None:
    good = build(version="2.0.0")
    assert main(["bundle", "verify", str(good), "--trust", str(root_path)]) == 0
    assert main(["bundle", "verify", str(build(version="1.0.0")), "--trust", str(root_path)]) == 5
    assert main(["bundle", "verify", str(good), "--trust", str(root_path)]) == 0
    chain = lines(state_dir)
    assert [payload(line)["exitCode"] for line in chain] == [0, 5, 0]
    assert [payload(line)["log"]["seq"] for line in chain] == [0, 1, 2]
    assert main(["receipts", "verify", "--trust", str(root_path)]) == 0
    assert main(["receipts", "verify", "--trust", str(root_path), "--require-signed"]) == 4


def test_audit_key_outside_the_audit_role_is_refused(
    build: BuildFn, keys: Keys, root_path: Path, state_dir: Path
) -> None:
    args = [
        "bundle",
        "verify",
        str(build()),
        "--trust",
        str(root_path),
        "--audit-key",
        str(keys.path("ecdsa")),
    ]
    assert main(args) == 2
    (line,) = lines(state_dir)
    assert json.loads(line)["signatures"] == [] and payload(line)["exitCode"] == 2


def test_existing_receipt_file_is_never_overwritten(
    build: BuildFn, root_path: Path, tmp_path: Path, state_dir: Path
) -> None:
    out = tmp_path / "receipt.json"
    out.write_text("earlier evidence")
    assert main(["bundle", "verify", str(build()), "--trust", str(root_path), "--receipt", str(out)]) == 2
    assert out.read_text() == "earlier evidence"
    assert not (state_dir / "receipts.log").exists(), "refused before verifying"


@pytest.fixture
def signed_log(
    build: BuildFn, audited_root: Path, audit_key: tuple[SigningKey, Path], tmp_path: Path, state_dir: Path
) -> Path:
    """Three signed receipts; the second one's file is kept as a witness."""
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        args = ["bundle", "verify", str(build(version=version)), "--trust", str(audited_root)]
        args += ["--audit-key", str(audit_key[1]), "--receipt", str(tmp_path / f"r-{version}.json")]
        assert main(args) == 0
    assert main(["receipts", "verify", "--require-signed"]) == 0
    return state_dir / "receipts.log"


def _rewrite(log: Path, edit: Any) -> None:
    chain = log.read_bytes().splitlines()
    log.write_bytes(b"".join(line + b"\n" for line in edit(chain)))


def _edit_payload(line: bytes, change: Any) -> bytes:
    envelope = json.loads(line)
    doc = payload(line)
    change(doc)
    from enclave.trust.root import canonical

    envelope["payload"] = base64.b64encode(canonical(doc)).decode()
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


TAMPERING = {
    "receipt deleted": (lambda c: [c[0], c[2]], 3),
    "receipts reordered": (lambda c: [c[1], c[0], c[2]], 3),
    "receipt duplicated": (lambda c: [c[0], c[1], c[1], c[2]], 3),
    "result changed in the middle (chain broken)": (
        lambda c: [c[0], _edit_payload(c[1], lambda d: d.update(result="failed")), c[2]],
        3,
    ),
    "result changed in the last receipt (signature broken)": (
        lambda c: [c[0], c[1], _edit_payload(c[2], lambda d: d.update(result="failed"))],
        4,
    ),
    "signature removed": (
        lambda c: [c[0], c[1].replace(json.loads(c[1])["signatures"][0]["sig"].encode(), b""), c[2]],
        3,
    ),
    "line garbled": (lambda c: [c[0], c[1][:-5], c[2]], 3),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampered_log_is_detected(case: str, signed_log: Path) -> None:
    edit, code = TAMPERING[case]
    _rewrite(signed_log, edit)
    assert main(["receipts", "verify"]) == code


def test_receipt_signed_by_a_stranger_is_refused(signed_log: Path, keys: Keys) -> None:
    from enclave.trust.dsse import Envelope

    def resign(line: bytes) -> bytes:
        envelope = Envelope.from_json(line)
        envelope.signatures = []
        envelope.sign(keys.stranger)
        return envelope.to_json()

    _rewrite(signed_log, lambda c: [c[0], c[1], resign(c[2])])
    assert main(["receipts", "verify"]) == 4


def test_truncation_is_seen_against_a_witness(signed_log: Path, tmp_path: Path) -> None:
    _rewrite(signed_log, lambda c: c[:1])
    assert main(["receipts", "verify"]) == 0  # alone, a shorter chain is still a valid chain
    assert main(["receipts", "verify", "--witness", str(tmp_path / "r-1.1.0.json")]) == 3
    _rewrite(signed_log, lambda c: c)
    assert main(["receipts", "verify", "--witness", str(tmp_path / "r-1.0.0.json")]) == 0


def test_torn_last_line_is_recovered_and_recorded(
    signed_log: Path, build: BuildFn, audited_root: Path
) -> None:
    with signed_log.open("ab") as handle:
        handle.write(b'{"payload":"eyJf')  # a crash cut an append short
    assert main(["receipts", "verify"]) == 0  # a warning, not a failure: it was never acknowledged
    assert main(["bundle", "verify", str(build(version="2.0.0")), "--trust", str(audited_root)]) == 0
    last = payload(signed_log.read_bytes().splitlines()[-1])
    assert last["recovered"] == {"tornBytes": 16} and last["log"]["seq"] == 3
    assert main(["receipts", "verify"]) == 0


def test_damaged_log_end_refuses_verification_before_it_starts(
    signed_log: Path, build: BuildFn, audited_root: Path
) -> None:
    _rewrite(signed_log, lambda c: [c[0], c[1], c[2][:40]])
    bundle = build(version="3.0.0")
    assert main(["bundle", "verify", str(bundle), "--trust", str(audited_root)]) == 3
    assert len(signed_log.read_bytes().splitlines()) == 3, "nothing appended to a damaged log"
