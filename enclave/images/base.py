"""`enclave images base`: the Debian base of the reference images, built offline.

A minbase root from `debootstrap` (enclave.images.rootfs, shared with the testbed's host image)
with Python and the one runtime library the model server needs, stripped of what an enclave
never reads (documentation, translations, package indexes and caches) and given a non-root
user. The tag is a hash of the whole recipe, so a second build is a cache hit and any change
to the recipe (suite, packages, removals, user, image config) makes a new image.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from enclave.images.rootfs import WORK_DIR, build_rootfs_image, chroot, has_image, write_files

if TYPE_CHECKING:
    import docker

SUITE = "bookworm"
PYTHON = (3, 11)  # bookworm's python3; wheels for the images are made for this version
PACKAGES = (
    "python3",  # the gateway, the agent and the model server's launcher
    "libgomp1",  # OpenMP runtime: llama.cpp in the xllamacpp wheel links it
)
REPOSITORY = "enclave-base"
USER, UID = "enclave", 10001  # the images run as this user (USER 10001:10001), never as root

# Removed from the root filesystem (globs relative to it), except files named in KEEP.
REMOVE = (
    "usr/share/doc/*/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/share/lintian/*",
    "usr/share/bash-completion/*",
    "var/cache/apt/*",
    "var/cache/debconf/*-old",
    "var/lib/apt/lists/*",
    "var/log/*",
)
KEEP = ("copyright",)  # Debian's per-package licence texts stay with the binaries

# Files written into the root filesystem (path relative to it -> (mode, content)).
FILES: dict[str, tuple[int, str]] = {
    # An enclave has no package source; empty so nothing in the image tries to reach one.
    "etc/apt/sources.list": (0o644, ""),
}

BASE_LABEL = "enclave.base"  # inherited by every image built on it: prunes find their build stages
CHANGES = (
    f"LABEL {BASE_LABEL}={SUITE}-minbase",
    "ENV LANG=C.UTF-8",
    # The root filesystem is read-only at run time: nothing should try to write bytecode.
    "ENV PYTHONDONTWRITEBYTECODE=1",
    "ENV PYTHONUNBUFFERED=1",
    'CMD ["/usr/bin/python3"]',
)

Progress = Callable[[str], None]
LOCK = WORK_DIR / "enclave-images" / "build.lock"


def base_tag() -> str:
    """`enclave-base:<hash of the recipe>`."""
    recipe = json.dumps(
        {
            "suite": SUITE,
            "packages": sorted(PACKAGES),
            "remove": REMOVE,
            "keep": KEEP,
            "files": FILES,
            "user": [USER, UID],
            "changes": CHANGES,
        },
        sort_keys=True,
    )
    return f"{REPOSITORY}:{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """One image build at a time on this machine (two runs would build the same thing twice,
    and a prune by one could remove the other's intermediate images)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_base(client: docker.DockerClient, progress: Progress | None = None, rebuild: bool = False) -> str:
    """The base image's tag, built first if the engine does not have it (or `rebuild`)."""
    tag = base_tag()
    if has_image(client, tag) and not rebuild:
        return tag
    with build_lock():
        if rebuild or not has_image(client, tag):
            build_rootfs_image(
                client,
                tag,
                SUITE,
                PACKAGES,
                customise,
                CHANGES,
                progress,
                what="base image",
                prefix="enclave-base-",
            )
            prune_old(client, REPOSITORY, tag)
    return tag


def customise(root: Path) -> None:
    for pattern in REMOVE:
        for path in sorted(root.glob(pattern), reverse=True):
            if path.name in KEEP or not (path.exists() or path.is_symlink()):
                continue  # kept, or gone already (reached twice through a symlinked doc dir)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    write_files(root, FILES)
    chroot(
        root,
        [
            "useradd", "--system", "--uid", str(UID), "--user-group", "--no-create-home",
            "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", USER,
        ],
        "useradd in the base root filesystem",
    )  # fmt: skip


def prune_old(client: docker.DockerClient, repository: str, keep: str) -> None:
    """Drop images of earlier recipes of `repository` (tagged `<repository>:<16 hex>`), unless in use."""
    import docker.errors

    for old in client.images.list(name=repository):
        if keep in old.tags:
            continue
        if all(_is_recipe_tag(t, repository) for t in old.tags):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(old.id)


def _is_recipe_tag(tag: str, repository: str) -> bool:
    name, _, version = tag.rpartition(":")
    return name == repository and len(version) == 16 and all(c in "0123456789abcdef" for c in version)
