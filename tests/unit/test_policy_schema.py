"""Strict policy loading: every typo is a one-line error naming the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave.errors import UsageError
from enclave.runtime.gateway.policy import load_policy, parse_policy

GOOD = """\
apiVersion: enclave/v1
kind: GatewayPolicy
metadata: {name: test, version: 1.0.0}
spec:
  default: allow
  rules:
    - id: refuse.demo
      action: refuse
      description: demo rule
      match:
        any: [forbidden thing]
"""


def fails(text: str, tmp_path: Path) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(str(path)), message
    assert caught.value.exit_code == 2
    return message


def test_good_policy_loads(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    policy = load_policy(path)
    assert policy.evaluate(["a Forbidden  THING"]).rule_id == "refuse.demo"
    assert policy.digest.startswith("sha256:")


def test_unknown_key_is_named_with_line_and_suggestion(tmp_path: Path) -> None:
    message = fails(GOOD.replace("      match:\n", "      macth:\n"), tmp_path)
    assert ":10: spec.rules[0].macth: unknown key 'macth'; did you mean 'match'?" in message


def test_unknown_nested_key(tmp_path: Path) -> None:
    message = fails(GOOD.replace("any: [forbidden thing]", "anyy: [forbidden thing]"), tmp_path)
    assert "spec.rules[0].match.anyy: unknown key 'anyy'" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = fails(GOOD + "extra: 1\n", tmp_path)
    assert ":12: extra: unknown key 'extra'" in message


def test_empty_rule_set(tmp_path: Path) -> None:
    text = GOOD.split("  rules:")[0] + "  rules: []\n"
    message = fails(text, tmp_path)
    assert "spec.rules: empty rule set" in message


def test_empty_term_list(tmp_path: Path) -> None:
    message = fails(GOOD.replace("any: [forbidden thing]", "any: []"), tmp_path)
    assert "spec.rules[0].match.any: empty list" in message


def test_empty_group_in_all(tmp_path: Path) -> None:
    message = fails(GOOD.replace("any: [forbidden thing]", "all: [[a b c], []]"), tmp_path)
    assert "spec.rules[0].match.all[1]: empty list" in message


def test_any_and_all_together(tmp_path: Path) -> None:
    message = fails(GOOD.replace("any: [forbidden thing]", "any: [x]\n        all: [[y]]"), tmp_path)
    assert "exactly one of 'any'" in message


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    message = fails(
        GOOD.replace("      action: refuse\n", "      action: refuse\n      action: hold\n"), tmp_path
    )
    assert ":9: spec.rules[0].action: duplicate key" in message


def test_duplicate_rule_id(tmp_path: Path) -> None:
    rule = GOOD.split("  rules:\n")[1]
    message = fails(GOOD + rule, tmp_path)
    assert "spec.rules[1].id: duplicate rule id 'refuse.demo'" in message


def test_hold_needs_approvals_and_refuse_takes_none(tmp_path: Path) -> None:
    assert "needs 'approvals'" in fails(GOOD.replace("action: refuse", "action: hold"), tmp_path)
    message = fails(GOOD.replace("action: refuse\n", "action: refuse\n      approvals: 2\n"), tmp_path)
    assert "spec.rules[0].approvals: only hold rules take approvals" in message


def test_bad_values(tmp_path: Path) -> None:
    assert "spec.rules[0].action: must be 'refuse' or 'hold'" in fails(
        GOOD.replace("action: refuse", "action: allow"), tmp_path
    )
    assert "spec.default: must be 'allow' or 'refuse'" in fails(
        GOOD.replace("default: allow", "default: maybe"), tmp_path
    )
    assert "apiVersion: must be 'enclave/v1'" in fails(GOOD.replace("enclave/v1", "enclave/v2"), tmp_path)
    assert "spec.rules[0].id: rule id" in fails(GOOD.replace("refuse.demo", "Refuse Demo"), tmp_path)
    assert "'*' is allowed only at the end" in fails(GOOD.replace("forbidden thing", "forb*dden"), tmp_path)
    assert "needs at least 3 characters" in fails(GOOD.replace("forbidden thing", "ab*"), tmp_path)
    assert "spec.rules[0].match.within: must be between" in fails(
        GOOD.replace("any: [forbidden thing]", "any: [x]\n        within: 0"), tmp_path
    )
    assert "spec.approval.timeout_seconds: expected an integer" in fails(
        GOOD.replace("  rules:", "  approval: {timeout_seconds: soon}\n  rules:"), tmp_path
    )


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    message = fails(GOOD.replace("any: [forbidden thing]", "any: [forbidden thing"), tmp_path)
    assert "invalid YAML" in message


def test_rule_examples_are_checked_at_load(tmp_path: Path) -> None:
    text = GOOD + "      examples:\n        match: [something unrelated]\n"
    message = fails(text, tmp_path)
    assert "spec.rules[0].examples.match[0]: rule 'refuse.demo' does not match its own example" in message
    text = GOOD + "      examples:\n        pass: [the forbidden thing]\n"
    assert "matches its own example" in fails(text, tmp_path)


def test_policy_wide_allow_examples(tmp_path: Path) -> None:
    text = GOOD + "  examples:\n    allow: [a forbidden thing here]\n"
    message = fails(text, tmp_path)
    assert "spec.examples.allow[0]: example 'a forbidden thing here' is not allowed" in message


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read policy"):
        load_policy(tmp_path / "absent.yaml")
    with pytest.raises(UsageError, match="empty policy file"):
        parse_policy(b"", "empty.yaml")
