"""The Ansible YAML inventory, read the way `enclave provision` needs it: the hosts of group
`enclave_hosts`, with the connection variables paramiko uses for preflight and push.

Ansible reads the same file for the playbook run, so the two always agree on which hosts exist.
Connection settings that could weaken what enclave enforces (another connection plugin, extra
SSH options that could turn host-key checking off, passwords) are refused here with the host
and variable named, and forced again as extra vars for the run (runner.py), because Ansible
also reads group_vars/ and host_vars/ directories that this parser does not.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from enclave.errors import UsageError

GROUP = "enclave_hosts"
GROUP_KEYS = frozenset({"hosts", "vars", "children"})
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")

# Variables that would let an inventory undo what enclave enforces for the run.
REFUSED_VARS: Mapping[str, str] = {
    "ansible_ssh_common_args": "extra SSH options could turn host-key checking off",
    "ansible_ssh_extra_args": "extra SSH options could turn host-key checking off",
    "ansible_ssh_args": "extra SSH options could turn host-key checking off",
    "ansible_sftp_extra_args": "extra SSH options could turn host-key checking off",
    "ansible_scp_extra_args": "extra SSH options could turn host-key checking off",
    "ansible_ssh_executable": "enclave runs the system's ssh",
    "ansible_host_key_checking": "host-key checking is always on",
    "ansible_ssh_host_key_checking": "host-key checking is always on",
    "ansible_control_path": "each run uses its own SSH control sockets",
    "ansible_control_path_dir": "each run uses its own SSH control sockets",
    "ansible_password": "hosts log in with keys only",
    "ansible_ssh_pass": "hosts log in with keys only",
    "ansible_ssh_password": "hosts log in with keys only",
}


@dataclass(frozen=True)
class Host:
    """One host of `enclave_hosts`, with the variables that reach it."""

    name: str
    address: str
    port: int
    user: str
    key_file: Path | None
    python: str
    vars: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: tuple[Host, ...]
    groups: Mapping[str, tuple[str, ...]]  # group name -> host names, every group in the file

    @property
    def known_hosts(self) -> Path:
        """Pinned host keys live beside the inventory."""
        return self.path.parent / "known_hosts"

    def select(self, limit: str | None) -> tuple[Host, ...]:
        """The hosts named by `--limit` (comma-separated host or group names), in inventory order."""
        if not limit:
            return self.hosts
        by_name = {h.name: h for h in self.hosts}
        wanted: set[str] = set()
        for word in (w.strip() for w in limit.split(",")):
            if not word:
                continue
            if word in by_name:
                wanted.add(word)
            elif word in self.groups:
                wanted.update(n for n in self.groups[word] if n in by_name)
            else:
                raise UsageError(f"--limit {word!r}: no such host or group in {GROUP} of {self.path}")
        if not wanted:
            raise UsageError(f"--limit {limit!r} selects no host of {GROUP} in {self.path}")
        return tuple(h for h in self.hosts if h.name in wanted)


def load_inventory(path: Path) -> Inventory:
    """Read and check an inventory; every problem is one UsageError naming the file and host."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the inventory: {exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_inventory(doc, path)


def parse_inventory(doc: Any, path: Path) -> Inventory:
    if not isinstance(doc, dict) or not doc:
        raise UsageError(f"{path}: not an Ansible YAML inventory (expected a mapping of groups)")
    walker = _Walker(path)
    for name, body in doc.items():
        walker.group(str(name), body, {}, ())
    members = walker.members.get(GROUP)
    if not members:
        raise UsageError(f"{path}: no hosts in group {GROUP} (the group site.yml provisions)")
    hosts = tuple(_host(path, name, walker.host_vars(name)) for name in members)
    return Inventory(path=path, hosts=hosts, groups={g: tuple(m) for g, m in walker.members.items()})


