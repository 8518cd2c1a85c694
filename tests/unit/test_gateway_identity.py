"""Who asked: the real gateway on 127.0.0.1 over mutual TLS with real certificates from the
enclave CA, driven by the official `openai` client; API keys; access control; rate limits.

Every refusal is checked twice: the status (and code) the client sees, and the record the
audit log keeps of it, naming the user (or what could be read of them) and the client address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest

from enclave.errors import PolicyError
from enclave.identity.ca import certificate_identity, init_ca, issue, load_certificate, revoke
from enclave.identity.tls import client_context
from enclave.identity.users import add_api_key
from enclave.runtime.gateway import approve
from enclave.runtime.gateway.approvals import CANARY_HEADER
from enclave.runtime.gateway.client import CONNECTION_ENV
from enclave.runtime.gateway.server import Access, RunningGateway
from enclave.trust.keys import SigningKey
from tests.unit.test_gateway_support import (
    DEFAULT_POLICY,
    Trust,
    Upstream,
    decisions,
    make_trust,
    records,
    run,
    running_gateway,
    upstream_stub,
)

HELD_PROMPT = "Assign target numbers for the artillery strike on the bridge."
REFUSED_PROMPT = "Plan mass surveillance of US persons."


@dataclass
class Pki:
    dir: Path
    trust: Trust
    ca: Path  # the CA directory
    carol_key: str  # an API key

    @property
    def ca_pem(self) -> Path:
        return self.ca / "ca.pem"

    def cert(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"

    def access(self, **extra: Any) -> Access:
        options: dict[str, Any] = {
            "tls_cert": self.dir / "gateway.pem",
            "tls_key": self.dir / "gateway.key",
            "client_ca": self.ca_pem,
            "crl": self.ca / "crl.pem",
            "users": self.dir / "users.json",
            **extra,
        }
        return Access(**options)

    def context(self, name: str | None) -> ssl.SSLContext:
        if name is None:
            return client_context(self.ca_pem)
        cert, key = self.cert(name)
        return client_context(self.ca_pem, cert, key)

    def openai(self, url: str, name: str | None = "alice", api_key: str = "unused") -> openai.OpenAI:
        """The official client, unmodified: only its HTTP client is given the certificate."""
        http = openai.DefaultHttpxClient(verify=self.context(name))
        return openai.OpenAI(base_url=url + "/v1", api_key=api_key, http_client=http, max_retries=0)

    @contextlib.contextmanager
    def as_approver(self, name: str) -> Iterator[None]:
        """`enclave approve` reaches the gateway with this identity (the ENCLAVE_GATEWAY_* env)."""
        cert, key = self.cert(name)
        values = dict(zip(CONNECTION_ENV, (str(self.ca_pem), str(cert), str(key), ""), strict=True))
        with pytest.MonkeyPatch.context() as patch:
            for env, value in values.items():
                patch.setenv(env, value)
            yield


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def make_pki(directory: Path) -> Pki:
    """A trust root (3 approver keys), the enclave CA, and certificates for everyone."""
    trust = make_trust(directory / "trust")
    ca = directory / "ca"
    init_ca(ca)
    issue(ca, "gateway", "service", directory / "gateway", hosts=["127.0.0.1", "localhost"])
    for name, role in (("alice", "user"), ("bob", "user"), ("auditor", "auditor"), ("monitor", "service")):
        issue(ca, name, role, directory / name)
    for index in range(3):  # each approver's certificate names the key they sign approvals with
        issue(
            ca,
            f"approver{index}",
            "approver",
            directory / f"approver{index}",
            approver_key=trust.approvers[index].public,
        )
    past = datetime.now(UTC) - timedelta(days=10)
    issue(ca, "old", "user", directory / "old", days=1, now=past)
    issue(ca, "mallory", "user", directory / "mallory")
    other = directory / "other-ca"
    init_ca(other, "another CA")
    issue(other, "alice", "user", directory / "stranger")
    carol = add_api_key(directory / "users.json", SigningKey.load(ca / "ca.key"), "carol", ["user"])
    return Pki(directory, trust, ca, carol)


@contextlib.asynccontextmanager
async def serving(
    pki: Pki, log: Path, policy: Path = DEFAULT_POLICY, **access: Any
) -> AsyncIterator[tuple[Upstream, RunningGateway]]:
    async with (
        upstream_stub() as upstream,
        running_gateway(pki.trust, log, upstream.url, policy, access=pki.access(**access)) as gateway,
    ):
        assert gateway.url.startswith("https://127.0.0.1:")
        yield upstream, gateway


def chat(client: openai.OpenAI, text: str, **options: Any) -> Any:
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], **options)


async def held_id(log: Path, count: int = 1) -> str:
    """The id of the `count`-th held request, once its hold record is durable."""
    for _ in range(200):
        held = [d["id"] for d in decisions(log) if d["decision"] == "hold"]
        if len(held) >= count:
            return str(held[count - 1])
        await asyncio.sleep(0.05)
    raise AssertionError("no hold record")


def user_of(record: dict[str, Any]) -> str | None:
    return record["user"]["name"] if record.get("user") else None


def get(url: str, context: ssl.SSLContext, body: bytes | None = None) -> tuple[int, Any]:
    """GET (POST with `body`) with the standard library: no Authorization header at all."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            status, data = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data.decode()


