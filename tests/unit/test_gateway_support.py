"""Shared helpers for the gateway and audit tests: real keys, a real trust root with approver
and audit roles, a counting upstream stub on 127.0.0.1, and a running gateway.

(Named test_* only so it sits among the files it serves; it defines no tests.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from enclave.runtime.gateway.server import RunningGateway, prepare, start_gateway
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot, sign_document

REPO = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = REPO / "bundles" / "policy" / "default.yaml"

COMPLETION = {
    "id": "chatcmpl-stub",
    "object": "chat.completion",
    "created": 0,
    "model": "stub",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "stub answer"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}


@dataclass
class Trust:
    dir: Path
    root: Path
    root_key: SigningKey
    approvers: list[SigningKey]
    audit: SigningKey
    audit_path: Path
    stranger: SigningKey

    def key_path(self, index: int) -> Path:
        return self.dir / f"approver{index}"


_KEY_CACHE: dict[str, SigningKey] = {}


def _key(name: str, algorithm: str = "ecdsa-p384") -> SigningKey:
    # Key generation (ML-DSA especially) is slow enough to matter across many tests.
    if name not in _KEY_CACHE:
        _KEY_CACHE[name] = SigningKey.generate(algorithm)  # type: ignore[arg-type]
    return _KEY_CACHE[name]


def make_trust(directory: Path, approvers: int = 3, approver_threshold: int = 1) -> Trust:
    directory.mkdir(parents=True, exist_ok=True)
    root_key = _key("root")
    keys = [_key(f"approver{i}", "ml-dsa-87" if i == 1 else "ecdsa-p384") for i in range(approvers)]
    audit = _key("audit")
    stranger = _key("stranger")
    for index, key in enumerate(keys):
        key.write(directory / f"approver{index}", None)
    audit.write(directory / "audit.key", None)
    stranger.write(directory / "stranger", None)
    signed = TrustRoot.create(
        {"root": [root_key.public], "approver": [k.public for k in keys], "audit": [audit.public]},
        {"approver": approver_threshold},
        datetime.now(UTC) + timedelta(days=30),
        hybrid_roles=(),
    )
    root = directory / "root.json"
    root.write_bytes(sign_document(signed, [root_key]))
    return Trust(directory, root, root_key, keys, audit, directory / "audit.key", stranger)


@dataclass
class Upstream:
    """A fake model server: counts and keeps every request it receives."""

    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def count(self) -> int:
        return len(self.seen)

    def saw_text(self, text: str) -> bool:
        return any(text in json.dumps(s) for s in self.seen)


@asynccontextmanager
async def upstream_stub(answer: str | None = None) -> AsyncIterator[Upstream]:
    """`answer` replaces the stub's non-streamed answer text (to test the answer check)."""
    state = Upstream()
    completion_body = COMPLETION
    if answer is not None:
        completion_body = json.loads(json.dumps(COMPLETION))
        completion_body["choices"][0]["message"]["content"] = answer

    async def completion(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state.seen.append({"path": request.path, "body": body})
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            words = ("stub", " answer") if answer is None else [f" {w}" for w in answer.split()]
            for word in words:
                chunk = {"choices": [{"index": 0, "delta": {"content": word}}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        return web.json_response(completion_body)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completion)
    app.router.add_post("/v1/completions", completion)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    state.runner = runner
    try:
        yield state
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running_gateway(
    trust: Trust | None,
    log: Path,
    upstream: str,
    policy: Path = DEFAULT_POLICY,
    audit_key: Path | None = None,
    **options: Any,
) -> AsyncIterator[RunningGateway]:
    prepared = prepare(
        policy,
        upstream,
        log,
        audit_key or (trust.audit_path if trust else Path("/nonexistent")),
        trust.root if trust else None,
        "127.0.0.1:0",
        **options,
    )
    running = await start_gateway(prepared)
    try:
        yield running
    finally:
        await running.stop()


def chat(text: str, **extra: Any) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}], **extra}).encode()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def records(log: Path, torn_tail: bool = False) -> list[dict[str, Any]]:
    """The log's records. `torn_tail`: a kill -9 may cut the last write short; as the verifier
    and the restarting writer do, the bytes after the last newline are not a record."""
    data = log.read_bytes()
    if torn_tail:
        data = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def decisions(log: Path) -> list[dict[str, Any]]:
    return [r for r in records(log) if r.get("event") == "decision"]
