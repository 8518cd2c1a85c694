"""Attacks on the gateway's parsers and on its audit log (issue 16, items 11 and 12), carried out
through the real aiohttp app, the real writer and the `enclave` command, with real keys.

11: a requester token or an approval of deeply nested (or oversized) JSON is answered 400 with
    a durable record, never a 500 without one.
12: a record forged onto the log after a clean stop is reported as unproven, fails
    `audit verify --require-checkpointed`, and no writer signs a checkpoint over it unless an
    operator accepts it (which the log then records); cutting both files back to an earlier
    checkpoint is caught by a saved witness.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from enclave.cli import main
from enclave.errors import IntegrityError
from enclave.runtime.audit import AuditLog, LogVerificationError, verify_log
from enclave.runtime.audit.records import TAIL_ACCEPTED, TreeHead, encode, now_text
from enclave.runtime.audit.verify import checkpoints_path
from enclave.runtime.gateway import requester_headers
from enclave.runtime.gateway.approvals import (
    APPROVAL_PAYLOAD_TYPE,
    MAX_STATEMENT_BYTES,
    REQUESTER_HEADER,
    REQUESTER_PAYLOAD_TYPE,
)
from enclave.runtime.gateway.inspect import BadRequest, parse_body
from enclave.trust.dsse import Envelope
from enclave.trust.keys import SigningKey
from enclave.trust.merkle import leaf_hash
from tests.unit.test_audit_log import lines, put, write_log
from tests.unit.test_gateway_http import CHAT, HELD_PROMPT, post, serving
from tests.unit.test_gateway_support import (
    DEFAULT_POLICY,
    Trust,
    chat,
    decisions,
    make_trust,
    records,
    run,
    running_gateway,
    upstream_stub,
)

DEEP = 5000  # far past the reader's bound (32) and past Python's recursion limit (1000)


@pytest.fixture
def trust(tmp_path: Path) -> Trust:
    return make_trust(tmp_path / "trust")


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def signed(key: SigningKey, payload_type: str, payload: bytes) -> bytes:
    envelope = Envelope(payload_type, payload)
    envelope.sign(key)
    return envelope.to_json()


# -- 11: requests without a record ----------------------------------------------------------------


def test_a_deeply_nested_requester_token_is_a_400_with_a_record(tmp_path: Path, trust: Trust) -> None:
    log = tmp_path / "audit.log"
    ecdsa = trust.approvers[0]  # approver 1 is ML-DSA-87: its tokens do not fit a header field
    tokens = {
        "envelope": base64.b64encode(nested(DEEP // 2)).decode(),
        # an approver signs a payload nested past the recursion limit
        "payload": base64.b64encode(signed(ecdsa, REQUESTER_PAYLOAD_TYPE, nested(2000))).decode(),
    }
    answered: dict[str, str] = {}

    async def scenario() -> None:
        async with serving(trust, log) as (upstream, gw, session):
            for name, token in tokens.items():
                status, body, _ = await post(session, gw.url + CHAT, chat(name), {REQUESTER_HEADER: token})
                assert status == 400, (name, body)
                error = body["error"]
                assert (error["code"], error["rule"]) == ("malformed", "gateway.requester"), name
                assert "nested more than" in error["message"]
                answered[error["request_id"]] = error["request_hash"]
            assert upstream.count == 0

    run(scenario())
    recorded = {d["id"]: d for d in decisions(log)}
    for request_id, digest in answered.items():
        assert recorded[request_id]["request_hash"] == digest
        assert (recorded[request_id]["decision"], recorded[request_id]["status"]) == ("refuse", 400)
    assert verify_log(log, trust.root).ok


def test_deeply_nested_or_oversized_approvals_are_400s_with_records(tmp_path: Path, trust: Trust) -> None:
    log = tmp_path / "audit.log"
    approver = trust.approvers[2]
    bodies = {
        "envelope nested": nested(DEEP),
        "envelope over the cap": b"[" + b"0," * (MAX_STATEMENT_BYTES // 2) + b"0]",
        "payload nested": signed(approver, APPROVAL_PAYLOAD_TYPE, nested(DEEP)),
    }

    async def scenario() -> str:
        async with serving(trust, log) as (upstream, gw, session):
            body = chat(HELD_PROMPT)
            headers = requester_headers(trust.approvers[0], "POST", CHAT, body)
            status, held, _ = await post(session, gw.url + CHAT, body, headers)
            assert status == 202
            url = f"{gw.url}/v1/held/{held['id']}/approvals"
            for name, data in bodies.items():
                status, answer, _ = await post(session, url, data)
                assert (status, answer["error"]["code"]) == (400, "malformed"), (name, answer)
            async with session.get(f"{gw.url}/v1/held/{held['id']}") as response:
                assert (await response.json())["status"] == "pending"
            assert upstream.count == 0
            return str(held["id"])

    request_id = run(scenario())
    rejected = [r for r in records(log) if r["event"] == "approval-rejected" and r["id"] == request_id]
    assert [r["envelope_sha256"] for r in rejected] == [
        hashlib.sha256(b).hexdigest() for b in bodies.values()
    ]
    assert {r["reason"] for r in rejected} == {"malformed"}
    assert verify_log(log, trust.root).ok


def test_the_request_body_goes_through_the_same_bounded_reader() -> None:
    with pytest.raises(BadRequest, match="nested more than 32 levels"):
        parse_body(b'{"messages":' + nested(DEEP) + b"}")
    with pytest.raises(BadRequest, match="byte cap"):
        parse_body(b'{"prompt": "' + b"x" * 100 + b'"}', max_bytes=64)
    with pytest.raises(BadRequest) as caught:
        parse_body(b'{"prompt": "a", "prompt": "b"}')
    assert caught.value.code == "duplicate_key"
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_body(b'{"prompt": NaN}')
    assert parse_body(b'{"prompt": "' + "ünïcödé".encode() + b'"}') == {"prompt": "ünïcödé"}


# -- 12: forged records laundered by a restart -------------------------------------------------------


def forge_approve(log: Path) -> bytes:
    """What someone with write access does after a clean stop: append a record with a correct
    seq and prev (no key needed for that)."""
    entries = lines(log)
    last = json.loads(entries[-1])
    forged = encode(
        {
            "v": 1,
            "seq": last["seq"] + 1,
            "prev": leaf_hash(entries[-1]).hex(),
            "time": now_text(),
            "event": "decision",
            "id": "req-forged",
            "endpoint": CHAT,
            "request_hash": "sha256:" + "ab" * 32,
            "decision": "approve",
            "rule": "hold.targeting",
            "requester": None,
            "approvers": [],
            "status": 200,
        }
    )
    put(log, [*entries, forged])
    return forged


async def start_and_stop_accepting(trust: Trust, log: Path) -> None:
    """A gateway started with --accept-unproven-tail, then stopped cleanly."""
    async with (
        upstream_stub() as upstream,
        running_gateway(trust, log, upstream.url, accept_unproven_tail=True),
    ):
        pass


def audit_verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["audit", "verify", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_record_forged_after_a_clean_stop_is_unproven_and_never_signed_over(
    tmp_path: Path, trust: Trust, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=6)
    assert verify_log(log, trust.root).unproven_records == 0  # a clean stop checkpoints its stop record
    forged = forge_approve(log)
    sidecar = checkpoints_path(log)
    before = (log.read_bytes(), sidecar.read_bytes())

    code, text = audit_verify(capsys, str(log), "--trust", str(trust.root))
    assert code == 0 and "UNPROVEN" in text and "1 UNPROVEN" in text.splitlines()[0], text
    code, text = audit_verify(capsys, str(log), "--trust", str(trust.root), "--json")
    report = json.loads(text)
    assert report["unprovenRecords"] == 1 and any("UNPROVEN" in w for w in report["warnings"])
    code, text = audit_verify(capsys, str(log), "--trust", str(trust.root), "--require-checkpointed")
    assert code == 3 and "--require-checkpointed" in text

    # The next start refuses to extend it: no checkpoint is signed over the forged record.
    with pytest.raises(IntegrityError, match=r"UNPROVEN.*--accept-unproven-tail"):
        AuditLog.open(log, trust.audit)
    with pytest.raises(IntegrityError, match="accept-unproven-tail"):
        AuditLog.open(log, trust.audit, component="agent")  # the agent's writer too
    assert (log.read_bytes(), sidecar.read_bytes()) == before

    # An operator who accepts it gets a gateway, and the log says what was accepted.
    run(start_and_stop_accepting(trust, log))
    accepted = [r for r in records(log) if r["event"] == TAIL_ACCEPTED]
    assert len(accepted) == 1
    assert accepted[0]["leaf_hashes"] == [leaf_hash(forged).hex()]
    assert accepted[0]["records"] == 1 and accepted[0]["component"] == "gateway"
    report_after = verify_log(log, trust.root)
    assert report_after.unproven_records == 0 and len(report_after.accepted_tails) == 1
    code, text = audit_verify(capsys, str(log), "--trust", str(trust.root))
    assert code == 0 and "an operator accepted 1 record" in text


def test_gateway_serve_refuses_an_unproven_tail_with_exit_3(
    tmp_path: Path, trust: Trust, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=2)
    forge_approve(log)
    serve = ["gateway", "serve", "--policy", str(DEFAULT_POLICY), "--upstream", "http://127.0.0.1:9"]
    code = main(
        [*serve, "--audit-log", str(log), "--audit-key", str(trust.audit_path), "--trust", str(trust.root)]
    )
    assert code == 3 and "--accept-unproven-tail" in capsys.readouterr().err


def test_a_crash_before_the_last_checkpoint_needs_acceptance(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=12, every=5)
    sidecar = checkpoints_path(log)
    put(sidecar, lines(sidecar)[:-1])  # the stop checkpoint never made it: a crash
    report = verify_log(log, trust.root)
    assert report.unproven_records > 0 and report.ok
    with pytest.raises(IntegrityError, match="accept-unproven-tail"):
        AuditLog.open(log, trust.audit)


def test_truncation_of_both_files_is_caught_by_a_saved_witness(
    tmp_path: Path, trust: Trust, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=8, every=5)
    witness = tmp_path / "offhost" / "audit.witness"
    witness.parent.mkdir()
    verify = [str(log), "--trust", str(trust.root), "--save-witness", str(witness)]
    code, text = audit_verify(capsys, *verify)
    assert code == 0 and "last checkpoint is saved in" in text and len(lines(witness)) == 1
    assert audit_verify(capsys, *verify)[0] == 0 and len(lines(witness)) == 1  # nothing new: kept once
    write_log(log, trust, n=8, every=5)  # a later session of the gateway
    assert audit_verify(capsys, *verify)[0] == 0 and len(lines(witness)) == 2

    # Cut both files back to an earlier checkpoint: consistent on its own.
    sidecar = checkpoints_path(log)
    heads = [TreeHead.from_payload(Envelope.from_json(c).payload).tree_size for c in lines(sidecar)]
    keep = [c for c, size in zip(lines(sidecar), heads, strict=True) if size <= 12]
    size = max(s for s in heads if s <= 12)
    put(sidecar, keep)
    put(log, lines(log)[:size])
    assert audit_verify(capsys, str(log), "--trust", str(trust.root))[0] == 0
    code, text = audit_verify(capsys, str(log), "--trust", str(trust.root), "--witness", str(witness))
    assert code == 3 and "truncation" in text
    code, text = audit_verify(capsys, *verify)
    assert code == 3 and "truncation" in text
    assert len(lines(witness)) == 2  # a failed check saves nothing


def test_an_acceptance_record_must_name_the_records_it_accepts(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=2)
    forge_approve(log)
    run(start_and_stop_accepting(trust, log))
    entries = lines(log)
    index = next(i for i, e in enumerate(entries) if TAIL_ACCEPTED.encode() in e)
    doc: dict[str, Any] = json.loads(entries[index])
    doc["leaf_hashes"] = ["00" * 32]
    entries[index] = encode(doc)
    put(log, entries)
    with pytest.raises(LogVerificationError) as caught:
        verify_log(log, trust.root)
    assert any("does not name the records before it" in p for p in caught.value.report.problems)


def test_an_approval_body_over_the_size_limit_is_a_413_with_a_record(tmp_path: Path, trust: Trust) -> None:
    log = tmp_path / "audit.log"

    async def scenario() -> str:
        async with serving(trust, log) as (_, gw, session):
            body = chat(HELD_PROMPT)
            status, held, _ = await post(
                session, gw.url + CHAT, body, requester_headers(trust.approvers[0], "POST", CHAT, body)
            )
            assert status == 202
            url = f"{gw.url}/v1/held/{held['id']}/approvals"
            status, answer, _ = await post(session, url, b" " * (2 << 20))
            assert (status, answer["error"]["code"]) == (413, "request_too_large")
            return str(held["id"])

    request_id = run(scenario())
    [rejected] = [r for r in records(log) if r["event"] == "approval-rejected" and r["id"] == request_id]
    assert rejected["reason"] == "request_too_large"
    assert verify_log(log, trust.root).ok


def test_an_ml_dsa_requester_token_fits_the_header_limit(tmp_path: Path, trust: Trust) -> None:
    """ML-DSA-87 signatures make the token ~8.8 KB: it must reach the handler (and the record),
    not be cut off by the HTTP parser's default 8,190-byte field limit."""
    log = tmp_path / "audit.log"
    ml_dsa = trust.approvers[1]
    assert ml_dsa.public.algorithm == "ml-dsa-87"

    async def scenario() -> None:
        async with serving(trust, log) as (_, gw, session):
            body = chat(HELD_PROMPT)
            headers = requester_headers(ml_dsa, "POST", CHAT, body)
            assert len(headers[REQUESTER_HEADER]) > 8190
            status, held, _ = await post(session, gw.url + CHAT, body, headers)
            assert status == 202, held

    run(scenario())
    record = decisions(log)[0]  # then "expire", when the gateway stops with it still held
    assert (record["decision"], record["requester"]) == ("hold", ml_dsa.keyid)
