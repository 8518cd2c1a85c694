"""Human approval of held requests: signed statements and the N-of-M rule (pure, no I/O).

An approval is a DSSE envelope, signed by one key of the trust root's `approver` role, over
`{"decision","id","nonce","request_hash","time"}`. A held request runs once `required`
distinct approvers other than its requester have approved it before it expires; one valid
denial ends it. Every nonce is accepted once. Time is passed in, so the rules are testable.

When the gateway identifies its users (mTLS or API keys, docs/GATEWAY.md 12) the requester is
the caller, and `submit` is told who sends each statement. Without identities the requester is
identified by a *requester token*: the same kind of envelope over
`{"nonce","request_hash","time"}` signed by the requester's own approver key. Without it the
gateway could not tell a requester from an approver, so held requests then require one.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from enclave.canonical import canonical, format_time, parse_time
from enclave.errors import DocumentLimitError, TrustError, UsageError
from enclave.runtime.gateway.policy import ApprovalSettings, Rule
from enclave.strictjson import strict_json
from enclave.trust.dsse import Envelope, verify_signatures
from enclave.trust.keys import PublicKey, SigningKey

APPROVAL_PAYLOAD_TYPE = "application/vnd.enclave.approval+json"
REQUESTER_PAYLOAD_TYPE = "application/vnd.enclave.requester+json"
REQUESTER_HEADER = "X-Enclave-Requester"
# A `service` identity (the monitoring agent) sends this on its canaries: a request the policy
# holds is then decided and recorded, never queued for approvers (docs/GATEWAY.md 10.8).
CANARY_HEADER = "X-Enclave-Canary"
_NONCE_CHARS = frozenset("0123456789abcdef")
_MIN_NONCE_HEX = 32  # 128 bits
RESULT_RETENTION_SECONDS = 600
# The most an approval or requester token may take, envelope or payload: one ML-DSA-87
# signature (4,627 bytes, 6,172 in base64) and a payload of five short strings fit many times.
MAX_STATEMENT_BYTES = 64 * 1024

Decision = Literal["approve", "deny"]
State = Literal["pending", "approved", "executing", "completed", "failed", "denied", "expired"]


class Rejected(Exception):
    """An approval, token or lookup the gateway refuses; maps to an HTTP status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class OverLimit(Rejected):
    """A statement over the reader's size or nesting bound: 400 `malformed`, never read."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "malformed", message)


@dataclass(frozen=True)
class Statement:
    keyid: str
    decision: Decision
    time: str
    nonce: str
    envelope: bytes  # as received, for the audit record


@dataclass
class Held:
    id: str
    request_hash: str
    method: str
    path: str
    body: bytes
    rule: Rule
    required: int
    requester: str | None  # the requester's signing keyid (an approver key), if any
    created: float
    expires: float
    approvals: dict[str, Statement] = field(default_factory=dict)
    state: State = "pending"
    result: dict[str, Any] | None = None
    finished: float | None = None
    user: dict[str, Any] | None = None  # the requester's identity record (docs/GATEWAY.md 12)
    answer: tuple[int, str, bytes] | None = field(default=None, repr=False)  # status, type, bytes

    @property
    def requester_name(self) -> str | None:
        return str(self.user["name"]) if self.user else None

    def summary(self) -> dict[str, Any]:
        return {
            "object": "enclave.held_request",
            "id": self.id,
            "request_hash": self.request_hash,
            "method": self.method,
            "path": self.path,
            "body_b64": base64.b64encode(self.body).decode("ascii"),
            "rule": self.rule.id,
            "rule_description": self.rule.description,
            "requester": self.requester,
            "user": self.user,
            "status": self.state,
            "approvals_required": self.required,
            "approvals": sorted(self.approvals),
            "created_at": format_time(datetime.fromtimestamp(self.created, UTC)),
            "expires_at": format_time(datetime.fromtimestamp(self.expires, UTC)),
            "result": self.result,
        }


class NonceCache:
    """Nonces seen, each kept until the statement carrying it could no longer be accepted."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def use(self, nonce: str, keep_until: float, now: float) -> bool:
        """Record `nonce`; False when it was seen before (a replay)."""
        if len(self._seen) > 1024:
            self._seen = {n: t for n, t in self._seen.items() if t >= now}
        if nonce in self._seen:
            return False
        self._seen[nonce] = keep_until
        return True


