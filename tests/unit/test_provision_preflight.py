"""Preflight judgement (pure): what a host's probe output passes or fails."""

from __future__ import annotations

import pytest

from enclave.provision.preflight import HostPreflight, evaluate, parse_probe, probe_script, table, unreachable

GOOD = {
    "os_id": "debian",
    "os_version": "12",
    "os_name": "Debian GNU/Linux 12 (bookworm)",
    "python": "3.11.2",
    "disk_path": "/var/lib",
    "disk_free": str(10 * 1024 * 1024),  # KiB: 10 GiB
    "sudo": "yes",
    "engine": "20.10.24+dfsg1",
}


def by_name(checks: list) -> dict:
    return {c.name: c for c in checks}


def test_a_good_host_passes_everything() -> None:
    checks = by_name(evaluate(GOOD, need=100 * 1024 * 1024, skew=0.4, max_skew=5))
    assert set(checks) == {"sudo", "os", "python", "disk", "engine", "clock"}
    assert all(c.ok for c in checks.values()), checks
    assert checks["disk"].detail == "10.0 GiB free on /var/lib, 164.0 MiB needed"
    assert checks["clock"].detail == "skew +0.40 s (limit 5 s)"


@pytest.mark.parametrize(
    ("change", "check", "detail"),
    [
        ({"sudo": "no"}, "sudo", "Ansible cannot become root"),
        ({"os_id": "rhel", "os_version": "9.4", "os_name": "RHEL 9.4"}, "os", "RHEL 9.4: not supported"),
        ({"os_version": "11"}, "os", "not supported by the roles"),
        ({"python": "3.6.9"}, "python", "python 3.6.9: need 3.8 or newer"),
        ({"python": ""}, "python", "python missing"),
        ({"disk_free": "1024"}, "disk", "1.0 MiB free on /var/lib"),
        ({"disk_free": ""}, "disk", "free space unknown"),
        ({"engine": "Cannot connect to the Docker daemon"}, "engine", "not answering (Cannot connect"),
    ],
)
def test_each_failure_is_named(change: dict, check: str, detail: str) -> None:
    checks = by_name(evaluate({**GOOD, **change}, need=2 * 1024 * 1024, skew=0.0, max_skew=5))
    assert not checks[check].ok
    assert detail in checks[check].detail
    assert all(c.ok for name, c in checks.items() if name != check)


def test_clock_skew_beyond_the_limit_or_unreadable_fails() -> None:
    assert not by_name(evaluate(GOOD, 0, skew=-7.5, max_skew=5))["clock"].ok
    assert by_name(evaluate(GOOD, 0, skew=-4.9, max_skew=5))["clock"].ok
    assert by_name(evaluate(GOOD, 0, skew=None, max_skew=5))["clock"].detail == "host clock unreadable"


def test_parse_probe_separates_facts_and_existing_files() -> None:
    facts, files = parse_probe(
        "os_id=debian\nos_name=Debian = 12\n"
        "file=123 content/w/model.gguf.part\nfile=7 BUNDLE.dsse.json\nnoise\n"
    )
    assert facts == {"os_id": "debian", "os_name": "Debian = 12"}
    assert files == {"content/w/model.gguf.part": 123, "BUNDLE.dsse.json": 7}


def test_probe_script_quotes_what_it_is_given() -> None:
    script = probe_script("/opt/py thon/bin/python3", "/var/lib/enclave/incoming/x-1.0.0")
    assert "'/opt/py thon/bin/python3'" in script
    assert "timeout 20 sudo -n docker version" in script


def test_table_lists_every_check_and_marks_failures() -> None:
    good = HostPreflight("host1", "127.0.0.11:22", reachable=True, checks=evaluate(GOOD, 0, 0.0, 5))
    bad = unreachable("host2", "127.0.0.12:22", "Connection refused")
    text = table([good, bad])
    lines = text.splitlines()
    assert lines[0].split() == ["HOST", "CHECK", "RESULT", "DETAIL"]
    assert len(lines) == 1 + 6 + 1
    assert "host2  reach   FAIL    Connection refused" in text
    assert good.ok and not bad.ok and bad.failures[0].name == "reach"
