"""The inventory as enclave reads it: hosts of enclave_hosts, their connection variables, --limit,
and the variables refused because they could weaken host-key checking or the connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave.errors import UsageError
from enclave.provision.inventory import load_inventory, parse_inventory

INVENTORY = """\
all:
  vars:
    ansible_user: admin
    site_var: outer
  children:
    enclave_hosts:
      vars:
        ansible_python_interpreter: /usr/bin/python3
        site_var: inner
      hosts:
        host1:
          ansible_host: 127.0.0.11
          ansible_ssh_private_key_file: /keys/id_ed25519
        host2:
          ansible_host: 127.0.0.12
          ansible_port: 2222
          ansible_user: other
      children:
        gpu:
          hosts:
            host3: {ansible_host: 127.0.0.13}
    elsewhere:
      hosts:
        unrelated: {ansible_host: 127.0.0.99}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yml"
    path.write_text(text)
    return path


def test_hosts_of_the_group_with_inherited_and_own_vars(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, INVENTORY))
    assert [h.name for h in inv.hosts] == ["host1", "host2", "host3"]  # child group members too
    host1, host2, host3 = inv.hosts
    assert (host1.address, host1.port, host1.user, host1.key_file) == (
        "127.0.0.11",
        22,
        "admin",
        Path("/keys/id_ed25519"),
    )
    assert (host2.address, host2.port, host2.user, host2.key_file) == ("127.0.0.12", 2222, "other", None)
    assert host1.vars["site_var"] == "inner"  # the nearer group wins over all
    assert host3.python == "/usr/bin/python3"
    assert inv.known_hosts == tmp_path / "known_hosts"


def test_limit_by_host_and_group(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, INVENTORY))
    assert [h.name for h in inv.select("host2")] == ["host2"]
    assert [h.name for h in inv.select("gpu,host1")] == ["host1", "host3"]
    assert [h.name for h in inv.select(None)] == ["host1", "host2", "host3"]
    with pytest.raises(UsageError, match="--limit 'nohost': no such host or group"):
        inv.select("nohost")
    with pytest.raises(UsageError, match="selects no host of enclave_hosts"):
        inv.select("elsewhere")  # a group outside enclave_hosts


@pytest.mark.parametrize(
    ("var", "value", "reason"),
    [
        ("ansible_ssh_common_args", "-o StrictHostKeyChecking=no", "host-key checking off"),
        ("ansible_ssh_extra_args", "-o UserKnownHostsFile=/dev/null", "host-key checking off"),
        ("ansible_host_key_checking", False, "always on"),
        ("ansible_connection", "local", "ssh only"),
        ("ansible_password", "secret", "keys only"),
        ("ansible_control_path_dir", "/tmp/shared", "own SSH control sockets"),
    ],
)
def test_refused_variables_name_the_host(tmp_path: Path, var: str, value: object, reason: str) -> None:
    doc = {"enclave_hosts": {"hosts": {"host1": {"ansible_host": "127.0.0.11", var: value}}}}
    with pytest.raises(UsageError, match=f"host host1: {var}( '[a-z]+')? is not allowed: .*{reason}"):
        parse_inventory(doc, tmp_path / "inv.yml")


def test_refused_variable_in_group_vars(tmp_path: Path) -> None:
    doc = {
        "enclave_hosts": {"vars": {"ansible_ssh_args": "-o StrictHostKeyChecking=no"}, "hosts": {"h": None}}
    }
    with pytest.raises(UsageError, match="group enclave_hosts vars: ansible_ssh_args is not allowed"):
        parse_inventory(doc, tmp_path / "inv.yml")


def test_ssh_connection_is_allowed(tmp_path: Path) -> None:
    doc = {"enclave_hosts": {"hosts": {"host1": {"ansible_connection": "ssh"}}}}
    assert parse_inventory(doc, tmp_path / "inv.yml").hosts[0].address == "host1"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"all": {"hosts": {"h": None}}}, "no hosts in group enclave_hosts"),
        ({"enclave_hosts": {"host": {"h": None}}}, "unknown key 'host'"),
        ({"enclave_hosts": {"hosts": ["h"]}}, "hosts must be a mapping"),
        (
            {"enclave_hosts": {"hosts": {"h": {"ansible_port": 70000}}}},
            "ansible_port 70000 is not a TCP port",
        ),
        ({"enclave_hosts": {"hosts": {"h": {"ansible_port": True}}}}, "is not a TCP port"),
        ({"enclave_hosts": {"hosts": {"h": {"ansible_host": "{{ lookup('env', 'X') }}"}}}}, "is a template"),
        (
            {"enclave_hosts": {"hosts": {"h": {"ansible_ssh_private_key_file": "keys/id"}}}},
            "must be an absolute path",
        ),
        ({"enclave_hosts": {"hosts": {"bad name": None}}}, "is not a plain host name"),
        ({"enclave_hosts": {"children": {"enclave_hosts": {}}}}, "is its own child"),
        (["not", "a", "mapping"], "not an Ansible YAML inventory"),
    ],
)
def test_bad_inventories_are_one_clear_error(tmp_path: Path, doc: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_inventory(doc, tmp_path / "inv.yml")


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read the inventory"):
        load_inventory(tmp_path / "missing.yml")
    with pytest.raises(UsageError, match=r"inventory.yml:3: not valid YAML"):
        load_inventory(write(tmp_path, "enclave_hosts:\n  hosts: [unclosed\n"))