def _statement(
    data: bytes,
    payload_type: str,
    fields: frozenset[str],
    keys: Mapping[str, PublicKey],
    what: str,
) -> tuple[PublicKey, dict[str, Any]]:
    """Parse an envelope with exactly one valid signature by one of `keys` and a strict payload."""
    try:
        envelope = Envelope.from_json(data, what, MAX_STATEMENT_BYTES, UsageError)
    except UsageError as exc:  # over the size or nesting bound
        raise OverLimit(str(exc)) from None
    except TrustError as exc:
        raise Rejected(400, "malformed", str(exc)) from None
    if envelope.payload_type != payload_type:
        raise Rejected(400, "malformed", f"{what}: payload type must be {payload_type}")
    if len(envelope.signatures) != 1:
        raise Rejected(400, "malformed", f"{what}: exactly one signature expected")
    keyid = envelope.signatures[0].keyid
    if keyid not in keys:
        raise Rejected(
            403, "not_an_approver", f"{what}: key {keyid[:16]} is not an approver key of the trust root"
        )
    verified = verify_signatures(envelope, keys).keys
    if not verified:
        raise Rejected(403, "bad_signature", f"{what}: signature does not verify")
    try:
        payload = strict_json(envelope.payload, MAX_STATEMENT_BYTES)
    except DocumentLimitError as exc:
        raise OverLimit(f"{what}: payload: {exc}") from None
    except ValueError as exc:
        raise Rejected(400, "malformed", f"{what}: payload is not JSON: {exc}") from None
    if not isinstance(payload, dict) or set(payload) != fields:
        raise Rejected(400, "malformed", f"{what}: payload needs exactly {', '.join(sorted(fields))}")
    if not all(isinstance(payload[k], str) for k in fields):
        raise Rejected(400, "malformed", f"{what}: payload fields must be strings")
    nonce = payload["nonce"]
    if len(nonce) < _MIN_NONCE_HEX or not set(nonce) <= _NONCE_CHARS:
        raise Rejected(
            400, "malformed", f"{what}: nonce must be at least {_MIN_NONCE_HEX} lowercase hex digits"
        )
    try:
        parse_time(payload["time"])
    except ValueError as exc:
        raise Rejected(400, "malformed", f"{what}: {exc}") from None
    return verified[0], payload


def _seconds(text: str) -> float:
    return parse_time(text).timestamp()


