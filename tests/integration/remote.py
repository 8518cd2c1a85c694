"""Commands on testbed hosts over SSH, as an operator runs them: the testbed's key, its pinned
host keys (an unknown key is refused), no agent, no other keys."""

from __future__ import annotations

import paramiko

from enclave.testbed import TestbedState


def run(state: TestbedState, address: str, command: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `command` on the host at `address`."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(state.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        address,
        username="enclave",
        key_filename=str(state.private_key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        _, out, err = client.exec_command(command, timeout=120)
        stdout, stderr = out.read().decode(), err.read().decode()
        return out.channel.recv_exit_status(), stdout, stderr
    finally:
        client.close()
