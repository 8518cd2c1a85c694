"""Hardening drift on real files: the first run records a baseline, later runs name what
changed, and the baseline itself is held to the digest the audit log recorded."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from enclave.errors import ProvisionError
from enclave.runtime.agent.hardening import (
    BASELINE_EVENT,
    HardeningOutcome,
    Recorded,
    check_hardening,
    diff,
    snapshot,
)
from tests.unit.test_agent_support import make_etc


@pytest.fixture
def etc(tmp_path: Path) -> tuple[Path, ...]:
    return make_etc(tmp_path / "etc")


def first_run(paths: tuple[Path, ...], baseline: Path) -> Recorded:
    outcome = check_hardening(paths, baseline, None)
    assert outcome.result.result == "pass" and "first run" in outcome.result.summary
    assert outcome.baseline_event is not None
    return Recorded(outcome.baseline_event["sha256"], 7)


def kinds(outcome: HardeningOutcome) -> set[tuple[str, str]]:
    return {(f.kind, Path(f.name).name) for f in outcome.result.findings}


def test_first_run_records_a_baseline_the_log_can_vouch_for(tmp_path: Path, etc: tuple[Path, ...]) -> None:
    baseline = tmp_path / "agent.log.hardening.json"
    outcome = check_hardening(etc, baseline, None)
    event = outcome.baseline_event
    assert event is not None and event["event"] == BASELINE_EVENT and event["reason"] == "first run"
    assert event["sha256"] == hashlib.sha256(baseline.read_bytes()).hexdigest()
    assert baseline.stat().st_mode & 0o777 == 0o600
    files = json.loads(baseline.read_bytes())["files"]
    assert files[str(etc[1])]["mode"] == "0440" and files[str(etc[3])] == {"type": "absent"}
    assert str(etc[2] / "ops") in files  # a directory's entries are baselined too
    again = check_hardening(etc, baseline, Recorded(event["sha256"], 3))
    assert again.result.result == "pass" and again.baseline_event is None


def test_drift_is_named_by_file_and_field(tmp_path: Path, etc: tuple[Path, ...]) -> None:
    baseline = tmp_path / "b.json"
    recorded = first_run(etc, baseline)
    sshd, sudoers, sudoers_d, absent = etc
    sshd.write_text("PermitRootLogin yes\nPasswordAuthentication no\n")
    sudoers.chmod(0o666)
    os.chown(sudoers_d / "ops", 1000, 1000)
    (sudoers_d / "backdoor").write_text("eve ALL=(ALL) NOPASSWD: ALL\n")
    absent.write_text("now present\n")
    outcome = check_hardening(etc, baseline, recorded)
    assert outcome.result.result == "fail" and outcome.result.error is ProvisionError
    assert kinds(outcome) == {
        ("content", "sshd_config"),
        ("mode", "sudoers"),
        ("owner", "ops"),
        ("added", "backdoor"),
        ("type", "absent.conf"),
    }
    mode = next(f for f in outcome.result.findings if f.kind == "mode")
    assert mode.detail == "mode 0666, baseline 0440"


def test_removed_files_and_swapped_symlinks(tmp_path: Path, etc: tuple[Path, ...]) -> None:
    baseline = tmp_path / "b.json"
    recorded = first_run(etc, baseline)
    _, sudoers, sudoers_d, _ = etc
    (sudoers_d / "ops").unlink()
    sudoers.rename(tmp_path / "real-sudoers")
    sudoers.symlink_to(tmp_path / "real-sudoers")  # same bytes behind a link is still drift
    outcome = check_hardening(etc, baseline, recorded)
    assert kinds(outcome) == {("removed", "ops"), ("type", "sudoers")}


def test_an_edited_baseline_is_caught_by_the_recorded_digest(tmp_path: Path, etc: tuple[Path, ...]) -> None:
    baseline = tmp_path / "b.json"
    recorded = first_run(etc, baseline)
    etc[0].write_text("PermitRootLogin yes\n")
    # The insider refreshes the baseline so that it matches the changed host.
    refreshed = check_hardening(etc, tmp_path / "attacker.json", None)
    assert refreshed.baseline_event is not None
    baseline.write_bytes((tmp_path / "attacker.json").read_bytes())
    outcome = check_hardening(etc, baseline, recorded)
    assert outcome.result.result == "fail"
    assert (
        "changed since the audit log recorded it" in outcome.result.summary
        and "at seq 7" in outcome.result.summary
    )


def test_a_removed_baseline_is_not_silently_re_recorded(tmp_path: Path, etc: tuple[Path, ...]) -> None:
    baseline = tmp_path / "b.json"
    recorded = first_run(etc, baseline)
    baseline.unlink()
    outcome = check_hardening(etc, baseline, recorded)
    assert outcome.result.result == "fail" and outcome.baseline_event is None and not baseline.exists()
    assert "missing, but the audit log recorded one at seq 7" in outcome.result.summary


def test_a_baseline_the_log_does_not_know_fails(tmp_path: Path, etc: tuple[Path, ...]) -> None:
    baseline = tmp_path / "b.json"
    first_run(etc, baseline)
    outcome = check_hardening(etc, baseline, None)
    assert outcome.result.result == "fail" and "not recorded in this audit log" in outcome.result.summary


def test_rebaseline_on_purpose_records_what_it_accepted(tmp_path: Path, etc: tuple[Path, ...]) -> None:
    baseline = tmp_path / "b.json"
    recorded = first_run(etc, baseline)
    etc[1].chmod(0o400)
    outcome = check_hardening(etc, baseline, recorded, rebaseline=True)
    assert outcome.result.result == "pass" and outcome.baseline_event is not None
    assert outcome.baseline_event["reason"] == "re-baseline requested"
    assert [a["kind"] for a in outcome.baseline_event["accepted"]] == ["mode"]
    new = Recorded(outcome.baseline_event["sha256"], 9)
    assert check_hardening(etc, baseline, new).result.result == "pass"


def test_an_unreadable_path_never_becomes_a_baseline(tmp_path: Path, etc: tuple[Path, ...]) -> None:
    baseline = tmp_path / "b.json"
    blocked = etc[0] / "child"  # a path through a regular file: lstat fails with ENOTDIR
    outcome = check_hardening((*etc, blocked), baseline, None)
    assert outcome.result.result == "error" and outcome.result.failed
    assert not baseline.exists() and outcome.baseline_event is None


def test_diff_is_pure_and_symmetric_in_what_it_names() -> None:
    before = {"/a": {"type": "file", "mode": "0644", "uid": 0, "gid": 0, "sha256": "x"}}
    after = {"/b": {"type": "absent"}}
    assert {(f.kind, f.name) for f in diff(before, after)} == {("removed", "/a"), ("added", "/b")}
    assert diff(before, before) == []


def test_snapshot_does_not_follow_links(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("s")
    link = tmp_path / "link"
    link.symlink_to(target)
    entry = snapshot([link])[str(link)]
    assert entry["type"] == "symlink" and entry["target"] == str(target) and "sha256" not in entry
