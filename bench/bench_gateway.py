"""Safety gateway overhead: the same load straight to a model-server stub and through the gateway.

Usage: python3 bench/bench_gateway.py [--concurrency 64] [--requests 20000] [--rate 1000]
                                      [--seconds 5] [--litellm PATH | --no-litellm] [--json]

Three processes on 127.0.0.1: a fixed-answer OpenAI-shaped upstream stub, the gateway (the
real `serve()`, default policy, every decision record fsync'd before forwarding), and this
load generator (aiohttp, one connection per client). Two phases, each direct and through:

- saturation: `--concurrency` clients send back to back, `--requests` in total (capped at 60 s):
  the most requests per second, and the latency that queueing at that load costs;
- paced: the same clients share an offered load of `--rate` req/s for `--seconds`: latency at
  a realistic load, where overhead = gateway percentile - direct percentile.

Afterwards the audit log must verify and hold one decision record per gateway request.

For comparison, LiteLLM's proxy goes through the same phases in front of the same stub when
it is installed (in its own virtualenv, so that it never touches this project's packages):

    python3 -m venv /var/tmp/litellm-venv && /var/tmp/litellm-venv/bin/pip install 'litellm[proxy]'

`--litellm PATH` names its `litellm` executable (default: that venv's, when present). It runs
with one worker, no database, no callbacks, no retries, its model cost map read locally and its
access log off (as the gateway's), behind a guard that refuses every socket connect, send or
name lookup to a non-loopback address (a Python audit hook in its interpreter), so it cannot
reach the network. If it does not start, its row says why and the rest of the bench runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
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
WARM_UP = 500
LITELLM_VENV = Path("/var/tmp/litellm-venv/bin/litellm")
LITELLM_START_SECONDS = 120.0
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


async def wait_ready(
    url: str, proc: subprocess.Popen[bytes], seconds: float = 30, headers: dict[str, str] | None = None
) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{url}: process exited with {proc.returncode}")
            try:
                async with session.post(url + "/v1/chat/completions", data=BODY, headers=headers) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {seconds:.0f} s")


async def drive(
    url: str,
    concurrency: int,
    total: int,
    rate: float | None,
    seconds: float,
    extra_headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """`concurrency` clients; closed loop when `rate` is None, else paced to `rate` req/s overall."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.monotonic() + (seconds if rate else MAX_PHASE_SECONDS)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {"Content-Type": "application/json", **(extra_headers or {})}
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
            'enclave_audit_commit_duration_seconds_bucket{le="0.01"}',
        ):
            if line.startswith(name + " "):
                values[name.partition("{")[0] + ("_le_10ms" if "{" in name else "")] = float(line.split()[1])
    return values


# -- LiteLLM's proxy, for comparison ---------------------------------------------------------------

# Only loopback exists in the network namespace the bench re-runs itself in when LiteLLM takes
# part: whatever LiteLLM might try to reach beyond 127.0.0.1 (uvloop and native resolvers
# included), the kernel has no route to it.
ISOLATED_ENV = "ENCLAVE_BENCH_LOOPBACK_ONLY"
_UNSHARE = ("unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh")


