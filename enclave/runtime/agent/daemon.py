"""`enclave agent run`: the monitoring agent's schedule, audit records and metrics.

Start-up checks everything the agent depends on before its first round (fail closed, typed
errors): the trust root, the audit key (in the root's audit role), the canary file, the
listen address, and the agent's own audit log, which must verify. A round runs the checks
in a fixed order (integrity, images, hardening, canaries); each result is one durable
`agent-check` record, then a signed checkpoint covers the round. Blocking work (hashing,
the Docker SDK, file scans) runs in threads so `/metrics` answers during a long hash.

The agent writes its own log file: one writer per log (the writer holds a lock), so it
never shares the gateway's.

With TLS (`AgentTLS`: the enclave CA, the agent's service certificate and key, the CRL) the agent
presents its certificate to the gateway for canaries, trusts only the enclave CA for the
gateway's, and serves `/metrics` and `/healthz` over TLS 1.3: `/metrics` to `service` and
`auditor` certificates only (the gateway's rule), `/healthz` to anyone (health checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

import enclave
from enclave.errors import EnclaveError, IntegrityError, UsageError
from enclave.runtime.agent import hardening
from enclave.runtime.agent.canaries import CanarySet, check_canaries, check_gateway_url, load_canaries
from enclave.runtime.agent.images import check_images, default_client
from enclave.runtime.agent.integrity import check_integrity
from enclave.runtime.agent.metrics import AgentMetrics, application
from enclave.runtime.agent.results import CheckResult, first_failure, not_applicable
from enclave.runtime.audit.records import parse_record
from enclave.runtime.audit.writer import AuditLog, AuditUnavailable
from enclave.runtime.gateway.access import Authenticator, AuthFailure
from enclave.runtime.gateway.server import parse_listen
from enclave.trust.keys import SigningKey, passphrase_for
from enclave.trust.root import TrustRoot
from enclave.trust.trusted import TrustedRoot

DEFAULT_LISTEN = "127.0.0.1:9108"
DEFAULT_INTERVAL = 600.0  # seconds; 8 GB of weights re-hash in 7-25 s on 2 cores (docs/GATEWAY.md 10.6)
STOP_REASON = "stopped"
OBSERVERS = ("service", "auditor")  # who may read /metrics over TLS (as on the gateway)


@dataclass(frozen=True)
class AgentTLS:
    """Mutual TLS for the agent (docs/GATEWAY.md 10.9). `ca` is the enclave CA: the gateway's
    certificate must chain to it, and so must a /metrics caller's. `cert`/`key`: the agent's
    service certificate (ENCLAVE_KEY_PASSPHRASE if encrypted), presented to the gateway and,
    issued with --host, served on /metrics. `crl`: refuses revoked callers of /metrics."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    crl: Path | None = None

    def check(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise UsageError("--tls-cert and --tls-key go together")

    def describe(self) -> dict[str, Any]:
        return {
            "ca": str(self.ca),
            "cert": str(self.cert) if self.cert else None,
            "crl": str(self.crl) if self.crl else None,
        }


@dataclass(frozen=True)
class _Contexts:
    client: ssl.SSLContext | None = None  # to the gateway
    server: ssl.SSLContext | None = None  # /metrics and /healthz
    callers: Authenticator | None = None  # who calls /metrics


def _contexts(tls: AgentTLS | None) -> _Contexts:
    """Every TLS file loaded at start (fail closed: a bad certificate or key stops the agent)."""
    if tls is None:
        return _Contexts()
    from enclave.identity.tls import client_context, server_context

    tls.check()
    if tls.cert is None or tls.key is None:
        return _Contexts(client_context(tls.ca))
    passphrase = passphrase_for(tls.key)  # asked once for both contexts
    return _Contexts(
        client_context(tls.ca, tls.cert, tls.key, passphrase=passphrase),
        server_context(tls.cert, tls.key, tls.ca, passphrase=passphrase),
        Authenticator(tls.ca, tls.crl),
    )


@dataclass(frozen=True)
class AgentConfig:
    bundle_dir: Path
    trust: Path
    audit_log: Path
    audit_key: Path
    interval: float = DEFAULT_INTERVAL
    listen: str = DEFAULT_LISTEN
    gateway: str | None = None
    canaries: Path | None = None
    hardening_files: tuple[Path, ...] = hardening.DEFAULT_FILES
    rebaseline: bool = False  # accept the current hardening state as the new baseline (recorded)
    workers: int | None = None  # hashing threads; default: every core
    docker: Callable[[], Any] = default_client
    checkpoint_seconds: float = 10.0
    # An operator accepts records at the end of the agent's log that no checkpoint covers (after
    # a crash); the log records the acceptance (docs/GATEWAY.md section 5).
    accept_unproven_tail: bool = False
    tls: AgentTLS | None = None  # None: plain HTTP to the gateway and on /metrics


@dataclass
class AgentReport:
    """The results of one round."""

    round: int
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(r.failed for r in self.results)

    def error(self) -> EnclaveError | None:
        return first_failure(self.results)

    @property
    def exit_code(self) -> int:
        error = self.error()
        return 0 if error is None else error.exit_code

    def text(self) -> str:
        return "\n".join(line for r in self.results for line in r.lines())

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "round": self.round, "checks": [r.to_dict() for r in self.results]}


