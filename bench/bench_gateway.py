"""Safety gateway overhead: the same load straight to a model-server stub and through the gateway.

Usage: python3 bench/bench_gateway.py [--concurrency 64] [--requests 20000] [--rate 1000]
                                      [--seconds 5] [--json]

Three processes on 127.0.0.1: a fixed-answer OpenAI-shaped upstream stub, the gateway (the
real `serve()`, default policy, every decision record fsync'd before forwarding), and this
load generator (aiohttp, one connection per client). Two phases, each direct and through:

- saturation: `--concurrency` clients send back to back, `--requests` in total (capped at 60 s):
  the most requests per second, and the latency that queueing at that load costs;
- paced: the same clients share an offered load of `--rate` req/s for `--seconds`: latency at
  a realistic load, where overhead = gateway percentile - direct percentile.

Afterwards the audit log must verify and hold one decision record per gateway request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enclave.runtime.audit import checkpoints_path, verify_log
from tests.unit.test_gateway_support import DEFAULT_POLICY, make_trust

MAX_PHASE_SECONDS = 60.0
BODY = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "Summarise the weather in Paris in spring."}]}
).encode()
STUB_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "stub",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Mild."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
).encode()


# -- the upstream stub: raw asyncio, so that it costs as little CPU as possible --------------------


class _StubProtocol(asyncio.Protocol):
    RESPONSE = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(STUB_BODY)
        + STUB_BODY
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(self.RESPONSE)


async def _stub(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_StubProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# -- load ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{url}: process exited with {proc.returncode}")
            try:
                async with session.post(url + "/v1/chat/completions", data=BODY) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"{url} did not answer within 30 s")


async def drive(
    url: str, concurrency: int, total: int, rate: float | None, seconds: float
) -> dict[str, float]:
    """`concurrency` clients; closed loop when `rate` is None, else paced to `rate` req/s overall."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.monotonic() + (seconds if rate else MAX_PHASE_SECONDS)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(index: int) -> None:
            nonlocal issued, errors
            interval = concurrency / rate if rate else 0.0
            next_at = time.monotonic() + (index * interval / concurrency if rate else 0.0)
            while issued < total and time.monotonic() < deadline:
                if rate:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_at += interval
                issued += 1
                started = time.perf_counter()
                async with session.post(url, data=BODY, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*[client(i) for i in range(concurrency)])
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "mean_ms": 1000 * statistics.fmean(latencies),
    }


async def audit_metrics(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        for name in (
            "enclave_audit_commit_records_sum",
            "enclave_audit_commit_records_count",
            "enclave_audit_commit_duration_seconds_sum",
        ):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20000, help="per saturation run (capped at 60 s)")
    parser.add_argument("--rate", type=float, default=1000.0, help="offered load of the paced phase, req/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the paced phase")
    parser.add_argument(
        "--audit-dir",
        type=Path,
        help="where the audit log goes (default: a fresh temporary directory); /dev/shm shows the "
        "cost of the proxy alone, since fdatasync on tmpfs is free (and not durable)",
    )
    parser.add_argument("--json", action="store_true")

    parser.add_argument("--stub", type=int, help=argparse.SUPPRESS)  # internal: run the upstream stub
    args = parser.parse_args()
    if args.stub:
        asyncio.run(_stub(args.stub))
        return
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as scratch:
        results = asyncio.run(run(args, Path(scratch)))
    if args.json:
        print(json.dumps(results, indent=2))


async def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    trust = make_trust(scratch / "trust")
    log = (args.audit_dir or scratch) / f"bench-audit-{os.getpid()}.log"
    stub_port, gateway_port = free_port(), free_port()
    stub = subprocess.Popen([sys.executable, __file__, "--stub", str(stub_port)])
    code = (
        "import sys; from pathlib import Path; from enclave.runtime.gateway import serve; "
        "a = sys.argv; serve(Path(a[1]), a[2], Path(a[3]), Path(a[4]), Path(a[5]), a[6])"
    )
    gateway = subprocess.Popen(
        [sys.executable, "-c", code, str(DEFAULT_POLICY), f"http://127.0.0.1:{stub_port}", str(log),
         str(trust.audit_path), str(trust.root), f"127.0.0.1:{gateway_port}"],
        cwd=Path(__file__).resolve().parents[1],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    direct = f"http://127.0.0.1:{stub_port}"
    through = f"http://127.0.0.1:{gateway_port}"
    try:
        await wait_ready(direct, stub)
        await wait_ready(through, gateway)
        results: dict[str, Any] = {"cpus": os.cpu_count(), "concurrency": args.concurrency}
        for phase, rate in (("saturation", None), ("paced", args.rate)):
            for name, base in (("direct", direct), ("gateway", through)):
                await drive(base + "/v1/chat/completions", args.concurrency, 500, None, 5)  # warm-up
                results[f"{phase}_{name}"] = await drive(
                    base + "/v1/chat/completions", args.concurrency, args.requests, rate, args.seconds
                )
        results["audit"] = await audit_metrics(through)
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
        stub.kill()
        stub.wait()
    try:
        report = verify_log(log, trust.root)
    finally:
        if args.audit_dir:
            for path in (log, checkpoints_path(log)):
                path.unlink(missing_ok=True)
    results["audit_dir"] = str(log.parent)
    sent_through = 1 + sum(results[f"{p}_gateway"]["requests"] + 500 for p in ("saturation", "paced"))
    allowed = report.decisions.get("allow", 0)
    results["durable"] = {
        "decision_records": allowed,
        "gateway_requests": sent_through,
        "log_verifies": report.ok,
    }
    if not args.json:
        print_table(results)
    if allowed != sent_through:
        raise SystemExit(f"audit log holds {allowed} decisions for {sent_through} requests")
    return results


def print_table(r: dict[str, Any]) -> None:
    print(f"gateway overhead, {r['concurrency']} concurrent clients, {r['cpus']} CPUs, all on 127.0.0.1")
    print(f"{'':34}{'direct':>10}{'gateway':>10}{'overhead':>10}")
    for phase in ("saturation", "paced"):
        d, g = r[f"{phase}_direct"], r[f"{phase}_gateway"]
        label = (
            "saturation" if phase == "saturation" else f"paced at {g['requests'] / g['seconds']:.0f} req/s"
        )
        print(f"{label + ': requests/s':34}{d['rps']:>10.0f}{g['rps']:>10.0f}")
        for key in ("p50_ms", "p99_ms"):
            name = f"{label}: {key.replace('_ms', '')} latency ms"
            print(f"{name:34}{d[key]:>10.2f}{g[key]:>10.2f}{g[key] - d[key]:>+10.2f}")
    audit = r["audit"]
    commits = audit.get("enclave_audit_commit_records_count", 0)
    if commits:
        per = audit["enclave_audit_commit_records_sum"] / commits
        sync_ms = 1000 * audit["enclave_audit_commit_duration_seconds_sum"] / commits
        print(f"audit: {commits:.0f} group commits, {per:.1f} records each, {sync_ms:.2f} ms each")
    print(f"audit log in {r['audit_dir']}")
    durable = r["durable"]
    print(
        f"durable: {durable['decision_records']} decision records for {durable['gateway_requests']} gateway "
        f"requests; log verifies: {durable['log_verifies']}"
    )


if __name__ == "__main__":
    main()