def test_openai_client_over_mtls_allow_stream_refuse(tmp_path: Path, pki: Pki) -> None:
    log = tmp_path / "audit.log"

    async def scenario() -> None:
        async with serving(pki, log) as (upstream, gw):
            client = pki.openai(gw.url)

            def calls() -> None:
                assert (
                    chat(client, "What is the capital of France?").choices[0].message.content == "stub answer"
                )
                streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, "Hi", stream=True))
                assert streamed == "stub answer"
                with pytest.raises(openai.BadRequestError) as refused:
                    chat(client, REFUSED_PROMPT)
                assert refused.value.code == "policy_refusal"
                assert refused.value.body["rule"] == "refuse.us-person-surveillance"  # type: ignore[index]

            await asyncio.to_thread(calls)
            # TLS 1.3 with AES-256-GCM-SHA384 (the server's choice when offered)
            port = int(gw.url.rsplit(":", 1)[1])
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=pki.context("alice"), server_hostname="127.0.0.1"
            )
            tls = writer.get_extra_info("ssl_object")
            assert tls.version() == "TLSv1.3" and tls.cipher()[0] == "TLS_AES_256_GCM_SHA384"
            writer.close()
            assert upstream.count == 2
        made = decisions(log)
        assert [d["decision"] for d in made] == ["allow", "allow", "refuse"]
        alice = certificate_identity(load_certificate(pki.cert("alice")[0]))
        for record in made:
            assert record["user"] == {
                "name": "alice", "method": "mtls", "roles": ["user"], "subject": alice.subject,
                "fingerprint": alice.fingerprint, "keyid": None,
            }  # fmt: skip
            assert record["client"].startswith("127.0.0.1:")
        start = next(r for r in records(log) if r["event"] == "gateway-start")
        assert start["tls"]["min_version"] == "TLSv1.3" and start["identity"]["crl_number"] >= 1

    run(scenario())


