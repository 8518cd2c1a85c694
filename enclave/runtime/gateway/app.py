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
from enclave.runtime.gateway.approvals import (
    REQUESTER_HEADER,
    ApprovalBook,
    Held,
    Rejected,
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
from enclave.runtime.gateway.policy import Policy, Rule
from enclave.trust.keys import PublicKey

if TYPE_CHECKING:  # the guard imports the normaliser, under this package
    from enclave.guard.model import Guard

MAX_BODY = 1 << 20
_FORWARD_HEADERS = ("Content-Type", "Accept")
_JSON = "application/json"


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
        self._sweeper = asyncio.create_task(self._sweep(), name="held-request-sweeper")

    async def _cleanup(self, app: web.Application) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        # Held requests live in memory only: stopping denies them, on the record.
        for held in self.book.expire_due(time.time(), everything=True):
            await self._close_held(held, "expire", 503)
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
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return await self._refuse(
                request_id, path, "", None, started, 413, "request_too_large", "gateway.too-large",
                f"request body exceeds {self.config.max_body} bytes",
            )  # fmt: skip
        digest = request_hash(request.method, path, body)
        try:
            doc = parse_body(body)
            check_inspectable(path, doc)
            texts = texts_of(doc)
        except BadRequest as exc:
            rule_id = "gateway.uninspectable" if exc.code == "uninspectable" else "gateway.invalid-request"
            return await self._refuse(
                request_id, path, digest, None, started, 400, exc.code, rule_id, str(exc)
            )
        requester: str | None = None
        token = request.headers.get(REQUESTER_HEADER)
        if token is not None:
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
                )
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
                decision.rule_id or "policy.default", message, kind="policy_refusal", how=how,
            )  # fmt: skip
        if decision.action == "hold":
            assert decision.rule is not None
            return await self._hold(
                request, request_id, path, digest, body, requester, decision.rule, started, how
            )
        try:
            await self.audit.append(
                self._decision(request_id, path, digest, "allow", None, requester, started, 200, how=how)
            )
        except AuditUnavailable as exc:
            self.metrics.requests.labels(path, "unavailable").inc()
            return _error(503, f"audit log unavailable: {exc}", "audit_unavailable", "server_error")
        self.metrics.requests.labels(path, "allow").inc()
        try:
            if is_stream(doc):
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
    ) -> dict[str, Any]:
        return {
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
    ) -> web.Response:
        try:
            await self.audit.append(
                self._decision(request_id, path, digest, "refuse", rule, requester, started, status, how=how)
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
    ) -> web.Response:
        rule_id = rule.id
        if requester is None:
            return await self._refuse(
                request_id, path, digest, None, started, 401, "requester_token_required", rule_id,
                f"rule {rule_id} holds this request for approval; held requests need a signed "
                f"{REQUESTER_HEADER} token so the requester cannot approve it", how=how,
            )  # fmt: skip
        try:
            held = self.book.hold(
                request_id, digest, request.method, path, body, rule, requester, time.time()
            )
        except Rejected as exc:
            return await self._refuse(
                request_id, path, digest, requester, started, exc.status, exc.code, rule_id, str(exc), how=how
            )
        try:
            await self.audit.append(
                self._decision(request_id, path, digest, "hold", rule_id, requester, started, 202, how=how)
            )
        except AuditUnavailable as exc:
            held.state = "failed"
            held.finished = time.time()
            return _error(503, f"audit log unavailable: {exc}", "audit_unavailable", "server_error")
        self.metrics.requests.labels(path, "hold").inc()
        self.metrics.held.set(self.book.pending)
        summary = held.summary()
        body_out = {
            "object": "enclave.held_request",
            "id": held.id,
            "request_hash": digest,
            "status": "held",
            "rule": rule_id,
            "layer": how["layer"],
            "approvals_required": held.required,
            "expires_at": summary["expires_at"],
            "poll": f"/v1/held/{held.id}",
            "approve": f"/v1/held/{held.id}/approvals",
        }
        return web.json_response(body_out, status=202)

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
        try:
            status, content_type, payload = await self._forward("GET", "/v1/models", b"", request.headers)
        except _UpstreamError as exc:
            return _error(502, f"model server unavailable: {exc}", "upstream_unavailable", "server_error")
        response = web.Response(body=payload, status=status, content_type=None)
        response.headers["Content-Type"] = content_type
        return response

    # -- approvals ------------------------------------------------------------------------------
    async def held_status(self, request: web.Request) -> web.Response:
        try:
            held = self.book.get(request.match_info["id"], time.time())
        except Rejected as exc:
            return _error(exc.status, str(exc), exc.code)
        return web.json_response(held.summary())

    async def held_approval(self, request: web.Request) -> web.Response:
        if not self.audit.healthy:
            return _error(
                503, "audit log unavailable: refusing all requests", "audit_unavailable", "server_error"
            )
        request_id = request.match_info["id"]
        now = time.time()
        data = b""
        try:
            try:
                data = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise Rejected(
                    413, "request_too_large", f"approval body exceeds {self.config.max_body} bytes"
                ) from None
            held, statement = self.book.submit(request_id, data, now)
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
                    **self._base,
                }
            )
        except AuditUnavailable as exc:
            held.state = "failed"
            held.finished = now
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
                    started, 200, approvers,
                )
            )  # fmt: skip
        except AuditUnavailable as exc:
            held.state = "failed"
            held.finished = time.time()
            return _error(503, f"audit log unavailable: {exc}", "audit_unavailable", "server_error")
        held.state = "executing"
        self.metrics.held.set(self.book.pending)
        try:
            status, content_type, payload = await self._forward(held.method, held.path, held.body, {})
        except _UpstreamError as exc:
            held.state = "failed"
            held.finished = time.time()
            held.result = {"status": 502, "error": str(exc)}
            self._outcome(held.id, held.request_hash, 502, b"", started)
            return _error(502, f"model server unavailable: {exc}", "upstream_unavailable", "server_error")
        self._outcome(held.id, held.request_hash, status, payload, started)
        held.result = {"status": status, "content_type": content_type, "body": _decode(content_type, payload)}
        held.state = "completed"
        held.finished = time.time()
        return web.json_response(held.summary())

    async def _close_held(self, held: Held, decision: str, status: int) -> None:
        self.metrics.held.set(self.book.pending)
        deciders = sorted(held.approvals) if decision == "deny" else []
        with contextlib.suppress(AuditUnavailable):
            await self.audit.append(
                self._decision(
                    held.id, held.path, held.request_hash, decision, held.rule.id, held.requester,
                    time.perf_counter(), status, deciders,
                )
            )  # fmt: skip

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
        return web.json_response(body, status=200 if healthy else 503)

    async def prometheus(self, request: web.Request) -> web.Response:
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
