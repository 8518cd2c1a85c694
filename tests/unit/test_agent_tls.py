"""The monitoring agent over mutual TLS: canaries go to a real gateway serving mutual TLS, as
the agent's service certificate (the gateway's records name it); the agent's own /metrics is
served over TLS to service and auditor certificates only, /healthz to anyone (health checks);
and every TLS mistake stops the agent at start, before it records anything."""

from __future__ import annotations

import asyncio
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from enclave.errors import UsageError
from enclave.identity.ca import init_ca, issue
from enclave.identity.tls import client_context
from enclave.runtime.agent import Agent, AgentTLS
from enclave.runtime.agent.daemon import AgentReport, run_round_once
from enclave.runtime.gateway.server import Access
from tests.conftest import BuildFn, Keys
from tests.unit.test_agent_daemon import CANARIES
from tests.unit.test_agent_support import Site, deploy
from tests.unit.test_gateway_support import decisions, make_trust, running_gateway, upstream_stub
from tests.unit.test_gateway_support import run as arun


@pytest.fixture
def site(keys: Keys, build: BuildFn, tmp_path: Path) -> Site:
    return deploy(keys, build, tmp_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("agent-pki")
    init_ca(base / "ca")
    issue(base / "ca", "gw", "service", base / "gateway", hosts=["127.0.0.1"])
    issue(base / "ca", "host1-agent", "service", base / "agent", hosts=["127.0.0.1"])
    issue(base / "ca", "alice", "user", base / "alice")
    issue(base / "ca", "auditor", "auditor", base / "auditor")
    init_ca(base / "other", "another CA")
    issue(base / "other", "gw", "service", base / "impostor", hosts=["127.0.0.1"])
    return base


def agent_tls(pki: Path, **changes: Path | None) -> AgentTLS:
    files: dict[str, Path | None] = {
        "ca": pki / "ca" / "ca.pem",
        "cert": pki / "agent.pem",
        "key": pki / "agent.key",
        "crl": pki / "ca" / "crl.pem",
    } | changes
    return AgentTLS(**files)  # type: ignore[arg-type]


def gateway_access(pki: Path, name: str = "gateway") -> Access:
    return Access(pki / f"{name}.pem", pki / f"{name}.key", pki / "ca" / "ca.pem", pki / "ca" / "crl.pem")


def test_canaries_go_to_a_mutual_tls_gateway_as_the_agents_certificate(
    site: Site, pki: Path, tmp_path: Path
) -> None:
    trust = make_trust(tmp_path / "gw-trust")
    canaries = tmp_path / "canaries.yaml"
    canaries.write_text(CANARIES)
    log = tmp_path / "gw.log"

    async def scenario() -> tuple[AgentReport, AgentReport, AgentReport]:
        async with (
            upstream_stub() as upstream,
            running_gateway(trust, log, upstream.url, access=gateway_access(pki)) as gw,
        ):
            assert gw.url.startswith("https://127.0.0.1:")
            good = await run_round_once(site.config(gateway=gw.url, canaries=canaries, tls=agent_tls(pki)))
            # The agent without its certificate: every canary is refused (401), never a decision.
            anonymous = await run_round_once(
                site.config(gateway=gw.url, canaries=canaries, tls=agent_tls(pki, cert=None, key=None))
            )
        async with (
            upstream_stub() as upstream,
            running_gateway(
                trust, tmp_path / "gw2.log", upstream.url, access=gateway_access(pki, "impostor")
            ) as gw,
        ):
            impostor = await run_round_once(
                site.config(gateway=gw.url, canaries=canaries, tls=agent_tls(pki))
            )
        return good, anonymous, impostor

    good, anonymous, impostor = arun(scenario())
    assert good.ok and good.results[-1].result == "pass", good.text()
    made = [d for d in decisions(log) if d.get("user") and d["user"]["name"] == "host1-agent"]
    assert sorted(d["decision"] for d in made) == ["allow", "hold", "refuse"]
    assert all(d["user"]["method"] == "mtls" and d["user"]["roles"] == ["service"] for d in made)
    assert anonymous.exit_code == 8
    assert "HTTP 401 authentication_required: the gateway refused the agent's identity" in anonymous.text()
    # A gateway whose certificate is not of the enclave CA is never asked anything.
    assert impostor.exit_code == 8 and "does not verify against the enclave CA" in impostor.text()


def fetch(url: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_metrics_over_tls_to_service_and_auditor_certificates_only(site: Site, pki: Path) -> None:
    ca = pki / "ca" / "ca.pem"

    async def scenario() -> None:
        agent = Agent.prepare(site.config(listen="127.0.0.1:0", tls=agent_tls(pki)))
        await agent.start(once=False)
        try:
            url = await agent.serve_metrics()
            assert url.startswith("https://127.0.0.1:")
            calls = [
                (name, path, await asyncio.to_thread(fetch, url + path, context))
                for name, context in (
                    ("auditor", client_context(ca, pki / "auditor.pem", pki / "auditor.key")),
                    ("agent", client_context(ca, pki / "agent.pem", pki / "agent.key")),
                    ("alice", client_context(ca, pki / "alice.pem", pki / "alice.key")),
                    ("nobody", client_context(ca)),
                )
                for path in ("/metrics", "/healthz")
            ]
            seen = {(name, path): status for name, path, (status, _body) in calls}
            assert seen == {
                ("auditor", "/metrics"): 200,
                ("auditor", "/healthz"): 200,
                ("agent", "/metrics"): 200,
                ("agent", "/healthz"): 200,
                ("alice", "/metrics"): 403,
                ("alice", "/healthz"): 200,
                ("nobody", "/metrics"): 401,
                ("nobody", "/healthz"): 200,  # what a container health check does
            }
            body = next(b for n, p, (_s, b) in calls if (n, p) == ("auditor", "/metrics"))
            assert b"enclave_agent_rounds_total" in body
            # A client of another CA does not get past the handshake.
            stranger = client_context(pki / "other" / "ca.pem")
            with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
                await asyncio.to_thread(fetch, url + "/healthz", stranger)
            plain = url.replace("https://", "http://") + "/healthz"
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.ClientError):  # plain HTTP on the TLS port: dropped
                    async with session.get(plain) as response:
                        pytest.fail(f"plain HTTP on the TLS port answered {response.status}")
        finally:
            await agent.stop()

    arun(scenario())


def test_tls_mistakes_stop_the_agent_at_start(site: Site, pki: Path, tmp_path: Path) -> None:
    canaries = tmp_path / "c.yaml"
    canaries.write_text(CANARIES)
    with pytest.raises(UsageError, match="HTTPS needs --tls-ca"):
        Agent.prepare(site.config(gateway="https://127.0.0.1:1", canaries=canaries))
    with pytest.raises(UsageError, match="--tls-cert and --tls-key go together"):
        Agent.prepare(site.config(tls=agent_tls(pki, key=None)))
    with pytest.raises(UsageError, match="cannot load the certificate and key"):
        Agent.prepare(site.config(tls=agent_tls(pki, key=pki / "alice.key")))
    with pytest.raises(UsageError, match="cannot load the CA certificate"):
        Agent.prepare(site.config(tls=agent_tls(pki, ca=tmp_path / "c.yaml")))
    assert not site.log.exists()