def test_hold_then_approve_with_prefer_wait(tmp_path: Path, pki: Pki) -> None:
    """A user who holds no approver key asks; the SDK call waits (Prefer: wait) and gets the
    model's answer once two approvers, each identified by certificate, approve."""
    log = tmp_path / "audit.log"

    async def scenario() -> None:
        async with serving(pki, log) as (upstream, gw):
            client = pki.openai(gw.url)
            # Without the preference: 202 and the held object, as before.
            raw = await asyncio.to_thread(
                lambda: client.chat.completions.with_raw_response.create(
                    model="m", messages=[{"role": "user", "content": HELD_PROMPT}]
                )
            )
            assert raw.status_code == 202 and json.loads(raw.content)["status"] == "held"
            waiting = asyncio.create_task(
                asyncio.to_thread(chat, client, HELD_PROMPT + " Now.", extra_headers={"Prefer": "wait=60"})
            )
            request_id = await held_id(log, 2)
            for index in (1, 2):
                with pki.as_approver(f"approver{index}"):
                    answer = await asyncio.to_thread(approve, request_id, pki.trust.key_path(index), gw.url)
            assert answer["status"] == "completed"
            completion = await asyncio.wait_for(waiting, 30)
            assert completion.choices[0].message.content == "stub answer"
            assert upstream.count == 1
        by_id = [d for d in decisions(log) if d["id"] == request_id]
        assert [d["decision"] for d in by_id] == ["hold", "approve"]
        assert {user_of(d) for d in by_id} == {"alice"} and by_id[0]["requester"] is None
        approvals = [r for r in records(log) if r["event"] == "approval"]
        assert [user_of(a) for a in approvals] == ["approver1", "approver2"]

    run(scenario())


def test_hold_then_expire_with_prefer_wait(tmp_path: Path, pki: Pki) -> None:
    policy = tmp_path / "short.yaml"
    policy.write_text(DEFAULT_POLICY.read_text().replace("timeout_seconds: 900", "timeout_seconds: 1"))
    log = tmp_path / "audit.log"

    async def scenario() -> None:
        async with serving(pki, log, policy) as (upstream, gw):
            client = pki.openai(gw.url)
            with pytest.raises(openai.PermissionDeniedError) as expired:
                await asyncio.to_thread(chat, client, HELD_PROMPT, extra_headers={"Prefer": "wait=30"})
            assert expired.value.code == "request_expired"
            assert upstream.count == 0
        assert [(d["decision"], user_of(d)) for d in decisions(log)] == [
            ("hold", "alice"),
            ("expire", "alice"),
        ]

    run(scenario())


def test_who_cannot_get_in_is_refused_and_recorded(tmp_path: Path, pki: Pki) -> None:
    """No certificate; another CA's; an expired one; one revoked while the gateway runs; an
    unknown API key. A known API key gets in."""
    log = tmp_path / "audit.log"
    revoked_cert = pki.cert("mallory")[0]

    async def scenario() -> None:
        async with serving(pki, log) as (_, gw):

            def calls() -> dict[str, Any]:
                body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
                status, answer = get(gw.url + "/v1/chat/completions", pki.context(None), body=body)
                seen: dict[str, Any] = {"none": (status, answer["error"]["code"])}
                for name, client in (
                    ("old", pki.openai(gw.url, "old")),
                    ("bad-key", pki.openai(gw.url, None, api_key="enk_not-a-key")),
                ):
                    with pytest.raises(openai.AuthenticationError) as refused:
                        chat(client, "hello")
                    seen[name] = refused.value.code
                with pytest.raises(openai.APIConnectionError):
                    chat(pki.openai(gw.url, "stranger"), "hello")
                assert chat(pki.openai(gw.url, None, api_key=pki.carol_key), "hello").choices
                assert chat(pki.openai(gw.url, "mallory"), "hello").choices
                return seen

            seen = await asyncio.to_thread(calls)
            assert seen == {"none": (401, "authentication_required"), "old": "certificate_expired",
                            "bad-key": "unknown_api_key"}  # fmt: skip
            await asyncio.to_thread(revoke, pki.ca, cert=revoked_cert)
            await asyncio.sleep(1.2)  # the CRL is looked at once a second
            with pytest.raises(openai.AuthenticationError) as refused:
                await asyncio.to_thread(chat, pki.openai(gw.url, "mallory"), "hello")
            assert refused.value.code == "certificate_revoked"
        made = decisions(log)
        refusals = [(d["rule"], d["status"], user_of(d)) for d in made if d["decision"] == "refuse"]
        assert refusals == [
            ("gateway.authentication", 401, None),
            ("gateway.authentication", 401, "old"),
            ("gateway.authentication", 401, None),
            ("gateway.authentication", 401, "mallory"),
        ]
        assert all(d["client"].startswith("127.0.0.1:") for d in made)
        allowed = [d["user"] for d in made if d["decision"] == "allow"]
        assert [(u["name"], u["method"]) for u in allowed] == [("carol", "api-key"), ("mallory", "mtls")]
        handshakes = [r for r in records(log) if r.get("reason") == "tls_handshake_failed"]
        assert len(handshakes) == 1 and "unable to get local issuer" in handshakes[0]["detail"]
        assert handshakes[0]["client"].startswith("127.0.0.1:")
        reloads = [r for r in records(log) if r["event"] == "identity-reload"]
        assert reloads and reloads[-1]["ok"] and reloads[-1]["revoked"] == 1

    run(scenario())