class Agent:
    """Create with `Agent.prepare` (synchronous checks), then `await start()` in the loop."""

    def __init__(
        self,
        config: AgentConfig,
        root: TrustRoot,
        audit: AuditLog,
        canaries: CanarySet | None,
        gateway: str | None,
        contexts: _Contexts | None = None,
    ) -> None:
        self.config = config
        self.root = root
        self.audit = audit
        self.canaries = canaries
        self.gateway = gateway
        self.tls = contexts or _Contexts()
        self.metrics = AgentMetrics()
        self.baseline = hardening.baseline_path(config.audit_log)
        self.recorded = _recorded_baseline(config.audit_log, self.baseline)
        self.rebaseline = config.rebaseline
        self.rounds = 0
        self._runner: web.AppRunner | None = None

    @classmethod
    def prepare(cls, config: AgentConfig, now: datetime | None = None) -> Agent:
        if not math.isfinite(config.interval) or config.interval <= 0:
            raise UsageError(f"--interval {config.interval}: expected a positive number of seconds")
        parse_listen(config.listen)
        contexts = _contexts(config.tls)
        gateway = check_gateway_url(config.gateway, contexts.client) if config.gateway else None
        if config.canaries is not None and gateway is None:
            raise UsageError(f"--canaries {config.canaries}: canaries are replayed through --gateway URL")
        canaries = load_canaries(config.canaries) if config.canaries is not None else None
        if not config.bundle_dir.is_dir():
            raise UsageError(
                f"--bundle-dir {config.bundle_dir}: not a directory (enclave bundle verify --extract-to)"
            )
        trusted = TrustedRoot.load(config.trust, now)
        root = trusted.root
        signer = SigningKey.load(config.audit_key)
        audit_keys = trusted.role_keys("audit")
        # Its checkpoints would not verify: refused before the log is opened.
        trusted.require_member("audit", signer.public, str(config.audit_key))
        audit = AuditLog.open(
            config.audit_log,
            signer,
            audit_keys=audit_keys,
            checkpoint_seconds=config.checkpoint_seconds,
            component="agent",
            accept_unproven_tail=config.accept_unproven_tail,
        )
        return cls(config, root, audit, canaries, gateway, contexts)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, once: bool) -> None:
        config = self.config
        await self.audit.start(
            {
                "bundle_dir": str(config.bundle_dir),
                "trust_root": self.root.digest,
                "gateway": self.gateway,
                "canaries": str(config.canaries) if config.canaries else None,
                "canary_digest": self.canaries.digest if self.canaries else None,
                "hardening_files": [str(p) for p in config.hardening_files],
                "hardening_baseline": str(self.baseline),
                "interval_seconds": config.interval,
                "listen": None if once else config.listen,
                "tls": config.tls.describe() if config.tls else None,
                "once": once,
                "enclave_version": enclave.__version__,
            }
        )

    async def serve_metrics(self) -> str:
        host, port = parse_listen(self.config.listen)
        authorize = self._authorize if self.tls.callers is not None else None
        app = application(self.metrics, lambda: self.audit.healthy, authorize)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=self.tls.server)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise UsageError(f"--listen {self.config.listen}: cannot listen: {exc.strerror}") from None
        self._runner = runner
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls.server else 'http'}://{shown}:{bound}"

    def _authorize(self, request: web.Request) -> web.Response | None:
        """None when the caller's certificate may read /metrics, else the refusal (401 or 403)."""
        assert self.tls.callers is not None
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        try:
            identity = self.tls.callers.authenticate(ssl_object, None)
        except AuthFailure as exc:
            return _refusal(401, exc.code, str(exc))
        finally:
            self.tls.callers.events.clear()  # CRL reloads: the agent keeps no access records
        if not identity.has(*OBSERVERS):
            return _refusal(403, "forbidden", f"{request.path} needs the role service or auditor")
        return None

    async def stop(self, reason: str = STOP_REASON) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.audit.close({"reason": reason})

    # -- one round ----------------------------------------------------------------------------
    async def round(self) -> AgentReport:
        """Run every check once; each result is durable in the audit log before the next runs."""
        self.rounds += 1
        report = AgentReport(self.rounds)
        integrity, verified = await self._timed(
            lambda: check_integrity(
                self.config.bundle_dir,
                self.root,
                datetime.now(UTC),
                workers=self.config.workers,
                on_bytes=self.metrics.bytes_hashed.inc,
            )
        )
        await self._record(report, integrity)
        images, _ = await self._timed(lambda: (check_images(verified, self.config.docker), None))
        await self._record(report, images)
        await self._record(report, await self._hardening())
        await self._record(report, await self._canaries())
        await self._checkpoint()
        self.metrics.rounds.inc()
        return report

    async def _timed(self, work: Callable[[], tuple[CheckResult, Any]]) -> tuple[CheckResult, Any]:
        started = time.perf_counter()
        result, extra = await asyncio.to_thread(work)
        return _with_seconds(result, time.perf_counter() - started), extra

    async def _hardening(self) -> CheckResult:
        started = time.perf_counter()
        outcome = await asyncio.to_thread(
            hardening.check_hardening,
            self.config.hardening_files,
            self.baseline,
            self.recorded,
            self.rebaseline,
        )
        if outcome.baseline_event is not None:
            # The baseline counts only once the log vouches for it.
            seq = await self._append(outcome.baseline_event)
            self.recorded = hardening.Recorded(outcome.baseline_event["sha256"], seq)
        self.rebaseline = False  # an operator's re-baseline applies to the first round only
        return _with_seconds(outcome.result, time.perf_counter() - started)

    async def _canaries(self) -> CheckResult:
        if self.canaries is None or self.gateway is None:
            return not_applicable("canaries", "no canary file given (--canaries with --gateway)")
        started = time.perf_counter()
        result = await check_canaries(self.gateway, self.canaries, self.tls.client)
        return _with_seconds(result, time.perf_counter() - started)

    async def _record(self, report: AgentReport, result: CheckResult) -> None:
        await self._append(result.record_fields(self.rounds))
        self.metrics.observe(result, time.time())
        report.results.append(result)

    async def _append(self, fields: dict[str, Any]) -> int:
        try:
            return await self.audit.append(fields)
        except AuditUnavailable as exc:
            # A monitor that cannot record what it saw is not monitoring: stop (fail closed).
            raise IntegrityError(f"audit log unavailable, agent stopping: {exc}") from None

    async def _checkpoint(self) -> None:
        try:
            await self.audit.checkpoint()
        except AuditUnavailable as exc:
            raise IntegrityError(f"audit log unavailable, agent stopping: {exc}") from None

    # -- the schedule -------------------------------------------------------------------------
    async def loop(self, stop: asyncio.Event, say: Callable[[str], None]) -> None:
        """Rounds every `interval` seconds (start to start; a long round is followed at once)."""
        while not stop.is_set():
            started = time.monotonic()
            report = await self.round()
            say(_round_line(report))
            delay = max(0.0, self.config.interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)


