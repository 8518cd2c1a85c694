"""What `up` and `status` report about a testbed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class HostState:
    name: str  # inventory name and hostname: host1, host2, ...
    address: str  # loopback address sshd listens on: 127.0.0.11, 127.0.0.12, ...
    port: int
    container_id: str | None  # None: no container for this host
    container_name: str | None
    running: bool
    ssh_ok: bool  # logged in with the testbed key, host key pinned, sudo works
    system_state: str  # `systemctl is-system-running`: running, degraded, ... or "" if unknown
    error: str | None = None  # why ssh_ok is False, if known

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TestbedState:
    __test__ = False  # not a pytest test class, despite the name

    dir: Path
    image: str
    user: str  # admin user on every host (key-only login, passwordless sudo)
    inventory: Path
    private_key: Path
    known_hosts: Path
    hosts: tuple[HostState, ...] = field(default_factory=tuple)

    @property
    def up(self) -> bool:
        """Every host running and reachable over SSH with the pinned host key."""
        return bool(self.hosts) and all(h.running and h.ssh_ok for h in self.hosts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir),
            "image": self.image,
            "user": self.user,
            "inventory": str(self.inventory),
            "private_key": str(self.private_key),
            "known_hosts": str(self.known_hosts),
            "up": self.up,
            "hosts": [h.to_dict() for h in self.hosts],
        }
