"""What a check found: findings, one result per check, and how results become exit codes.

Pure data. A result becomes one `agent-check` record in the audit log (`record_fields`) and
one line per finding for a person (`lines`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from enclave.errors import EnclaveError, IntegrityError, PolicyError, ProvisionError
from enclave.runtime.audit.records import AGENT_CHECK, FAILED_RESULTS

Check = Literal["integrity", "images", "hardening", "canaries"]
Result = Literal["pass", "fail", "error", "not_applicable"]

# Run order, which is also the order in which failures pick the exit code of `--once`.
CHECKS: tuple[Check, ...] = ("integrity", "images", "hardening", "canaries")
MAX_RECORDED_FINDINGS = 100  # one record stays small even when a whole tree was replaced

# A failing check raises the error of its kind: changed bytes or images are integrity (3),
# hardening drift is a failed post-check of provisioning (7), canary drift means the
# safety stack no longer behaves as signed (8). Signature failures carry TrustError (4).
ERRORS: dict[Check, type[EnclaveError]] = {
    "integrity": IntegrityError,
    "images": IntegrityError,
    "hardening": ProvisionError,
    "canaries": PolicyError,
}


@dataclass(frozen=True)
class Finding:
    """One thing that is wrong. `name` is what a person looks at: a member path, a file, a
    container, a canary id."""

    kind: str
    name: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "detail": self.detail}

    def line(self) -> str:
        return f"{self.name}: {self.detail}"


@dataclass(frozen=True)
class CheckResult:
    check: Check
    result: Result
    summary: str  # one line
    findings: tuple[Finding, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)  # check-specific facts for the record
    error: type[EnclaveError] | None = None  # set when failed: the error (exit code) it maps to
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.result in FAILED_RESULTS

    def record_fields(self, round_number: int) -> dict[str, Any]:
        findings = [f.to_dict() for f in self.findings[:MAX_RECORDED_FINDINGS]]
        fields: dict[str, Any] = {
            "event": AGENT_CHECK,
            "check": self.check,
            "result": self.result,
            "summary": self.summary,
            "findings": findings,
            "findings_total": len(self.findings),
            "round": round_number,
            "duration_us": int(self.seconds * 1e6),
            **self.data,
        }
        return fields

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "result": self.result,
            "summary": self.summary,
            "findings": [f.to_dict() for f in self.findings],
            "seconds": round(self.seconds, 3),
            **self.data,
        }

    def lines(self) -> list[str]:
        return [f"{self.check}: {self.result}: {self.summary}"] + [f"  {f.line()}" for f in self.findings]


def passed(check: Check, summary: str, **data: Any) -> CheckResult:
    return CheckResult(check, "pass", summary, data=data)


def not_applicable(check: Check, summary: str, **data: Any) -> CheckResult:
    return CheckResult(check, "not_applicable", summary, data=data)


def failed(
    check: Check,
    summary: str,
    findings: Sequence[Finding],
    error: type[EnclaveError] | None = None,
    **data: Any,
) -> CheckResult:
    return CheckResult(check, "fail", summary, tuple(findings), data, error or ERRORS[check])


def could_not_run(check: Check, finding: Finding, error: type[EnclaveError] | None = None) -> CheckResult:
    """A check that cannot run is a failed check (docs/GATEWAY.md section 6: every failure is closed)."""
    return CheckResult(
        check, "error", f"could not run: {finding.detail}", (finding,), {}, error or ERRORS[check]
    )


def first_failure(results: Sequence[CheckResult]) -> EnclaveError | None:
    """The typed error for `--once`: the first failing check in run order, naming its first
    finding, with a count of the rest."""
    failing = sorted((r for r in results if r.failed), key=lambda r: CHECKS.index(r.check))
    if not failing:
        return None
    first = failing[0]
    assert first.error is not None
    detail = first.findings[0].line() if first.findings else first.summary
    notes = []
    if len(first.findings) > 1:
        notes.append(f"{len(first.findings) - 1} more findings")
    if len(failing) > 1:
        notes.append(f"also failing: {', '.join(r.check for r in failing[1:])}")
    tail = f" ({'; '.join(notes)}; see the audit log)" if notes else ""
    return first.error(f"agent {first.check} check: {detail}{tail}")


__all__ = [
    "CHECKS",
    "ERRORS",
    "Check",
    "CheckResult",
    "Finding",
    "Result",
    "could_not_run",
    "failed",
    "first_failure",
    "not_applicable",
    "passed",
]