def _refusal(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "code": code}}, status=status)


def _with_seconds(result: CheckResult, seconds: float) -> CheckResult:
    return CheckResult(
        result.check, result.result, result.summary, result.findings, result.data, result.error, seconds
    )


def _round_line(report: AgentReport) -> str:
    parts = [
        f"{r.check} {r.result}" + (f" ({len(r.findings)} findings)" if r.findings else "")
        for r in report.results
    ]
    return f"enclave agent: round {report.round}: " + ", ".join(parts)


def _recorded_baseline(log: Path, baseline: Path) -> hardening.Recorded | None:
    """The last baseline this log vouches for (the writer verified the log when it opened it)."""
    found: hardening.Recorded | None = None
    with contextlib.suppress(FileNotFoundError):
        for line in log.read_bytes().splitlines():
            try:
                record = parse_record(line)
            except ValueError:
                continue  # an incomplete last line; the writer cuts it
            if record["event"] == hardening.BASELINE_EVENT and record.get("path") == str(baseline):
                digest = record.get("sha256")
                if isinstance(digest, str):
                    found = hardening.Recorded(digest, record["seq"])
    return found


# -- entry points -------------------------------------------------------------------------------


async def run_round_once(config: AgentConfig) -> AgentReport:
    agent = Agent.prepare(config)
    await agent.start(once=True)
    try:
        return await agent.round()
    finally:
        await agent.stop("once")


