"""Canary prompts: known requests replayed through the gateway to catch drift.

A canary file (YAML, strict like the usage policy: unknown keys are errors, with file:line)
lists prompts with the decision the gateway must take (`allow`, `refuse`, `hold`) and,
optionally, the rule that must take it. For allowed prompts it may give substrings the
answer must contain and a `baseline`: the answer recorded at build time with temperature 0
(`record_baselines`). Ship the file in the bundle so its digest is signed.

Held prompts are sent without a requester token: the gateway answers 401
`requester_token_required` naming the hold rule, which is the hold decision, and no held
request is left waiting for approvers. A gateway that identifies its users (mutual TLS) knows
the agent by its service certificate: the `X-Enclave-Canary: 1` header then makes it answer 202
with the hold decision (`"status": "not_queued"`) and record it as a canary's, without queueing
anything for approvers.

Over HTTPS the agent presents its service certificate and trusts only the enclave CA for the
gateway's (`enclave.identity.tls.client_context`, passed as `ssl_context`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import aiohttp
import yaml

from enclave.errors import PolicyError, UsageError
from enclave.runtime.agent.results import CheckResult, Finding, could_not_run, failed, passed
from enclave.runtime.gateway.approvals import CANARY_HEADER
from enclave.runtime.gateway.policy import _Checker, load_yaml_document

Decision = Literal["allow", "refuse", "hold"]
API_VERSION = "enclave/v1"
KIND = "Canaries"
CHAT_PATH = "/v1/chat/completions"
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_TOP_KEYS = ("apiVersion", "kind", "metadata", "spec")
_METADATA_KEYS = ("name", "version", "description")
_SPEC_KEYS = ("model", "max_tokens", "timeout_seconds", "canaries")
_CANARY_KEYS = ("id", "prompt", "expect", "rule", "contains", "baseline", "similarity", "description")
MAX_CANARIES = 1000


@dataclass(frozen=True)
class Canary:
    id: str
    prompt: str
    expect: Decision
    rule: str | None = None
    contains: tuple[str, ...] = ()
    baseline: str | None = None
    similarity: float = 1.0  # SequenceMatcher ratio the answer must reach against the baseline


@dataclass(frozen=True)
class CanarySet:
    name: str
    version: str
    model: str
    max_tokens: int
    timeout_seconds: int
    canaries: tuple[Canary, ...]
    source: str
    digest: str  # sha256:HEX of the file's bytes

    def request_body(self, canary: Canary) -> bytes:
        """Deterministic sampling (temperature 0) so an answer can be compared with its baseline."""
        return json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": canary.prompt}],
                "temperature": 0,
                "max_tokens": self.max_tokens,
                "stream": False,
            }
        ).encode()


# -- loading ------------------------------------------------------------------------------------


def load_canaries(path: Path) -> CanarySet:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read canary file: {exc.strerror}") from None
    return parse_canaries(text, str(path))


def parse_canaries(text: bytes, source: str) -> CanarySet:
    node, data = load_yaml_document(text, source, "canary file")
    # The policy's checker gives the same file:line: path: message errors for both files.
    checker = _Checker(source, node)
    checker.duplicates(node, "")
    doc = checker.mapping(data, "", _TOP_KEYS, _TOP_KEYS)
    if doc["apiVersion"] != API_VERSION:
        raise checker.fail("apiVersion", f"must be '{API_VERSION}', got {doc['apiVersion']!r}")
    if doc["kind"] != KIND:
        raise checker.fail("kind", f"must be '{KIND}', got {doc['kind']!r}")
    meta = checker.mapping(doc["metadata"], "metadata", _METADATA_KEYS, ("name", "version"))
    spec = checker.mapping(doc["spec"], "spec", _SPEC_KEYS, ("canaries",))
    raw = spec["canaries"]
    if not isinstance(raw, list) or not raw:
        raise checker.fail("spec.canaries", "expected a non-empty list of canaries")
    if len(raw) > MAX_CANARIES:
        raise checker.fail("spec.canaries", f"{len(raw)} canaries; at most {MAX_CANARIES}")
    canaries: list[Canary] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw):
        canary = _canary(checker, item, f"spec.canaries[{index}]")
        if canary.id in seen:
            raise checker.fail(
                f"spec.canaries[{index}].id",
                f"duplicate canary id '{canary.id}' (also canary {seen[canary.id]})",
            )
        seen[canary.id] = index
        canaries.append(canary)
    return CanarySet(
        name=checker.string(meta["name"], "metadata.name"),
        version=str(meta["version"]),
        model=checker.string(spec.get("model", "canary"), "spec.model"),
        max_tokens=checker.integer(spec.get("max_tokens", 64), "spec.max_tokens", 1, 4096),
        timeout_seconds=checker.integer(spec.get("timeout_seconds", 120), "spec.timeout_seconds", 1, 3600),
        canaries=tuple(canaries),
        source=source,
        digest="sha256:" + hashlib.sha256(text).hexdigest(),
    )


def _canary(checker: _Checker, item: Any, path: str) -> Canary:
    raw = checker.mapping(item, path, _CANARY_KEYS, ("id", "prompt", "expect"))
    canary_id = checker.string(raw["id"], f"{path}.id")
    if not _ID.match(canary_id):
        raise checker.fail(f"{path}.id", f"canary id {canary_id!r} must match {_ID.pattern}")
    prompt = checker.string(raw["prompt"], f"{path}.prompt")
    expect = raw["expect"]
    if expect not in ("allow", "refuse", "hold"):
        raise checker.fail(f"{path}.expect", f"must be allow, refuse or hold, got {expect!r}")
    if "description" in raw:
        checker.string(raw["description"], f"{path}.description")
    rule = checker.string(raw["rule"], f"{path}.rule") if "rule" in raw else None
    if rule is not None and expect == "allow":
        raise checker.fail(f"{path}.rule", "an allowed prompt is decided by no rule; remove 'rule'")
    for key in ("contains", "baseline", "similarity"):
        if key in raw and expect != "allow":
            raise checker.fail(f"{path}.{key}", "only allowed prompts have answers to compare")
    contains = tuple(checker.strings(raw["contains"], f"{path}.contains")) if "contains" in raw else ()
    baseline = checker.string(raw["baseline"], f"{path}.baseline") if "baseline" in raw else None
    similarity = 1.0
    if "similarity" in raw:
        value = raw["similarity"]
        if baseline is None:
            raise checker.fail(f"{path}.similarity", "needs a 'baseline' to compare with")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise checker.fail(f"{path}.similarity", f"must be a number in (0, 1], got {value!r}")
        similarity = float(value)
    return Canary(canary_id, prompt, cast(Decision, expect), rule, contains, baseline, similarity)


def check_gateway_url(gateway: str, ssl_context: ssl.SSLContext | None = None) -> str:
    parts = urlsplit(gateway)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(f"--gateway {gateway!r}: expected http(s)://HOST:PORT of the safety gateway")
    if parts.scheme == "https" and ssl_context is None:
        # Never the system's CAs: the gateway's certificate must chain to the enclave CA.
        raise UsageError(f"--gateway {gateway!r}: HTTPS needs --tls-ca, the enclave CA")
    return gateway.rstrip("/")


def _session(ssl_context: ssl.SSLContext | None) -> aiohttp.ClientSession:
    """One session for a round: over HTTPS, one TLS handshake with the agent's certificate."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context or True))


