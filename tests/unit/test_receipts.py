"""Verification receipts: content, signatures, the hash-chained log and its tampering; through
the library (Admission, verify_receipt_log), then `test_cli_*` end to end."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from enclave.admission import Admission
from enclave.cli import main
from enclave.errors import (
    EnclaveError,
    IntegrityError,
    KeyNotInRole,
    RollbackRefused,
    ThresholdNotMet,
    TrustError,
    UsageError,
)
from enclave.trust.keys import SigningKey
from enclave.trust.merkle import leaf_hash
from enclave.trust.receipts import ReceiptReport, verify_receipt_log
from enclave.trust.root import TrustRoot, sign_document
from enclave.trust.state import StateDir
from enclave.trust.trusted import TrustedRoot
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


def check_log(
    state_dir: Path, trust: Path | None = None, require_signed: bool = False, witnesses: tuple[Path, ...] = ()
) -> ReceiptReport:
    """`receipts verify` as a library call: the log checked against the stored root (or `trust`)."""
    state = StateDir(state_dir)
    root = TrustRoot.load(trust) if trust else state.read_root()
    assert root is not None
    return verify_receipt_log(
        state.receipts_path, TrustedRoot(root, datetime.now(UTC)), require_signed, witnesses
    )


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
    admitted = Admission(state_dir, audited_root, audit_signer=audit_key[0]).verify(bundle, receipt=out)
    (line,) = lines(state_dir)
    assert admitted.receipt == {"seq": 0, "hash": leaf_hash(line).hex()}
    assert admitted.receipt_log == state_dir / "receipts.log" and admitted.receipt_file == out
    assert admitted.receipt_signed
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
    assert admitted.statement_digest == receipt["bundle"]["digest"]["sha256"]
    assert {(s["keyid"], tuple(s["roles"])) for s in receipt["signers"]} == {
        (keys.ecdsa.keyid, ("bundle",)),
        (keys.mldsa.keyid, ("bundle",)),
    }
    assert receipt["trustRoot"] == {"version": 1, "digest": root.digest, "expires": root.signed["expires"]}
    assert receipt["verifier"]["tool"] == "enclave" and receipt["verifier"]["version"]
    assert receipt["mode"] == "admission" and receipt["time"].endswith("Z")
    assert any(c.startswith("content:") for c in receipt["checks"])
    assert any(c.startswith("rollback:") for c in receipt["checks"])
    assert receipt["checks"] == admitted.checks
    assert receipt["log"] == {"seq": 0, "prev": "0" * 64}
    report = check_log(state_dir, require_signed=True)
    assert (report.receipts, report.signed, report.verified) == (1, 1, 1)


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
    with pytest.raises(ThresholdNotMet) as caught:
        Admission(state_dir, root_path).verify(bundle, receipt=out)
    assert caught.value.untrusted_keyids == (keys.stranger.keyid,)
    receipt = payload(out.read_bytes().rstrip(b"\n"))
    assert receipt["result"] == "failed" and receipt["exitCode"] == 4 == caught.value.exit_code
    assert receipt["error"]["type"] == "ThresholdNotMet" and "not accepted" in receipt["error"]["message"]
    assert receipt["error"]["message"] == str(caught.value)
    assert receipt["bundle"]["signatureKeyids"] == [keys.stranger.keyid, keys.mldsa.keyid]
    assert receipt["bundle"]["name"] is None, "unsigned claims are not recorded as facts"
    assert receipt["signers"] == []


def test_receipt_of_a_file_that_is_no_bundle_names_its_bytes(
    root_path: Path, tmp_path: Path, state_dir: Path
) -> None:
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(IntegrityError) as caught:
        Admission(state_dir, root_path).verify(junk)
    receipt = payload(lines(state_dir)[0])
    assert receipt["bundle"]["digestOf"] == "files"
    assert receipt["bundle"]["digest"]["sha256"] == hashlib.sha256(junk.read_bytes()).hexdigest()
    assert receipt["exitCode"] == 3 == caught.value.exit_code


def test_every_verification_is_chained(build: BuildFn, keys: Keys, root_path: Path, state_dir: Path) -> None:
    good = build(version="2.0.0")
    admission = Admission(state_dir, root_path)
    assert admission.verify(good).receipt["seq"] == 0  # type: ignore[index]
    with pytest.raises(RollbackRefused):
        admission.verify(build(version="1.0.0"))
    assert admission.verify(good).receipt["seq"] == 2  # type: ignore[index]
    chain = lines(state_dir)
    assert [payload(line)["exitCode"] for line in chain] == [0, 5, 0]
    assert [payload(line)["log"]["seq"] for line in chain] == [0, 1, 2]
    assert payload(chain[1])["error"]["type"] == "RollbackRefused"
    report = check_log(state_dir, trust=root_path)
    assert (report.receipts, report.unsigned, report.verified, report.failed) == (3, 3, 2, 1)
    with pytest.raises(TrustError, match="receipt is not signed") as caught:
        check_log(state_dir, trust=root_path, require_signed=True)
    assert caught.value.exit_code == 4


def test_audit_key_outside_the_audit_role_is_refused(
    build: BuildFn, keys: Keys, root_path: Path, state_dir: Path
) -> None:
    with pytest.raises(KeyNotInRole) as caught:
        Admission(state_dir, root_path, audit_signer=keys.ecdsa).verify(build())
    error = caught.value
    assert error.exit_code == 2 and (error.keyid, error.role, error.root_version) == (
        keys.ecdsa.keyid,
        "audit",
        1,
    )
    assert (
        str(error)
        == f"audit signer: key {keys.ecdsa.keyid[:16]} is not a key of the audit role of trust root v1"
    )
    (line,) = lines(state_dir)
    assert json.loads(line)["signatures"] == [] and payload(line)["exitCode"] == 2
    assert payload(line)["error"]["type"] == "KeyNotInRole"


def test_existing_receipt_file_is_never_overwritten(
    build: BuildFn, root_path: Path, tmp_path: Path, state_dir: Path
) -> None:
    out = tmp_path / "receipt.json"
    out.write_text("earlier evidence")
    with pytest.raises(UsageError, match="already exists") as caught:
        Admission(state_dir, root_path).verify(build(), receipt=out)
    assert caught.value.exit_code == 2
    assert out.read_text() == "earlier evidence"
    assert not (state_dir / "receipts.log").exists(), "refused before verifying"


@pytest.fixture
def signed_log(
    build: BuildFn, audited_root: Path, audit_key: tuple[SigningKey, Path], tmp_path: Path, state_dir: Path
) -> Path:
    """Three signed receipts; the second one's file is kept as a witness."""
    admission = Admission(state_dir, audited_root, audit_signer=audit_key[0])
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        admission.verify(build(version=version), receipt=tmp_path / f"r-{version}.json")
    assert check_log(state_dir, require_signed=True).signed == 3
    return state_dir / "receipts.log"