def check_once(
    bundle_dir: Path,
    trust: Path,
    audit_log: Path,
    audit_key: Path,
    gateway: str | None = None,
    canaries: Path | None = None,
    *,
    hardening_files: Sequence[Path] | None = None,
    rebaseline: bool = False,
    accept_unproven_tail: bool = False,
    tls: AgentTLS | None = None,
) -> AgentReport:
    """`enclave agent run --once`: every check once, every result in the audit log.

    Returns the report; `report.error()` is the typed error of the first failing check
    (IntegrityError for changed bytes or images, TrustError for signatures, ProvisionError
    for hardening drift, PolicyError for canary drift). Start-up problems raise at once.
    """
    config = AgentConfig(
        bundle_dir,
        trust,
        audit_log,
        audit_key,
        gateway=gateway,
        canaries=canaries,
        hardening_files=tuple(hardening_files or hardening.DEFAULT_FILES),
        rebaseline=rebaseline,
        accept_unproven_tail=accept_unproven_tail,
        tls=tls,
    )
    return asyncio.run(run_round_once(config))


async def serve(config: AgentConfig, stop: asyncio.Event, say: Callable[[str], None]) -> None:
    """The daemon: start, serve /metrics, run rounds until `stop` is set, then close the log."""
    agent = Agent.prepare(config)
    await agent.start(once=False)
    reason = STOP_REASON
    try:
        url = await agent.serve_metrics()
        say(f"enclave agent: metrics on {url}/metrics; a round every {config.interval:g} s")
        await agent.loop(stop, say)
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        await agent.stop(reason)


def run(
    bundle_dir: Path,
    trust: Path,
    audit_log: Path,
    audit_key: Path,
    interval: float,
    listen: str,
    gateway: str | None,
    canaries: Path | None,
    once: bool,
    *,
    hardening_files: Sequence[Path] | None = None,
    rebaseline: bool = False,
    accept_unproven_tail: bool = False,
    tls: AgentTLS | None = None,
) -> int:
    """`enclave agent run`. With `once`: every check once, returns the exit code of the first
    failing check (0 when all passed; 3 integrity, 4 signatures, 7 hardening, 8 canaries),
    one line per finding on stderr. Without: blocks until SIGINT/SIGTERM, returns 0.
    Start-up problems raise the typed errors (2 usage, 3 a log that does not verify, 4 trust).
    """
    config = AgentConfig(
        bundle_dir,
        trust,
        audit_log,
        audit_key,
        interval,
        listen,
        gateway,
        canaries,
        tuple(hardening_files or hardening.DEFAULT_FILES),
        rebaseline,
        accept_unproven_tail=accept_unproven_tail,
        tls=tls,
    )
    if once:
        report = asyncio.run(run_round_once(config))
        for result in report.results:
            if result.failed:
                for line in result.lines():
                    print(f"enclave agent: {line}", file=sys.stderr)
        return report.exit_code
    asyncio.run(_serve_until_signalled(config))
    return 0


async def _serve_until_signalled(config: AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await serve(config, stop, lambda line: print(line, file=sys.stderr, flush=True))
