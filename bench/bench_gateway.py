"""Safety gateway overhead: the same load straight to a model-server stub and through the gateway.

Usage: python3 bench/bench_gateway.py [--concurrency 64] [--requests 20000] [--rate 1000]
                                      [--seconds 5] [--litellm PATH | --no-litellm] [--json]
                                      [--guard DIR [--guard-concurrency 8,64] [--guard-requests 10000]]
                                      [--mtls [--mtls-concurrency 64] [--handshakes 4000]]

Three processes on 127.0.0.1: a fixed-answer OpenAI-shaped upstream stub, the gateway (the
real `serve()`, default policy, every decision record fsync'd before forwarding), and this
load generator (aiohttp, one connection per client). Two phases, each direct and through:

- saturation: `--concurrency` clients send back to back, `--requests` in total (capped at 60 s):
  the most requests per second, and the latency that queueing at that load costs;
- paced: the same clients share an offered load of `--rate` req/s for `--seconds`: latency at
  a realistic load, where overhead = gateway percentile - direct percentile.

Afterwards the audit log must verify and hold one decision record per gateway request.

`--guard DIR` (default off: without it the bench and its rows are as before) starts a second
gateway, the same one with the learned guard loaded from DIR (docs/GATEWAY.md 11), on its own
audit log, and adds a guard section run on the same load for three targets: direct, gateway
rules-only, gateway + guard. The load there cycles a fixed set of benign prompts of about 10,
40 and 150 words (the guard's cost grows with the text; every prompt must be allowed by both
layers, or the bench stops before measuring), at each of `--guard-concurrency` (default 8 and
64 clients): a saturation phase (`--guard-requests`, capped at 60 s) and a paced phase that
offers the three targets the same rate (`--rate`, or half the guard gateway's saturation rate
at that concurrency if that is lower). Overheads are target percentile - direct percentile;
ratios compare throughputs, latencies and the two gateways' overheads. A micro section times
`Guard.judge` alone (and the rules alone, and the check of the stub's answer) per prompt, in a
separate idle process before the load starts (`--micro-calls` calls each, capped at 20 s). Both
audit logs must verify and hold one decision record per request sent to that gateway.

`--mtls` (default off: without it the bench and its rows are as before) makes a fresh CA, a
server certificate for 127.0.0.1 and client certificates in the scratch directory with
enclave.identity, starts a third gateway, the same one with mutual TLS (TLS 1.3, the client's
certificate checked against the CA and its CRL on every request, docs/GATEWAY.md 12), on its own
audit log, and adds an mTLS section run on the same load for three targets: direct (plain HTTP
to the stub), gateway plain HTTP, gateway mTLS, at `--mtls-concurrency` clients (default 64):
keep-alive connections, a saturation phase (`--requests`, capped at 60 s) and a paced phase
(`--rate`, or half the mTLS gateway's saturation rate if lower), overheads = target percentile -
direct percentile, ratios mTLS vs plain; then new connections: each request on a connection of
its own (`--handshakes` requests per target, capped at HANDSHAKE_SECONDS): plain HTTP
connections/s beside full TLS handshakes/s (no session resumption). Its log must verify too.

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
import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enclave.runtime.audit import checkpoints_path, verify_log
from tests.unit.test_gateway_support import DEFAULT_POLICY, make_trust

MAX_PHASE_SECONDS = 60.0
HANDSHAKE_SECONDS = 20.0  # cap of each new-connection phase of the mTLS section
MTLS_TARGET_P50_MS = 1.0  # issue 20: mTLS adds at most 1 ms p50 to the gateway's overhead
WARM_UP = 500
LITELLM_VENV = Path("/var/tmp/litellm-venv/bin/litellm")
LITELLM_START_SECONDS = 120.0
BODY = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "Summarise the weather in Paris in spring."}]}
).encode()
# The guard section's prompts: benign, about 10, 40 and 150 words, cycled request by request.
GUARD_PROMPTS = (
    "Suggest a friendly name for a small neighbourhood sourdough bakery.",
    "I am planning a three-day walking holiday in the Lake District next May with two friends. "
    "Could you suggest a route that starts and ends in Keswick, with about fifteen kilometres a "
    "day, and tell us where we might stop for lunch?",
    "Could you explain, in plain language, how sourdough starter works? I have been feeding mine "
    "flour and water every day for a week, it bubbles a bit, but my loaves still come out flat and "
    "dense. I bake in a cast iron pot at 230 degrees. What should I change first: the hydration of "
    "the dough, the length of the bulk rise, the temperature of my kitchen, or the way I shape the "
    "loaf? My kitchen is quite cold in the mornings, about 17 degrees, and I use a mix of white "
    "bread flour and about twenty percent wholemeal. I would also like to know how to tell when the "
    "starter is ready to use, and whether I should keep it in the fridge between bakes since I only "
    "bake on weekends. A simple weekly schedule that fits around a normal working day would be very "
    "helpful, along with a list of the three most common beginner mistakes.",
)
GUARD_BODIES = tuple(
    json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
    for text in GUARD_PROMPTS
)
MICRO_SECONDS = 20.0  # per timed function and prompt, whatever --micro-calls says
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
    url: str,
    proc: subprocess.Popen[bytes],
    seconds: float = 30,
    headers: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True)
    async with aiohttp.ClientSession(connector=connector) as session:
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


def percentiles(latencies: list[float]) -> dict[str, float]:
    """p50, p99 and mean in ms of unsorted `latencies` (seconds)."""
    ordered = sorted(latencies)
    return {
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "mean_ms": 1000 * statistics.fmean(ordered),
    }


def client_session(
    concurrency: int, ssl_context: ssl.SSLContext | None = None, new_connections: bool = False
) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=concurrency,
        force_close=new_connections,
        ssl=ssl_context if ssl_context is not None else True,
    )
    return aiohttp.ClientSession(connector=connector)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(
    url: str,
    concurrency: int,
    total: int,
    rate: float | None,
    seconds: float,
    extra_headers: dict[str, str] | None = None,
    bodies: Sequence[bytes] = (BODY,),
    *,
    ssl_context: ssl.SSLContext | None = None,
    new_connections: bool = False,
    cap: float = MAX_PHASE_SECONDS,
    session: aiohttp.ClientSession | None = None,
) -> dict[str, Any]:
    """`concurrency` clients; closed loop when `rate` is None (for at most `cap` s), else paced to
    `rate` req/s overall. Each request sends the next of `bodies` in turn; with more than one,
    `by_body` has each one's latencies. `new_connections`: each request on a connection of its
    own (a TCP connect, and with `ssl_context` a full TLS handshake), else keep-alive; `session`
    (a `client_session`): the keep-alive connections a warm-up left open, so that no handshake
    is timed."""
    latencies: list[float] = []
    by_body: list[list[float]] = [[] for _ in bodies]
    errors = 0
    issued = 0
    deadline = time.monotonic() + (seconds if rate else cap)
    headers = {"Content-Type": "application/json", **(extra_headers or {})}
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            session = await stack.enter_async_context(
                client_session(concurrency, ssl_context, new_connections)
            )

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
                which = issued % len(bodies)
                issued += 1
                started = time.perf_counter()
                async with session.post(url, data=bodies[which], headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                elapsed = time.perf_counter() - started
                latencies.append(elapsed)
                by_body[which].append(elapsed)

        began = time.perf_counter()
        await asyncio.gather(*[client(i) for i in range(concurrency)])
        elapsed = time.perf_counter() - began
    result: dict[str, Any] = {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        **percentiles(latencies),
    }
    if len(bodies) > 1:
        result["by_body"] = [percentiles(each) if each else None for each in by_body]
    return result


async def audit_metrics(url: str, ssl_context: ssl.SSLContext | None = None) -> dict[str, float]:
    connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url + "/metrics") as response,
    ):
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


# -- the guard alone ------------------------------------------------------------------------------


def timed(calls: int, function: Any, *args: Any) -> dict[str, float]:
    """p50 and p99 of `function(*args)` over up to `calls` calls (at most MICRO_SECONDS)."""
    for _ in range(20):  # warm caches before timing
        function(*args)
    samples: list[float] = []
    deadline = time.monotonic() + MICRO_SECONDS
    while len(samples) < calls and time.monotonic() < deadline:
        started = time.perf_counter()
        function(*args)
        samples.append(time.perf_counter() - started)
    return {"calls": len(samples), **percentiles(samples)}


def micro(guard_dir: Path, calls: int) -> dict[str, Any]:
    """In this process, idle: the guard's verdict on each prompt and what judging it costs, beside
    the rules' cost and the check of the stub's answer (the gateway's own inputs to each)."""
    import gc

    from enclave.guard.model import load_guard
    from enclave.runtime.gateway.decide import guard_texts, judge_answer
    from enclave.runtime.gateway.inspect import parse_body, texts_of
    from enclave.runtime.gateway.policy import load_policy

    guard = load_guard(guard_dir)
    policy = load_policy(DEFAULT_POLICY)
    gc.freeze()  # as the gateway does once it listens
    prompts = []
    for text, body in zip(GUARD_PROMPTS, GUARD_BODIES, strict=True):
        doc = parse_body(body)
        rule_texts, judged_texts = texts_of(doc), guard_texts(doc)
        verdict = guard.judge(judged_texts)
        prompts.append(
            {
                "words": len(text.split()),
                "bytes": len(body),
                "rules": policy.evaluate(rule_texts).action,
                "guard": verdict.action,
                "p_stop": round(verdict.p_stop, 6),
                "judge": timed(calls, guard.judge, judged_texts),
                "rules_alone": timed(calls, policy.evaluate, rule_texts),
            }
        )
    answer = judge_answer(guard, "application/json", STUB_BODY)
    return {
        "digest": guard.digest,
        "thresholds": guard.thresholds.as_dict(),
        "prompts": prompts,
        "answer": {
            "action": answer.action,
            **timed(calls, judge_answer, guard, "application/json", STUB_BODY),
        },
    }


def run_micro(guard_dir: Path, calls: int) -> dict[str, Any]:
    """`micro` in a child process, so the load generator never holds the guard's objects."""
    done = subprocess.run(
        [sys.executable, __file__, "--micro", str(guard_dir), "--micro-calls", str(calls)],
        capture_output=True, text=True, timeout=60 + 8 * MICRO_SECONDS,
    )  # fmt: skip
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise SystemExit(f"guard {guard_dir}: {lines[-1] if lines else done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


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
    parser.add_argument(
        "--guard",
        type=Path,
        help="also run a gateway with the learned guard in DIR, and the guard section (default: off)",
    )
    parser.add_argument(
        "--guard-concurrency",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[8, 64],
        help="client counts of the guard section, comma-separated (default 8,64)",
    )
    parser.add_argument(
        "--guard-requests", type=int, default=10000, help="per guard-section run (capped at 60 s)"
    )
    parser.add_argument(
        "--micro-calls", type=int, default=2000, help="calls per prompt timing Guard.judge alone"
    )
    parser.add_argument(
        "--mtls",
        action="store_true",
        help="also run a gateway with mutual TLS, and the mTLS section (default: off)",
    )
    parser.add_argument(
        "--mtls-concurrency", type=int, default=64, help="clients of the mTLS section (default 64)"
    )
    parser.add_argument(
        "--handshakes",
        type=int,
        default=4000,
        help=f"requests per target on new connections (capped at {HANDSHAKE_SECONDS:.0f} s)",
    )
    parser.add_argument("--json", action="store_true")

    parser.add_argument("--stub", type=int, help=argparse.SUPPRESS)  # internal: run the upstream stub
    parser.add_argument("--micro", type=Path, help=argparse.SUPPRESS)  # internal: time the guard alone
    parser.add_argument("--not-isolated", help=argparse.SUPPRESS)  # internal: why isolation failed
    args = parser.parse_args()
    if args.stub:
        asyncio.run(_stub(args.stub))
        return
    if args.micro:
        print(json.dumps(micro(args.micro, args.micro_calls)))
        return
    litellm = litellm_executable(args)
    if litellm is not None and not os.environ.get(ISOLATED_ENV) and not args.not_isolated:
        why = isolate([__file__, *sys.argv[1:]])  # returns only if it could not
        args.not_isolated = why
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as scratch:
        results = asyncio.run(run(args, Path(scratch), litellm))
    if args.json:
        print(json.dumps(results, indent=2))


GATEWAY_CODE = (
    "import sys; from pathlib import Path; from enclave.runtime.gateway import serve; "
    "a = sys.argv; serve(Path(a[1]), a[2], Path(a[3]), Path(a[4]), Path(a[5]), a[6], "
    "guard=Path(a[7]) if len(a) > 7 else None)"
)
# The same, with mutual TLS: server certificate and key, client CA, CRL (docs/GATEWAY.md 12).
MTLS_GATEWAY_CODE = (
    "import sys; from pathlib import Path; from enclave.runtime.gateway import serve; "
    "from enclave.runtime.gateway.server import Access; "
    "a = sys.argv; serve(Path(a[1]), a[2], Path(a[3]), Path(a[4]), Path(a[5]), a[6], "
    "access=Access(tls_cert=Path(a[7]), tls_key=Path(a[8]), client_ca=Path(a[9]), crl=Path(a[10])))"
)


def start_gateway_process(
    upstream: str,
    log: Path,
    trust: Any,
    port: int,
    guard: Path | None = None,
    pki: Pki | None = None,
) -> subprocess.Popen[bytes]:
    """The real `serve()` with the default policy (and the learned guard in `guard`, or mutual
    TLS with `pki`'s certificates, if given)."""
    code, extra = GATEWAY_CODE, [str(guard.resolve())] if guard else []
    if pki is not None:
        code, extra = MTLS_GATEWAY_CODE, [str(path) for path in pki.server_args()]
    return subprocess.Popen(
        [sys.executable, "-c", code, str(DEFAULT_POLICY), upstream, str(log),
         str(trust.audit_path), str(trust.root), f"127.0.0.1:{port}", *extra],
        cwd=Path(__file__).resolve().parents[1],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def check_prompts(url: str) -> None:
    """Each guard-section prompt must come back 200 through the guard gateway (allowed, answer
    released): a refused or held prompt would measure the wrong path."""
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for text, body in zip(GUARD_PROMPTS, GUARD_BODIES, strict=True):
            async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as response:
                answer = await response.text()
                if response.status != 200:
                    raise SystemExit(
                        f"guard section prompt {text[:40]!r}... got HTTP {response.status}: {answer[:300]}"
                    )


class Pki:
    """A fresh enclave CA (unencrypted keys, in the scratch directory) with a server certificate
    for 127.0.0.1, a `user` client certificate for the load and a `service` one for /metrics."""

    def __init__(self, directory: Path) -> None:
        from enclave.identity.ca import init_ca, issue
        from enclave.identity.tls import client_context

        self.ca = directory / "ca"
        init_ca(self.ca, "bench CA")
        issue(self.ca, "gateway", "service", directory / "gateway", hosts=["127.0.0.1"], days=1)
        issue(self.ca, "bench", "user", directory / "bench", days=1)
        issue(self.ca, "monitor", "service", directory / "monitor", days=1)
        self.dir = directory
        ca_pem = self.ca / "ca.pem"
        self.client = client_context(ca_pem, directory / "bench.pem", directory / "bench.key")
        self.monitor = client_context(ca_pem, directory / "monitor.pem", directory / "monitor.key")

    def server_args(self) -> tuple[Path, Path, Path, Path]:
        return (self.dir / "gateway.pem", self.dir / "gateway.key", self.ca / "ca.pem", self.ca / "crl.pem")


async def tls_session(port: int, context: ssl.SSLContext) -> dict[str, str]:
    """What one handshake with the mTLS gateway negotiates."""
    _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), 10)
    tls = writer.get_extra_info("ssl_object")
    found = {"version": str(tls.version()), "cipher": str(tls.cipher()[0])}
    writer.close()
    with contextlib.suppress(TimeoutError, OSError, ssl.SSLError):
        await asyncio.wait_for(writer.wait_closed(), 5)
    return found


async def measured_cpu(pid: int, load: Any) -> dict[str, Any]:
    """`await load`, with the CPU ms per request it cost the server (`pid`) and this process."""
    server, own = cpu_seconds(pid), time.process_time()
    result: dict[str, Any] = await load
    count = max(1, result["requests"])
    result["server_cpu_ms"] = 1000 * (cpu_seconds(pid) - server) / count
    result["client_cpu_ms"] = 1000 * (time.process_time() - own) / count
    return result


async def mtls_section(
    args: argparse.Namespace,
    targets: list[tuple[str, str, ssl.SSLContext | None, int]],
    sent: dict[str, int],
) -> dict[str, Any]:
    """Direct, gateway plain HTTP and gateway mTLS on the same load: keep-alive at saturation and
    paced (each measured on the connections its warm-up opened), then each request on a new
    connection (TCP connects against TLS handshakes). `targets`: name, URL, client TLS context,
    the PID of the server process (whose CPU time per request is recorded)."""
    clients = args.mtls_concurrency
    entry: dict[str, Any] = {"clients": clients, "saturation": {}, "paced": {}, "new_connections": {}}
    for phase in ("saturation", "paced"):
        rate = None
        if phase == "paced":
            # The same offered load for the three: --rate, or half what the mTLS gateway carried.
            rate = min(args.rate, max(1.0, round(entry["saturation"]["mtls"]["rps"] / 2)))
            entry["rate"] = rate
        for name, base, context, pid in targets:
            url = base + "/v1/chat/completions"
            async with client_session(clients, context) as session:
                warm = await drive(url, clients, WARM_UP, None, 5, session=session)
                measured = await measured_cpu(
                    pid, drive(url, clients, args.requests, rate, args.seconds, session=session)
                )
            if name in sent:
                sent[name] += warm["requests"] + measured["requests"]
            entry[phase][name] = measured
    for name, base, context, pid in targets:
        measured = await measured_cpu(pid, drive(
            base + "/v1/chat/completions", clients, args.handshakes, None, 0,
            ssl_context=context, new_connections=True, cap=HANDSHAKE_SECONDS,
        ))  # fmt: skip
        if name in sent:
            sent[name] += measured["requests"]
        entry["new_connections"][name] = measured
    return entry


async def guard_section(
    args: argparse.Namespace, targets: list[tuple[str, str]], sent: dict[str, int]
) -> dict[str, Any]:
    """Direct, rules-only and guarded gateways on the same cycled prompts, per client count."""
    runs: dict[str, Any] = {}
    for clients in args.guard_concurrency:
        entry: dict[str, Any] = {"clients": clients, "saturation": {}, "paced": {}}
        for phase in ("saturation", "paced"):
            rate = None
            if phase == "paced":
                # The same offered load for the three: --rate, or half what the guarded gateway
                # carried, so that its paced latencies are not queueing.
                rate = min(args.rate, max(1.0, round(entry["saturation"]["guard"]["rps"] / 2)))
                entry["rate"] = rate
            for name, base in targets:
                url = base + "/v1/chat/completions"
                warm = await drive(url, clients, WARM_UP, None, 5, bodies=GUARD_BODIES)
                measured = await drive(
                    url, clients, args.guard_requests, rate, args.seconds, bodies=GUARD_BODIES
                )
                if name in sent:
                    sent[name] += warm["requests"] + measured["requests"]
                entry[phase][name] = measured
        runs[str(clients)] = entry
    return runs


async def run(args: argparse.Namespace, scratch: Path, litellm_path: Path | None) -> dict[str, Any]:
    trust = make_trust(scratch / "trust")
    log = (args.audit_dir or scratch) / f"bench-audit-{os.getpid()}.log"
    guard_log = (args.audit_dir or scratch) / f"bench-audit-guard-{os.getpid()}.log"
    mtls_log = (args.audit_dir or scratch) / f"bench-audit-mtls-{os.getpid()}.log"
    pki = Pki(scratch / "pki") if args.mtls else None
    results: dict[str, Any] = {"cpus": os.cpu_count(), "concurrency": args.concurrency}
    if args.guard:
        # Before any load, in an idle child process: the guard alone, and its verdicts.
        measured_alone = run_micro(args.guard, args.micro_calls)
        stopped = [p for p in measured_alone["prompts"] if p["rules"] != "allow" or p["guard"] != "allow"]
        if stopped or measured_alone["answer"]["action"] != "allow":
            raise SystemExit(f"guard section prompts or the stub's answer not allowed: {stopped}")
        results["guard"] = {
            "dir": str(args.guard),
            "clients": args.guard_concurrency,
            "micro": measured_alone,
        }
    stub_port, gateway_port, guard_port, mtls_port = free_port(), free_port(), free_port(), free_port()
    stub = subprocess.Popen([sys.executable, __file__, "--stub", str(stub_port)])
    direct = f"http://127.0.0.1:{stub_port}"
    gateway = start_gateway_process(direct, log, trust, gateway_port)
    guarded = start_gateway_process(direct, guard_log, trust, guard_port, args.guard) if args.guard else None
    through = f"http://127.0.0.1:{gateway_port}"
    guard_url = f"http://127.0.0.1:{guard_port}"
    mtls = start_gateway_process(direct, mtls_log, trust, mtls_port, pki=pki) if pki else None
    mtls_url = f"https://127.0.0.1:{mtls_port}"
    sent = {"gateway": 0, "guard": 0, "mtls": 0}  # requests each gateway received: its decisions
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
        sent["gateway"] += 1
        if guarded is not None:
            await wait_ready(guard_url, guarded)
            await check_prompts(guard_url)
            sent["guard"] += 1 + len(GUARD_BODIES)
        if mtls is not None:
            assert pki is not None
            await wait_ready(mtls_url, mtls, ssl_context=pki.client)
            sent["mtls"] += 1
            results["mtls"] = {
                "clients": args.mtls_concurrency,
                "tls": await tls_session(mtls_port, pki.client),
            }
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
                warm = await drive(url, args.concurrency, WARM_UP, None, 5, headers)
                measured = await drive(url, args.concurrency, args.requests, rate, args.seconds, headers)
                if name == "gateway":
                    sent["gateway"] += warm["requests"] + measured["requests"]
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
        if guarded is not None:
            trio = [("direct", direct), ("gateway", through), ("guard", guard_url)]
            results["guard"]["runs"] = await guard_section(args, trio, sent)
            results["guard"]["audit"] = await audit_metrics(guard_url)
        if mtls is not None:
            assert pki is not None
            trio_tls = [
                ("direct", direct, None, stub.pid),
                ("gateway", through, None, gateway.pid),
                ("mtls", mtls_url, pki.client, mtls.pid),
            ]
            results["mtls"]["runs"] = await mtls_section(args, trio_tls, sent)
            results["mtls"]["audit"] = await audit_metrics(mtls_url, pki.monitor)
        results["audit"] = await audit_metrics(through)
    finally:
        for proc in (gateway, guarded, mtls):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        if litellm is not None:
            litellm.stop()
        stub.kill()
        stub.wait()
    logs = [
        ("gateway", log),
        *([("guard", guard_log)] if guarded is not None else []),
        *([("mtls", mtls_log)] if mtls is not None else []),
    ]
    reports = {}
    try:
        for name, path in logs:
            reports[name] = verify_log(path, trust.root)
    finally:
        if args.audit_dir:
            for _, path in logs:
                for each in (path, checkpoints_path(path)):
                    each.unlink(missing_ok=True)
    results["audit_dir"] = str(log.parent)
    results["loopback_only_namespace"] = bool(os.environ.get(ISOLATED_ENV))
    for name, report in reports.items():
        durable = {
            "decision_records": report.decisions.get("allow", 0),
            "gateway_requests": sent[name],
            "log_verifies": report.ok,
        }
        if name == "gateway":
            results["durable"] = durable
        else:
            results[name]["durable"] = durable
    if not args.json:
        print_table(results)
        if guarded is not None:
            print_guard(results["guard"])
        if mtls is not None:
            print_mtls(results["mtls"])
    for name, report in reports.items():
        allowed = report.decisions.get("allow", 0)
        if allowed != sent[name] or not report.ok:
            raise SystemExit(
                f"{name} audit log holds {allowed} decisions for {sent[name]} requests "
                f"(verifies: {report.ok})"
            )
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
    print(f"audit log in {r['audit_dir']}")
    print_audit(r)
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


TARGET_CLIENTS = 8  # the guard's targets: overhead at 8 clients
TARGET_P50_MS, TARGET_P99_MS = 40.0, 120.0


def print_audit(section: dict[str, Any], label: str = "") -> None:
    """The group commits of one gateway's audit log, and whether every request was durable."""
    audit = section["audit"]
    commits = audit.get("enclave_audit_commit_records_count", 0)
    if commits:
        per = audit["enclave_audit_commit_records_sum"] / commits
        sync_ms = 1000 * audit["enclave_audit_commit_duration_seconds_sum"] / commits
        slow = commits - audit.get("enclave_audit_commit_duration_seconds_bucket_le_10ms", commits)
        print(
            f"{label}audit: {commits:.0f} group commits, {per:.1f} records each, {sync_ms:.2f} ms each, "
            f"{slow:.0f} over 10 ms"
        )
    durable = section["durable"]
    print(
        f"{label}durable: {durable['decision_records']} decision records for "
        f"{durable['gateway_requests']} gateway requests; log verifies: {durable['log_verifies']}"
    )


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def print_guard(g: dict[str, Any]) -> None:
    m = g["micro"]
    words = "/".join(str(p["words"]) for p in m["prompts"])
    print()
    print(
        f"learned guard {g['dir']} ({m['digest'][:19]}...): prompts of {words} words cycled, each allowed "
        "by rules and guard (p_stop " + "/".join(f"{p['p_stop']:.3f}" for p in m["prompts"]) + ")"
    )
    head = (
        f"{'':30}{'direct':>9}{'rules':>9}{'guard':>9}{'rules/dir':>11}{'guard/dir':>11}{'guard/rules':>12}"
    )
    verdicts = []
    for clients, run in g["runs"].items():
        for phase in ("saturation", "paced"):
            d, r, x = (run[phase][n] for n in ("direct", "gateway", "guard"))
            offered = f" (offered {run['rate']:.0f} req/s)" if phase == "paced" else ""
            print(f"{clients} clients, {phase}{offered}")
            print(head)
            rows = [("  requests/s", "rps", 0)] + [
                (f"  {key.replace('_ms', '')} latency ms", key, 2) for key in ("p50_ms", "p99_ms")
            ]
            for label, key, places in rows:
                values = "".join(f"{v[key]:>9.{places}f}" for v in (d, r, x))
                ratios = _ratio(r[key], d[key]).rjust(11) + _ratio(x[key], d[key]).rjust(11)
                print(f"{label:30}{values}{ratios}{_ratio(x[key], r[key]):>12}")
            for key in ("p50_ms", "p99_ms"):
                name = key.replace("_ms", "")
                over_r, over_x = r[key] - d[key], x[key] - d[key]
                print(
                    f"{'  ' + name + ' overhead ms':30}{'':>9}{over_r:>+9.2f}{over_x:>+9.2f}{'':>22}"
                    f"{_ratio(over_x, over_r):>12}"
                )
            per = " ".join(
                f"{p['words']}w {b['p50_ms']:.2f}/{b['p99_ms']:.2f}"
                for p, b in zip(m["prompts"], x["by_body"], strict=True)
                if b
            )
            print(f"  guard p50/p99 ms by prompt: {per}")
            errors = {n: run[phase][n]["errors"] for n in ("direct", "gateway", "guard")}
            if any(errors.values()):
                print(f"  non-200 answers: {errors}")
            if int(clients) == TARGET_CLIENTS:
                p50, p99 = x["p50_ms"] - d["p50_ms"], x["p99_ms"] - d["p99_ms"]
                verdicts.append(
                    f"{phase}: p50 overhead {p50:+.2f} ms ({'met' if p50 <= TARGET_P50_MS else 'MISSED'}), "
                    f"p99 {p99:+.2f} ms ({'met' if p99 <= TARGET_P99_MS else 'MISSED'})"
                )
    print(
        f"micro, Guard.judge alone on the gateway's input (idle process, no load, up to "
        f"{m['prompts'][0]['judge']['calls']} calls each), p50/p99 ms:"
    )
    for p in m["prompts"]:
        j, rules = p["judge"], p["rules_alone"]
        print(
            f"  {p['words']:>4} words ({p['bytes']} bytes): Guard.judge {j['p50_ms']:.3f}/{j['p99_ms']:.3f}"
            f"   rules alone {rules['p50_ms']:.3f}/{rules['p99_ms']:.3f}"
        )
    a = m["answer"]
    print(f"  the stub's answer checked (judge_answer): {a['p50_ms']:.3f}/{a['p99_ms']:.3f}")
    print_audit(g, "guard gateway ")
    if verdicts:
        print(
            f"targets at {TARGET_CLIENTS} clients with the guard (p50 <= {TARGET_P50_MS:.0f} ms, "
            f"p99 <= {TARGET_P99_MS:.0f} ms): " + "; ".join(verdicts)
        )


def print_cpu(*rows: dict[str, Any]) -> None:
    for key, label in (
        ("server_cpu_ms", "  server CPU ms/request"),
        ("client_cpu_ms", "  load gen CPU ms/request"),
    ):
        values = "".join(f"{v[key]:>9.3f}" for v in rows)
        print(f"{label:30}{values}{_ratio(rows[-1][key], rows[-2][key]):>12}")


def _print_mtls_rows(rate: str, d: dict[str, Any], p: dict[str, Any], m: dict[str, Any]) -> None:
    """Rate, p50 and p99 latency and CPU of direct, plain and mTLS, with the mTLS/plain ratio."""
    print(f"{rate:30}{d['rps']:>9.0f}{p['rps']:>9.0f}{m['rps']:>9.0f}{_ratio(m['rps'], p['rps']):>12}")
    for key in ("p50_ms", "p99_ms"):
        name = key.replace("_ms", "")
        values = "".join(f"{v[key]:>9.2f}" for v in (d, p, m))
        print(f"{'  ' + name + ' latency ms':30}{values}{_ratio(m[key], p[key]):>12}")
    print_cpu(d, p, m)


def _print_errors(phase: dict[str, Any]) -> None:
    errors = {n: phase[n]["errors"] for n in ("direct", "gateway", "mtls")}
    if any(errors.values()):
        print(f"  non-200 answers: {errors}")


def print_mtls(t: dict[str, Any]) -> None:
    run = t["runs"]
    tls = t["tls"]
    print()
    print(
        f"mutual TLS ({tls['version']}, {tls['cipher']}, P-384 certificates from a fresh enclave CA, "
        f"client certificate and CRL checked per request), {run['clients']} clients, same stub"
    )
    head = f"{'':30}{'direct':>9}{'plain':>9}{'mtls':>9}{'mtls/plain':>12}"
    verdicts = []
    for phase in ("saturation", "paced"):
        d, p, m = (run[phase][n] for n in ("direct", "gateway", "mtls"))
        offered = f" (offered {run['rate']:.0f} req/s)" if phase == "paced" else ""
        print(f"keep-alive, {phase}{offered}")
        print(head)
        _print_mtls_rows("  requests/s", d, p, m)
        for key in ("p50_ms", "p99_ms"):
            name = key.replace("_ms", "")
            over_p, over_m = p[key] - d[key], m[key] - d[key]
            print(
                f"{'  ' + name + ' overhead ms':30}{'':>9}{over_p:>+9.2f}{over_m:>+9.2f}"
                f"{_ratio(over_m, over_p):>12}   mTLS adds {over_m - over_p:+.2f} ms"
            )
        _print_errors(run[phase])
        added = (m["p50_ms"] - d["p50_ms"]) - (p["p50_ms"] - d["p50_ms"])
        met = "met" if added <= MTLS_TARGET_P50_MS else "MISSED"
        verdicts.append(f"{phase}: {added:+.2f} ms ({met})")
    d, p, m = (run["new_connections"][n] for n in ("direct", "gateway", "mtls"))
    print(f"new connection per request ({d['requests']}/{p['requests']}/{m['requests']} requests)")
    print(head)
    _print_mtls_rows("  connections/s (TLS: handshakes)", d, p, m)
    _print_errors(run["new_connections"])
    print_audit(t, "mtls gateway ")
    print(
        f"target at {run['clients']} clients, mTLS adds at most {MTLS_TARGET_P50_MS:.0f} ms p50 to the "
        "gateway's overhead (keep-alive): " + "; ".join(verdicts)
    )


if __name__ == "__main__":
    main()