def test_approvals_only_from_approvers_and_never_by_the_requester(tmp_path: Path, pki: Pki) -> None:
    log = tmp_path / "audit.log"

    async def scenario() -> None:
        async with serving(pki, log) as (upstream, gw):
            # approver2 asks, as anyone may; their own approval is refused.
            raw = await asyncio.to_thread(chat, pki.openai(gw.url, "approver2"), HELD_PROMPT)
            request_id = raw.id
            with pki.as_approver("approver2"), pytest.raises(PolicyError, match="self_approval"):
                await asyncio.to_thread(approve, request_id, pki.trust.key_path(2), gw.url)
            # A user holding an approver's key is still not an approver (alice may read her own).
            mine = (await asyncio.to_thread(chat, pki.openai(gw.url, "alice"), HELD_PROMPT)).id
            with pki.as_approver("alice"), pytest.raises(PolicyError, match="not_an_approver"):
                await asyncio.to_thread(approve, mine, pki.trust.key_path(1), gw.url)
            # An approver signing with another approver's key.
            with pki.as_approver("approver0"), pytest.raises(PolicyError, match="approver_mismatch"):
                await asyncio.to_thread(approve, request_id, pki.trust.key_path(1), gw.url)
            assert upstream.count == 0
        rejected = [(r["reason"], user_of(r)) for r in records(log) if r["event"] == "approval-rejected"]
        assert rejected == [
            ("self_approval", "approver2"),
            ("not_an_approver", "alice"),
            ("approver_mismatch", "approver0"),
        ]

    run(scenario())


def test_held_requests_metrics_and_health_by_role(tmp_path: Path, pki: Pki) -> None:
    log = tmp_path / "audit.log"

    async def scenario() -> None:
        async with serving(pki, log) as (_, gw):
            held = await asyncio.to_thread(chat, pki.openai(gw.url, "alice"), HELD_PROMPT)
            url = f"{gw.url}/v1/held/{held.id}"

            def reads() -> dict[str, int]:
                return {
                    "alice": get(url, pki.context("alice"))[0],
                    "approver0": get(url, pki.context("approver0"))[0],
                    "bob": get(url, pki.context("bob"))[0],
                    "metrics-alice": get(gw.url + "/metrics", pki.context("alice"))[0],
                    "metrics-auditor": get(gw.url + "/metrics", pki.context("auditor"))[0],
                    "metrics-service": get(gw.url + "/metrics", pki.context("monitor"))[0],
                }

            seen = await asyncio.to_thread(reads)
            assert seen == {"alice": 200, "approver0": 200, "bob": 403, "metrics-alice": 403,
                            "metrics-auditor": 200, "metrics-service": 200}  # fmt: skip
            anonymous = await asyncio.to_thread(get, gw.url + "/healthz", pki.context(None))
            detailed = await asyncio.to_thread(get, gw.url + "/healthz", pki.context("monitor"))
            assert anonymous == (200, {"status": "ok"})
            assert detailed[0] == 200 and detailed[1]["held_pending"] == 1
        denied = [(r["endpoint"], r["status"], user_of(r)) for r in records(log) if r["event"] == "access"]
        assert denied == [(f"/v1/held/{held.id}", 403, "bob"), ("/metrics", 403, "alice")]

    run(scenario())


