"""Bring the testbed's hosts up and down, and report on them.

Each host is a container of the offline host image (image.py) with systemd as PID 1, sshd and its
own Docker engine. It shares the controller's network namespace (host network only: no bridge
ever exists) and its sshd listens on one loopback address of its own: host N on 127.0.0.(10+N),
port 22. `--privileged` is never used; the capability set, seccomp and cgroup options below are
what systemd needs to boot unprivileged.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml
from docker.models.containers import Container

from enclave.errors import ProvisionError, UsageError
from enclave.testbed import image
from enclave.testbed.ssh import ensure_keypair, known_hosts_name, port_free, probe, write_file
from enclave.testbed.state import HostState, TestbedState

ENGINE_SCRIPT = Path(__file__).with_name("engine.sh")
LABEL = "enclave.testbed"  # value: the testbed's directory; down() removes only these
MAX_HOSTS = 32
SSH_PORT = 22
KEY_NAME = "id_ed25519"
BOOTED = ("running", "degraded")

Progress = Callable[[str], None]


def address_of(index: int) -> str:
    """Loopback address of host `index` (1-based)."""
    return f"127.0.0.{10 + index}"


def up(dir: Path, hosts: int, *, timeout: float = 300.0, progress: Progress | None = None) -> TestbedState:
    """Start `hosts` hosts for the testbed in `dir` (or reuse the ones already there), wait until
    each one's sshd answers with its pinned host key, write inventory.yml and known_hosts.
    `timeout` bounds the boot and SSH wait (not the one-time image build). On failure the
    hosts are left for inspection: `down` removes them."""
    if not 1 <= hosts <= MAX_HOSTS:
        raise UsageError(f"--hosts must be between 1 and {MAX_HOSTS}, not {hosts}")
    base = _directory(dir, create=True)
    say = progress or (lambda _msg: None)
    with _engine() as client:
        containers = _containers(client, base)
        if containers and len(containers) != hosts:
            raise UsageError(
                f"{base}: a testbed of {len(containers)} hosts is already up; "
                "take it down first to change the number of hosts"
            )
        tag = image.ensure_image(client, say)
        pub = ensure_keypair(base / KEY_NAME)
        if not containers:
            containers = _create(client, base, tag, hosts, pub.read_bytes(), say)
        for container in containers:
            if container.status != "running":
                container.start()
        say(f"waiting for {hosts} host(s) to boot")
        deadline = time.monotonic() + timeout
        lines = []
        for container in containers:
            _wait_booted(container, deadline)
            lines += _host_key_lines(container)
        write_file(base / "known_hosts", "".join(lines).encode(), 0o644)
        for container in containers:
            _wait_ssh(base, container, deadline)
        if Path("/sys/class/net/docker0").exists():
            raise ProvisionError(
                "a docker0 bridge exists on this machine: an engine was started with a bridge; "
                "remove it (ip link del docker0) and fix that engine's configuration"
            )
        _write_inventory(base, containers)
        return _state(client, base, containers)


def down(dir: Path) -> None:
    """Remove the containers of the testbed in `dir` (and only those), and the inventory and
    known_hosts that described them. The key pair stays, for the next `up`."""
    base = _directory(dir, create=False)
    with _engine() as client:
        containers = _containers(client, base)
        # Force-remove: the hosts hold nothing worth a clean shutdown, and killing PID 1 ends
        # every process of the host, inner engine and its containers included.
        with ThreadPoolExecutor(max_workers=max(1, len(containers))) as pool:
            list(pool.map(_remove, containers))
        if _containers(client, base):
            raise ProvisionError(f"{base}: testbed containers are still there after removal")
    for name in ("inventory.yml", "known_hosts"):
        (base / name).unlink(missing_ok=True)


def status(dir: Path) -> TestbedState:
    """Report each host of the testbed in `dir`: container, running, systemd state, SSH."""
    base = _directory(dir, create=False)
    with _engine() as client:
        return _state(client, base, _containers(client, base))


# --- containers -----------------------------------------------------------------------------


def _create(
    client: docker.DockerClient, base: Path, tag: str, hosts: int, pub: bytes, say: Progress
) -> list[Container]:
    for index in range(1, hosts + 1):
        if not port_free(address_of(index), SSH_PORT):
            raise ProvisionError(f"{address_of(index)}:{SSH_PORT} is already in use (another testbed up?)")
    created: list[Container] = []
    try:
        for index in range(1, hosts + 1):
            name, address = f"host{index}", address_of(index)
            say(f"creating {name} ({address})")
            container = client.containers.create(
                tag,
                name=f"enclave-testbed-{_dir_key(base)}-{name}",
                hostname=name,
                labels={
                    LABEL: str(base),
                    f"{LABEL}.host": name,
                    f"{LABEL}.index": str(index),
                    f"{LABEL}.address": address,
                    f"{LABEL}.port": str(SSH_PORT),
                },
                network_mode="host",
                extra_hosts={name: address},  # sudo and others resolve the own hostname
                cap_add=["ALL"],
                cap_drop=["SYS_RESOURCE"],  # the machine's own bounding set lacks it
                security_opt=["seccomp=unconfined"],
                tmpfs={"/run": "", "/run/lock": ""},
                volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
                # systemd must see its real cgroup path (/docker/ID) in the bind-mounted
                # hierarchy; in a private namespace it would think it owns the machine's root.
                cgroupns="host",
                environment={"container": "docker"},
                stop_signal="SIGRTMIN+3",  # systemd's "halt"
                detach=True,
            )
            created.append(container)
            # Per-host files go in before first boot, so sshd never listens anywhere else.
            container.put_archive("/", _host_files(address, pub))
    except (docker.errors.DockerException, ProvisionError) as err:
        for container in created:
            _remove(container)
        if isinstance(err, ProvisionError):
            raise
        raise ProvisionError(f"creating testbed host in {base} failed: {err}") from err
    return created


def _host_files(address: str, pub: bytes) -> bytes:
    uid = image.ADMIN_UID
    entries: list[tuple[str, int, int, bytes | None]] = [
        (f"home/{image.ADMIN_USER}/.ssh", 0o700, uid, None),
        (f"home/{image.ADMIN_USER}/.ssh/authorized_keys", 0o600, uid, pub),
        (
            "etc/ssh/sshd_config.d/10-enclave-listen.conf",
            0o644,
            0,
            f"ListenAddress {address}:{SSH_PORT}\n".encode(),
        ),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, mode, owner, data in entries:
            info = tarfile.TarInfo(path)
            info.mode, info.uid, info.gid, info.mtime = mode, owner, owner, int(time.time())
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _wait_booted(container: Container, deadline: float) -> None:
    name = _host_name(container)
    last = ""
    while time.monotonic() < deadline:
        container.reload()
        if container.status != "running":
            tail = container.logs(tail=1).decode(errors="replace").strip()
            raise ProvisionError(f"{name}: container stopped while booting ({tail or 'no log'})")
        remaining = max(1, int(deadline - time.monotonic()))
        result = container.exec_run(["timeout", str(remaining), "systemctl", "is-system-running", "--wait"])
        last = result.output.decode(errors="replace").strip()
        if last in BOOTED:
            return
        if last in ("maintenance", "stopping", "offline"):
            break
        time.sleep(1)  # systemd's bus is not up yet
    failed = container.exec_run(["systemctl", "--failed", "--plain", "--no-legend"]).output
    units = " ".join(line.split()[0] for line in failed.decode().splitlines() if line.strip())
    raise ProvisionError(
        f"{name}: did not finish booting (systemd: {last or 'no answer'}"
        + (f"; failed units: {units}" if units else "")
        + ")"
    )


def _host_key_lines(container: Container) -> list[str]:
    """known_hosts lines for every host key the host made at first boot, read through the
    engine (not over the network), so the first SSH contact is already pinned."""
    result = container.exec_run(["sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub"])
    if result.exit_code != 0:
        raise ProvisionError(f"{_host_name(container)}: cannot read its SSH host keys")
    host = known_hosts_name(container.labels[f"{LABEL}.address"], SSH_PORT)
    return [
        f"{host} {fields[0]} {fields[1]}\n"
        for fields in (line.split() for line in result.output.decode().splitlines())
        if len(fields) >= 2
    ]


def _wait_ssh(base: Path, container: Container, deadline: float) -> None:
    error: str | None = "not tried"
    while time.monotonic() < deadline:
        error = _probe(base, container)
        if error is None:
            return
        time.sleep(1)
    raise ProvisionError(f"{_host_name(container)}: SSH with the pinned key failed: {error}")


def _probe(base: Path, container: Container) -> str | None:
    return probe(
        container.labels[f"{LABEL}.address"],
        int(container.labels[f"{LABEL}.port"]),
        image.ADMIN_USER,
        base / KEY_NAME,
        base / "known_hosts",
    )


def _remove(container: Container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.DockerException as err:
        raise ProvisionError(f"{container.name}: removal failed: {err}") from err


# --- reporting ------------------------------------------------------------------------------


def _state(client: docker.DockerClient, base: Path, containers: list[Container]) -> TestbedState:
    hosts = []
    for container in containers:
        container.reload()
        running = container.status == "running"
        system, error = "", None
        if running:
            out = container.exec_run(["systemctl", "is-system-running"]).output
            system = out.decode(errors="replace").strip()
            error = _probe(base, container) if (base / "known_hosts").exists() else "no known_hosts"
        else:
            error = f"container is {container.status}"
        hosts.append(
            HostState(
                name=_host_name(container),
                address=container.labels[f"{LABEL}.address"],
                port=int(container.labels[f"{LABEL}.port"]),
                container_id=container.id,
                container_name=container.name,
                running=running,
                ssh_ok=error is None,
                system_state=system,
                error=error,
            )
        )
    return TestbedState(
        dir=base,
        image=containers[0].attrs["Config"]["Image"] if containers else image.image_tag(),
        user=image.ADMIN_USER,
        inventory=base / "inventory.yml",
        private_key=base / KEY_NAME,
        known_hosts=base / "known_hosts",
        hosts=tuple(hosts),
    )


def _write_inventory(base: Path, containers: list[Container]) -> None:
    hosts: dict[str, dict[str, Any]] = {
        _host_name(c): {
            "ansible_host": c.labels[f"{LABEL}.address"],
            "ansible_port": int(c.labels[f"{LABEL}.port"]),
            "ansible_user": image.ADMIN_USER,
            "ansible_ssh_private_key_file": str(base / KEY_NAME),
            # The hosts share the machine's network namespace: each keeps its model server on
            # its own loopback address too, where a real host would use 127.0.0.1.
            "enclave_deploy_model_address": c.labels[f"{LABEL}.address"],
        }
        for c in containers
    }
    inventory = {
        "all": {
            "children": {
                "enclave_hosts": {
                    "hosts": hosts,
                    "vars": {"ansible_python_interpreter": "/usr/bin/python3"},
                }
            }
        }
    }
    text = (
        "# Written by `enclave testbed up`. Host keys are pinned in known_hosts beside this file.\n"
        + yaml.safe_dump(inventory, sort_keys=False)
    )
    write_file(base / "inventory.yml", text.encode(), 0o644)


# --- helpers --------------------------------------------------------------------------------


@contextmanager
def _engine() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()  # negotiates the API version (dockerd 20.10 speaks 1.41)
        client.ping()
    except docker.errors.DockerException as err:
        raise ProvisionError(f"no Docker engine answers ({err}); start one with {ENGINE_SCRIPT}") from err
    try:
        yield client
    except docker.errors.DockerException as err:
        raise ProvisionError(f"Docker engine: {err}") from err
    finally:
        client.close()


def _directory(dir: Path, *, create: bool) -> Path:
    base = dir.expanduser().resolve()
    if base.exists() and not base.is_dir():
        raise UsageError(f"{base}: not a directory")
    if create:
        base.mkdir(parents=True, exist_ok=True)
    return base


def _containers(client: docker.DockerClient, base: Path) -> list[Container]:
    found = client.containers.list(all=True, filters={"label": f"{LABEL}={base}"})
    return sorted(found, key=lambda c: int(c.labels.get(f"{LABEL}.index", "0")))


def _host_name(container: Container) -> str:
    return str(container.labels.get(f"{LABEL}.host", container.name))


def _dir_key(base: Path) -> str:
    return hashlib.sha256(str(base).encode()).hexdigest()[:8]
