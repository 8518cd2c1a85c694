"""Held requests survive a restart: kill -9 of a real `enclave gateway serve` (mutual TLS), then
every held request is back with its original expiry and its recorded approvals, an approval
after the restart completes it exactly once, and nothing already run is run again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from enclave.errors import PolicyError
from enclave.runtime.audit import verify_log
from enclave.runtime.gateway import approve, requester_headers
from enclave.runtime.gateway.approvals import Held
from enclave.runtime.gateway.inspect import request_hash
from enclave.runtime.gateway.journal import Entry, HeldJournal, resolve
from enclave.runtime.gateway.policy import Rule
from tests.unit.test_gateway_crash import free_port, wait_healthy
from tests.unit.test_gateway_identity import HELD_PROMPT, Pki, make_pki
from tests.unit.test_gateway_support import (
    DEFAULT_POLICY,
    REPO,
    chat,
    decisions,
    records,
    run,
    running_gateway,
    upstream_stub,
)

CHAT = "/v1/chat/completions"


def spawn(pki: Pki, log: Path, upstream: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """The real command line, as an operator runs it."""
    command = [
        sys.executable, "-m", "enclave.cli", "gateway", "serve", "--policy", str(DEFAULT_POLICY),
        "--upstream", upstream, "--audit-log", str(log), "--audit-key", str(pki.trust.audit_path),
        "--trust", str(pki.trust.root), "--listen", f"127.0.0.1:{port}",
        "--tls-cert", str(pki.dir / "gateway.pem"), "--tls-key", str(pki.dir / "gateway.key"),
        "--client-ca", str(pki.ca_pem), "--crl", str(pki.ca / "crl.pem"), *extra,
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE)


async def as_user(pki: Pki, method: str, url: str, name: str = "alice", body: bytes | None = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=body, ssl=pki.context(name)) as response,
    ):
        return response.status, await response.json()


async def approve_as(pki: Pki, index: int, request_id: str, url: str) -> dict[str, Any]:
    with pki.as_approver(f"approver{index}"):
        return await asyncio.to_thread(approve, request_id, pki.trust.key_path(index), url)


def stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(timeout=30)


def test_kill_9_with_held_requests_restores_them_and_runs_each_once(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    log = tmp_path / "audit.log"

    async def scenario() -> None:
        async with upstream_stub() as upstream:
            port = free_port()
            url = f"https://127.0.0.1:{port}"
            proc = spawn(pki, log, upstream.url, port)
            try:
                await wait_healthy(url, proc, pki.context(None))
                held: list[dict[str, Any]] = []
                for n in range(3):
                    status, answer = await as_user(pki, "POST", url + CHAT, body=chat(f"{HELD_PROMPT} #{n}"))
                    assert status == 202, answer
                    held.append(answer)
                ids = [h["id"] for h in held]
                await approve_as(pki, 1, ids[0], url)  # one of two approvals, then the crash
                await approve_as(pki, 1, ids[2], url)
                done = await approve_as(pki, 2, ids[2], url)  # run before the crash
                assert done["status"] == "completed" and upstream.count == 1
            finally:
                stop(proc, signal.SIGKILL)
            assert proc.returncode == -signal.SIGKILL

            proc = spawn(pki, log, upstream.url, port, "--accept-unproven-tail")
            try:
                await wait_healthy(url, proc, pki.context(None))
                for index in (0, 1):
                    status, shown = await as_user(pki, "GET", f"{url}/v1/held/{ids[index]}")
                    assert status == 200 and shown["status"] == "pending"
                    assert shown["expires_at"] == held[index]["expires_at"]  # the original expiry
                    assert shown["user"]["name"] == "alice"
                _, first = await as_user(pki, "GET", f"{url}/v1/held/{ids[0]}")
                assert first["approvals"] == [pki.trust.approvers[1].keyid]
                status, _ = await as_user(pki, "GET", f"{url}/v1/held/{ids[2]}")
                assert status == 404  # it ran before the crash: not brought back
                done = await approve_as(pki, 2, ids[0], url)  # the second approval, after the restart
                assert done["status"] == "completed" and done["result"]["status"] == 200
                with pytest.raises(PolicyError, match="completed"):
                    await approve_as(pki, 0, ids[0], url)
            finally:
                stop(proc, signal.SIGTERM)
            assert proc.returncode == 0

            proc = spawn(pki, log, upstream.url, port)  # a clean stop needs no acceptance
            try:
                await wait_healthy(url, proc, pki.context(None))
                status, shown = await as_user(pki, "GET", f"{url}/v1/held/{ids[1]}")
                assert status == 200 and shown["status"] == "pending"
                assert shown["expires_at"] == held[1]["expires_at"]
                status, _ = await as_user(pki, "GET", f"{url}/v1/held/{ids[0]}")
                assert status == 404
            finally:
                stop(proc, signal.SIGTERM)

            bodies = [json.dumps(s["body"]) for s in upstream.seen]
            assert upstream.count == 2
            for index in (0, 2):  # each approved request reached the model exactly once
                assert sum(f"#{index}" in b for b in bodies) == 1
        assert verify_log(log, pki.trust.root).ok
        approved = [d["id"] for d in decisions(log) if d["decision"] == "approve"]
        assert sorted(approved) == sorted([ids[0], ids[2]])
        restored = [r for r in records(log) if r["event"] == "held-restored"]
        assert [sorted(x["id"] for x in r["restored"]) for r in restored] == [sorted(ids[:2]), [ids[1]]]
        assert [f.name for f in log.with_name("audit.log.held").iterdir()] == [f"{ids[1]}.json"]

    run(scenario())


def test_an_approval_recorded_before_a_stop_is_acted_on_once_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last approval was recorded, but the gateway stopped before it ran the request: the
    next start runs it, once (legacy mode: requester tokens, plain HTTP)."""
    pki = make_pki(tmp_path / "pki")
    log = tmp_path / "audit.log"
    from enclave.runtime.gateway.app import Gateway

    async def scenario() -> None:
        async with upstream_stub() as upstream:
            original = Gateway._execute

            async def stopped_before_running(self: Gateway, held: Held) -> Any:
                from aiohttp import web

                return web.json_response({"status": "stopped"}, status=503)

            monkeypatch.setattr(Gateway, "_execute", stopped_before_running)
            async with running_gateway(pki.trust, log, upstream.url) as gw:
                body = chat(HELD_PROMPT)
                headers = requester_headers(pki.trust.approvers[0], "POST", CHAT, body)
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(gw.url + CHAT, data=body, headers=headers) as response,
                ):
                    request_id = (await response.json())["id"]
                await asyncio.to_thread(approve, request_id, pki.trust.key_path(1), gw.url)
                with pytest.raises(PolicyError):
                    await asyncio.to_thread(approve, request_id, pki.trust.key_path(2), gw.url)
            monkeypatch.setattr(Gateway, "_execute", original)
            assert upstream.count == 0
            async with running_gateway(pki.trust, log, upstream.url):
                for _ in range(100):
                    if upstream.count:
                        break
                    await asyncio.sleep(0.05)
            async with running_gateway(pki.trust, log, upstream.url):
                await asyncio.sleep(0.1)
            assert upstream.count == 1
        assert [d["decision"] for d in decisions(log) if d["id"] == request_id] == ["hold", "approve"]

    run(scenario())


