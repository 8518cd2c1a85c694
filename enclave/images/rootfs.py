"""Offline root filesystem images: `debootstrap` a Debian root, customise it, `docker import` it.

No registry is reachable from the enclave (nor from CI), so `docker pull` is never an option:
every image the project runs starts from a root filesystem made here. The testbed's host image
(enclave.testbed.image) and the payload's base image (enclave.images.base) share this code;
each brings its own package list, customisation and image config.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import docker
import docker.errors

from enclave.errors import ProvisionError

Progress = Callable[[str], None]
Customise = Callable[[Path], None]

WORK_DIR = Path("/var/tmp")  # a root filesystem is hundreds of MB: not for a tmpfs /tmp


def build_rootfs_image(
    client: docker.DockerClient,
    tag: str,
    suite: str,
    packages: Sequence[str],
    customise: Customise,
    changes: Sequence[str],
    progress: Progress | None = None,
    *,
    what: str = "image",
    prefix: str = "enclave-rootfs-",
) -> None:
    """debootstrap `suite` (minbase + `packages`) into a scratch directory, run `customise` on
    it, and import it into the engine as `tag` with the Dockerfile-style `changes`.
    The scratch directory is always removed (mounts a failed debootstrap left are undone first)."""
    if shutil.which("debootstrap") is None:
        raise ProvisionError("debootstrap not found: run enclave/testbed/engine.sh first")
    with tempfile.TemporaryDirectory(dir=WORK_DIR, prefix=prefix) as tmp:
        root = Path(tmp) / "rootfs"
        try:
            if progress:
                progress(f"building {what} {tag}: debootstrap {suite} (about a minute)")
            debootstrap(root, suite, packages)
            customise(root)
            if progress:
                progress(f"importing {tag}")
            import_rootfs(client, root, tag, changes)
        finally:
            unmount_below(root)  # a failed debootstrap may leave proc/sys mounted in the root


def debootstrap(root: Path, suite: str, packages: Sequence[str]) -> None:
    """A minbase root of `suite` plus `packages`, from debootstrap's default mirror."""
    argv = ["debootstrap", "--variant=minbase"]
    if packages:
        argv.append(f"--include={','.join(packages)}")
    run([*argv, suite, str(root)], "debootstrap")


def import_rootfs(client: docker.DockerClient, root: Path, tag: str, changes: Sequence[str]) -> None:
    """`docker import` of `root`, streamed from tar (numeric owners, xattrs kept)."""
    repository, _, version = tag.partition(":")
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", "-", "."],
        stdout=subprocess.PIPE,
    )
    assert tar.stdout is not None
    try:
        client.api.import_image_from_stream(
            tar.stdout, repository=repository, tag=version, changes=list(changes)
        )
    except docker.errors.DockerException as err:
        raise ProvisionError(f"docker import of {tag} failed: {err}") from err
    finally:
        tar.stdout.close()
        if tar.wait() != 0:
            raise ProvisionError(f"tar of the root filesystem failed for {tag}")


def write_files(root: Path, files: Mapping[str, tuple[int, str]]) -> None:
    """Write each `relative path -> (mode, content)` into the root filesystem, replacing
    whatever debootstrap put there (a symlink included)."""
    for rel, (mode, content) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.write_text(content)
        path.chmod(mode)


def chroot(root: Path, argv: Sequence[str], what: str) -> None:
    run(["chroot", str(root), *argv], what)


def run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ProvisionError(f"{what} failed (exit {proc.returncode}): {tail[0]}")


def unmount_below(root: Path) -> None:
    prefix = str(root) + os.sep
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def has_image(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True
