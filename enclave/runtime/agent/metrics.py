"""The agent's Prometheus metrics (base units, `_total` counters) and its small HTTP server."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from enclave.runtime.agent.results import CHECKS, CheckResult

RESULTS = ("pass", "fail", "error", "not_applicable")


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.checks = Counter(
            "enclave_agent_checks",
            "Checks run, by check and result (error: the check could not run, a failure)",
            ["check", "result"],
            registry=self.registry,
        )
        self.last_check = Gauge(
            "enclave_agent_last_check_timestamp_seconds",
            "Unix time the check last finished",
            ["check"],
            registry=self.registry,
        )
        self.check_ok = Gauge(
            "enclave_agent_check_ok",
            "1 when the check's last run passed or did not apply, 0 when it failed or could not run",
            ["check"],
            registry=self.registry,
        )
        self.duration = Gauge(
            "enclave_agent_last_check_duration_seconds",
            "How long the check's last run took",
            ["check"],
            registry=self.registry,
        )
        self.bytes_hashed = Counter(
            "enclave_agent_weights_bytes_hashed",
            "Bytes of the deployed bundle re-hashed: weights and every other signed file",
            registry=self.registry,
        )
        self.integrity_failures = Counter(
            "enclave_agent_integrity_failures",
            "Integrity findings (changed, missing, extra, mode, type, signature, ...), by kind",
            ["kind"],
            registry=self.registry,
        )
        self.canary_failures = Counter(
            "enclave_agent_canary_failures",
            "Canary findings (decision, rule, answer, drift, error), by canary id",
            ["canary"],
            registry=self.registry,
        )
        self.rounds = Counter("enclave_agent_rounds", "Rounds of checks completed", registry=self.registry)
        self.audit_healthy = Gauge(
            "enclave_agent_audit_healthy",
            "1 while the agent's audit log accepts records",
            registry=self.registry,
        )
        # Every series exists from the start, so `increase()` and absence alerts work at once.
        for check in CHECKS:
            for result in RESULTS:
                self.checks.labels(check, result)

    def observe(self, result: CheckResult, finished_at: float) -> None:
        self.checks.labels(result.check, result.result).inc()
        self.last_check.labels(result.check).set(finished_at)
        self.check_ok.labels(result.check).set(0 if result.failed else 1)
        self.duration.labels(result.check).set(result.seconds)
        if result.check == "integrity":
            for finding in result.findings:
                self.integrity_failures.labels(finding.kind).inc()
        if result.check == "canaries" and result.result == "fail":
            for finding in result.findings:
                self.canary_failures.labels(finding.name).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# Decides who may read /metrics: None lets the request through, else the refusal to send.
Authorize = Callable[[web.Request], web.Response | None]


def application(
    metrics: AgentMetrics, healthy: Callable[[], bool], authorize: Authorize | None = None
) -> web.Application:
    """GET /metrics (Prometheus text; `authorize` decides who, when given) and GET /healthz
    (anyone; 503 once the audit log has failed)."""

    async def prometheus(request: web.Request) -> web.Response:
        if authorize is not None:
            refused = authorize(request)
            if refused is not None:
                return refused
        metrics.audit_healthy.set(1 if healthy() else 0)
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def health(request: web.Request) -> web.Response:
        ok = healthy()
        return web.json_response({"status": "ok" if ok else "audit_unavailable"}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/healthz", health)
    return app
