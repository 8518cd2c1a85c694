"""The ansible-runner settings that keep host-key checking on whatever the inventory says."""

from __future__ import annotations

from pathlib import Path

from enclave.provision.runner import envvars, forced_vars, ssh_args


def test_host_key_checking_is_on_with_the_pinned_file_only(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    env = envvars(tmp_path / "run", known)
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True"  # ansible-runner's default is False
    args = env["ANSIBLE_SSH_ARGS"].split()
    assert f"UserKnownHostsFile={known}" in args
    assert "StrictHostKeyChecking=yes" in args and "GlobalKnownHostsFile=/dev/null" in args
    assert env["ANSIBLE_PIPELINING"] == "True" and env["ANSIBLE_TRANSPORT"] == "ssh"
    # Control sockets live in the run's own directory: never a master from an earlier run.
    assert env["ANSIBLE_SSH_CONTROL_PATH_DIR"] == str(tmp_path / "run" / "cp")
    assert env["ANSIBLE_CONFIG"] == str(tmp_path / "run" / "ansible.cfg")
    assert env["ANSIBLE_INVENTORY_ENABLED"] == "yaml"


def test_extra_vars_pin_the_connection_over_group_and_host_vars(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    forced = forced_vars(known, tmp_path / "run")
    assert forced["ansible_connection"] == "ssh"
    assert forced["ansible_ssh_args"] == ssh_args(known)
    assert forced["ansible_ssh_common_args"] == forced["ansible_ssh_extra_args"] == ""
    assert forced["ansible_host_key_checking"] is True and forced["ansible_ssh_host_key_checking"] is True
