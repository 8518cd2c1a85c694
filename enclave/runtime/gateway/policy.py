"""Usage policy: strict loading of the YAML file and deterministic evaluation.

Loading is strict because a typo in a safety policy must stop the gateway, not weaken it:
unknown keys, duplicate keys, empty rule sets, empty term lists and rules whose own examples
fail are all errors, reported as one line naming the file, the line and the field.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from enclave.errors import UsageError
from enclave.fileio import read_regular
from enclave.normalise import NORMALISATION, skeleton_tokens, squeeze
from enclave.runtime.gateway.matcher import Hit, Matcher, within_window
from enclave.yamldoc import load_yaml_document as load_yaml_document  # the shared loader

Action = Literal["allow", "refuse", "hold"]
API_VERSION = "enclave/v1"
KIND = "GatewayPolicy"
_RULE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_MIN_PREFIX = 3  # "a*" would match nearly everything; a wildcard needs a real stem
_MAX_WITHIN = 10_000

_TOP_KEYS = ("apiVersion", "kind", "metadata", "spec")
_METADATA_KEYS = ("name", "version", "description")
_SPEC_KEYS = ("default", "approval", "discussion", "guard", "rules", "examples")
_GUARD_KEYS = ("approvals",)
_APPROVAL_KEYS = ("timeout_seconds", "clock_skew_seconds", "max_pending")
_RULE_KEYS = ("id", "action", "description", "approvals", "match", "examples")
_MATCH_KEYS = ("any", "all", "within")
_RULE_EXAMPLE_KEYS = ("match", "pass")
_SPEC_EXAMPLE_KEYS = ("allow",)


@dataclass(frozen=True)
class Term:
    text: str  # as written in the policy
    squeezed: str
    prefix: bool


@dataclass(frozen=True)
class Rule:
    id: str
    action: Literal["refuse", "hold"]
    description: str
    groups: tuple[tuple[Term, ...], ...]  # every group must hit
    within: int | None  # all groups inside this many tokens
    approvals: int  # hold rules: approvals needed (0 for refuse rules)


@dataclass(frozen=True)
class ApprovalSettings:
    timeout_seconds: int = 900
    clock_skew_seconds: int = 120
    max_pending: int = 1000


@dataclass(frozen=True)
class Verdict:
    action: Action
    rule: Rule | None

    @property
    def rule_id(self) -> str | None:
        return self.rule.id if self.rule else None


class Policy:
    """A loaded policy. `evaluate` is pure and safe to call from any thread."""

    def __init__(
        self,
        name: str,
        version: str,
        default: Literal["allow", "refuse"],
        rules: Sequence[Rule],
        approval: ApprovalSettings,
        text: bytes,
        source: str,
        discussion: Sequence[Term] = (),
        guard_approvals: int | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.default: Literal["allow", "refuse"] = default
        self.rules = tuple(rules)
        self.approval = approval
        self.text = text
        self.source = source
        self.digest = "sha256:" + hashlib.sha256(text).hexdigest()
        self.discussion = tuple(discussion)
        # Holds decided by the learned guard need as many approvers as the strictest hold rule.
        self.guard_approvals = guard_approvals or max((r.approvals for r in self.rules), default=1)
        terms: list[tuple[str, bool]] = [(term.squeezed, term.prefix) for term in self.discussion]
        self._discussion_ids = range(len(terms))
        # _slots[r][g] = term ids of group g of rule r
        self._slots: list[list[list[int]]] = []
        for rule in self.rules:
            rule_slots: list[list[int]] = []
            for group in rule.groups:
                ids = []
                for term in group:
                    ids.append(len(terms))
                    terms.append((term.squeezed, term.prefix))
                rule_slots.append(ids)
            self._slots.append(rule_slots)
        self._matcher = Matcher(terms)

    @property
    def holds(self) -> bool:
        return any(r.action == "hold" for r in self.rules)

    def matching_rules(self, texts: Iterable[str]) -> list[Rule]:
        """Every rule that matches the texts, in file order."""
        # One pass over all texts joined by newlines: a newline separates tokens exactly as
        # separate calls would, and each Unicode step is cheaper on one string than many.
        tokens = skeleton_tokens("\n".join(texts))
        hits = self._matcher.find(tokens)
        if not hits or any(term_id in hits for term_id in self._discussion_ids):
            # Discussion framing (history, law, a lecture, an op-ed...) silences every rule:
            # the rules are for operational requests, and the learned guard still judges.
            return []
        matched = []
        for rule, slots in zip(self.rules, self._slots, strict=True):
            groups: list[list[Hit]] = []
            for ids in slots:
                group = [hit for term_id in ids if term_id in hits for hit in hits[term_id]]
                if not group:
                    break
                groups.append(group)
            else:
                if within_window(groups, rule.within):
                    matched.append(rule)
        return matched

    def evaluate(self, texts: Iterable[str]) -> Verdict:
        """Refuse beats hold beats allow; within an action the first rule in the file is named."""
        matched = self.matching_rules(texts)
        for action in ("refuse", "hold"):
            for rule in matched:
                if rule.action == action:
                    return Verdict(rule.action, rule)
        return Verdict(self.default, None)


# -- loading ------------------------------------------------------------------------------------


def load_policy(path: Path) -> Policy:
    return parse_policy(read_regular(path, "policy"), str(path))


def parse_policy(text: bytes, source: str) -> Policy:
    node, data = load_yaml_document(text, source, "policy file")
    checker = _Checker(source, node)
    checker.duplicates(node, "")
    return checker.policy(data, text)


class _Checker:
    """Walks the parsed document; every error names file:line and the field's path."""

    def __init__(self, source: str, root: yaml.Node) -> None:
        self.source = source
        self.root = root

    def fail(self, path: str, message: str) -> UsageError:
        line = self._line(path)
        where = f"{self.source}:{line}" if line else self.source
        return UsageError(f"{where}: {path or 'document'}: {message}")

    def _line(self, path: str) -> int | None:
        node: yaml.Node | None = self.root
        line = node.start_mark.line + 1 if node is not None else None
        for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
            if isinstance(node, yaml.MappingNode):
                pair = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
                if pair is None:
                    break
                line = pair[0].start_mark.line + 1  # the key's line: where a reader looks
                node = pair[1]
            elif isinstance(node, yaml.SequenceNode) and part.startswith("["):
                index = int(part[1:-1])
                if index >= len(node.value):
                    break
                node = node.value[index]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def duplicates(self, node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                name = str(key.value)
                where = f"{path}.{name}" if path else name
                if name in seen:
                    line = key.start_mark.line + 1
                    raise UsageError(f"{self.source}:{line}: {where}: duplicate key")
                seen.add(name)
                self.duplicates(value, where)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.duplicates(item, f"{path}[{index}]")

    # -- typed accessors ------------------------------------------------------------------------
    def mapping(
        self, value: Any, path: str, allowed: Sequence[str], required: Sequence[str]
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str) or key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
                raise self.fail(
                    _join(path, str(key)),
                    f"unknown key '{key}'{suggestion} (allowed: {', '.join(allowed)})",
                )
        for key in required:
            if key not in value:
                raise self.fail(path, f"missing required key '{key}'")
        return value

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"expected a non-empty string, got {_kind(value)}")
        return value

    def integer(self, value: Any, path: str, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(path, f"expected an integer, got {_kind(value)}")
        if not low <= value <= high:
            raise self.fail(path, f"must be between {low} and {high}, got {value}")
        return value

    def strings(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {_kind(value)}")
        if not value:
            raise self.fail(path, "empty list: give at least one entry or remove the key")
        return [self.string(item, f"{path}[{i}]") for i, item in enumerate(value)]

    # -- the document ---------------------------------------------------------------------------
    def policy(self, data: Any, text: bytes) -> Policy:
        doc = self.mapping(data, "", _TOP_KEYS, _TOP_KEYS)
        if doc["apiVersion"] != API_VERSION:
            raise self.fail("apiVersion", f"must be '{API_VERSION}', got {doc['apiVersion']!r}")
        if doc["kind"] != KIND:
            raise self.fail("kind", f"must be '{KIND}', got {doc['kind']!r}")
        meta = self.mapping(doc["metadata"], "metadata", _METADATA_KEYS, ("name", "version"))
        name = self.string(meta["name"], "metadata.name")
        version = str(meta["version"])
        if "description" in meta:
            self.string(meta["description"], "metadata.description")
        spec = self.mapping(doc["spec"], "spec", _SPEC_KEYS, ("default", "rules"))
        default = spec["default"]
        if default not in ("allow", "refuse"):
            raise self.fail("spec.default", f"must be 'allow' or 'refuse', got {default!r}")
        approval = self.approval(spec.get("approval", {}), "spec.approval")
        raw_rules = spec["rules"]
        if not isinstance(raw_rules, list):
            raise self.fail("spec.rules", f"expected a list of rules, got {_kind(raw_rules)}")
        if not raw_rules:
            raise self.fail("spec.rules", "empty rule set: a policy needs at least one rule")
        rules: list[Rule] = []
        seen: dict[str, int] = {}
        for index, raw in enumerate(raw_rules):
            rule = self.rule(raw, f"spec.rules[{index}]")
            if rule.id in seen:
                raise self.fail(
                    f"spec.rules[{index}].id", f"duplicate rule id '{rule.id}' (also rule {seen[rule.id]})"
                )
            seen[rule.id] = index
            rules.append(rule)
        discussion: tuple[Term, ...] = ()
        if "discussion" in spec:
            discussion = self.terms(spec["discussion"], "spec.discussion")
        guard_approvals = None
        if "guard" in spec:
            section = self.mapping(spec["guard"], "spec.guard", _GUARD_KEYS, ("approvals",))
            guard_approvals = self.integer(section["approvals"], "spec.guard.approvals", 1, 100)
        policy = Policy(
            name, version, default, rules, approval, text, self.source, discussion, guard_approvals
        )
        self.self_test(policy, raw_rules, spec.get("examples"))
        return policy

    def approval(self, value: Any, path: str) -> ApprovalSettings:
        section = self.mapping(value, path, _APPROVAL_KEYS, ())
        defaults = ApprovalSettings()
        return ApprovalSettings(
            timeout_seconds=self.integer(
                section.get("timeout_seconds", defaults.timeout_seconds), f"{path}.timeout_seconds", 1, 86_400
            ),
            clock_skew_seconds=self.integer(
                section.get("clock_skew_seconds", defaults.clock_skew_seconds),
                f"{path}.clock_skew_seconds",
                0,
                3_600,
            ),
            max_pending=self.integer(
                section.get("max_pending", defaults.max_pending), f"{path}.max_pending", 1, 1_000_000
            ),
        )

    def rule(self, value: Any, path: str) -> Rule:
        raw = self.mapping(value, path, _RULE_KEYS, ("id", "action", "description", "match"))
        rule_id = self.string(raw["id"], f"{path}.id")
        if not _RULE_ID.match(rule_id):
            raise self.fail(f"{path}.id", f"rule id {rule_id!r} must match {_RULE_ID.pattern}")
        action = raw["action"]
        if action not in ("refuse", "hold"):
            raise self.fail(f"{path}.action", f"must be 'refuse' or 'hold', got {action!r}")
        description = self.string(raw["description"], f"{path}.description")
        approvals = 0
        if action == "hold":
            if "approvals" not in raw:
                raise self.fail(path, "a hold rule needs 'approvals' (how many distinct approvers)")
            approvals = self.integer(raw["approvals"], f"{path}.approvals", 1, 100)
        elif "approvals" in raw:
            raise self.fail(f"{path}.approvals", "only hold rules take approvals")
        match = self.mapping(raw["match"], f"{path}.match", _MATCH_KEYS, ())
        if ("any" in match) == ("all" in match):
            raise self.fail(
                f"{path}.match", "give exactly one of 'any' (a list of terms) or 'all' (a list of lists)"
            )
        groups: list[tuple[Term, ...]] = []
        if "any" in match:
            groups.append(self.terms(match["any"], f"{path}.match.any"))
        else:
            raw_groups = match["all"]
            if not isinstance(raw_groups, list) or not raw_groups:
                raise self.fail(f"{path}.match.all", "expected a non-empty list of term lists")
            for g, raw_group in enumerate(raw_groups):
                groups.append(self.terms(raw_group, f"{path}.match.all[{g}]"))
        within = None
        if "within" in match:
            within = self.integer(match["within"], f"{path}.match.within", 1, _MAX_WITHIN)
        if "examples" in raw:
            self.mapping(raw["examples"], f"{path}.examples", _RULE_EXAMPLE_KEYS, ())
        return Rule(rule_id, action, description, tuple(groups), within, approvals)

    def terms(self, value: Any, path: str) -> tuple[Term, ...]:
        result = []
        for index, text in enumerate(self.strings(value, path)):
            where = f"{path}[{index}]"
            prefix = text.endswith("*")
            body = text[:-1] if prefix else text
            if "*" in body:
                raise self.fail(where, f"term {text!r}: '*' is allowed only at the end")
            squeezed = squeeze(body)
            if not squeezed:
                raise self.fail(where, f"term {text!r} has no letters or digits after normalisation")
            if prefix and len(squeezed) < _MIN_PREFIX:
                raise self.fail(where, f"term {text!r}: a '*' term needs at least {_MIN_PREFIX} characters")
            result.append(Term(text, squeezed, prefix))
        return tuple(result)

    def self_test(self, policy: Policy, raw_rules: list[Any], spec_examples: Any) -> None:
        """Run the examples written in the policy; a rule that misses its own example is a bug."""
        for index, (rule, raw) in enumerate(zip(policy.rules, raw_rules, strict=True)):
            examples = raw.get("examples") or {}
            for kind in _RULE_EXAMPLE_KEYS:
                if kind not in examples:
                    continue
                path = f"spec.rules[{index}].examples.{kind}"
                for i, example in enumerate(self.strings(examples[kind], path)):
                    hit = rule in policy.matching_rules([example])
                    if hit != (kind == "match"):
                        verb = "does not match" if kind == "match" else "matches"
                        raise self.fail(
                            f"{path}[{i}]", f"rule '{rule.id}' {verb} its own example {example!r}"
                        )
        if spec_examples is not None:
            section = self.mapping(spec_examples, "spec.examples", _SPEC_EXAMPLE_KEYS, ())
            if "allow" in section:
                for i, example in enumerate(self.strings(section["allow"], "spec.examples.allow")):
                    verdict = policy.evaluate([example])
                    if verdict.action != "allow":
                        raise self.fail(
                            f"spec.examples.allow[{i}]",
                            f"example {example!r} is not allowed: "
                            f"rule '{verdict.rule_id}' {verdict.action}s it",
                        )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


__all__ = [
    "NORMALISATION",
    "ApprovalSettings",
    "Policy",
    "Rule",
    "Term",
    "Verdict",
    "load_policy",
    "parse_policy",
]