# -- what the gateway said (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    decision: Literal["allow", "refuse", "hold", "error"]
    status: int
    rule: str | None = None
    answer: str | None = None
    detail: str = ""


def classify(status: int, body: bytes) -> Observation:
    """Map the gateway's answer to its decision (docs/GATEWAY.md, 1.1)."""
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return Observation("error", status, detail=f"HTTP {status}, not a JSON answer")
    if not isinstance(doc, dict):
        return Observation("error", status, detail=f"HTTP {status}, unexpected answer")
    if status == 200:
        try:
            message = doc["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return Observation("error", status, detail="HTTP 200 without choices[0].message.content")
        if not isinstance(message, str):
            return Observation("error", status, detail="HTTP 200 without answer text")
        return Observation("allow", status, answer=message)
    if status == 202 and doc.get("object") == "enclave.held_request":
        return Observation("hold", status, rule=_str_or_none(doc.get("rule")))
    error = doc.get("error")
    if isinstance(error, dict):
        code, rule = error.get("code"), _str_or_none(error.get("rule"))
        if status == 400 and code == "policy_refusal":
            return Observation("refuse", status, rule=rule)
        if status == 401 and code == "requester_token_required":
            return Observation("hold", status, rule=rule)
        if status == 401:  # the gateway does not accept the agent's identity: not a decision
            return Observation(
                "error",
                status,
                rule=rule,
                detail=f"HTTP 401 {code}: the gateway refused the agent's identity: "
                f"{str(error.get('message'))[:200]}",
            )
        return Observation(
            "error", status, rule=rule, detail=f"HTTP {status} {code}: {str(error.get('message'))[:200]}"
        )
    return Observation("error", status, detail=f"HTTP {status}")


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _normalise(text: str) -> str:
    return " ".join(text.split())


def similarity(baseline: str, answer: str) -> float:
    return difflib.SequenceMatcher(None, _normalise(baseline), _normalise(answer), autojunk=False).ratio()


def _excerpt(text: str, limit: int = 120) -> str:
    flat = _normalise(text)
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def compare(canary: Canary, seen: Observation) -> list[Finding]:
    """What differs between what the canary expects and what the gateway did."""
    if seen.decision == "error":
        return [Finding("error", canary.id, f"no decision: {seen.detail}")]
    if seen.decision != canary.expect:
        by = f" by rule {seen.rule}" if seen.rule else ""
        return [
            Finding("decision", canary.id, f"expected {canary.expect}, gateway decided {seen.decision}{by}")
        ]
    findings = []
    if canary.rule is not None and seen.rule != canary.rule:
        findings.append(Finding("rule", canary.id, f"expected rule {canary.rule}, decided by {seen.rule}"))
    answer = seen.answer or ""
    for needle in canary.contains:
        if needle.casefold() not in answer.casefold():
            findings.append(Finding("answer", canary.id, f"answer lacks {needle!r}: {_excerpt(answer)}"))
    if canary.baseline is not None:
        ratio = similarity(canary.baseline, answer)
        if ratio < canary.similarity:
            findings.append(
                Finding(
                    "drift",
                    canary.id,
                    f"answer differs from its baseline (similarity {ratio:.2f} < {canary.similarity:.2f}): "
                    f"{_excerpt(answer)}",
                )
            )
    return findings


# -- replay (I/O) -------------------------------------------------------------------------------


class GatewayUnreachable(Exception):
    pass


async def ask(
    session: aiohttp.ClientSession, gateway: str, canaries: CanarySet, canary: Canary
) -> Observation:
    try:
        async with session.post(
            gateway + CHAT_PATH,
            data=canaries.request_body(canary),
            # A gateway that identifies the agent (service role) decides a held canary without
            # queueing it for approvers; others ignore the header.
            headers={"Content-Type": "application/json", CANARY_HEADER: "1"},
            timeout=aiohttp.ClientTimeout(total=canaries.timeout_seconds),
        ) as response:
            body = await response.read()
            return classify(response.status, body)
    except TimeoutError:  # first: TimeoutError is an OSError, and aiohttp's timeouts are both
        return Observation("error", 0, detail=f"no answer within {canaries.timeout_seconds} s")
    except aiohttp.ClientConnectorCertificateError as exc:
        raise GatewayUnreachable(
            f"{gateway}: the gateway's certificate does not verify against the enclave CA: "
            f"{exc.certificate_error}"
        ) from None
    except (aiohttp.ClientConnectionError, OSError) as exc:
        raise GatewayUnreachable(f"{gateway}: gateway unreachable: {exc}") from None


async def check_canaries(
    gateway: str, canaries: CanarySet, ssl_context: ssl.SSLContext | None = None
) -> CheckResult:
    """Replay every canary, one at a time (the model server shares the host's cores)."""
    findings: list[Finding] = []
    ok = 0
    async with _session(ssl_context) as session:
        for canary in canaries.canaries:
            try:
                seen = await ask(session, gateway, canaries, canary)
            except GatewayUnreachable as exc:
                return could_not_run("canaries", Finding("unreachable", gateway, str(exc)))
            found = compare(canary, seen)
            ok += not found
            findings += found
    data: dict[str, Any] = {
        "canaries": len(canaries.canaries),
        "passed": ok,
        "canary_file": canaries.source,
        "canary_digest": canaries.digest,
        "gateway": gateway,
    }
    total = len(canaries.canaries)
    if findings:
        drifted = sorted({f.name for f in findings})
        return failed(
            "canaries",
            f"{len(drifted)} of {total} canaries drifted: {', '.join(drifted[:5])}",
            findings,
            **data,
        )
    return passed("canaries", f"{total} canaries behaved as expected through {gateway}", **data)


async def record_baselines(
    path: Path, gateway: str, out: Path, ssl_context: ssl.SSLContext | None = None
) -> int:
    """Run every canary once (temperature 0) and write `out`: the same file with each allowed
    canary's answer as its `baseline`. Refuses (PolicyError) when any canary does not get its
    expected decision: a baseline of a misbehaving stack would hide the problem. Returns the
    number of baselines written. Comments are not kept. `ssl_context`: for an HTTPS gateway."""
    canaries = load_canaries(path)
    gateway = check_gateway_url(gateway, ssl_context)
    if out.exists():
        raise UsageError(f"{out}: already exists; refusing to overwrite")
    answers: dict[str, str] = {}
    async with _session(ssl_context) as session:
        for canary in canaries.canaries:
            try:
                seen = await ask(session, gateway, canaries, canary)
            except GatewayUnreachable as exc:
                raise PolicyError(str(exc)) from None
            problems = compare(replace(canary, baseline=None), seen)
            if problems:
                raise PolicyError(f"canary {canary.id}: {problems[0].detail}; no baselines written")
            if seen.answer is not None:
                answers[canary.id] = seen.answer
    doc = yaml.safe_load(path.read_bytes())
    for item in doc["spec"]["canaries"]:
        if item["id"] in answers:
            item["baseline"] = answers[item["id"]]
    # ASCII only: invisible or look-alike characters in a prompt stay visible to a reviewer.
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=False, width=100)
    parse_canaries(text.encode("utf-8"), str(out))  # what we write must load
    out.write_text(text, encoding="utf-8")
    return len(answers)
