"""The layered decision: the policy's rules, then the learned guard, then the uncertain band.

Pure apart from the clock. The order of severity is allow < hold < refuse, across layers:
- a rule that refuses decides at once (nothing can be stricter);
- otherwise the guard judges every text; its verdict replaces the rules' only when it is
  stricter, so the learned layer can never turn a rule's refuse or hold into allow;
- a p(stop) between the guard's two thresholds holds the request for human approval;
- any guard failure (an exception, a non-finite score, the per-request deadline passed) holds
  the request for humans: a broken guard never allows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from enclave.runtime.gateway.policy import Action, Policy, Rule

if TYPE_CHECKING:  # types only: deciding without a guard needs no numpy
    from enclave.guard.model import Guard, GuardVerdict

Layer = Literal["rules", "default", "guard", "guard-band", "guard-failure"]
_SEVERITY = {"allow": 0, "hold": 1, "refuse": 2}

_GUARD_DESCRIPTIONS = {
    "refuse-surveillance": "the learned guard judged this a request for domestic or mass surveillance",
    "refuse-autonomous-force": (
        "the learned guard judged this a request for autonomous or unlawful use of force"
    ),
    "hold-targeting": "the learned guard judged this a targeting or force-employment request",
}


@dataclass(frozen=True)
class Decision:
    action: Action
    layer: Layer
    rule: Rule | None  # the rule that decided; guard decisions carry a synthetic rule "guard.*"
    guard: GuardVerdict | None = None
    failure: str | None = None

    @property
    def rule_id(self) -> str | None:
        return self.rule.id if self.rule else None

    def record(self, guard: Guard | None) -> dict[str, Any]:
        """The fields every decision record carries about how it was decided."""
        fields: dict[str, Any] = {"layer": self.layer}
        if guard is not None:
            fields["guard"] = {
                "digest": guard.digest,
                "thresholds": guard.thresholds.as_dict(),
                "verdict": self.guard.record() if self.guard else None,
                "failure": self.failure,
            }
        return fields


# Values that name structure, not text a person wrote: the guard does not judge them.
_STRUCTURAL_KEYS = frozenset(
    {"model", "role", "type", "id", "name", "tool_call_id", "object", "finish_reason", "tool_choice"}
)


def guard_texts(doc: Any) -> list[str]:
    """Every user-controlled text of a request for the guard: string values anywhere in the body
    (message contents and parts, system prompts, tool and function arguments and descriptions,
    completion prompts, stop words...), in document order; keys and structural values (model,
    role, type, names, ids) are left out, as they carry no request of their own."""
    found: list[str] = []

    def walk(value: Any, key: str | None) -> None:
        if isinstance(value, str):
            if key not in _STRUCTURAL_KEYS:
                found.append(value)
        elif isinstance(value, dict):
            for name, item in value.items():
                walk(item, name)
        elif isinstance(value, list):
            for item in value:
                walk(item, key)

    walk(doc, None)
    return found


def guard_rule(policy: Policy, rule_id: str, action: Literal["refuse", "hold"], description: str) -> Rule:
    """A synthetic rule naming a guard decision, so approvals and records treat both layers alike."""
    approvals = policy.guard_approvals if action == "hold" else 0
    return Rule(rule_id, action, description, (), None, approvals)


def decide(
    policy: Policy,
    guard: Guard | None,
    texts: Sequence[str],
    clock: Callable[[], float] = time.perf_counter,
    guard_input: Sequence[str] | None = None,
) -> Decision:
    """`texts` for the rules (every string of the body, keys included); `guard_input` for the
    guard (`guard_texts` of the body; default: `texts`)."""
    verdict = policy.evaluate(texts)
    rules = Decision(verdict.action, "rules" if verdict.rule else "default", verdict.rule)
    if verdict.action == "refuse" or guard is None:
        return rules
    started = clock()
    try:
        judged = guard.judge(texts if guard_input is None else guard_input)
        elapsed_ms = (clock() - started) * 1000
        if elapsed_ms > guard.deadline_ms:
            raise TimeoutError(f"guard took {elapsed_ms:.0f} ms, deadline {guard.deadline_ms} ms")
    except Exception as exc:  # fail closed on anything the guard raises
        if verdict.action == "hold":
            return Decision(rules.action, rules.layer, rules.rule, None, _describe(exc))
        rule = guard_rule(policy, "guard.failure", "hold", f"the learned guard failed: {_describe(exc)}")
        return Decision("hold", "guard-failure", rule, None, _describe(exc))
    if _SEVERITY[judged.action] <= _SEVERITY[verdict.action]:
        return Decision(rules.action, rules.layer, rules.rule, judged)
    if judged.layer == "guard-band":
        rule = guard_rule(
            policy, "guard.uncertain", "hold",
            f"the learned guard is uncertain (p_stop {judged.p_stop:.3f}, nearest class {judged.label})",
        )  # fmt: skip
    else:
        action: Literal["refuse", "hold"] = "refuse" if judged.action == "refuse" else "hold"
        rule = guard_rule(policy, f"guard.{judged.label}", action, _GUARD_DESCRIPTIONS[judged.label])
    return Decision(judged.action, judged.layer, rule, judged)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def answer_texts(content_type: str, payload: bytes) -> list[str]:
    """The text of a non-streamed completion: every choice's message content, text and tool-call
    arguments. A body that is not JSON is judged whole, as text."""
    if content_type.startswith("text/event-stream"):
        return [_streamed_text(payload)]
    if not content_type.startswith("application/json"):
        return [payload.decode("utf-8", errors="replace")]
    try:
        doc = json.loads(payload)
    except ValueError:
        return [payload.decode("utf-8", errors="replace")]
    texts: list[str] = []
    choices = doc.get("choices") if isinstance(doc, dict) else None
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if not isinstance(message, dict):
            message = {}
        for value in (choice.get("text"), message.get("content"), message.get("reasoning_content")):
            if isinstance(value, str):
                texts.append(value)
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                texts.append(function["arguments"])
    return texts


def _streamed_text(payload: bytes) -> str:
    """A buffered server-sent-events answer put back together: every chunk's delta content and
    tool-call arguments, in order. A line that is not a JSON chunk counts as text too."""
    parts: list[str] = []
    for line in payload.decode("utf-8", errors="replace").splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            parts.append(data)
            continue
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        for choice in choices if isinstance(choices, list) else []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            if isinstance(delta.get("content"), str):
                parts.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    parts.append(function["arguments"])
    return "".join(parts)


def judge_answer(guard: Guard, content_type: str, payload: bytes) -> Decision:
    """The guard's verdict on a model answer: anything but allow withholds it, failure included."""
    try:
        texts = answer_texts(content_type, payload)
        if not any(t.strip() for t in texts):
            return Decision("allow", "guard", None)
        judged = guard.judge(texts)
    except Exception as exc:  # fail closed: an answer the guard cannot judge is not released
        rule = Rule(
            "guard.answer.failure",
            "refuse",
            f"the learned guard failed on the answer: {_describe(exc)}",
            (),
            None,
            0,
        )
        return Decision("refuse", "guard-failure", rule, None, _describe(exc))
    if judged.action == "allow" or judged.layer == "guard-band":
        # Only a decisive stop withholds an answer: the band is for requests, which humans can
        # approve; an answer withheld on uncertainty would be lost, not reviewed.
        return Decision("allow", judged.layer, None, judged)
    description = _GUARD_DESCRIPTIONS[judged.label].replace("request", "answer")
    rule = Rule(f"guard.answer.{judged.label}", "refuse", description, (), None, 0)
    return Decision("refuse", judged.layer, rule, judged)
