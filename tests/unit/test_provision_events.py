"""Folding ansible-runner events (shaped as ansible-runner 2.4 / ansible-core 2.19 emit them)
into per-host counts and CKLB control statuses."""

from __future__ import annotations

import io
from typing import Any

import pytest

from enclave.provision.events import (
    NOT_A_FINDING,
    NOT_APPLICABLE,
    NOT_REVIEWED,
    OPEN,
    RunFold,
    control_results,
    switch_name,
)
from enclave.provision.view import ProgressView, line_for

CATALOGUE = [
    {"id": "UBTU-22-255040", "scope": "host", "check": "X11Forwarding no.", "fix": "Set it."},
    {"id": "UBTU-22-213010", "scope": "kernel", "check": "dmesg_restrict.", "fix": "sysctl."},
    {"id": "UBTU-22-653010", "scope": "audit", "check": "auditd.", "fix": "Install it."},
    {"id": "RHEL-09-211020", "scope": "host", "check": "Banner.", "fix": "Write it."},
    {"id": "RHEL-09-232040", "scope": "host", "check": "cron.", "fix": "chmod."},
]


def event(kind: str, host: str, task: str, role: str = "enclave_harden", **data: Any) -> dict[str, Any]:
    return {"event": kind, "event_data": {"host": host, "task": task, "role": role, "duration": 0.25, **data}}


def harden_events(
    host: str, container: bool, first: str = "runner_on_ok", first_res: dict | None = None
) -> list:
    return [
        event("runner_on_start", host, "UBTU-22-255040 SSH daemon disables X11 forwarding"),
        event(
            first,
            host,
            "UBTU-22-255040 SSH daemon disables X11 forwarding",
            res=first_res or {"changed": True},
        ),
        event(
            "runner_on_skipped", host, "UBTU-22-213010 Only privileged users read the kernel message buffer"
        ),
        event(
            "runner_on_failed",
            host,
            "UBTU-22-653010 Auditd is installed",
            ignore_errors=True,
            res={"failed": True, "msg": "auditd is not installed and the host has no package source"},
        ),
        event(
            "runner_on_ok", host, "RHEL-09-211020 Login prompts show the DOD banner", res={"changed": False}
        ),
        event("runner_on_skipped", host, "RHEL-09-232040 Cron configuration directories are mode 0700"),
        event(
            "runner_on_ok",
            host,
            "Report the hardening context",
            res={
                "changed": False,
                "msg": {"enclave_harden": {"container": container, "distribution": "Debian 12"}},
            },
        ),
    ]


def fold(events: list, hosts: tuple[str, ...] = ("host1",)) -> RunFold:
    f = RunFold(hosts)
    for e in events:
        f.feed(e)
    return f


def test_counts_per_host() -> None:
    f = fold(
        [
            *harden_events("host1", container=True),
            event("runner_on_ok", "host1", "Write config", role="enclave_runtime", res={"changed": True}),
        ]
    )
    run = f.hosts["host1"]
    assert run.summary() == {
        "ok": 2,
        "changed": 2,
        "failed": 0,
        "skipped": 2,
        "ignored": 1,
        "unreachable": False,
    }
    assert run.context == {"container": True, "distribution": "Debian 12"}
    failed = run.tasks[2]
    assert failed.status == "ignored" and failed.message.startswith("auditd is not installed")
    assert run.tasks[0].to_dict() == {
        "name": "UBTU-22-255040 SSH daemon disables X11 forwarding",
        "status": "changed",
        "duration": 0.25,
        "role": "enclave_harden",
    }


def test_unreachable_and_failed_hosts() -> None:
    f = fold(
        [
            event(
                "runner_on_unreachable",
                "host2",
                "Read the host context",
                res={"msg": "Failed to connect: Connection refused"},
            ),
            event(
                "runner_on_failed",
                "host1",
                "Write config",
                role="enclave_runtime",
                res={"results": [{"failed": False}, {"failed": True, "msg": "bad item"}]},
            ),
            {
                "event": "playbook_on_stats",
                "event_data": {"ok": {"host1": 3}, "failures": {"host1": 1}, "dark": {"host2": 1}},
            },
        ],
        ("host1", "host2"),
    )
    assert f.hosts["host2"].unreachable and "Connection refused" in f.hosts["host2"].unreachable_reason
    assert f.hosts["host1"].failed == 1 and f.hosts["host1"].first_failure().message == "bad item"
    assert f.stats["dark"] == {"host2": 1}


