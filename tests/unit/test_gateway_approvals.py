"""The approval rules, with time passed in: N-of-M, self-approval, replay, expiry, strangers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from enclave.runtime.gateway.approvals import (
    ApprovalBook,
    Held,
    NonceCache,
    Rejected,
    approval_envelope,
    requester_token,
    verify_requester,
)
from enclave.runtime.gateway.inspect import request_hash
from enclave.runtime.gateway.policy import ApprovalSettings, Rule
from enclave.trust.dsse import Envelope
from enclave.trust.keys import SigningKey
from tests.unit.test_gateway_support import Trust, make_trust

T0 = 1_800_000_000.0
HASH = request_hash("POST", "/v1/chat/completions", b'{"messages":[]}')
RULE = Rule("hold.targeting", "hold", "targeting", (), None, 2)


@pytest.fixture(scope="module")
def trust(tmp_path_factory: pytest.TempPathFactory) -> Trust:
    return make_trust(tmp_path_factory.mktemp("trust"), approvers=4)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def book_for(trust: Trust, timeout: int = 600) -> ApprovalBook:
    approvers = {k.keyid: k.public for k in trust.approvers}
    return ApprovalBook(approvers, ApprovalSettings(timeout_seconds=timeout, clock_skew_seconds=60))


def held(book: ApprovalBook, requester: SigningKey) -> Held:
    return book.hold("req-1", HASH, "POST", "/v1/chat/completions", b"{}", RULE, requester.keyid, T0)


def sign(key: SigningKey, when: float = T0 + 5, decision: str = "approve", digest: str = HASH) -> bytes:
    return approval_envelope(key, "req-1", digest, decision, at(when))  # type: ignore[arg-type]


def rejected(book: ApprovalBook, data: bytes, now: float = T0 + 10) -> Rejected:
    with pytest.raises(Rejected) as caught:
        book.submit("req-1", data, now)
    return caught.value


def test_two_distinct_approvers_release_the_request(trust: Trust) -> None:
    book = book_for(trust)
    requester, first, second, _ = trust.approvers
    item = held(book, requester)
    assert item.required == 2
    book.submit("req-1", sign(first), T0 + 10)
    assert item.state == "pending"
    book.submit("req-1", sign(second), T0 + 11)
    assert book.get("req-1", T0).state == "approved"
    assert set(item.approvals) == {first.keyid, second.keyid}


def test_the_requester_cannot_approve(trust: Trust) -> None:
    book = book_for(trust)
    requester = trust.approvers[0]
    held(book, requester)
    assert rejected(book, sign(requester)).code == "self_approval"


def test_one_approver_twice_does_not_count_twice(trust: Trust) -> None:
    book = book_for(trust)
    item = held(book, trust.approvers[0])
    book.submit("req-1", sign(trust.approvers[1]), T0 + 10)
    assert rejected(book, sign(trust.approvers[1])).code == "duplicate_approver"
    assert item.state == "pending"


def test_a_replayed_approval_is_refused(trust: Trust) -> None:
    book = book_for(trust)
    held(book, trust.approvers[0])
    statement = sign(trust.approvers[1])
    book.submit("req-1", statement, T0 + 10)
    error = rejected(book, statement)
    assert (error.code, error.status) == ("replay", 409)


def test_an_expired_request_takes_no_approvals(trust: Trust) -> None:
    book = book_for(trust, timeout=60)
    item = held(book, trust.approvers[0])
    assert book.expire_due(T0 + 59) == []
    assert book.expire_due(T0 + 61) == [item]
    error = rejected(book, sign(trust.approvers[1], when=T0 + 61), now=T0 + 61)
    assert (error.code, error.status) == ("request_expired", 410)


def test_approval_signed_outside_the_window_is_refused(trust: Trust) -> None:
    book = book_for(trust)
    held(book, trust.approvers[0])
    assert rejected(book, sign(trust.approvers[1], when=T0 - 3600)).code == "stale_approval"
    assert rejected(book, sign(trust.approvers[2], when=T0 + 3600)).code == "stale_approval"


def test_a_key_outside_the_approver_role_is_refused(trust: Trust) -> None:
    book = book_for(trust)
    held(book, trust.approvers[0])
    error = rejected(book, sign(trust.stranger))
    assert (error.code, error.status) == ("not_an_approver", 403)


def test_an_approval_for_other_bytes_is_refused(trust: Trust) -> None:
    book = book_for(trust)
    held(book, trust.approvers[0])
    other = request_hash("POST", "/v1/chat/completions", b'{"messages":["changed"]}')
    assert rejected(book, sign(trust.approvers[1], digest=other)).code == "wrong_request_hash"


def test_a_forged_signature_is_refused(trust: Trust) -> None:
    book = book_for(trust)
    held(book, trust.approvers[0])
    envelope = Envelope.from_json(sign(trust.approvers[1]))
    envelope.payload = envelope.payload.replace(b'"approve"', b'"deny"')
    assert rejected(book, envelope.to_json()).code == "bad_signature"


def test_malformed_statements_are_refused(trust: Trust) -> None:
    book = book_for(trust)
    held(book, trust.approvers[0])
    assert rejected(book, b"not json").code == "malformed"
    envelope = Envelope("application/vnd.enclave.approval+json", b'{"decision":"approve"}')
    envelope.sign(trust.approvers[1])
    assert rejected(book, envelope.to_json()).code == "malformed"
    with pytest.raises(Rejected) as caught:
        book.submit("req-unknown", sign(trust.approvers[1]), T0 + 10)
    assert caught.value.status == 404


def test_one_denial_ends_the_request(trust: Trust) -> None:
    book = book_for(trust)
    item = held(book, trust.approvers[0])
    book.submit("req-1", sign(trust.approvers[1]), T0 + 10)
    book.submit("req-1", sign(trust.approvers[2], decision="deny"), T0 + 11)
    assert item.state == "denied"
    assert rejected(book, sign(trust.approvers[3])).code == "request_denied"


def test_root_threshold_raises_the_bar(trust: Trust) -> None:
    approvers = {k.keyid: k.public for k in trust.approvers}
    book = ApprovalBook(approvers, ApprovalSettings(), role_threshold=3)
    assert held(book, trust.approvers[0]).required == 3


def test_not_enough_approvers_besides_the_requester(tmp_path: Path) -> None:
    small = make_trust(tmp_path / "small", approvers=2)
    book = book_for(small)
    with pytest.raises(Rejected) as caught:
        held(book, small.approvers[0])
    assert caught.value.code == "not_approvable"


def test_pending_limit(trust: Trust) -> None:
    approvers = {k.keyid: k.public for k in trust.approvers}
    book = ApprovalBook(approvers, ApprovalSettings(max_pending=1))
    held(book, trust.approvers[0])
    with pytest.raises(Rejected) as caught:
        book.hold("req-2", HASH, "POST", "/p", b"{}", RULE, trust.approvers[0].keyid, T0)
    assert caught.value.status == 429


def test_requester_tokens(trust: Trust) -> None:
    approvers = {k.keyid: k.public for k in trust.approvers}
    nonces = NonceCache()
    token = requester_token(trust.approvers[0], HASH, at(T0))
    assert verify_requester(token, HASH, approvers, 60, nonces, T0 + 1) == trust.approvers[0].keyid
    with pytest.raises(Rejected, match="replay"):
        verify_requester(token, HASH, approvers, 60, nonces, T0 + 2)
    other = requester_token(trust.approvers[0], HASH, at(T0))
    with pytest.raises(Rejected, match="different request"):
        verify_requester(other, "sha256:" + "0" * 64, approvers, 60, nonces, T0)
    late = requester_token(trust.approvers[0], HASH, at(T0))
    with pytest.raises(Rejected, match="clock skew"):
        verify_requester(late, HASH, approvers, 60, nonces, T0 + 600)
    stranger = requester_token(trust.stranger, HASH, at(T0))
    with pytest.raises(Rejected, match="not an approver key"):
        verify_requester(stranger, HASH, approvers, 60, nonces, T0)
    with pytest.raises(Rejected, match="not base64"):
        verify_requester("%%%", HASH, approvers, 60, nonces, T0)
