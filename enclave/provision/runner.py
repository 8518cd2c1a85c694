"""Drive site.yml through ansible-runner, with its known pitfalls handled:

- host-key checking: ansible-runner sets ANSIBLE_HOST_KEY_CHECKING=False unless told; we set it
  True and give OpenSSH the pinned known_hosts with StrictHostKeyChecking=yes (and no global
  known_hosts), and force the same as extra vars so no inventory variable can undo it;
- a fresh private data dir and a unique ident per run, suppress_env_files (ansible-runner would
  otherwise persist its kwargs, extra vars included, under env/), and so every setting goes in
  through envvars (settings= is dropped with suppress_env_files); a private ansible.cfg so no
  ansible.cfg from the working directory, home or /etc applies;
- OpenSSH connection with pipelining, forks = number of hosts, per-run ControlPath directory (a
  master left by an earlier run, authenticated under an older pin, is never reused);
- the event handler returns True (False would drop the event from the artifacts);
- facts are never read back through get_fact_cache() (empty with ansible-core 2.19): what the
  roles decide is reported in events.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ansible_runner

from enclave.errors import ProvisionError
from enclave.provision.events import RunFold

DEFAULT_TIMEOUT = 3600  # seconds for the whole playbook run

OnEvent = Callable[[RunFold, str | None], None]


@dataclass(frozen=True)
class RunOutcome:
    status: str  # ansible-runner's: successful | failed | timeout | canceled | error
    rc: int
    fold: RunFold
    ident: str
    seconds: float


def ssh_args(known_hosts: Path) -> str:
    return " ".join(
        [
            f"-o UserKnownHostsFile={known_hosts}",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o StrictHostKeyChecking=yes",
            "-o ControlMaster=auto",
            "-o ControlPersist=60s",
            "-o ServerAliveInterval=15",
        ]
    )


def envvars(data_dir: Path, known_hosts: Path) -> dict[str, str]:
    """Every Ansible setting of the run, as environment variables."""
    return {
        "ANSIBLE_CONFIG": str(data_dir / "ansible.cfg"),
        "ANSIBLE_HOME": str(data_dir / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(data_dir / "tmp"),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_ARGS": ssh_args(known_hosts),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(data_dir / "cp"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_TRANSPORT": "ssh",
        "ANSIBLE_INVENTORY_ENABLED": "yaml",
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_TIMEOUT": "30",
        "ANSIBLE_NOCOLOR": "True",
    }


def forced_vars(known_hosts: Path, data_dir: Path) -> dict[str, Any]:
    """Extra vars (the highest precedence) that pin the connection whatever the inventory's
    group_vars/ and host_vars/ say."""
    return {
        "ansible_connection": "ssh",
        "ansible_ssh_args": ssh_args(known_hosts),
        "ansible_ssh_common_args": "",
        "ansible_ssh_extra_args": "",
        "ansible_host_key_checking": True,
        "ansible_ssh_host_key_checking": True,
        "ansible_control_path_dir": str(data_dir / "cp"),
    }


def run_site(
    project_dir: Path,
    inventory: Path,
    known_hosts: Path,
    hosts: Sequence[str],
    extravars: Mapping[str, Any],
    check: bool,
    on_event: OnEvent | None = None,
    timeout: int = DEFAULT_TIMEOUT,
    playbook: str = "site.yml",
    secret_env: Mapping[str, str] | None = None,
) -> RunOutcome:
    """Run `playbook` from `project_dir` on `hosts` (names from `inventory`). `secret_env`
    reaches the Ansible process's environment only (suppress_env_files: never a file)."""
    if not (project_dir / playbook).is_file():
        raise ProvisionError(f"{project_dir / playbook}: no such playbook in the verified bundle")
    fold = RunFold(hosts)
    ident = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    data_dir = Path(tempfile.mkdtemp(prefix="enclave-run-"))
    started = time.monotonic()
    try:
        for sub in ("cp", "tmp", "ansible-home"):
            (data_dir / sub).mkdir(mode=0o700)
        (data_dir / "ansible.cfg").write_text(
            "# empty: every setting comes from the environment\n[defaults]\n"
        )

        def handler(event: dict[str, Any]) -> bool:
            changed = fold.feed(event)
            if on_event is not None:
                on_event(fold, changed)
            return True  # keep the event (False would drop it)

        result = ansible_runner.run(
            private_data_dir=str(data_dir),
            project_dir=str(project_dir),
            playbook=playbook,
            inventory=str(inventory.resolve()),
            limit=",".join(hosts),
            forks=max(1, len(hosts)),
            extravars={**extravars, **forced_vars(known_hosts.resolve(), data_dir)},
            envvars={**envvars(data_dir, known_hosts.resolve()), **(secret_env or {})},
            cmdline="--check" if check else None,
            ident=ident,
            suppress_env_files=True,
            quiet=True,
            event_handler=handler,
            timeout=timeout,
        )
        return RunOutcome(str(result.status), int(result.rc or 0), fold, ident, time.monotonic() - started)
    finally:
        _close_masters(data_dir / "cp")
        shutil.rmtree(data_dir, ignore_errors=True)


def _close_masters(control_dir: Path) -> None:
    """Stop the SSH master connections this run left (ControlPersist would keep them a minute)."""
    if not control_dir.is_dir():
        return
    for socket in control_dir.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "enclave-control-socket"],
            capture_output=True,
            timeout=10,
            check=False,
        )