def _rewrite(log: Path, edit: Any) -> None:
    chain = log.read_bytes().splitlines()
    log.write_bytes(b"".join(line + b"\n" for line in edit(chain)))


def _edit_payload(line: bytes, change: Any) -> bytes:
    envelope = json.loads(line)
    doc = payload(line)
    change(doc)
    from enclave.canonical import canonical

    envelope["payload"] = base64.b64encode(canonical(doc)).decode()
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


TAMPERING: dict[str, tuple[Any, type[EnclaveError]]] = {
    "receipt deleted": (lambda c: [c[0], c[2]], IntegrityError),
    "receipts reordered": (lambda c: [c[1], c[0], c[2]], IntegrityError),
    "receipt duplicated": (lambda c: [c[0], c[1], c[1], c[2]], IntegrityError),
    "result changed in the middle (chain broken)": (
        lambda c: [c[0], _edit_payload(c[1], lambda d: d.update(result="failed")), c[2]],
        IntegrityError,
    ),
    "result changed in the last receipt (signature broken)": (
        lambda c: [c[0], c[1], _edit_payload(c[2], lambda d: d.update(result="failed"))],
        TrustError,
    ),
    "signature removed": (
        lambda c: [c[0], c[1].replace(json.loads(c[1])["signatures"][0]["sig"].encode(), b""), c[2]],
        IntegrityError,
    ),
    "line garbled": (lambda c: [c[0], c[1][:-5], c[2]], IntegrityError),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampered_log_is_detected(case: str, signed_log: Path, state_dir: Path) -> None:
    edit, error = TAMPERING[case]
    _rewrite(signed_log, edit)
    with pytest.raises(error, match="receipt log does not verify") as caught:
        check_log(state_dir)
    assert caught.value.exit_code == {IntegrityError: 3, TrustError: 4}[error]


def test_receipt_signed_by_a_stranger_is_refused(signed_log: Path, keys: Keys, state_dir: Path) -> None:
    from enclave.trust.dsse import Envelope

    def resign(line: bytes) -> bytes:
        envelope = Envelope.from_json(line)
        envelope.signatures = []
        envelope.sign(keys.stranger)
        return envelope.to_json()

    _rewrite(signed_log, lambda c: [c[0], c[1], resign(c[2])])
    with pytest.raises(TrustError, match="receipt not signed by the audit role") as caught:
        check_log(state_dir)
    assert caught.value.exit_code == 4


def test_truncation_is_seen_against_a_witness(signed_log: Path, tmp_path: Path, state_dir: Path) -> None:
    _rewrite(signed_log, lambda c: c[:1])
    assert check_log(state_dir).receipts == 1  # alone, a shorter chain is still a valid chain
    with pytest.raises(IntegrityError, match="receipt 1 is missing") as caught:
        check_log(state_dir, witnesses=(tmp_path / "r-1.1.0.json",))
    assert caught.value.exit_code == 3
    _rewrite(signed_log, lambda c: c)
    assert check_log(state_dir, witnesses=(tmp_path / "r-1.0.0.json",)).receipts == 1


def test_torn_last_line_is_recovered_and_recorded(
    signed_log: Path, build: BuildFn, audited_root: Path, state_dir: Path
) -> None:
    with signed_log.open("ab") as handle:
        handle.write(b'{"payload":"eyJf')  # a crash cut an append short
    report = check_log(state_dir)  # a warning, not a failure: it was never acknowledged
    assert report.receipts == 3 and any("incomplete line" in w for w in report.warnings)
    admitted = Admission(state_dir, audited_root).verify(build(version="2.0.0"))
    assert admitted.receipt is not None and admitted.receipt["seq"] == 3
    last = payload(signed_log.read_bytes().splitlines()[-1])
    assert last["recovered"] == {"tornBytes": 16} and last["log"]["seq"] == 3
    assert check_log(state_dir).receipts == 4


def test_damaged_log_end_refuses_verification_before_it_starts(
    signed_log: Path, build: BuildFn, audited_root: Path, state_dir: Path
) -> None:
    _rewrite(signed_log, lambda c: [c[0], c[1], c[2][:40]])
    bundle = build(version="3.0.0")
    with pytest.raises(IntegrityError) as caught:
        Admission(state_dir, audited_root).verify(bundle)
    assert caught.value.exit_code == 3
    assert len(signed_log.read_bytes().splitlines()) == 3, "nothing appended to a damaged log"
    assert "3.0.0" not in (state_dir / "rollback.json").read_text(), "nothing admitted either"


# -- the commands end to end ------------------------------------------------------------------------
def test_cli_receipts_exit_codes_and_output(
    build: BuildFn,
    keys: Keys,
    audited_root: Path,
    audit_key: tuple[SigningKey, Path],
    tmp_path: Path,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """bundle verify --receipt --audit-key (0, then 4 with its receipt), receipts verify (0, then 3)."""
    verify = ["bundle", "verify", "--trust", str(audited_root), "--audit-key", str(audit_key[1])]
    out = tmp_path / "receipt.json"
    assert main([*verify, str(build()), "--receipt", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["receipt"]["seq"] == 0 and doc["receipt"]["signed"] is True
    assert doc["receipt"]["path"] == str(out) and doc["receipt"]["log"] == str(state_dir / "receipts.log")
    refused = tmp_path / "refused.json"
    assert main([*verify, str(build(signers=(keys.stranger, keys.mldsa))), "--receipt", str(refused)]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bundle signatures not accepted" in err
    receipt = payload(refused.read_bytes().rstrip(b"\n"))
    assert receipt["exitCode"] == 4 and receipt["error"]["type"] == "ThresholdNotMet"
    assert main(["receipts", "verify", "--require-signed", "--witness", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "2 receipts, hash chain intact" in shown and "1 verifications passed, 1 failed" in shown
    _rewrite(state_dir / "receipts.log", lambda c: [c[1]])
    assert main(["receipts", "verify"]) == 3
    assert capsys.readouterr().err.count("\n") == 1
