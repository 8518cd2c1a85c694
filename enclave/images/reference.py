"""`enclave images build`: the reference payload images, built offline on the base image.

For each image, the build context is assembled from `bundles/images/<name>/` (package data,
enclave.resources: Dockerfile, requirements.txt, any other files), `wheels/` (its wheelhouse,
enclave.images.wheels) and `pip.whl`, and built by the engine's classic builder with
`network_mode=none` (no registry, no network: FROM names the local base image, RUN cannot reach
anything). The image is tagged `<name>:<hash>` with a hash of the base image ID and every
context file, and `<name>:<version>`; when the engine already has `<name>:<hash>` nothing is
built. Build stages left dangling are pruned afterwards (with vfs each is a full copy of the
root filesystem).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclave import __version__
from enclave.errors import ProvisionError, UsageError
from enclave.images.base import BASE_LABEL, PYTHON, build_lock, ensure_base, prune_old
from enclave.images.rootfs import WORK_DIR, has_image
from enclave.images.store import sha256_file
from enclave.images.wheels import parse_requirements, wheelhouse
from enclave.resources import data_path

if TYPE_CHECKING:
    import docker

IMAGES = ("enclave-gateway", "enclave-agent", "enclave-model-server")
REQUIREMENTS = "requirements.txt"
LOG_TAIL = 5
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # a directory of bundles/images/, and an image name

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuiltImage:
    name: str
    ref: str  # NAME:VERSION
    content_tag: str  # NAME:<hash of base ID and context>
    id: str
    size: int
    built: bool  # False: the engine had it already
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ref": self.ref,
            "contentTag": self.content_tag,
            "id": self.id,
            "size": self.size,
            "built": self.built,
            "seconds": round(self.seconds, 2),
        }


def contexts_dir() -> Path:
    return data_path("bundles", "images")


def build_images(
    client: docker.DockerClient,
    names: Sequence[str] = IMAGES,
    progress: Progress | None = None,
    version: str = __version__,
) -> list[BuiltImage]:
    """Build (or find) each named reference image; returns what was done, in order."""
    unknown = [
        n for n in names if not _NAME.fullmatch(n) or not (contexts_dir() / n / "Dockerfile").is_file()
    ]
    if unknown:
        raise UsageError(
            f"{contexts_dir() / unknown[0]}: no such image build context (have: {', '.join(IMAGES)})"
        )
    say = progress or (lambda _line: None)
    base = ensure_base(client, say)
    base_id = str(client.images.get(base).id)
    done: list[BuiltImage] = []
    with build_lock():
        try:
            for name in names:
                done.append(_build_one(client, name, base, base_id, version, say))
        finally:
            _prune_stages(client)
    return done


def context_files(name: str) -> dict[str, Path]:
    """Every file of an image's build context: relative path -> source file."""
    source = contexts_dir() / name
    files = {
        p.relative_to(source).as_posix(): p
        for p in sorted(source.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    if "wheels" in {rel.split("/", 1)[0] for rel in files} or "pip.whl" in files:
        raise UsageError(f"{source}: wheels/ and pip.whl are made by the build, not kept in the context")
    house = wheelhouse(parse_requirements(source / REQUIREMENTS), PYTHON)
    files |= {f"wheels/{w.name}": w for w in house.wheels}
    files["pip.whl"] = house.pip
    return files


def content_key(base_id: str, files: dict[str, Path]) -> str:
    h = hashlib.sha256(base_id.encode() + b"\0")
    for rel in sorted(files):
        h.update(f"{rel}\0{sha256_file(files[rel])}\0".encode())
    return h.hexdigest()[:16]


def _build_one(
    client: docker.DockerClient, name: str, base: str, base_id: str, version: str, say: Progress
) -> BuiltImage:
    started = time.monotonic()
    files = context_files(name)
    content_tag = f"{name}:{content_key(base_id, files)}"
    ref = f"{name}:{version}"
    built = not has_image(client, content_tag)
    if built:
        say(f"building {content_tag} ({len(files)} context files)")
        with tempfile.TemporaryDirectory(dir=WORK_DIR, prefix=f"enclave-context-{name}-") as tmp:
            context = Path(tmp)
            for rel, source in files.items():
                _place(source, context / rel)
            _docker_build(client, context, content_tag, base, say)
    image = client.images.get(content_tag)
    image.tag(name, version)
    if built:
        prune_old(client, name, content_tag)  # after the version tag moved off the old image
    say(f"{ref} = {content_tag} ({'built' if built else 'cached'})")
    return BuiltImage(
        name,
        ref,
        content_tag,
        str(image.id),
        int(image.attrs.get("Size") or 0),
        built,
        time.monotonic() - started,
    )


def _place(source: Path, target: Path) -> None:
    """Hard-link (the wheels are large and never modified) or copy into the context."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _docker_build(client: docker.DockerClient, context: Path, tag: str, base: str, say: Progress) -> None:
    import docker.errors

    log: list[str] = []
    try:
        stream = client.api.build(
            path=str(context),
            tag=tag,
            buildargs={"BASE": base},
            network_mode="none",  # RUN gets no network at all: the build is offline by construction
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                tail = "; ".join(log[-LOG_TAIL:])
                raise ProvisionError(
                    f"building {tag} failed: {str(chunk['error']).strip()} (last output: {tail})"
                )
            line = str(chunk.get("stream", "")).strip()
            if line:
                log.append(line)
                if line.startswith("Step "):
                    say(f"  {tag}: {line}")
    except docker.errors.DockerException as exc:
        raise ProvisionError(f"building {tag} failed: {exc}") from None


def _prune_stages(client: docker.DockerClient) -> None:
    """Remove dangling images made from the base: the build stages (untagged once built)."""
    import docker.errors

    # A stage still in use is left for the next build's prune.
    with contextlib.suppress(docker.errors.APIError):
        client.images.prune(filters={"dangling": True, "label": BASE_LABEL})