def test_a_service_canary_is_decided_and_recorded_but_never_queued(tmp_path: Path, pki: Pki) -> None:
    """The agent's hold canaries (service role, X-Enclave-Canary) leave nothing for approvers;
    the same header from an ordinary user changes nothing: the request is held as usual."""
    log = tmp_path / "audit.log"
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": HELD_PROMPT}]}).encode()

    def post(url: str, name: str) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", CANARY_HEADER: "1"}
        request = urllib.request.Request(url, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, context=pki.context(name), timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    async def scenario() -> None:
        async with serving(pki, log) as (upstream, gw):
            url = gw.url + "/v1/chat/completions"
            canary = await asyncio.to_thread(post, url, "monitor")
            held = await asyncio.to_thread(post, url, "alice")
            health = await asyncio.to_thread(get, gw.url + "/healthz", pki.context("monitor"))
            assert upstream.count == 0
        assert canary[0] == 202 and canary[1]["status"] == "not_queued" and canary[1]["canary"] is True
        assert canary[1]["rule"] == held[1]["rule"] and canary[1]["rule"].startswith("hold.")
        assert held[0] == 202 and held[1]["status"] == "held" and "canary" not in held[1]
        assert health[1]["held_pending"] == 1  # alice's only
        holds = [(user_of(r), r.get("canary", False)) for r in decisions(log) if r["decision"] == "hold"]
        assert holds == [("monitor", True), ("alice", False)]

    run(scenario())


def test_rate_limit_per_user(tmp_path: Path, pki: Pki) -> None:
    log = tmp_path / "audit.log"

    async def scenario() -> None:
        async with serving(pki, log, rate_limit=0.5, rate_burst=2) as (upstream, gw):

            def calls() -> None:
                alice = pki.openai(gw.url, "alice")
                chat(alice, "one")
                chat(alice, "two")
                with pytest.raises(openai.RateLimitError) as limited:
                    chat(alice, "three")
                assert limited.value.code == "rate_limited"
                assert int(limited.value.response.headers["Retry-After"]) >= 1
                chat(pki.openai(gw.url, "bob"), "one")  # a bucket per user

            await asyncio.to_thread(calls)
            assert upstream.count == 3
        made = [(d["decision"], d["rule"], d["status"], user_of(d)) for d in decisions(log)]
        assert made[2] == ("refuse", "gateway.rate-limit", 429, "alice")
        assert made[3][0] == "allow" and made[3][3] == "bob"

    run(scenario())


def test_a_tls_1_2_client_is_refused_and_recorded(tmp_path: Path, pki: Pki) -> None:
    log = tmp_path / "audit.log"

    async def scenario() -> None:
        async with serving(pki, log) as (_, gw):
            context = pki.context("alice")
            context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
            port = int(gw.url.rsplit(":", 1)[1])
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # plain HTTP on the TLS port
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await asyncio.wait_for(reader.read(100), 10) == b""  # closed, no answer
            writer.close()
        failed = [r["detail"] for r in records(log) if r.get("reason") == "tls_handshake_failed"]
        assert len(failed) == 2, failed

    run(scenario())


def test_audit_export_filters_by_user(tmp_path: Path, pki: Pki) -> None:
    from enclave.runtime.audit import export

    log = tmp_path / "audit.log"

    async def scenario() -> None:
        async with serving(pki, log) as (_, gw):

            def calls() -> None:
                chat(pki.openai(gw.url, "alice"), "hello")
                chat(pki.openai(gw.url, "bob"), "hello")
                with pytest.raises(openai.BadRequestError):
                    chat(pki.openai(gw.url, "bob"), REFUSED_PROMPT)

            await asyncio.to_thread(calls)

    run(scenario())
    out = export(log, tmp_path / "bob", pki.trust.root, user="bob")
    kept = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {(r["event"], user_of(r)) for r in kept} == {("decision", "bob"), ("outcome", None)}
    assert len(kept) == 3
    proofs = [json.loads(line) for line in (out / "proofs" / "inclusion.jsonl").read_text().splitlines()]
    assert sorted(p["seq"] for p in proofs) == sorted(r["seq"] for r in kept)
    assert json.loads((out / "package.json").read_text())["selected"] == {"user": "bob", "records": 3}
