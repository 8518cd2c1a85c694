"""Support for the image tests (no tests here): real layer tars and image configs, a docker-archive
as `docker save` (classic image store) writes it, and a fake engine serving them. Only the engine
is faked; everything else the tests run is the real code."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import docker.errors


def layer_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_for(layers: list[bytes], arch: str = "amd64") -> bytes:
    doc = {
        "architecture": arch,
        "os": "linux",
        "config": {"User": "10001:10001"},
        "rootfs": {"type": "layers", "diff_ids": [digest(layer) for layer in layers]},
    }
    return json.dumps(doc, sort_keys=True).encode()


def docker_archive(config: bytes, layers: list[bytes], tags: list[str] | None = None) -> bytes:
    """A legacy `docker save` tar: <v1id>/layer.tar per layer (a symlink for a repeated diff),
    <id>.json, manifest.json, repositories; in the order the engine writes them."""
    out = io.BytesIO()
    config_name = digest(config).removeprefix("sha256:") + ".json"
    seen: dict[str, str] = {}
    names = []
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for index, layer in enumerate(layers):
            v1 = hashlib.sha256(f"v1-{index}".encode() + layer).hexdigest()
            name = f"{v1}/layer.tar"
            add(f"{v1}/VERSION", b"1.0")
            add(f"{v1}/json", b"{}")
            if digest(layer) in seen:
                link = tarfile.TarInfo(name)
                link.type = tarfile.SYMTYPE
                link.linkname = f"../{seen[digest(layer)]}"
                tar.addfile(link)
            else:
                add(name, layer)
                seen[digest(layer)] = name
            names.append(name)
        add(config_name, config)
        add(
            "manifest.json", json.dumps([{"Config": config_name, "RepoTags": tags, "Layers": names}]).encode()
        )
        add("repositories", b"{}")
    return out.getvalue()


@dataclass
class FakeImage:
    id: str
    archive: bytes
    tags: list[str] = field(default_factory=list)

    @property
    def attrs(self) -> dict[str, Any]:
        return {"Id": self.id, "Size": len(self.archive)}


class FakeImages:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def get(self, ref: str) -> FakeImage:
        for image in self.engine.images:
            if ref == image.id or ref in image.tags:
                return image
        raise docker.errors.ImageNotFound(f"No such image: {ref}")

    def remove(self, image: str, force: bool = False) -> None:
        self.engine.removed.append(image)
        self.engine.images = [i for i in self.engine.images if i.id != image]


class FakeAPI:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def get_image(self, image: str, chunk_size: int) -> Iterator[bytes]:
        self.engine.saves.append(image)
        data = self.engine.images_by_id(image).archive
        for start in range(0, len(data), 1000):  # small chunks: the reader must join them
            yield data[start : start + 1000]

    def load_image(self, data: Iterator[bytes], quiet: bool = False) -> Iterator[dict[str, Any]]:
        received = b"".join(data)
        self.engine.loaded.append(received)
        yield from self.engine.load_answer(received)


class FakeEngine:
    """Serves `docker save` from its images; `load_answer` decides what a load does."""

    def __init__(self, images: list[FakeImage] | None = None) -> None:
        self.images = images or []
        self.saves: list[str] = []
        self.loaded: list[bytes] = []
        self.removed: list[str] = []
        self.closed = False
        self.api = FakeAPI(self)
        self.images_api = FakeImages(self)

    def images_by_id(self, image_id: str) -> FakeImage:
        return self.images_api.get(image_id)

    def load_answer(self, received: bytes) -> Iterator[dict[str, Any]]:
        """Default: an honest engine that loads the docker-archive it was sent."""
        with tarfile.open(fileobj=io.BytesIO(received)) as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
            config = tar.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
        ref = manifest[0]["RepoTags"][0]
        self.images = [i for i in self.images if ref not in i.tags]
        self.images.append(FakeImage(digest(config), received, [ref]))
        yield {"stream": f"Loaded image: {ref}\n"}


class FakeClient:
    """What the code under test sees: `.images` (models) and `.api` (low level)."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.images = engine.images_api
        self.api = engine.api

    def close(self) -> None:
        self.engine.closed = True