def verify_requester(
    token: str,
    request_hash: str,
    approvers: Mapping[str, PublicKey],
    skew: float,
    nonces: NonceCache,
    now: float,
) -> str:
    """Check a requester token (base64 of the envelope JSON); return the requester's keyid."""
    try:
        data = base64.b64decode(token.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise Rejected(401, "bad_requester_token", f"{REQUESTER_HEADER}: not base64") from None
    try:
        key, payload = _statement(
            data,
            REQUESTER_PAYLOAD_TYPE,
            frozenset({"nonce", "request_hash", "time"}),
            approvers,
            "requester token",
        )
    except OverLimit as exc:  # a bad request, not a failed authentication
        raise Rejected(400, "malformed", f"{REQUESTER_HEADER}: {exc}") from None
    except Rejected as exc:
        raise Rejected(401, "bad_requester_token", str(exc)) from None
    if payload["request_hash"] != request_hash:
        raise Rejected(401, "bad_requester_token", "requester token was signed for a different request")
    signed = _seconds(payload["time"])
    if abs(signed - now) > skew:
        raise Rejected(401, "bad_requester_token", "requester token time is outside the allowed clock skew")
    if not nonces.use(payload["nonce"], signed + 2 * skew, now):
        raise Rejected(401, "replay", "requester token nonce was already used (replay)")
    return key.keyid


class ApprovalBook:
    """Held requests and their approvals. Single-threaded: call from the event loop only."""

    def __init__(
        self,
        approvers: Mapping[str, PublicKey],
        settings: ApprovalSettings,
        role_threshold: int = 1,
    ) -> None:
        self.approvers = dict(approvers)
        self.settings = settings
        self.role_threshold = role_threshold
        self.nonces = NonceCache()
        self._held: dict[str, Held] = {}

    def required(self, rule: Rule) -> int:
        """A rule's approvals, never fewer than the trust root's approver threshold."""
        return max(rule.approvals, self.role_threshold)

    @property
    def pending(self) -> int:
        return sum(h.state == "pending" for h in self._held.values())

    def hold(
        self,
        request_id: str,
        request_hash: str,
        method: str,
        path: str,
        body: bytes,
        rule: Rule,
        requester: str | None,
        now: float,
        user: dict[str, Any] | None = None,
    ) -> Held:
        self.forget(now)
        if self.pending >= self.settings.max_pending:
            raise Rejected(
                429, "too_many_held", f"{self.settings.max_pending} requests already await approval"
            )
        eligible = len(set(self.approvers) - {requester})
        required = self.required(rule)
        if eligible < required:
            raise Rejected(
                403,
                "not_approvable",
                f"rule {rule.id} needs {required} approvers other than the requester; {eligible} exist",
            )
        held = Held(
            id=request_id,
            request_hash=request_hash,
            method=method,
            path=path,
            body=body,
            rule=rule,
            required=required,
            requester=requester,
            created=now,
            expires=now + self.settings.timeout_seconds,
            user=user,
        )
        if request_id in self._held:
            raise Rejected(409, "duplicate_id", f"request id {request_id} is already held")
        self._held[request_id] = held
        return held

    def restore(self, held: Held, now: float) -> None:
        """Put back a held request read from the journal after a restart (its nonces included)."""
        skew = self.settings.clock_skew_seconds
        for statement in held.approvals.values():
            self.nonces.use(statement.nonce, held.expires + skew, now)
        self._held[held.id] = held

    def get(self, request_id: str, now: float) -> Held:
        held = self._held.get(request_id)
        if held is None:
            raise Rejected(
                404, "unknown_request", f"no held request {request_id!r} (never held, or forgotten)"
            )
        return held

    def submit(
        self,
        request_id: str,
        data: bytes,
        now: float,
        caller: tuple[str, str | None] | None = None,
    ) -> tuple[Held, Statement]:
        """Check one approval statement and count it. On success the request's state is
        `pending`, `approved` (threshold met: caller executes it) or `denied`.

        `caller`: the authenticated (name, signing keyid) of whoever sent it, when the gateway
        identifies its users: the statement must be signed with the caller's own key, and the
        caller must not be the requester."""
        held = self.get(request_id, now)
        key, payload = _statement(
            data,
            APPROVAL_PAYLOAD_TYPE,
            frozenset({"decision", "id", "nonce", "request_hash", "time"}),
            self.approvers,
            "approval",
        )
        if payload["id"] != held.id:
            raise Rejected(400, "wrong_request", "approval names a different request id")
        if payload["request_hash"] != held.request_hash:
            raise Rejected(409, "wrong_request_hash", "approval was signed for different request bytes")
        decision = payload["decision"]
        if decision not in ("approve", "deny"):
            raise Rejected(400, "malformed", "decision must be 'approve' or 'deny'")
        if held.state == "pending" and now >= held.expires:
            held.state = "expired"
        if held.state != "pending":
            status = 410 if held.state == "expired" else 409
            raise Rejected(
                status, f"request_{held.state}", f"request {held.id} is {held.state}; approvals are closed"
            )
        skew = self.settings.clock_skew_seconds
        signed = _seconds(payload["time"])
        if signed < held.created - skew or signed > now + skew:
            raise Rejected(403, "stale_approval", "approval time is outside the request's approval window")
        if not self.nonces.use(payload["nonce"], held.expires + skew, now):
            raise Rejected(409, "replay", "approval nonce was already used (replay)")
        if caller is not None and caller[1] != key.keyid:
            raise Rejected(
                403, "approver_mismatch", "the approval is not signed with the key of the approver sending it"
            )
        if key.keyid == held.requester or (caller is not None and caller[0] == held.requester_name):
            raise Rejected(403, "self_approval", "the requester cannot approve their own request")
        if key.keyid in held.approvals:
            raise Rejected(409, "duplicate_approver", "this approver has already decided on this request")
        statement = Statement(key.keyid, decision, payload["time"], payload["nonce"], data)
        held.approvals[key.keyid] = statement
        if decision == "deny":
            held.state = "denied"
            held.finished = now
        elif sum(s.decision == "approve" for s in held.approvals.values()) >= held.required:
            held.state = "approved"
        return held, statement

    def expire_due(self, now: float, everything: bool = False) -> list[Held]:
        """Pending requests past their deadline (or all, when the gateway stops) become
        `expired`: timeout means deny, and held requests do not outlive the process."""
        expired = []
        for held in self._held.values():
            if held.state == "pending" and (everything or now >= held.expires):
                held.state = "expired"
                held.finished = now
                expired.append(held)
        return expired

    def forget(self, now: float) -> None:
        """Drop finished requests (and their results) a while after they finished, so the
        requester can still poll the result and late approvers get a clear answer."""
        keep = max(self.settings.timeout_seconds, RESULT_RETENTION_SECONDS)
        self._held = {k: h for k, h in self._held.items() if h.finished is None or now - h.finished < keep}


# -- signing side (used by `approve` and by requesters) ---------------------------------------------


def approval_envelope(
    key: SigningKey, request_id: str, request_hash: str, decision: Decision, now: datetime
) -> bytes:
    payload = {
        "decision": decision,
        "id": request_id,
        "nonce": secrets.token_hex(16),
        "request_hash": request_hash,
        "time": format_time(now),
    }
    envelope = Envelope(APPROVAL_PAYLOAD_TYPE, canonical(payload))
    envelope.sign(key)
    return envelope.to_json()


def requester_token(key: SigningKey, request_hash: str, now: datetime) -> str:
    payload = {"nonce": secrets.token_hex(16), "request_hash": request_hash, "time": format_time(now)}
    envelope = Envelope(REQUESTER_PAYLOAD_TYPE, canonical(payload))
    envelope.sign(key)
    return base64.b64encode(envelope.to_json()).decode("ascii")