def isolate(argv: list[str]) -> str | None:
    """Re-run this bench in a loopback-only network namespace; returns only on failure, with why."""
    try:
        probe = subprocess.run([*_UNSHARE, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a loopback-only network namespace: {exc}"
    if probe.returncode != 0:
        detail = probe.stderr.decode(errors="replace").strip().splitlines()
        return (
            f"cannot create a loopback-only network namespace: {detail[-1] if detail else probe.returncode}"
        )
    sys.stdout.flush()
    os.execvpe(_UNSHARE[0], [*_UNSHARE, sys.executable, *argv], {**os.environ, ISOLATED_ENV: "1"})
    return None  # not reached


def litellm_executable(args: argparse.Namespace) -> Path | None:
    if args.no_litellm:
        return None
    if args.litellm is not None:
        return Path(args.litellm)
    return LITELLM_VENV if LITELLM_VENV.exists() else None


class LiteLLM:
    """LiteLLM's proxy (one uvicorn worker) in front of the stub, started from its own venv."""

    def __init__(self, executable: Path, stub_url: str, scratch: Path, workers: int) -> None:
        self.executable = executable
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = "sk-bench-" + secrets.token_hex(24)  # it refuses to start without a master key
        self.headers = {"Authorization": f"Bearer {self.key}"}
        self.dir = scratch / "litellm"
        self.stub_url = stub_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = "unknown"

    def _interpreter(self) -> str:
        """The venv's python, from the console script's #! line (so its packages, not ours)."""
        first = self.executable.read_bytes().split(b"\n", 1)[0]
        if not first.startswith(b"#!") or b"python" not in first:
            raise RuntimeError(f"{self.executable} is not a Python console script")
        return first[2:].decode().strip()

    def start(self) -> None:
        python = self._interpreter()
        self.dir.mkdir()
        found = subprocess.run(
            [python, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        self.version = found.stdout.strip() or "unknown"
        config = {
            "model_list": [
                {
                    "model_name": "m",
                    "litellm_params": {
                        "model": "openai/stub",  # an OpenAI-compatible server at api_base
                        "api_base": self.stub_url + "/v1",
                        "api_key": "sk-stub",
                    },
                }
            ],
            # No callbacks (nothing logged anywhere), no retries: the leanest request path.
            "litellm_settings": {"callbacks": [], "num_retries": 0, "request_timeout": 30},
        }
        (self.dir / "config.yaml").write_text(json.dumps(config, indent=2))  # JSON is YAML
        # uvicorn's access log off, as the gateway's (which has none); warnings still go out.
        logging_config = {
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"uvicorn.access": {"level": "WARNING"}},
        }
        (self.dir / "logging.json").write_text(json.dumps(logging_config))
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("LITELLM_") and "proxy" not in k.lower()
        }
        env |= {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the bundled cost map, not a download
            "LITELLM_MASTER_KEY": self.key,
            "HOME": str(self.dir),
        }  # usage telemetry is off unless LITELLM_TELEMETRY_* turn it on; none are passed
        self.stderr = (self.dir / "stderr.log").open("wb")
        self.proc = subprocess.Popen(
            [str(self.executable), "--config", str(self.dir / "config.yaml"), "--host", "127.0.0.1",
             "--port", str(self.port), "--num_workers", str(self.workers),
             "--log_config", str(self.dir / "logging.json")],
            cwd=self.dir, env=env, stdout=subprocess.DEVNULL, stderr=self.stderr,
        )  # fmt: skip

    def why_not(self) -> str:
        """The last line LiteLLM wrote to stderr: usually why it did not start."""
        lines = [
            line
            for line in (self.dir / "stderr.log").read_text(errors="replace").splitlines()
            if line.strip()
        ]
        return lines[-1].strip() if lines else "no output"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.stderr.close()


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
    parser.add_argument(
        "--litellm", help=f"LiteLLM's `litellm` executable (default: {LITELLM_VENV}, if present)"
    )
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument(
        "--litellm-workers",
        type=int,
        default=1,
        help="its uvicorn workers (default 1: one process, as the gateway)",
    )
    parser.add_argument("--json", action="store_true")

    parser.add_argument("--stub", type=int, help=argparse.SUPPRESS)  # internal: run the upstream stub
    parser.add_argument("--not-isolated", help=argparse.SUPPRESS)  # internal: why isolation failed
    args = parser.parse_args()
    if args.stub:
        asyncio.run(_stub(args.stub))
        return
    litellm = litellm_executable(args)
    if litellm is not None and not os.environ.get(ISOLATED_ENV) and not args.not_isolated:
        why = isolate([__file__, *sys.argv[1:]])  # returns only if it could not
        args.not_isolated = why
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as scratch:
        results = asyncio.run(run(args, Path(scratch), litellm))
    if args.json:
        print(json.dumps(results, indent=2))


async def run(args: argparse.Namespace, scratch: Path, litellm_path: Path | None) -> dict[str, Any]:
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
    results: dict[str, Any] = {"cpus": os.cpu_count(), "concurrency": args.concurrency}
    litellm: LiteLLM | None = None
    if litellm_path is None:
        results["litellm"] = {
            "error": "not run (--no-litellm, or not installed at " + str(LITELLM_VENV) + ")"
        }
    elif args.not_isolated:
        results["litellm"] = {"error": f"not run: {args.not_isolated}"}
    else:
        litellm = LiteLLM(litellm_path, direct, scratch, args.litellm_workers)
        try:
            litellm.start()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            results["litellm"] = {"error": f"did not start: {exc}"}
            litellm = None
    targets: list[tuple[str, str, dict[str, str] | None]] = [
        ("direct", direct, None),
        ("gateway", through, None),
    ]
    try:
        await wait_ready(direct, stub)
        await wait_ready(through, gateway)
        if litellm is not None:
            assert litellm.proc is not None
            try:
                await wait_ready(litellm.url, litellm.proc, LITELLM_START_SECONDS, litellm.headers)
                targets.append(("litellm", litellm.url, litellm.headers))
                results["litellm"] = {"version": litellm.version, "workers": litellm.workers}
            except SystemExit as exc:
                results["litellm"] = {"error": f"did not start: {exc}; {litellm.why_not()}"}
                litellm.stop()
        for phase, rate in (("saturation", None), ("paced", args.rate)):
            for name, base, headers in targets:
                url = base + "/v1/chat/completions"
                await drive(url, args.concurrency, WARM_UP, None, 5, headers)
                measured = await drive(url, args.concurrency, args.requests, rate, args.seconds, headers)
                if name == "litellm":
                    results["litellm"][phase] = measured
                else:
                    results[f"{phase}_{name}"] = measured
        lite = results["litellm"]
        if "paced" in lite and lite["paced"]["rps"] < 0.95 * args.rate:
            # Over its capacity the paced latencies are queueing; at half its saturation rate
            # they show what LiteLLM adds to one request (direct again at that rate, for the
            # baseline).
            low = max(1.0, round(lite["saturation"]["rps"] / 2))
            lite["low_rate"] = low
            for name, base, headers in (targets[0], targets[2]):
                url = base + "/v1/chat/completions"
                measured = await drive(url, args.concurrency, args.requests, low, args.seconds, headers)
                lite[f"paced_low_{name}"] = measured
        results["audit"] = await audit_metrics(through)
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
        if litellm is not None:
            litellm.stop()
        stub.kill()
        stub.wait()
    try:
        report = verify_log(log, trust.root)
    finally:
        if args.audit_dir:
            for path in (log, checkpoints_path(log)):
                path.unlink(missing_ok=True)
    results["audit_dir"] = str(log.parent)
    results["loopback_only_namespace"] = bool(os.environ.get(ISOLATED_ENV))
    sent_through = 1 + sum(results[f"{p}_gateway"]["requests"] + WARM_UP for p in ("saturation", "paced"))
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
    lite = r["litellm"] if "saturation" in r["litellm"] else None
    head = f"{'':34}{'direct':>10}{'gateway':>10}{'overhead':>10}"
    print(head + (f"{'litellm':>10}{'overhead':>10}" if lite else ""))
    for phase in ("saturation", "paced"):
        d, g = r[f"{phase}_direct"], r[f"{phase}_gateway"]
        label = (
            "saturation" if phase == "saturation" else f"paced at {g['requests'] / g['seconds']:.0f} req/s"
        )
        row = f"{label + ': requests/s':34}{d['rps']:>10.0f}{g['rps']:>10.0f}{'':>10}"
        print(row + (f"{lite[phase]['rps']:>10.0f}" if lite else ""))
        for key in ("p50_ms", "p99_ms"):
            name = f"{label}: {key.replace('_ms', '')} latency ms"
            row = f"{name:34}{d[key]:>10.2f}{g[key]:>10.2f}{g[key] - d[key]:>+10.2f}"
            if lite:
                row += f"{lite[phase][key]:>10.2f}{lite[phase][key] - d[key]:>+10.2f}"
            print(row)
    if lite and "low_rate" in lite:
        d, g = lite["paced_low_direct"], lite["paced_low_litellm"]
        label = f"paced at {g['requests'] / g['seconds']:.0f} req/s"
        print(f"{label + ': requests/s':34}{d['rps']:>10.0f}{'':>30}{g['rps']:>10.0f}")
        for key in ("p50_ms", "p99_ms"):
            name = f"{label}: {key.replace('_ms', '')} latency ms"
            print(f"{name:34}{d[key]:>10.2f}{'':>30}{g[key]:>10.2f}{g[key] - d[key]:>+10.2f}")
    errors = {
        name: r[f"{p}_{name}"]["errors"] for p in ("saturation", "paced") for name in ("direct", "gateway")
    }
    if lite:
        errors |= {"litellm": sum(lite[p]["errors"] for p in ("saturation", "paced"))}
    if any(errors.values()):
        print(f"non-200 answers: {errors}")
    audit = r["audit"]
    commits = audit.get("enclave_audit_commit_records_count", 0)
    if commits:
        per = audit["enclave_audit_commit_records_sum"] / commits
        sync_ms = 1000 * audit["enclave_audit_commit_duration_seconds_sum"] / commits
        slow = commits - audit.get("enclave_audit_commit_duration_seconds_bucket_le_10ms", commits)
        print(
            f"audit: {commits:.0f} group commits, {per:.1f} records each, {sync_ms:.2f} ms each, "
            f"{slow:.0f} over 10 ms"
        )
    print(f"audit log in {r['audit_dir']}")
    durable = r["durable"]
    print(
        f"durable: {durable['decision_records']} decision records for {durable['gateway_requests']} gateway "
        f"requests; log verifies: {durable['log_verifies']}"
    )
    if lite:
        print(
            f"litellm {lite['version']}: {lite['workers']} worker(s), no database, no callbacks; it keeps no "
            "durable tamper-evident log (nothing fsync'd per request, no hash chain, no signed checkpoints)"
        )
        if "low_rate" in lite:
            offered = r["paced_gateway"]["requests"] / r["paced_gateway"]["seconds"]
            print(
                f"litellm served {lite['paced']['rps']:.0f} of {offered:.0f} req/s offered: its latencies at "
                f"that rate are queueing, so it also ran at {lite['low_rate']:.0f} req/s (half its "
                "saturation rate; direct again at that rate)"
            )
    else:
        print(f"litellm: {r['litellm']['error']}")
    if r["loopback_only_namespace"]:
        print("network: a namespace with loopback only (nothing beyond 127.0.0.1 reachable)")


if __name__ == "__main__":
    main()
