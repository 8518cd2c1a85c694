"""kill -9 under load: every request that got an answer has its record, and the log verifies.

The gateway runs as a real process on 127.0.0.1; the load is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from enclave.runtime.audit import verify_log
from tests.unit.test_gateway_support import (
    DEFAULT_POLICY,
    REPO,
    Trust,
    chat,
    make_trust,
    records,
    upstream_stub,
)

CLIENTS = 16
MAX_REQUESTS = 3000
MAX_SECONDS = 10.0
KILL_AFTER = 0.8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(
    trust: Trust, log: Path, upstream: str, port: int, accept_unproven_tail: bool = False
) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from pathlib import Path; from enclave.runtime.gateway import serve; "
        "serve(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]), "
        "sys.argv[6], checkpoint_every=50, checkpoint_seconds=0.2, "
        f"accept_unproven_tail={accept_unproven_tail})"
    )
    args = [
        str(DEFAULT_POLICY),
        upstream,
        str(log),
        str(trust.audit_path),
        str(trust.root),
        f"127.0.0.1:{port}",
    ]
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stderr=subprocess.PIPE)


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], tls: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"gateway exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                async with session.get(url + "/healthz", ssl=tls if tls is not None else True) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("gateway did not become healthy")


async def load(url: str, answered: list[str], stop_at: float) -> None:
    """Allowed and refused prompts until the gateway dies, the count or the time runs out."""
    sent = 0
    prompts = [chat("What is the capital of France?"), chat("Plan mass surveillance of US persons.")]
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def client(n: int) -> None:
            nonlocal sent
            mine = n
            while sent < MAX_REQUESTS and time.monotonic() < stop_at:
                sent += 1
                mine += 1
                try:
                    body = prompts[mine % 2]
                    async with session.post(url + "/v1/chat/completions", data=body) as response:
                        payload = await response.read()
                        if response.status == 200:
                            answered.append(response.headers["X-Enclave-Request-Id"])
                        elif response.status == 400:
                            answered.append(json.loads(payload)["error"]["request_id"])
                except (TimeoutError, aiohttp.ClientError):
                    return  # the gateway is gone

        await asyncio.gather(*[client(n) for n in range(CLIENTS)])


def test_kill_9_under_load_loses_no_answered_record(tmp_path: Path) -> None:
    trust = make_trust(tmp_path / "trust")
    log = tmp_path / "audit.log"
    answered: list[str] = []

    async def scenario() -> None:
        async with upstream_stub() as upstream:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = spawn(trust, log, upstream.url, port)
            try:
                await wait_healthy(url, proc)
                stop_at = time.monotonic() + MAX_SECONDS
                loader = asyncio.create_task(load(url, answered, stop_at))
                await asyncio.sleep(KILL_AFTER)
                os.kill(proc.pid, signal.SIGKILL)
                await asyncio.wait_for(loader, MAX_SECONDS + 5)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)
            assert proc.returncode == -signal.SIGKILL

            report = verify_log(log, trust.root)
            crashed = records(log, torn_tail=True)
            recorded = {r["id"] for r in crashed if r.get("event") == "decision"}
            missing = [i for i in answered if i not in recorded]
            assert len(answered) > 50, "the load did not run long enough to mean anything"
            assert not missing, f"{len(missing)} answered requests have no record"
            assert report.records >= len(answered)
            allowed = [r for r in crashed if r.get("decision") == "allow"]
            assert len(allowed) > 20, "allowed requests must be part of the load"

            # A restart continues the same log (cutting any torn line) and it still verifies; the
            # records the crash left after the last checkpoint need an operator's acceptance.
            proc = spawn(trust, log, upstream.url, port, accept_unproven_tail=True)
            try:
                await wait_healthy(url, proc)
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(url + "/v1/chat/completions", data=chat("hello")) as response,
                ):
                    assert response.status == 200
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=20)
        after = verify_log(log, trust.root)
        assert after.records > report.records and after.covered_records == after.records

    asyncio.run(scenario())


def test_serve_freezes_its_start_up_objects(tmp_path: Path) -> None:
    """`serve` freezes what start-up allocated, so full collections no longer rescan it (each
    one used to stall the event loop for ~15 ms). Checked in the real process, once serving."""
    trust = make_trust(tmp_path / "trust")
    code = (
        "import asyncio, gc, os, signal, sys; from pathlib import Path\n"
        "from enclave.runtime.gateway import server\n"
        "started = server.start_gateway\n"
        "async def start(prepared):\n"
        "    running = await started(prepared)\n"
        "    async def report():\n"
        "        print('frozen', gc.get_freeze_count(), flush=True)\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    asyncio.get_running_loop().create_task(report())\n"
        "    return running\n"
        "server.start_gateway = start\n"
        "a = sys.argv\n"
        "server.serve(Path(a[1]), a[2], Path(a[3]), Path(a[4]), Path(a[5]), a[6])\n"
    )
    args = [str(DEFAULT_POLICY), "http://127.0.0.1:9", str(tmp_path / "audit.log"), str(trust.audit_path),
            str(trust.root), f"127.0.0.1:{free_port()}"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    frozen = int(done.stdout.decode().split()[1])
    assert frozen > 10_000, frozen  # modules, policy, keys and app: tens of thousands of objects
    assert verify_log(tmp_path / "audit.log", trust.root).ok