class _Walker:
    """Collects group membership and variables; later definitions of a host add to earlier ones."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.members: dict[str, list[str]] = {}
        self.own_vars: dict[str, dict[str, Any]] = {}
        self.inherited: dict[str, list[dict[str, Any]]] = {}  # host -> group vars, outermost first

    def group(self, name: str, body: Any, parent_vars: dict[str, Any], chain: Sequence[str]) -> None:
        where = f"{self.path}: group {name}"
        if name in chain:
            raise UsageError(f"{where}: is its own child ({' > '.join([*chain, name])})")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise UsageError(f"{where}: expected a mapping with hosts, vars or children")
        unknown = set(body) - GROUP_KEYS
        if unknown:
            raise UsageError(
                f"{where}: unknown key {sorted(map(str, unknown))[0]!r} (allowed: hosts, vars, children)"
            )
        group_vars = body.get("vars") or {}
        if not isinstance(group_vars, dict):
            raise UsageError(f"{where}: vars must be a mapping")
        _check_vars(f"{where} vars", group_vars)
        scoped = {**parent_vars, **group_vars}
        members = self.members.setdefault(name, [])
        hosts = body.get("hosts") or {}
        if not isinstance(hosts, dict):
            raise UsageError(f"{where}: hosts must be a mapping of host names")
        for host, host_vars in hosts.items():
            host = str(host)
            if not NAME.match(host):
                raise UsageError(f"{where}: host name {host!r} is not a plain host name")
            if host_vars is None:
                host_vars = {}
            if not isinstance(host_vars, dict):
                raise UsageError(f"{self.path}: host {host}: variables must be a mapping")
            _check_vars(f"{self.path}: host {host}", host_vars)
            if host not in members:
                members.append(host)
            self.own_vars.setdefault(host, {}).update(host_vars)
            self.inherited.setdefault(host, []).append(scoped)
        children = body.get("children") or {}
        if not isinstance(children, dict):
            raise UsageError(f"{where}: children must be a mapping of groups")
        for child, child_body in children.items():
            self.group(str(child), child_body, scoped, [*chain, name])
            for host in self.members.get(str(child), []):
                if host not in members:
                    members.append(host)

    def host_vars(self, host: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for scoped in self.inherited.get(host, []):
            merged.update(scoped)
        merged.update(self.own_vars.get(host, {}))
        return merged


def _check_vars(where: str, variables: Mapping[Any, Any]) -> None:
    for key, value in variables.items():
        key = str(key)
        if key in REFUSED_VARS:
            raise UsageError(f"{where}: {key} is not allowed: {REFUSED_VARS[key]}")
        if key == "ansible_connection" and value != "ssh":
            raise UsageError(f"{where}: ansible_connection {value!r} is not allowed: enclave uses ssh only")


def _host(path: Path, name: str, variables: dict[str, Any]) -> Host:
    where = f"{path}: host {name}"

    def text(key: str, default: str) -> str:
        value = variables.get(key, default)
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise UsageError(f"{where}: {key} must be a string")
        value = str(value)
        if "{{" in value or "{%" in value:
            raise UsageError(f"{where}: {key} is a template; give enclave a literal value")
        return value

    address = text("ansible_host", name)
    port_value = variables.get("ansible_port", 22)
    try:
        port = int(port_value)
    except (TypeError, ValueError):
        port = -1
    if isinstance(port_value, bool) or not 1 <= port <= 65535:
        raise UsageError(f"{where}: ansible_port {port_value!r} is not a TCP port")
    key_var = next(
        (k for k in ("ansible_ssh_private_key_file", "ansible_private_key_file") if k in variables), None
    )
    key_file = None
    if key_var is not None:
        key_file = Path(text(key_var, "")).expanduser()
        if not key_file.is_absolute():
            # Ansible resolves a relative key from its working directory, not the inventory's.
            raise UsageError(f"{where}: {key_var} must be an absolute path")
    return Host(
        name=name,
        address=address,
        port=port,
        user=text("ansible_user", getpass.getuser()),
        key_file=key_file,
        python=text("ansible_python_interpreter", "/usr/bin/python3"),
        vars=variables,
    )