def _entry(request_id: str, body: bytes = b'{"messages":[]}') -> Entry:
    held = Held(
        request_id, request_hash("POST", CHAT, body), "POST", CHAT, body,
        Rule("hold.targeting", "hold", "targeting", (), None, 2), 2, None, 1.0, 901.0,
    )  # fmt: skip
    return Entry.of(held, "127.0.0.1:1")


def _log(path: Path, lines: Sequence[dict[str, Any]]) -> Path:
    prev = "0" * 64
    with path.open("w") as out:
        for seq, fields in enumerate(lines):
            record = {"v": 1, "seq": seq, "prev": prev, "time": "t", **fields}
            out.write(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")  # as the writer
    return path


def test_the_log_decides_what_the_journal_brings_back(tmp_path: Path) -> None:
    ids = [f"req-{n:032x}" for n in range(5)]
    entries = [_entry(i) for i in ids]
    hashes = [e.request_hash for e in entries]
    log = _log(
        tmp_path / "audit.log",
        [
            {"event": "decision", "id": ids[0], "decision": "hold", "request_hash": hashes[0]},
            {"event": "decision", "id": ids[1], "decision": "hold", "request_hash": hashes[1]},
            {"event": "approval", "id": ids[1], "approver": "k", "decision": "approve"},
            {"event": "decision", "id": ids[2], "decision": "hold", "request_hash": hashes[2]},
            {"event": "decision", "id": ids[2], "decision": "approve", "request_hash": hashes[2]},
            {"event": "decision", "id": ids[3], "decision": "hold", "request_hash": "sha256:other"},
        ],
    )
    result = resolve(entries, log)
    assert [(e.id, len(a)) for e, a in result.restore] == [(ids[0], 0), (ids[1], 1)]
    assert dict(result.discard) == {
        ids[2]: "already decided (approve)",
        ids[3]: "the journalled request's hash differs from the hold record's",
        ids[4]: "no hold record: the gateway stopped before the hold was recorded",
    }


def test_the_journal_keeps_bodies_private_and_refuses_tampered_ones(tmp_path: Path) -> None:
    journal = HeldJournal(tmp_path / "held")
    entry = _entry("req-" + "a" * 32)
    journal.write(entry)
    assert (tmp_path / "held").stat().st_mode & 0o777 == 0o700
    path = tmp_path / "held" / f"{entry.id}.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert journal.load() == ([entry], [])
    doc = json.loads(path.read_bytes())
    doc["body_b64"] = "e30="  # "{}": other bytes than the hash names
    path.write_text(json.dumps(doc))
    loaded, bad = journal.load()
    assert loaded == [] and bad == [(path.name, "the stored request bytes do not match its hash")]
    journal.remove(entry.id)
    assert not path.exists()
