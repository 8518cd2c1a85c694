"""The testbed host image, built offline from a debootstrap root filesystem and `docker import`
(the shared machinery is enclave.images.rootfs).

No registry is reachable from the enclave (nor from CI), so `docker pull` is never an option:
the image is a Debian minbase with systemd as PID 1, sshd and its own Docker engine, customised
here on the controller's side of the chroot. The tag is a hash of everything that goes into it
(suite, packages, masked units, files written), so a second `up` reuses the image and any change
to the recipe builds a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from enclave.images.rootfs import build_rootfs_image, chroot, has_image, write_files

SUITE = "bookworm"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",  # Ansible modules run on the host
    "sudo",  # Ansible `become` from the admin user
    "docker.io",  # the host's own (inner) engine
    "iproute2",
    "procps",
    # pam_pwquality, which the password complexity controls configure (STIG UBTU-22-215010);
    # debootstrap skips Recommends, so the cracklib dictionary that dictcheck reads is named.
    "libpam-pwquality",
    "cracklib-runtime",
)
REPOSITORY = "enclave-testbed-host"
ADMIN_USER = "enclave"
ADMIN_UID = 1000

# Units that make no sense, or do harm, in a container that shares the controller's network
# namespace and kernel: they would reconfigure the shared interfaces, DNS, clock, sysctls, kernel
# modules or devices of the machine, or wait for consoles that do not exist.
MASKED_UNITS = (
    "systemd-networkd.service",
    "systemd-networkd.socket",
    "systemd-networkd-wait-online.service",
    "systemd-resolved.service",
    "systemd-timesyncd.service",
    "systemd-sysctl.service",
    "systemd-modules-load.service",
    "kmod-static-nodes.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "systemd-hwdb-update.service",
    "systemd-remount-fs.service",
    "systemd-firstboot.service",
    "systemd-pstore.service",
    "systemd-journald-audit.socket",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "getty.target",
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "container-getty@.service",
    "apt-daily.timer",  # an enclave host has no package source
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",  # would scrub/trim the controller's filesystems
    "e2scrub_reap.service",
    "fstrim.timer",
    "ssh.socket",  # sshd runs as ssh.service, bound to one loopback address
)

# Files written into the root filesystem (path relative to it -> (mode, content)).
FILES: dict[str, tuple[int, str]] = {
    # The inner engine shares the controller's network namespace: no bridge (it would be a
    # 172.17.x docker0 on the machine), no iptables, no forwarding. vfs works nested on any
    # backing filesystem; the systemd cgroup driver nests inner containers under this host's
    # own cgroup (with cgroupfs they would land at the machine's top-level /docker/).
    "etc/docker/daemon.json": (
        0o644,
        json.dumps(
            {
                "bridge": "none",
                "iptables": False,
                "ip-forward": False,
                "ip-masq": False,
                "storage-driver": "vfs",
                "exec-opts": ["native.cgroupdriver=systemd"],
            },
            indent=2,
        )
        + "\n",
    ),
    # Docker does not need containerd's CRI plugin, whose streaming server would listen on a
    # TCP port of the shared loopback.
    "etc/containerd/config.toml": (0o644, 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n'),
    # Host keys are made on each host's first boot, so no two hosts share one.
    "etc/systemd/system/ssh.service.d/enclave-testbed.conf": (
        0o644,
        "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n",
    ),
    # Key-only logins by the admin user; the listen address is added per host at creation.
    "etc/ssh/sshd_config.d/00-enclave-testbed.conf": (
        0o644,
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PermitRootLogin no\nAllowUsers {ADMIN_USER}\n",
    ),
    f"etc/sudoers.d/{ADMIN_USER}": (0o440, f"{ADMIN_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n"),
    # An air-gapped host has no package source; empty so nothing on it tries to reach one.
    "etc/apt/sources.list": (0o644, ""),
    "etc/default/locale": (0o644, "LANG=C.UTF-8\n"),  # minbase has none; pam_env asks for it
    # Empty: systemd gives each host its own machine ID at boot.
    "etc/machine-id": (0o444, ""),
}

CHANGES = ('CMD ["/sbin/init"]', "ENV container=docker")

Progress = Callable[[str], None]


def image_tag() -> str:
    """`enclave-testbed-host:<hash of the recipe>`."""
    recipe = json.dumps(
        {
            "suite": SUITE,
            "packages": sorted(PACKAGES),
            "masked": sorted(MASKED_UNITS),
            "files": FILES,
            "user": [ADMIN_USER, ADMIN_UID],
            "changes": CHANGES,
        },
        sort_keys=True,
    )
    return f"{REPOSITORY}:{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"


def ensure_image(client: docker.DockerClient, progress: Progress | None = None) -> str:
    """Return the host image's tag, building it first if the engine does not have it."""
    tag = image_tag()
    if has_image(client, tag):
        return tag
    lock_dir = Path("/var/tmp/enclave-testbed")
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two `up`s at once build it once
        if not has_image(client, tag):
            _build(client, tag, progress)
            _prune_old(client, tag)
    return tag


def _prune_old(client: docker.DockerClient, keep: str) -> None:
    """Drop host images of earlier recipes (about 0.5 GB each) that no container uses."""
    for old in client.images.list(name=REPOSITORY):
        if keep not in old.tags:
            # Still used by a testbed that is up: left for the next build after its `down`.
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(old.id)


def _build(client: docker.DockerClient, tag: str, progress: Progress | None) -> None:
    build_rootfs_image(
        client,
        tag,
        SUITE,
        PACKAGES,
        _customise,
        CHANGES,
        progress,
        what="host image",
        prefix="enclave-testbed-",
    )


def _customise(root: Path) -> None:
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    for key in root.glob("etc/ssh/ssh_host_*"):
        key.unlink()
    dbus_id = root / "var/lib/dbus/machine-id"
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    write_files(root, FILES)
    # Non-root admin with passwordless sudo: root logins stay off, as a hardened host has them.
    # '*' rather than the default '!' so sshd does not treat the account as locked.
    chroot(
        root,
        [
            "useradd", "--create-home", "--shell", "/bin/bash",
            "--uid", str(ADMIN_UID), "--user-group", "--password", "*", ADMIN_USER,
        ],
        "useradd in the host root filesystem",
    )  # fmt: skip
    # Downloaded packages and indexes are dead weight, copied once per host by vfs.
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in root.glob(pattern):
            if path.is_file():
                path.unlink()
