"""The local simulated enclave: real containers, real systemd, real sshd, real inner engines.

Two hosts are brought up once for the module; every check talks to them over real SSH with the
written key and known_hosts, host-key checking ON. The last test takes the testbed down.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import docker
import paramiko
import pytest
import yaml

from enclave.testbed import TestbedState, address_of, down, status, up

pytestmark = pytest.mark.integration

HOSTS = 2
USER = "enclave"


@pytest.fixture(scope="module")
def testbed(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestbedState]:
    directory = tmp_path_factory.mktemp("testbed")
    try:
        yield up(directory, HOSTS)
    finally:
        down(directory)  # also after a failed up; a no-op after the last test's own down


def connect(state: TestbedState, address: str, user: str = USER) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(state.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        address,
        port=22,
        username=user,
        key_filename=str(state.private_key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


def run(client: paramiko.SSHClient, command: str, timeout: float = 60) -> tuple[int, str]:
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode()
    code = stdout.channel.recv_exit_status()
    return code, out + stderr.read().decode()


def no_docker0() -> bool:
    return not Path("/sys/class/net/docker0").exists()


def test_up_reports_every_host(testbed: TestbedState) -> None:
    assert testbed.up
    assert [h.name for h in testbed.hosts] == ["host1", "host2"]
    assert [h.address for h in testbed.hosts] == ["127.0.0.11", "127.0.0.12"]
    assert all(h.running and h.ssh_ok and h.system_state in ("running", "degraded")
               for h in testbed.hosts)  # fmt: skip


def test_inventory_key_and_known_hosts(testbed: TestbedState) -> None:
    inventory = yaml.safe_load(testbed.inventory.read_text())
    hosts = inventory["all"]["children"]["enclave_hosts"]["hosts"]
    assert set(hosts) == {"host1", "host2"}
    for index, name in enumerate(sorted(hosts), start=1):
        assert hosts[name] == {
            "ansible_host": address_of(index),
            "ansible_port": 22,
            "ansible_user": USER,
            "ansible_ssh_private_key_file": str(testbed.private_key),
            "enclave_deploy_model_address": address_of(index),  # one shared network namespace
        }
    assert stat.S_IMODE(testbed.private_key.stat().st_mode) == 0o600
    pinned = paramiko.HostKeys(str(testbed.known_hosts))
    assert {"127.0.0.11", "127.0.0.12"} <= set(pinned.keys())
    # Each host made its own host keys at first boot.
    assert pinned["127.0.0.11"]["ssh-ed25519"] != pinned["127.0.0.12"]["ssh-ed25519"]


@pytest.mark.parametrize("index", range(1, HOSTS + 1))
def test_host_boots_systemd_with_its_own_engine(testbed: TestbedState, index: int) -> None:
    with connect(testbed, address_of(index)) as client:
        code, out = run(client, "systemctl is-system-running")
        assert out.strip() in ("running", "degraded"), out
        code, out = run(client, "hostname")
        assert out.strip() == f"host{index}"
        code, out = run(client, "sudo -n docker info --format '{{json .}}'")
        assert code == 0, out
        info = json.loads(out)
        assert info["Driver"] == "vfs"
        assert info["CgroupDriver"] == "systemd"
        # No bridge network at all: daemon.json has "bridge": "none".
        code, out = run(client, "sudo -n docker network ls --format '{{.Name}}'")
        assert code == 0 and sorted(out.split()) == ["host", "none"], out
        # sshd listens on this host's own loopback address and nowhere else.
        code, out = run(client, "sudo -n sshd -T | grep -i '^listenaddress'")
        assert out.split() == ["listenaddress", f"{address_of(index)}:22"], out
    assert no_docker0()


def test_inner_engine_runs_a_container(testbed: TestbedState) -> None:
    # A one-binary image made on the host itself: nothing is pulled from anywhere.
    script = (
        "set -e; d=$(mktemp -d); cd $d; mkdir -p usr/bin lib/x86_64-linux-gnu lib64;"
        " cp /usr/bin/echo usr/bin/; cp /lib/x86_64-linux-gnu/libc.so.6 lib/x86_64-linux-gnu/;"
        " cp /lib64/ld-linux-x86-64.so.2 lib64/;"
        " tar -cf - . | sudo -n docker import - enclave-test-echo:1 >/dev/null;"
        " sudo -n docker run --rm --network none enclave-test-echo:1 /usr/bin/echo inner-ok"
    )
    with connect(testbed, address_of(1)) as client:
        code, out = run(client, script, timeout=120)
    assert code == 0 and "inner-ok" in out, out
    assert no_docker0()


def test_host_key_checking_is_on(testbed: TestbedState, tmp_path: Path) -> None:
    # An empty known_hosts: the host key is unknown, so the connection is refused.
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    client = paramiko.SSHClient()
    client.load_host_keys(str(empty))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        client.connect(
            address_of(1),
            username=USER,
            key_filename=str(testbed.private_key),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
    client.close()


def test_root_login_refused(testbed: TestbedState) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        connect(testbed, address_of(1), user="root")


def test_status_then_down_removes_its_containers(testbed: TestbedState) -> None:
    now = status(testbed.dir)
    assert now.up and [h.container_id for h in now.hosts] == [h.container_id for h in testbed.hosts]
    down(testbed.dir)
    engine = docker.from_env()
    try:
        for host in testbed.hosts:
            with pytest.raises(docker.errors.NotFound):
                engine.containers.get(host.container_id)
        assert engine.containers.list(all=True, filters={"label": f"enclave.testbed={testbed.dir}"}) == []
    finally:
        engine.close()
    after = status(testbed.dir)
    assert after.hosts == () and not after.up
    assert not testbed.inventory.exists() and not testbed.known_hosts.exists()
    assert no_docker0()
