"""`enclave gateway serve`: check everything the gateway depends on, then serve.

Start-up is where fail-closed begins: a policy that does not load, an audit key that is not
in the trust root, hold rules with nobody able to approve them, or an audit log that does
not verify all stop the gateway before it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import ssl
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

import enclave
from enclave.errors import PolicyError, UsageError
from enclave.normalise import NORMALISATION
from enclave.runtime.audit.writer import AuditLog
from enclave.runtime.gateway.access import Authenticator, RateLimiter
from enclave.runtime.gateway.app import Gateway, GatewayConfig
from enclave.runtime.gateway.journal import HeldJournal
from enclave.runtime.gateway.listener import WatchedTLSSite
from enclave.runtime.gateway.policy import Policy, load_policy
from enclave.trust.keys import PublicKey, SigningKey
from enclave.trust.trusted import TrustedRoot

DEFAULT_LISTEN = "127.0.0.1:8088"
MAX_HEADER_FIELD = 32 * 1024


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {listen!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]"), int(port)


def check_upstream(upstream: str) -> str:
    parts = urlsplit(upstream)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(f"--upstream {upstream!r}: expected http(s)://HOST:PORT of the model server")
    return upstream.rstrip("/")


@dataclass
class Prepared:
    config: GatewayConfig
    start_fields: dict[str, Any]
    host: str
    port: int
    tls: ssl.SSLContext | None = None


@dataclass(frozen=True)
class Access:
    """TLS and who may ask (docs/GATEWAY.md 12): all None serves plain HTTP to anyone, as before."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None  # mutual TLS: every request needs an identity
    crl: Path | None = None
    users: Path | None = None  # API keys, for clients without a certificate
    tls12: bool = False
    rate_limit: float | None = None  # requests a second per user
    rate_burst: int | None = None

    def check(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together")
        if self.client_ca is not None and self.tls_cert is None:
            raise UsageError("--client-ca needs TLS: give --tls-cert and --tls-key")
        if self.client_ca is None:
            for value, flag in (
                (self.crl, "--crl"),
                (self.users, "--users"),
                (self.rate_limit, "--rate-limit"),
            ):
                if value is not None:
                    raise UsageError(f"{flag} needs --client-ca (users are identified through it)")
        if self.tls12 and self.tls_cert is None:
            raise UsageError("--tls12 needs --tls-cert")
        if self.rate_burst is not None and self.rate_limit is None:
            raise UsageError("--rate-burst needs --rate-limit")


def _tls_fields(
    access: Access, identity: Authenticator | None, limiter: RateLimiter | None
) -> dict[str, Any]:
    if access.tls_cert is None:
        return {"tls": None, "identity": None, "rate_limit": None}
    return {
        "tls": {"cert": str(access.tls_cert), "min_version": "TLSv1.2" if access.tls12 else "TLSv1.3"},
        "identity": identity.describe() if identity else None,
        "rate_limit": limiter.describe() if limiter else None,
    }


def prepare(
    policy: Path,
    upstream: str,
    audit_log: Path,
    audit_key: Path,
    trust: Path | TrustedRoot | None,
    listen: str = DEFAULT_LISTEN,
    *,
    model_digest: str | None = None,
    checkpoint_every: int = 1000,
    checkpoint_seconds: float = 10.0,
    now: datetime | None = None,
    guard: Path | None = None,
    guard_digest: str | None = None,
    buffer_streams: bool = False,
    accept_unproven_tail: bool = False,
    access: Access | None = None,
    held_dir: Path | None = None,
) -> Prepared:
    """Everything `serve` checks before listening; raises the typed errors.

    `access`: TLS, client identities and rate limits (docs/GATEWAY.md 12). `held_dir`: where
    pending held requests are journalled (default: LOG.held beside the audit log).

    `accept_unproven_tail`: an operator accepts records at the end of the audit log that no
    checkpoint covers (after a crash); the log then says so (docs/GATEWAY.md 5.4)."""
    host, port = parse_listen(listen)
    upstream = check_upstream(upstream)
    access = access or Access()
    access.check()
    loaded = load_policy(policy)
    # The guard's pins and self-test run before the gateway listens: a guard that changed stops it.
    # (Imported here: it needs numpy, which the agent, importing this package, does not carry.)
    from enclave.guard.model import load_guard

    learned = load_guard(guard, guard_digest) if guard is not None else None
    signer = SigningKey.load(audit_key)
    approvers: dict[str, PublicKey] = {}
    threshold = 1
    audit_keys = {signer.keyid: signer.public}
    trust_digest: str | None = None
    if trust is not None:
        trusted = trust if isinstance(trust, TrustedRoot) else TrustedRoot.load(trust, now)
        root = trusted.root
        trust_digest = trusted.digest
        audit_keys = trusted.role_keys("audit")
        # Its checkpoints would not verify: refused before the log is opened.
        trusted.require_member("audit", signer.public, str(audit_key))
        approvers = root.role_keys("approver")
        threshold = root.roles["approver"].threshold
    check_approvable(loaded, approvers, threshold, trust, guarded=learned is not None)
    tls = None
    if access.tls_cert is not None and access.tls_key is not None:
        from enclave.identity.tls import server_context

        tls = server_context(access.tls_cert, access.tls_key, access.client_ca, tls12=access.tls12)
    identity = Authenticator(access.client_ca, access.crl, access.users) if access.client_ca else None
    limiter = None
    if access.rate_limit is not None:
        limiter = RateLimiter(access.rate_limit, access.rate_burst or max(1, int(access.rate_limit)))
    journal = HeldJournal(held_dir or audit_log.with_name(audit_log.name + ".held"))
    log = AuditLog.open(
        audit_log,
        signer,
        audit_keys=audit_keys,
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
        accept_unproven_tail=accept_unproven_tail,
    )
    digest = model_digest or "unknown"
    config = GatewayConfig(
        policy=loaded,
        upstream=upstream,
        audit=log,
        approvers=approvers,
        approver_threshold=threshold,
        model_digest=digest,
        guard=learned,
        buffer_streams=buffer_streams,
        identity=identity,
        rate_limit=limiter,
        journal=journal,
    )
    start_fields = {
        "policy_digest": loaded.digest,
        "policy": loaded.text.decode("utf-8"),
        "policy_name": loaded.name,
        "policy_version": loaded.version,
        "model_digest": digest,
        "upstream": upstream,
        "listen": f"{host}:{port}",
        "trust_root": trust_digest,
        "approvers": sorted(approvers),
        "normalisation": NORMALISATION,
        "guard": None
        if learned is None
        else {
            "digest": learned.digest,
            "name": learned.name,
            "version": learned.version,
            "thresholds": learned.thresholds.as_dict(),
            "deadline_ms": learned.deadline_ms,
        },
        **_tls_fields(access, identity, limiter),
        "held_dir": str(journal.directory),
        "enclave_version": enclave.__version__,
    }
    return Prepared(config, start_fields, host, port, tls)


def check_approvable(
    policy: Policy,
    approvers: dict[str, PublicKey],
    threshold: int,
    trust: Path | TrustedRoot | None,
    guarded: bool = False,
) -> None:
    """PolicyError unless every hold rule can gather its approvals from the root's approver
    role (the requester, an approver too, never counts). Also run by `enclave provision` on
    the controller before a gateway is deployed."""
    holds = [r.approvals for r in policy.rules if r.action == "hold"]
    if guarded:  # the learned guard holds too (its band always, and targeting requests)
        holds.append(policy.guard_approvals)
    if not holds:
        return
    if trust is None:
        raise PolicyError(
            f"{policy.source}: the policy holds requests for approval, but no --trust root names approvers"
        )
    # The requester is an approver too and cannot approve, so one key is always out.
    needed = max(max(holds), threshold)
    if len(approvers) - 1 < needed:
        raise PolicyError(
            f"{policy.source}: hold rules need {needed} approvers besides the requester, "
            f"but the trust root's approver role has {len(approvers)} keys"
        )


@dataclass
class RunningGateway:
    gateway: Gateway
    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.gateway.audit.close({"reason": "stopped"})


async def start_gateway(prepared: Prepared) -> RunningGateway:
    """Start the audit writer (start record + checkpoint), then listen."""
    await prepared.config.audit.start(prepared.start_fields)
    gateway = Gateway(prepared.config)
    # A requester token signed with ML-DSA-87 is ~8.8 KB, over aiohttp's default 8,190-byte
    # header field: refused before any handler ran, it would leave no record.
    runner = web.AppRunner(
        gateway.application(), access_log=None, handle_signals=False, max_field_size=MAX_HEADER_FIELD
    )
    await runner.setup()
    site: web.TCPSite
    if prepared.tls is not None:
        site = WatchedTLSSite(
            runner, prepared.host, prepared.port, prepared.tls, gateway.handshake_failed,
            backlog=1024, reuse_address=True,
        )  # fmt: skip
    else:
        site = web.TCPSite(runner, prepared.host, prepared.port, backlog=1024, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await prepared.config.audit.close({"reason": f"cannot listen: {exc.strerror}"})
        raise UsageError(f"cannot listen on {prepared.host}:{prepared.port}: {exc.strerror}") from None
    addresses = runner.addresses
    port = int(addresses[0][1]) if addresses else prepared.port
    host = f"[{prepared.host}]" if ":" in prepared.host else prepared.host
    scheme = "https" if prepared.tls is not None else "http"
    return RunningGateway(gateway, runner, f"{scheme}://{host}:{port}")


def serve(
    policy: Path,
    upstream: str,
    audit_log: Path,
    audit_key: Path,
    trust: Path | None = None,
    listen: str = DEFAULT_LISTEN,
    *,
    model_digest: str | None = None,
    checkpoint_every: int = 1000,
    checkpoint_seconds: float = 10.0,
    guard: Path | None = None,
    guard_digest: str | None = None,
    buffer_streams: bool = False,
    accept_unproven_tail: bool = False,
    access: Access | None = None,
    held_dir: Path | None = None,
) -> None:
    """`enclave gateway serve`: blocks until SIGINT/SIGTERM, then writes a final checkpoint."""
    prepared = prepare(
        policy,
        upstream,
        audit_log,
        audit_key,
        trust,
        listen,
        model_digest=model_digest,
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
        guard=guard,
        guard_digest=guard_digest,
        buffer_streams=buffer_streams,
        accept_unproven_tail=accept_unproven_tail,
        access=access,
        held_dir=held_dir,
    )
    asyncio.run(_serve(prepared))


async def _serve(prepared: Prepared) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    running = await start_gateway(prepared)
    # Everything allocated so far (modules, policy, keys, app) lives as long as the process.
    # Frozen, the collector stops re-scanning those ~50,000 objects in every full collection:
    # unfrozen, each one stalled the event loop for ~15 ms, a tail on every request in flight.
    gc.collect()
    gc.freeze()
    print(f"enclave gateway listening on {running.url}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await running.stop()
