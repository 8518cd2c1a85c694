"""Fold ansible-runner events into per-host results, and map the hardening tasks to control
statuses. Pure: fed event dicts, no I/O, so it is unit-tested on recorded event shapes.

Counting (per host, one entry per task, loops folded into their task):
- ok: succeeded without a change; changed: succeeded with a change; skipped;
- failed: failed and not ignored (the host stops); ignored: failed with ignore_errors (the
  hardening controls: an open finding, not a stopped host); unreachable: the host dropped out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CONTROL_ID = re.compile(r"^((?:UBTU-\d{2}|RHEL-\d{2})-\d{6})\b")
HARDEN_ROLE = "enclave_harden"
CONTEXT_TASK = "Report the hardening context"

# CKLB statuses
OPEN, NOT_A_FINDING, NOT_APPLICABLE, NOT_REVIEWED = "open", "not_a_finding", "not_applicable", "not_reviewed"


@dataclass(frozen=True)
class TaskRecord:
    name: str
    role: str
    status: str  # ok | changed | skipped | failed | ignored | unreachable
    duration: float
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "status": self.status, "duration": round(self.duration, 3)}
        if self.role:
            doc["role"] = self.role
        if self.message:
            doc["message"] = self.message
        return doc


@dataclass
class HostRun:
    host: str
    tasks: list[TaskRecord] = field(default_factory=list)
    unreachable: bool = False
    unreachable_reason: str = ""
    context: dict[str, Any] = field(default_factory=dict)  # what enclave_harden reported
    current: str = ""  # the task running now (progress view)

    def count(self, status: str) -> int:
        return sum(1 for t in self.tasks if t.status == status)

    @property
    def failed(self) -> int:
        return self.count("failed")

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.count("ok"),
            "changed": self.count("changed"),
            "failed": self.failed,
            "skipped": self.count("skipped"),
            "ignored": self.count("ignored"),
            "unreachable": self.unreachable,
        }

    def first_failure(self) -> TaskRecord | None:
        return next((t for t in self.tasks if t.status in ("failed", "unreachable")), None)


STATUS_OF_EVENT = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_skipped": "skipped",
    "runner_on_unreachable": "unreachable",
}


class RunFold:
    """Accumulates events as they stream in."""

    def __init__(self, hosts: Iterable[str]) -> None:
        self.hosts: dict[str, HostRun] = {h: HostRun(h) for h in hosts}
        self.stats: dict[str, Any] = {}

    def host(self, name: str) -> HostRun:
        return self.hosts.setdefault(name, HostRun(name))

    def feed(self, event: Mapping[str, Any]) -> str | None:
        """Take one event; returns the host it changed, if any."""
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_stats":
            self.stats = {k: data.get(k) for k in ("ok", "changed", "failures", "skipped", "dark", "ignored")}
            return None
        name = data.get("host")
        if not name:
            return None
        run = self.host(str(name))
        task = str(data.get("task", ""))
        if kind == "runner_on_start":
            run.current = task
            return run.host
        status = STATUS_OF_EVENT.get(kind)
        if status is None:
            return None
        res = data.get("res") or {}
        if status == "ok" and res.get("changed"):
            status = "changed"
        if status == "failed" and data.get("ignore_errors"):
            status = "ignored"
        message = ""
        if status in ("failed", "ignored", "unreachable"):
            message = _message(res)
        if status == "unreachable":
            run.unreachable = True
            run.unreachable_reason = message
        role = str(data.get("role") or "")
        if status == "ok" and role == HARDEN_ROLE and task == CONTEXT_TASK:
            msg = res.get("msg")
            if isinstance(msg, dict) and isinstance(msg.get("enclave_harden"), dict):
                run.context = dict(msg["enclave_harden"])
        run.tasks.append(TaskRecord(task, role, status, float(data.get("duration") or 0.0), message))
        run.current = ""
        return run.host


def _message(res: Mapping[str, Any]) -> str:
    """One line saying why a task failed, from a module result (loops: the first failed item)."""
    for item in res.get("results") or []:
        if isinstance(item, dict) and item.get("failed"):
            return _message(item)
    # A failed command's msg is only "non-zero return code": what it printed says why.
    keys = (
        ("stderr", "stdout", "msg", "reason")
        if res.get("rc") not in (None, 0)
        else ("msg", "stderr", "stdout", "reason")
    )
    for key in keys:
        value = res.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip().splitlines()[-1][:400]
    return ""


@dataclass(frozen=True)
class ControlResult:
    status: str
    details: str


def control_results(
    run: HostRun, catalogue: Iterable[Mapping[str, Any]], check_mode: bool
) -> dict[str, ControlResult]:
    """The CKLB status of every catalogue control on one host.

    ok -> not_a_finding; changed -> not_a_finding (fixed by this run), or open in check mode
    (it would change); ignored failure -> open, with the reason; skipped -> not_applicable when
    the control's scope belongs to the kernel/machine and the host is a container, else
    not_reviewed (switched off, alone or with its category); no event at all (the host stopped
    first, or a --tags selection left it out) -> not_reviewed.
    Several tasks of one control: the worst status wins.
    """
    by_id: dict[str, list[TaskRecord]] = {}
    for task in run.tasks:
        match = CONTROL_ID.match(task.name)
        if match and task.role == HARDEN_ROLE:
            by_id.setdefault(match.group(1), []).append(task)
    container = bool(run.context.get("container"))
    results: dict[str, ControlResult] = {}
    for control in catalogue:
        cid = str(control["id"])
        tasks = by_id.get(cid)
        if not tasks:
            reason = run.unreachable_reason or (
                f"its task did not run (tags {cid}, {category(control)} not selected, "
                "or the host stopped before it)"
            )
            results[cid] = ControlResult(NOT_REVIEWED, f"Not evaluated: {reason}")
            continue
        results[cid] = _worst([_one(t, control, container, check_mode) for t in tasks])
    return results


_RANK = {OPEN: 0, NOT_REVIEWED: 1, NOT_A_FINDING: 2, NOT_APPLICABLE: 3}


def _worst(results: list[ControlResult]) -> ControlResult:
    return min(results, key=lambda r: _RANK[r.status])


def _one(task: TaskRecord, control: Mapping[str, Any], container: bool, check_mode: bool) -> ControlResult:
    var = switch_name(str(control["id"]))
    if task.status == "ok":
        return ControlResult(NOT_A_FINDING, f"Checked by enclave_harden: {control.get('check', '')}".strip())
    if task.status == "changed":
        if check_mode:
            return ControlResult(
                OPEN,
                f"Audit (check mode): not in the required state, applying would change it. "
                f"Fix: {control.get('fix', '')}",
            )
        return ControlResult(
            NOT_A_FINDING, f"Remediated by enclave_harden in this run: {control.get('fix', '')}".strip()
        )
    if task.status in ("ignored", "failed"):
        return ControlResult(
            OPEN, f"Open: {task.message or 'the control failed'}. Fix: {control.get('fix', '')}".strip()
        )
    if task.status == "skipped":
        if container and control.get("scope", "host") != "host":
            return ControlResult(
                NOT_APPLICABLE,
                f"Not applicable inside a container: {control.get('scope')} settings belong to "
                "the host the container runs on.",
            )
        return ControlResult(
            NOT_REVIEWED,
            f"Not evaluated: switched off by {var}=false or by its category, "
            f"{category_switch(control)}=false (risk acceptance on record?).",
        )
    return ControlResult(NOT_REVIEWED, f"Not evaluated: {task.message or task.status}")


CATEGORY_OF_SEVERITY = {"high": "CAT1", "medium": "CAT2", "low": "CAT3"}  # DISA CAT I, II, III


def category(control: Mapping[str, Any]) -> str:
    """The control's severity category tag: CAT1 (high), CAT2 (medium), CAT3 (low)."""
    return CATEGORY_OF_SEVERITY[str(control.get("severity", "medium"))]


def category_switch(control: Mapping[str, Any]) -> str:
    """The variable that turns a whole category off: enclave_harden_cat1, _cat2, _cat3."""
    return "enclave_harden_" + category(control).lower()


def switch_name(control_id: str) -> str:
    """The variable that turns a control off: enclave_harden_ + ID, lower case, dashes as underscores."""
    return "enclave_harden_" + control_id.lower().replace("-", "_")
