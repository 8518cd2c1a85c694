"""Static rules of the playbooks that the provisioning code relies on: one task per control,
named and tagged with its STIG ID and its severity category (CAT1-3), switched by its variable
and its category's; kernel-level controls skip inside containers; no role installs packages
(the hosts have no package source)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from enclave.provision import cklb
from enclave.provision.events import CONTROL_ID, category, category_switch, switch_name

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
HARDEN = PLAYBOOKS / "roles" / "enclave_harden"
CONTAINER_GUARD = "not (enclave_harden_in_container | bool)"
INSTALLERS = {
    "apt",
    "package",
    "dnf",
    "yum",
    "pip",
    "apt_repository",
    "get_url",
    "uri",
    "unarchive",
    "apt_key",
    "deb822_repository",
}


def tasks_of(path: Path) -> list[dict[str, Any]]:
    found = []
    for task in yaml.safe_load(path.read_text()) or []:
        found.append(task)
        for key in ("block", "rescue", "always"):
            found += task.get(key, [])
    return found


def all_role_tasks() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (p, t)
        for p in sorted((PLAYBOOKS / "roles").glob("*/*/*.yml"))
        if p.parent.name in ("tasks", "handlers")
        for t in tasks_of(p)
    ]


def harden_control_tasks() -> dict[str, list[dict[str, Any]]]:
    by_id: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((HARDEN / "tasks").glob("*.yml")):
        for task in tasks_of(path):
            match = CONTROL_ID.match(str(task.get("name", "")))
            if match:
                by_id.setdefault(match.group(1), []).append(task)
    return by_id


def when_list(task: dict[str, Any]) -> list[str]:
    when = task.get("when", [])
    return [when] if isinstance(when, str) else list(when)


CATALOGUE = cklb.load_catalogue(PLAYBOOKS)


def test_every_control_task_is_in_the_catalogue_and_back() -> None:
    assert set(harden_control_tasks()) == {c["id"] for c in CATALOGUE}


@pytest.mark.parametrize("control", CATALOGUE, ids=lambda c: c["id"])
def test_one_task_per_control_tagged_switched_and_fail_soft(control: dict[str, Any]) -> None:
    (task,) = harden_control_tasks()[control["id"]]
    assert task["name"].startswith(control["id"] + " ")
    assert task["tags"] == [control["id"], category(control)]
    assert f"{switch_name(control['id'])} | bool" in when_list(task)
    assert f"{category_switch(control)} | bool" in when_list(task)
    # A control that cannot be met is an open finding, not a stopped host.
    assert task["ignore_errors"] is True and task["register"] == "enclave_harden_result"
    guarded = CONTAINER_GUARD in when_list(task)
    assert guarded == (control["scope"] != "host"), f"{control['id']} ({control['scope']}) container guard"


def test_every_switch_defaults_on() -> None:
    defaults = yaml.safe_load((HARDEN / "defaults" / "main.yml").read_text())
    for control in CATALOGUE:
        assert defaults[switch_name(control["id"])] is True
    assert [defaults[f"enclave_harden_cat{n}"] for n in (1, 2, 3)] == [True, True, True]


def test_a_category_selected_by_tags_still_reads_the_host_context() -> None:
    """`--tags CAT1` runs the CAT I controls alone: what they need runs whatever the selection,
    and every untagged task of the role belongs to a control's category."""
    main = yaml.safe_load((HARDEN / "tasks" / "main.yml").read_text())
    always = {t["name"] for t in main if "always" in t.get("tags", [])}
    assert always == {"Collect what the controls need to know", "Report the hardening context"}
    for path in sorted((HARDEN / "tasks").glob("*.yml")):
        if path.name in ("main.yml", "context.yml"):
            continue
        for task in tasks_of(path):
            assert {"CAT1", "CAT2", "CAT3"} & set(task.get("tags", [])), f"{path.name}: {task['name']}"


def test_no_role_installs_anything() -> None:
    for path, task in all_role_tasks():
        modules = {k.removeprefix("ansible.builtin.").removeprefix("ansible.legacy.") for k in task}
        assert not modules & INSTALLERS, f"{path}: {task.get('name')}"


def test_site_runs_the_four_roles_in_order_and_verify_only_when_applying() -> None:
    (play,) = yaml.safe_load((PLAYBOOKS / "site.yml").read_text())
    assert play["hosts"] == "enclave_hosts" and play["become"] is True
    roles = [r["role"] for r in play["roles"]]
    assert roles == ["enclave_harden", "enclave_runtime", "enclave_deploy", "enclave_verify"]
    assert play["roles"][-1]["when"] == "not ansible_check_mode"


PWQUALITY_GUARDED = ("{{ enclave_harden_pwquality_path }}", "{{ enclave_harden_pwquality_pam_path }}")


def test_password_quality_controls_write_only_through_the_package_guard() -> None:
    """Without libpam-pwquality these paths fail the task with the reason (an open finding):
    no setting is written for, and no PAM line names, a module that is not installed."""
    tasks = tasks_of(HARDEN / "tasks" / "passwords.yml")
    ids = {str(t["name"]).split(" ", 1)[0] for t in tasks}
    assert ids == {"UBTU-22-215010"} | {f"UBTU-22-6110{n}" for n in (10, 15, 20, 25, 30, 35, 40, 45)}
    for task in tasks:
        if "ansible.builtin.lineinfile" not in task:
            assert "ansible.builtin.assert" in task and task["name"].startswith("UBTU-22-215010 ")
            continue
        path = task["ansible.builtin.lineinfile"]["path"]
        paths = [item["path"] for item in task["loop"]] if path == "{{ item.path }}" else [path]
        assert paths and all(p in PWQUALITY_GUARDED for p in paths), task["name"]
    defaults = yaml.safe_load((HARDEN / "defaults" / "main.yml").read_text())
    for var in ("enclave_harden_pwquality_path", "enclave_harden_pwquality_pam_path"):
        guard = defaults[var]
        assert "'libpam-pwquality' in enclave_harden_state.packages.split()" in guard
        assert "undef(hint=enclave_harden_pwquality_missing)" in guard
    assert defaults["enclave_harden_pwquality_minlen"] >= 15
    assert defaults["enclave_harden_pwquality_difok"] >= 8
    assert 1 <= defaults["enclave_harden_pwquality_retry"] <= 3
