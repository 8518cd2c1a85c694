"""The gateway's HTTP side (aiohttp): decide, record durably, then (and only then) forward.

Order for every inference request:
  audit healthy? -> read + strict parse -> requester token -> policy verdict
  -> decision record appended and fsync'd -> refuse (400) | hold (202) | forward (200...)
Nothing reaches the model server before its decision record is durable, so an audit log
that cannot be written stops traffic (503) instead of letting it pass unrecorded.

aiohttp serves and proxies: on the 2-core reference machine it carried ~10x the requests of
uvicorn+starlette+httpx through a pass-through proxy at 64 concurrent clients
(docs/GATEWAY.md, "Performance").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from enclave.runtime.audit.writer import AuditLog, AuditUnavailable
from enclave.runtime.gateway.access import Authenticator, AuthFailure, Identity, RateLimiter, token_identity
from enclave.runtime.gateway.approvals import (
    CANARY_HEADER,
    REQUESTER_HEADER,
    ApprovalBook,
    Held,
    Rejected,
    Statement,
    verify_requester,
)
from enclave.runtime.gateway.decide import decide, guard_texts, judge_answer
from enclave.runtime.gateway.inspect import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    BadRequest,
    check_inspectable,
    is_stream,
    parse_body,
    request_hash,
    texts_of,
)
from enclave.runtime.gateway.journal import Entry, HeldJournal, resolve
from enclave.runtime.gateway.listener import peer_text
from enclave.runtime.gateway.policy import Policy, Rule
from enclave.trust.keys import PublicKey

if TYPE_CHECKING:  # types only: the guard is loaded by server.prepare
    from enclave.guard.model import Guard

MAX_BODY = 1 << 20
_FORWARD_HEADERS = ("Content-Type", "Accept")
_JSON = "application/json"
_SETTLED = frozenset({"completed", "failed", "denied", "expired"})
_OBSERVERS = ("service", "auditor")  # who may read /metrics and health details


@dataclass
class GatewayConfig:
    policy: Policy
    upstream: str  # base URL; the request path is appended
    audit: AuditLog
    approvers: Mapping[str, PublicKey]  # the trust root's approver role ({} without a root)
    approver_threshold: int = 1
    model_digest: str = "unknown"
    upstream_timeout: float = 600.0
    max_body: int = MAX_BODY
    sweep_seconds: float = 1.0
    guard: Guard | None = None  # the learned layer behind the rules (None: rules only)
    # With a guard: read a streamed answer whole and judge it before any byte is released
    # (docs/GATEWAY.md 11.4); without, streams are forwarded as they arrive.
    buffer_streams: bool = False
    identity: Authenticator | None = None  # mTLS / API keys (None: anonymous, requester tokens)
    rate_limit: RateLimiter | None = None  # per-user token buckets (identity mode only)
    journal: HeldJournal | None = None  # held requests kept across restarts (None: memory only)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "enclave_gateway_requests",
            "Inference requests by endpoint and decision",
            ["endpoint", "decision"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "enclave_gateway_request_duration_seconds",
            "Time from request received to response complete",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "enclave_gateway_upstream_errors", "Upstream failures (connect, timeout)", registry=self.registry
        )
        self.held = Gauge(
            "enclave_gateway_held_requests", "Requests awaiting approval", registry=self.registry
        )
        self.audit_records = Counter("enclave_audit_records", "Records made durable", registry=self.registry)
        self.audit_commit = Histogram(
            "enclave_audit_commit_duration_seconds",
            "Write + fdatasync time of one group commit",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=self.registry,
        )
        self.audit_batch = Histogram(
            "enclave_audit_commit_records",
            "Records per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.audit_healthy = Gauge(
            "enclave_audit_healthy", "1 while the audit log accepts records", registry=self.registry
        )

    def committed(self, records: int, seconds: float) -> None:
        self.audit_records.inc(records)
        self.audit_commit.observe(seconds)
        self.audit_batch.observe(records)


def _held_answer(
    request_id: str, digest: str, status: str, rule_id: str, how: Mapping[str, Any]
) -> dict[str, Any]:
    """The fields every 202 answer to a held request carries (a queued hold adds its own)."""
    return {
        "object": "enclave.held_request",
        "id": request_id,
        "request_hash": digest,
        "status": status,
        "rule": rule_id,
        "layer": how["layer"],
    }


def _error(
    status: int, message: str, code: str, kind: str = "invalid_request_error", **extra: Any
) -> web.Response:
    """OpenAI's error shape, plus enclave's own fields (rule, request_id, ...)."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code, **extra}}
    return web.json_response(body, status=status)


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.policy = config.policy
        self.audit = config.audit
        self.book = ApprovalBook(config.approvers, config.policy.approval, config.approver_threshold)
        self.metrics = _Metrics()
        self.audit.on_commit = self.metrics.committed
        self._session: aiohttp.ClientSession | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._upstream = config.upstream.rstrip("/")
        self.guard = config.guard
        self.identity = config.identity
        self.limiter = config.rate_limit
        self.journal = config.journal
        self._settled: dict[str, asyncio.Event] = {}  # held id -> set when it is decided
        self._background: set[asyncio.Task[Any]] = set()
        self._base = {"policy_digest": self.policy.digest, "model_digest": config.model_digest}

    # -- lifecycle ------------------------------------------------------------------------------
    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body)
        app.router.add_post(CHAT_PATH, self.inference)
        app.router.add_post(COMPLETIONS_PATH, self.inference)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/v1/held/{id}", self.held_status)
        app.router.add_post("/v1/held/{id}/approvals", self.held_approval)
        app.router.add_route("*", "/{tail:.*}", self.not_found)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=30)
        timeout = aiohttp.ClientTimeout(total=self.config.upstream_timeout, sock_connect=10)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
        await self._restore()
        self._sweeper = asyncio.create_task(self._sweep(), name="held-request-sweeper")

    async def _cleanup(self, app: web.Application) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        # With a journal, pending held requests wait for the next start (their expiry
        # unchanged); without one they live in memory only, so stopping denies them, on the record.
        if self.journal is None:
            for held in self.book.expire_due(time.time(), everything=True):
                await self._close_held(held, "expire", 503)
        for task in list(self._background):
            task.cancel()
        if self._session is not None:
            await self._session.close()

    # -- inference ------------------------------------------------------------------------------
    async def inference(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        path = request.path
        if not self.audit.healthy:
            self.metrics.requests.labels(path, "unavailable").inc()
            return _error(
                503, "audit log unavailable: refusing all requests", "audit_unavailable", "server_error"
            )
        request_id = "req-" + uuid.uuid4().hex
        client = _client(request)
        identity: Identity | None = None
        if self.identity is not None:
            try:
                identity = self._authenticate(request)
            except AuthFailure as exc:
                return await self._refuse(
                    request_id, path, "", None, started, 401, exc.code, "gateway.authentication", str(exc),
                    "authentication_error", who={"user": exc.user, "client": client},
                )  # fmt: skip
            if self.limiter is not None:
                wait = self.limiter.take(identity.name, time.monotonic())
                if wait > 0:
                    refused = await self._refuse(
                        request_id, path, "", None, started, 429, "rate_limited", "gateway.rate-limit",
                        f"rate limit exceeded for {identity.name} ({self.limiter.rate:g} requests/s, "
                        f"bursts of {self.limiter.burst}); retry in {wait:.1f} s", "rate_limit_error",
                        who={"user": identity.record(), "client": client},
                    )  # fmt: skip
                    refused.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                    return refused
        who = {"user": identity.record() if identity else None, "client": client}
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return await self._refuse(
                request_id, path, "", None, started, 413, "request_too_large", "gateway.too-large",
                f"request body exceeds {self.config.max_body} bytes", who=who,
            )  # fmt: skip
        digest = request_hash(request.method, path, body)
        try:
            doc = parse_body(body)
            check_inspectable(path, doc)
            texts = texts_of(doc)
        except BadRequest as exc:
            rule_id = "gateway.uninspectable" if exc.code == "uninspectable" else "gateway.invalid-request"
            return await self._refuse(
                request_id, path, digest, None, started, 400, exc.code, rule_id, str(exc), who=who
            )
        requester = identity.keyid if identity else None
        token = request.headers.get(REQUESTER_HEADER)
        if token is not None and self.identity is None:  # identified users need no token
            try:
                requester = verify_requester(
                    token,
                    digest,
                    self.book.approvers,
                    self.policy.approval.clock_skew_seconds,
                    self.book.nonces,
                    time.time(),
                )
            except Rejected as exc:
                return await self._refuse(
                    request_id,
                    path,
                    digest,
                    None,
                    started,
                    exc.status,
                    exc.code,
                    "gateway.requester",
                    str(exc),
                    who=who,
                )
            who = {"user": token_identity(requester).record(), "client": client}
        guard_input = guard_texts(doc) if self.guard else None
        decision = decide(self.policy, self.guard, texts, guard_input=guard_input)
        how = decision.record(self.guard)
        if decision.action == "refuse":
            matched = decision.rule
            message = (
                f"refused by policy rule {matched.id}: {matched.description}"
                if matched
                else "refused by policy default"
            )
            return await self._refuse(
                request_id, path, digest, requester, started, 400, "policy_refusal",
                decision.rule_id or "policy.default", message, kind="policy_refusal", how=how, who=who,
            )  # fmt: skip
        if decision.action == "hold":
            assert decision.rule is not None
            if identity is not None and identity.has("service") and request.headers.get(CANARY_HEADER) == "1":
                return await self._canary_hold(
                    request_id, path, digest, requester, decision.rule, started, how, who
                )
            return await self._hold(
                request, request_id, path, digest, body, requester, decision.rule, started, how, who
            )
        try:
            await self.audit.append(
                self._decision(
                    request_id, path, digest, "allow", None, requester, started, 200, how=how, who=who
                )
            )
        except AuditUnavailable as exc:
            self.metrics.requests.labels(path, "unavailable").inc()
            return _error(503, f"audit log unavailable: {exc}", "audit_unavailable", "server_error")
        self.metrics.requests.labels(path, "allow").inc()
        try:
            if is_stream(doc) and not (self.guard is not None and self.config.buffer_streams):
                return await self._stream(request, request_id, path, digest, body, started)
            status, content_type, payload = await self._forward(request.method, path, body, request.headers)
        except _UpstreamError as exc:
            self._outcome(request_id, digest, 502, b"", started)
            return _error(502, f"model server unavailable: {exc}", "upstream_unavailable", "server_error")
        self._outcome(request_id, digest, status, payload, started)
        if self.guard is not None and status == 200:
            withheld = await self._check_answer(request_id, path, digest, content_type, payload)
            if withheld is not None:
                return withheld
        response = web.Response(body=payload, status=status, content_type=None)
        response.headers["Content-Type"] = content_type
        response.headers["X-Enclave-Request-Id"] = request_id
        self.metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    async def _check_answer(
        self, request_id: str, path: str, digest: str, content_type: str, payload: bytes
    ) -> web.Response | None:
        """The model's answer goes through the guard before release; a stopped answer is withheld
        (never released), with a durable record of why."""
        assert self.guard is not None
        answer = judge_answer(self.guard, content_type, payload)
        if answer.action == "allow":
            return None
        assert answer.rule is not None
        record = {
            "event": "answer",
            "id": request_id,
            "request_hash": digest,
            "decision": "withhold",
            "rule": answer.rule.id,
            "response_sha256": hashlib.sha256(payload).hexdigest(),
            **answer.record(self.guard),
            **self._base,
        }
        try:
            await self.audit.append(record)
        except AuditUnavailable as exc:
            return _error(503, f"audit log unavailable: {exc}", "audit_unavailable", "server_error")
        self.metrics.requests.labels(path, "withhold").inc()
        return _error(
            400, f"the model's answer was withheld: {answer.rule.description}", "answer_withheld",
            "policy_refusal", rule=answer.rule.id, request_id=request_id, request_hash=digest,
        )  # fmt: skip

    def _decision(
        self,
        request_id: str,
        path: str,
        digest: str,
        decision: str,
        rule: str | None,
        requester: str | None,
        started: float,
        status: int,
        approvers: list[str] | None = None,
        how: dict[str, Any] | None = None,
        who: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "user": None,
            "client": None,
            **(who or {}),
            "event": "decision",
            "id": request_id,
            "endpoint": path,
            "request_hash": digest,
            "decision": decision,
            "rule": rule,
            "requester": requester,
            "approvers": approvers or [],
            "status": status,
            "latency_us": int((time.perf_counter() - started) * 1e6),
            **(how or {}),
            **self._base,
        }

    def _outcome(self, request_id: str, digest: str, status: int, payload: bytes, started: float) -> None:
        """Record what came back; queued for the next group commit (the decision record is
        already durable, and the response should not wait for a second sync)."""
        with contextlib.suppress(AuditUnavailable):
            self.audit.append_nowait(
                {
                    "event": "outcome",
                    "id": request_id,
                    "request_hash": digest,
                    "status": status,
                    "response_sha256": hashlib.sha256(payload).hexdigest(),
                    "response_bytes": len(payload),
                    "latency_us": int((time.perf_counter() - started) * 1e6),
                    **self._base,
                }
            )

    async def _refuse(
        self,
        request_id: str,
        path: str,
        digest: str,
        requester: str | None,
        started: float,
        status: int,
        code: str,
        rule: str,
        message: str,
        kind: str = "invalid_request_error",
        how: dict[str, Any] | None = None,
        who: Mapping[str, Any] | None = None,
    ) -> web.Response:
        try:
            await self.audit.append(
                self._decision(
                    request_id, path, digest, "refuse", rule, requester, started, status, how=how, who=who
                )
            )
        except AuditUnavailable as exc:
            return _error(503, f"audit log unavailable: {exc}", "audit_unavailable", "server_error")
        self.metrics.requests.labels(path, "refuse").inc()
        layer = {"layer": how["layer"]} if how else {}
        return _error(
            status,
            message,
            code,
            kind,
            rule=rule,
            request_id=request_id,
            request_hash=digest or None,
            **layer,
        )

    async def _canary_hold(
        self,
        request_id: str,
        path: str,
        digest: str,
        requester: str | None,
        rule: Rule,
        started: float,
        how: dict[str, Any],
        who: Mapping[str, Any],
    ) -> web.StreamResponse:
        """A canary the policy holds: the hold decision, recorded as a canary's, nothing queued."""
        record = self._decision(
            request_id,
            path,
            digest,
            "hold",
            rule.id,
            requester,
            started,
            202,
            how={**how, "canary": True},
            who=who,
        )
        try:
            await self.audit.append(record)
        except AuditUnavailable as exc:
            return _error(503, f"audit log unavailable: {exc}", "audit_unavailable", "server_error")
        self.metrics.requests.labels(path, "hold").inc()
        body_out = _held_answer(request_id, digest, "not_queued", rule.id, how) | {"canary": True}
        return web.json_response(body_out, status=202)

    async def _hold(
        self,
        request: web.Request,
        request_id: str,
        path: str,
        digest: str,
        body: bytes,
        requester: str | None,
        rule: Rule,
        started: float,
        how: dict[str, Any],
        who: Mapping[str, Any],
    ) -> web.StreamResponse:
        rule_id = rule.id
        if requester is None and self.identity is None:
            return await self._refuse(
                request_id, path, digest, None, started, 401, "requester_token_required", rule_id,
                f"rule {rule_id} holds this request for approval; held requests need a signed "
                f"{REQUESTER_HEADER} token so the requester cannot approve it", how=how, who=who,
            )  # fmt: skip
        try:
            held = self.book.hold(
                request_id, digest, request.method, path, body, rule, requester, time.time(), who["user"]
            )
        except Rejected as exc:
            return await self._refuse(
                request_id, path, digest, requester, started, exc.status, exc.code, rule_id, str(exc),
                how=how, who=who,
            )  # fmt: skip
        if self.journal is not None:
            try:  # the request's bytes are durable before its hold record: a restart finds them
                await asyncio.to_thread(self.journal.write, Entry.of(held, who["client"]))
            except OSError as exc:
                self._finish(held, "failed")
                return await self._refuse(
                    request_id, path, digest, requester, started, 503, "held_unavailable", rule_id,
                    f"the held request could not be stored: {exc.strerror or exc}", "server_error",
                    how=how, who=who,
                )  # fmt: skip
        try:
            await self.audit.append(
                self._decision(
                    request_id, path, digest, "hold", rule_id, requester, started, 202, how=how, who=who
                )
            )
        except AuditUnavailable as exc:
            self._finish(held, "failed")
            await self._forget_journal(held.id)
            return _error(503, f"audit log unavailable: {exc}", "audit_unavailable", "server_error")
        self.metrics.requests.labels(path, "hold").inc()
        self.metrics.held.set(self.book.pending)
        wait = prefer_wait(request.headers)
        if wait is not None:
            await self._wait_settled(held, wait)
            settled = self._settled_answer(held)
            if settled is not None:
                settled.headers["Preference-Applied"] = f"wait={wait}"
                return settled
        summary = held.summary()
        body_out = _held_answer(held.id, digest, "held", rule_id, how) | {
            "approvals_required": held.required,
            "expires_at": summary["expires_at"],
            "poll": f"/v1/held/{held.id}",
            "approve": f"/v1/held/{held.id}/approvals",
        }
        response = web.json_response(body_out, status=202)
        if wait is not None:
            response.headers["Preference-Applied"] = f"wait={wait}"
        return response

    # -- held requests: waiting, settling, the journal --------------------------------------------
    def _finish(self, held: Held, state: str) -> None:
        """A held request reached a final state: wake whoever waits on it (Prefer: wait)."""
        held.state = state  # type: ignore[assignment]
        held.finished = time.time()
        self._settle(held)

    def _settle(self, held: Held) -> None:
        event = self._settled.pop(held.id, None)
        if event is not None:
            event.set()

    async def _wait_settled(self, held: Held, seconds: float) -> None:
        """Until the request is decided (and run, when approved), or `seconds` pass; never past
        its expiry, which the sweeper records within a sweep."""
        if held.state in _SETTLED:
            return
        limit = min(seconds, max(0.0, held.expires - time.time()) + 2 * self.config.sweep_seconds)
        event = self._settled.setdefault(held.id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), limit)

    def _settled_answer(self, held: Held) -> web.Response | None:
        """What a waiting client gets once the request is decided: the model's answer after an
        approval, an OpenAI-style error after a denial or expiry; None while undecided."""
        extra = {"rule": held.rule.id, "request_id": held.id, "request_hash": held.request_hash}
        if held.state == "completed" and held.answer is not None:
            status, content_type, payload = held.answer
            response = web.Response(body=payload, status=status, content_type=None)
            response.headers["Content-Type"] = content_type
            response.headers["X-Enclave-Request-Id"] = held.id
            return response
        if held.state == "denied":
            return _error(
                403,
                f"held request {held.id} was denied by an approver",
                "request_denied",
                "policy_refusal",
                **extra,
            )
        if held.state == "expired":
            return _error(
                403, f"held request {held.id} expired before {held.required} approvers approved it",
                "request_expired", "policy_refusal", **extra,
            )  # fmt: skip
        if held.state == "failed":
            error = (held.result or {}).get("error", "the approved request could not be run")
            return _error(
                502, f"held request {held.id} failed: {error}", "held_request_failed", "server_error", **extra
            )
        return None

    async def _forget_journal(self, request_id: str) -> None:
        if self.journal is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.journal.remove, request_id)

    async def _restore(self) -> None:
        """Held requests of an earlier run, from the journal, as the audit log leaves them."""
        if self.journal is None:
            return
        entries, unreadable = await asyncio.to_thread(self.journal.load)
        resolution = await asyncio.to_thread(resolve, entries, self.audit.path)
        now = time.time()
        restored: list[Held] = []
        for entry, approvals in resolution.restore:
            rule = Rule(entry.rule_id, "hold", entry.rule_description, (), None, entry.required)
            held = Held(
                entry.id, entry.request_hash, entry.method, entry.path, entry.body, rule, entry.required,
                entry.requester, entry.created, entry.expires, user=entry.user,
            )  # fmt: skip
            for record in approvals:
                statement = Statement(
                    str(record["approver"]), record["decision"], str(record["signed_time"]),
                    str(record["nonce"]), str(record["envelope"]).encode("ascii"),
                )  # fmt: skip
                held.approvals[statement.keyid] = statement
            self.book.restore(held, now)
            restored.append(held)
        for name, _ in unreadable:
            await asyncio.to_thread(self.journal.discard, name)
        for request_id, _ in resolution.discard:
            await self._forget_journal(request_id)
        if restored or unreadable or resolution.discard:
            await self.audit.append(
                {
                    "event": "held-restored",
                    "restored": [
                        {
                            "id": h.id,
                            "expires_at": h.summary()["expires_at"],
                            "approvals": sorted(h.approvals),
                        }
                        for h in restored
                    ],
                    "discarded": [{"id": i, "reason": r} for i, r in resolution.discard]
                    + [{"file": n, "reason": r} for n, r in unreadable],
                    **self._base,
                }
            )
        for held in restored:
            # The last approval (or a denial) was recorded but the gateway stopped before it
            # acted on it: act now, once.
            if any(s.decision == "deny" for s in held.approvals.values()):
                held.state = "denied"
                held.finished = now
                await self._close_held(held, "deny", 403)
            elif sum(s.decision == "approve" for s in held.approvals.values()) >= held.required:
                held.state = "approved"
                task = asyncio.create_task(self._execute(held), name=f"execute-{held.id}")
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        self.metrics.held.set(self.book.pending)

    # -- upstream -------------------------------------------------------------------------------
    def _headers(self, incoming: Mapping[str, str]) -> dict[str, str]:
        headers = {name: incoming[name] for name in _FORWARD_HEADERS if name in incoming}
        headers.setdefault("Content-Type", _JSON)
        return headers

    async def _forward(
        self, method: str, path: str, body: bytes, incoming: Mapping[str, str]
    ) -> tuple[int, str, bytes]:
        assert self._session is not None
        try:
            async with self._session.request(
                method, self._upstream + path, data=body, headers=self._headers(incoming)
            ) as upstream:
                payload = await upstream.read()
                return upstream.status, upstream.headers.get("Content-Type", _JSON), payload
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.metrics.upstream_errors.inc()
            raise _UpstreamError(str(exc) or type(exc).__name__) from None

    async def _stream(
        self, request: web.Request, request_id: str, path: str, digest: str, body: bytes, started: float
    ) -> web.StreamResponse:
        assert self._session is not None
        sha = hashlib.sha256()
        size = 0
        status = 502
        response: web.StreamResponse | None = None
        try:
            async with self._session.post(
                self._upstream + path, data=body, headers=self._headers(request.headers)
            ) as upstream:
                status = upstream.status
                response = web.StreamResponse(status=upstream.status)
                response.headers["Content-Type"] = upstream.headers.get("Content-Type", "text/event-stream")
                response.headers["Cache-Control"] = "no-cache"
                response.headers["X-Enclave-Request-Id"] = request_id
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    sha.update(chunk)
                    size += len(chunk)
                    await response.write(chunk)
                await response.write_eof()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.metrics.upstream_errors.inc()
            if response is None:
                raise _UpstreamError(str(exc) or type(exc).__name__) from None
            status = 502  # the stream broke after it started; the client sees a cut stream
        except ConnectionResetError:
            status = 499  # the client went away mid-stream
        finally:
            with contextlib.suppress(AuditUnavailable):
                self.audit.append_nowait(
                    {
                        "event": "outcome",
                        "id": request_id,
                        "request_hash": digest,
                        "status": status,
                        "response_sha256": sha.hexdigest(),
                        "response_bytes": size,
                        "stream": True,
                        "latency_us": int((time.perf_counter() - started) * 1e6),
                        **self._base,
                    }
                )
        self.metrics.latency.labels(path).observe(time.perf_counter() - started)
        assert response is not None
        return response

    async def models(self, request: web.Request) -> web.Response:
        """Model listing passes through unaudited: it carries no prompt and reaches no model."""
        if not self.audit.healthy:
            return _error(
                503, "audit log unavailable: refusing all requests", "audit_unavailable", "server_error"
            )
        if self.identity is not None:
            allowed = await self._admit(request)
            if isinstance(allowed, web.Response):
                return allowed
        try:
            status, content_type, payload = await self._forward("GET", "/v1/models", b"", request.headers)
        except _UpstreamError as exc:
            return _error(502, f"model server unavailable: {exc}", "upstream_unavailable", "server_error")
        response = web.Response(body=payload, status=status, content_type=None)
        response.headers["Content-Type"] = content_type
        return response

    # -- identity and access --------------------------------------------------------------------
    def _authenticate(self, request: web.Request) -> Identity:
        """The caller's identity (raises AuthFailure); records CRL and users-file reloads."""
        assert self.identity is not None
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        try:
            return self.identity.authenticate(ssl_object, request.headers.get("Authorization"))
        finally:
            if self.identity.events:
                for event in self.identity.events:
                    with contextlib.suppress(AuditUnavailable):
                        self.audit.append_nowait({**event, **self._base})
                self.identity.events.clear()

    async def _admit(self, request: web.Request, *roles: str) -> Identity | web.Response:
        """The caller's identity, or the refusal (401 unknown, 403 without one of `roles`),
        recorded as an `access` event."""
        try:
            identity = self._authenticate(request)
        except AuthFailure as exc:
            return await self._deny_access(request, 401, exc.code, str(exc), exc.user)
        if roles and not identity.has(*roles):
            return await self._deny_access(
                request,
                403,
                "forbidden",
                f"{request.path} needs the role {' or '.join(roles)}",
                identity.record(),
            )
        return identity

    async def _deny_access(
        self, request: web.Request, status: int, code: str, message: str, user: dict[str, Any] | None
    ) -> web.Response:
        try:
            await self.audit.append(
                {
                    "event": "access",
                    "endpoint": request.path,
                    "method": request.method,
                    "decision": "refuse",
                    "status": status,
                    "reason": code,
                    "detail": message,
                    "user": user,
                    "client": _client(request),
                    **self._base,
                }
            )
        except AuditUnavailable as exc:
            return _error(503, f"audit log unavailable: {exc}", "audit_unavailable", "server_error")
        return _error(status, message, code, "authentication_error" if status == 401 else "permission_error")

    def handshake_failed(self, client: str | None, exc: BaseException) -> None:
        """A TLS handshake that failed (another CA's certificate, an old TLS version, plain
        HTTP on the TLS port): recorded without a sync of its own, so a flood of them cannot
        stall the log."""
        detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
        with contextlib.suppress(AuditUnavailable):
            self.audit.append_nowait(
                {
                    "event": "access",
                    "endpoint": None,
                    "method": None,
                    "decision": "refuse",
                    "status": None,
                    "reason": "tls_handshake_failed",
                    "detail": f"{type(exc).__name__}: {detail}",
                    "user": None,
                    "client": client,
                    **self._base,
                }
            )

    # -- approvals ------------------------------------------------------------------------------
    async def held_status(self, request: web.Request) -> web.Response:
        identity: Identity | None = None
        if self.identity is not None:
            admitted = await self._admit(request)
            if isinstance(admitted, web.Response):
                return admitted
            identity = admitted
        try:
            held = self.book.get(request.match_info["id"], time.time())
        except Rejected as exc:
            return _error(exc.status, str(exc), exc.code)
        if identity is not None and not (identity.name == held.requester_name or identity.has("approver")):
            return await self._deny_access(
                request, 403, "forbidden", "a held request is readable by its requester and approvers only",
                identity.record(),
            )  # fmt: skip
        wait = prefer_wait(request.headers)
        if wait is not None:
            await self._wait_settled(held, wait)
        response = web.json_response(held.summary())
        if wait is not None:
            response.headers["Preference-Applied"] = f"wait={wait}"
        return response

    async def held_approval(self, request: web.Request) -> web.Response:
        if not self.audit.healthy:
            return _error(
                503, "audit log unavailable: refusing all requests", "audit_unavailable", "server_error"
            )
        request_id = request.match_info["id"]
        now = time.time()
        data = b""
        who: dict[str, Any] = {"user": None, "client": _client(request)}
        caller: tuple[str, str | None] | None = None
        try:
            if self.identity is not None:
                try:
                    identity = self._authenticate(request)
                except AuthFailure as exc:
                    who["user"] = exc.user
                    raise Rejected(401, exc.code, str(exc)) from None
                who["user"] = identity.record()
                if not identity.has("approver") or identity.keyid is None:
                    raise Rejected(403, "not_an_approver", f"{identity.name} is not an approver")
                caller = (identity.name, identity.keyid)
            try:
                data = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise Rejected(
                    413, "request_too_large", f"approval body exceeds {self.config.max_body} bytes"
                ) from None
            held, statement = self.book.submit(request_id, data, now, caller)
        except Rejected as exc:
            # Failed approval attempts (self-approval, replays, strangers' keys) are evidence too.
            with contextlib.suppress(AuditUnavailable):
                await self.audit.append(
                    {
                        "event": "approval-rejected",
                        "id": request_id,
                        "reason": exc.code,
                        "detail": str(exc),
                        "envelope_sha256": hashlib.sha256(data).hexdigest(),
                        **who,
                        **self._base,
                    }
                )
            return _error(exc.status, str(exc), exc.code)
        try:
            await self.audit.append(
                {
                    "event": "approval",
                    "id": held.id,
                    "request_hash": held.request_hash,
                    "approver": statement.keyid,
                    "decision": statement.decision,
                    "signed_time": statement.time,
                    "nonce": statement.nonce,
                    "envelope": statement.envelope.decode("ascii"),
                    **who,
                    **self._base,
                }
            )
        except AuditUnavailable as exc:
            self._finish(held, "failed")
            return _error(503, f"audit log unavailable: {exc}", "audit_unavailable", "server_error")
        if held.state == "denied":
            await self._close_held(held, "deny", 403)
            return web.json_response(held.summary())
        if held.state == "pending":
            return web.json_response(held.summary(), status=202)
        return await self._execute(held)

    async def _execute(self, held: Held) -> web.Response:
        """Threshold met: record the approval decision durably, run the stored request once."""
        started = time.perf_counter()
        approvers = sorted(k for k, s in held.approvals.items() if s.decision == "approve")
        try:
            await self.audit.append(
                self._decision(
                    held.id, held.path, held.request_hash, "approve", held.rule.id, held.requester,
                    started, 200, approvers, who={"user": held.user},
                )
            )  # fmt: skip
        except AuditUnavailable as exc:
            self._finish(held, "failed")
            return _error(503, f"audit log unavailable: {exc}", "audit_unavailable", "server_error")
        held.state = "executing"
        self.metrics.held.set(self.book.pending)
        # The approve record is durable: a restart never runs this request again, so its bytes
        # need not outlive this process.
        await self._forget_journal(held.id)
        try:
            status, content_type, payload = await self._forward(held.method, held.path, held.body, {})
        except _UpstreamError as exc:
            held.result = {"status": 502, "error": str(exc)}
            self._finish(held, "failed")
            self._outcome(held.id, held.request_hash, 502, b"", started)
            return _error(502, f"model server unavailable: {exc}", "upstream_unavailable", "server_error")
        self._outcome(held.id, held.request_hash, status, payload, started)
        held.result = {"status": status, "content_type": content_type, "body": _decode(content_type, payload)}
        held.answer = (status, content_type, payload)
        self._finish(held, "completed")
        return web.json_response(held.summary())

    async def _close_held(self, held: Held, decision: str, status: int) -> None:
        self.metrics.held.set(self.book.pending)
        deciders = sorted(held.approvals) if decision == "deny" else []
        with contextlib.suppress(AuditUnavailable):
            await self.audit.append(
                self._decision(
                    held.id, held.path, held.request_hash, decision, held.rule.id, held.requester,
                    time.perf_counter(), status, deciders, who={"user": held.user},
                )
            )  # fmt: skip
        self._settle(held)
        await self._forget_journal(held.id)

    async def _sweep(self) -> None:
        """Timeout means deny: expire overdue held requests and record it."""
        while True:
            await asyncio.sleep(self.config.sweep_seconds)
            now = time.time()
            for held in self.book.expire_due(now):
                await self._close_held(held, "expire", 408)
            self.book.forget(now)
            self.metrics.held.set(self.book.pending)

    # -- service endpoints ----------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        healthy = self.audit.healthy
        status = 200 if healthy else 503
        if self.identity is not None:
            # Anyone (a container health check) learns up or down; only service and auditor
            # identities see the details.
            try:
                identity: Identity | None = self._authenticate(request)
            except AuthFailure:
                identity = None
            if identity is None or not identity.has(*_OBSERVERS):
                return web.json_response({"status": "ok" if healthy else "failing"}, status=status)
        body = {
            "status": "ok" if healthy else "failing",
            "audit": {"healthy": healthy, "records": self.audit.size, "failure": self.audit.failure},
            "policy": {
                "name": self.policy.name,
                "version": self.policy.version,
                "digest": self.policy.digest,
            },
            "model_digest": self.config.model_digest,
            "held_pending": self.book.pending,
        }
        return web.json_response(body, status=status)

    async def prometheus(self, request: web.Request) -> web.Response:
        if self.identity is not None:
            admitted = await self._admit(request, *_OBSERVERS)
            if isinstance(admitted, web.Response):
                return admitted
        self.metrics.audit_healthy.set(1 if self.audit.healthy else 0)
        response = web.Response(body=generate_latest(self.metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def not_found(self, request: web.Request) -> web.Response:
        # A closed list: the model server's other endpoints (/completion, /tokenize, /slots,
        # ...) would bypass policy, so they do not exist here.
        return _error(404, f"{request.method} {request.path} is not served by the gateway", "not_found")


class _UpstreamError(Exception):
    pass


def _decode(content_type: str, payload: bytes) -> Any:
    if content_type.startswith(_JSON):
        with contextlib.suppress(ValueError):
            return json.loads(payload)
    return payload.decode("utf-8", errors="replace")


def _client(request: web.Request) -> str | None:
    """The peer's address as HOST:PORT, for the records."""
    transport = request.transport
    return peer_text(transport.get_extra_info("peername")) if transport is not None else None


MAX_WAIT_SECONDS = 3600


def prefer_wait(headers: Mapping[str, str]) -> int | None:
    """The `wait` preference of an RFC 7240 `Prefer` header (`Prefer: wait=60`), in seconds."""
    value = headers.get("Prefer")
    if not value:
        return None
    for preference in value.split(","):
        name, _, argument = preference.strip().partition("=")
        argument = argument.split(";")[0].strip().strip('"')
        if name.strip().lower() == "wait" and argument.isdigit():
            return min(int(argument), MAX_WAIT_SECONDS)
    return None