def test_apply_mode_statuses_in_a_container() -> None:
    results = control_results(
        fold(harden_events("host1", container=True)).hosts["host1"], CATALOGUE, check_mode=False
    )
    assert (
        results["UBTU-22-255040"].status == NOT_A_FINDING
        and "Remediated" in results["UBTU-22-255040"].details
    )
    assert results["UBTU-22-213010"].status == NOT_APPLICABLE
    assert (
        results["UBTU-22-653010"].status == OPEN
        and "auditd is not installed" in results["UBTU-22-653010"].details
    )
    assert results["RHEL-09-211020"].status == NOT_A_FINDING
    # A host-scope control that was skipped was switched off: not reviewed, naming the switch.
    assert results["RHEL-09-232040"].status == NOT_REVIEWED
    assert "enclave_harden_rhel_09_232040=false" in results["RHEL-09-232040"].details


def test_check_mode_a_change_is_an_open_finding() -> None:
    results = control_results(
        fold(harden_events("host1", container=True)).hosts["host1"], CATALOGUE, check_mode=True
    )
    assert (
        results["UBTU-22-255040"].status == OPEN and "Audit (check mode)" in results["UBTU-22-255040"].details
    )
    assert results["RHEL-09-211020"].status == NOT_A_FINDING


def test_outside_a_container_a_skipped_kernel_control_was_switched_off() -> None:
    results = control_results(
        fold(harden_events("host1", container=False)).hosts["host1"], CATALOGUE, check_mode=False
    )
    assert results["UBTU-22-213010"].status == NOT_REVIEWED


def test_controls_that_never_ran_are_not_reviewed() -> None:
    f = fold([event("runner_on_unreachable", "host1", "Read the host context", res={"msg": "timed out"})])
    results = control_results(f.hosts["host1"], CATALOGUE, check_mode=False)
    assert {r.status for r in results.values()} == {NOT_REVIEWED}
    assert "timed out" in results["UBTU-22-255040"].details


@pytest.mark.parametrize(
    ("statuses", "worst"),
    [(("runner_on_ok", "runner_on_failed"), OPEN), (("runner_on_ok", "runner_on_ok"), NOT_A_FINDING)],
)
def test_the_worst_task_of_a_control_wins(statuses: tuple[str, str], worst: str) -> None:
    events = [
        event(kind, "host1", f"UBTU-22-255040 part {i}", res={"changed": False}, ignore_errors=True)
        for i, kind in enumerate(statuses)
    ]
    assert (
        control_results(fold(events).hosts["host1"], CATALOGUE[:1], check_mode=False)["UBTU-22-255040"].status
        == worst
    )


def test_tasks_of_other_roles_are_not_controls() -> None:
    events = [
        event(
            "runner_on_failed", "host1", "UBTU-22-255040 lookalike", role="enclave_verify", res={"msg": "x"}
        )
    ]
    assert (
        control_results(fold(events).hosts["host1"], CATALOGUE[:1], check_mode=False)["UBTU-22-255040"].status
        == NOT_REVIEWED
    )


def test_switch_names_and_progress_line() -> None:
    assert switch_name("UBTU-22-255040") == "enclave_harden_ubtu_22_255040"
    run = fold(harden_events("host1", True)[:1]).hosts["host1"]
    line = line_for(run, "ansible", width=200)
    assert line.startswith("host1        ansible      0 tasks")
    assert line.endswith("UBTU-22-255040 SSH daemon disables X11 forwarding")
    assert len(line_for(run, "ansible", width=40)) == 40


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_view_redraws_in_place_on_a_terminal_and_is_silent_otherwise() -> None:
    stream = Tty()
    view = ProgressView(["host1", "host2"], stream)
    view.set_phase("host1", "preflight")
    first = stream.getvalue()
    assert first.count("\n") == 2 and "\x1b[" not in first.split("\x1b[2K", 1)[0]
    view.set_phase("host2", "push")
    assert stream.getvalue()[len(first) :].startswith("\x1b[2F")  # back up over the two lines
    view.restart()
    before = len(stream.getvalue())
    view.set_phase("host2", "ansible")
    assert not stream.getvalue()[before:].startswith("\x1b[2F")  # drawn below, not over
    quiet = io.StringIO()
    ProgressView(["host1"], quiet).set_phase("host1", "push")
    assert quiet.getvalue() == ""


def test_a_failed_command_is_explained_by_what_it_printed_not_by_its_exit_status() -> None:
    reason = "enclave-gateway not healthy after 120 s (restarting unhealthy): enclave: policy.yaml: bad"
    f = fold(
        [
            event(
                "runner_on_failed",
                "host1",
                "Wait until each container's health check passes",
                role="enclave_deploy",
                res={
                    "results": [
                        {"failed": False, "rc": 0},
                        {
                            "failed": True,
                            "rc": 1,
                            "msg": "non-zero return code",
                            "stderr": reason,
                            "stdout": "",
                        },
                    ]
                },
            ),
            event("runner_on_failed", "host2", "Assert", res={"failed": True, "msg": "assertion says why"}),
        ],
        ("host1", "host2"),
    )
    assert f.hosts["host1"].first_failure().message == reason
    assert f.hosts["host2"].first_failure().message == "assertion says why"
