"""Export an image from a Docker engine into the blob store, streamed, for a bundle build.

`docker save` (the SDK's `get_image`) streams a docker-archive tar; each regular file in it
is hashed while it is copied into the store under its digest, so an image is never held in
memory and never written twice. The archive's own manifest.json then says which stored blob
is the config and which are the layers, in order; each layer's digest must be the diff ID the
config lists (uncompressed layers: what the engine checks on load). The component's other
files are generated (enclave.images.layout). An image whose blobs are already in the store,
intact, is not saved again: the image ID is the digest of its config, which names its layers.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclave.bundle.build import ImageInput
from enclave.errors import IntegrityError, UsageError
from enclave.images.engine import ENGINE_TIMEOUT
from enclave.images.layout import (
    DOCKER_MANIFEST_FILE,
    ImageLayout,
    LayoutError,
    make_layout,
    normalise_ref,
    parse_config,
)
from enclave.images.store import CHUNK, BlobStore, cache_root
from enclave.progress import Progress

if TYPE_CHECKING:  # the SDK is imported when an image is exported, not by every bundle build
    import docker

MAX_ARCHIVE_MANIFEST = 4 * 1024 * 1024
MAX_LINK_HOPS = 8
# Files of a docker-archive that are not content: v1 compatibility metadata.
_METADATA = ("repositories", "index.json", "oci-layout")
_V1_FILES = ("json", "VERSION")


@dataclass(frozen=True)
class ExportedImage:
    layout: ImageLayout
    files: dict[str, Path]  # path inside the component -> the stored file holding its bytes


class _ChunkReader(io.RawIOBase):
    """A file view of the SDK's chunk generator (tarfile's stream mode reads from it)."""

    def __init__(self, chunks: Iterator[bytes], progress: Callable[[int], None] | None) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
            if self._progress is not None:
                self._progress(len(chunk))
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def export_image(
    client: docker.DockerClient,
    ref: str,
    store: BlobStore,
    where: str,
    show_progress: bool = True,
) -> ExportedImage:
    """Resolve `ref` in the engine and make its component files; `where` prefixes errors."""
    import docker.errors

    try:
        full = normalise_ref(ref)
    except LayoutError as exc:
        raise UsageError(f"{where}: {exc}") from None
    try:
        image = client.images.get(full)
    except docker.errors.ImageNotFound:
        raise UsageError(
            f"{where}: image {full} is not in the Docker engine (build it, or docker load it, first)"
        ) from None
    except docker.errors.DockerException as exc:
        raise UsageError(f"{where}: cannot ask the Docker engine for image {full}: {exc}") from None
    image_id = str(image.id)
    if not _cached(store, image_id):
        size = int(image.attrs.get("Size") or 0)
        _save(client, image_id, store, f"{where}: image {full}", size, show_progress)
    try:
        config = store.path(image_id).read_bytes()
        parsed = parse_config(config)
        sizes = {d: store.path(d).stat().st_size for d in parsed.diff_ids if store.has(d)}
        layout = make_layout(config, sizes, full)
    except LayoutError as exc:
        raise IntegrityError(f"{where}: image {full}: {exc}") from None
    if layout.record.id != image_id:
        raise IntegrityError(
            f"{where}: image {full}: config digest {layout.record.id} is not its ID {image_id}"
        )
    files = {path: store.path(blob.digest) for path, blob in layout.blobs().items()}
    files |= {path: store.path(store.add_bytes(data)) for path, data in layout.generated().items()}
    return ExportedImage(layout, files)


def _cached(store: BlobStore, image_id: str) -> bool:
    if not store.has(image_id):
        return False
    try:
        diff_ids = parse_config(store.path(image_id).read_bytes()).diff_ids
    except (OSError, LayoutError):
        return False
    return all(store.has(d) for d in diff_ids) and store.intact([image_id, *dict.fromkeys(diff_ids)])


def _save(
    client: docker.DockerClient, image_id: str, store: BlobStore, what: str, size: int, show_progress: bool
) -> None:
    """Stream `docker save IMAGE_ID` into the store; check its manifest against the config."""
    import docker.errors

    store.remove_incoming()
    progress = Progress("export", size) if show_progress else None
    digests: dict[str, str] = {}  # archive path -> digest of the stored file
    links: dict[str, str] = {}  # archive path -> archive path it links to
    archive_manifest: Any = None
    try:
        chunks = client.api.get_image(image_id, chunk_size=CHUNK)
        reader = io.BufferedReader(_ChunkReader(iter(chunks), progress), CHUNK)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                name = _normal(member.name)
                if member.issym():
                    links[name] = _normal(posixpath.join(posixpath.dirname(name), member.linkname))
                elif member.islnk():
                    links[name] = _normal(member.linkname)
                elif (
                    not member.isreg() or name in _METADATA or posixpath.basename(name) in ("json", "VERSION")
                ):
                    continue
                elif name == DOCKER_MANIFEST_FILE:
                    if member.size > MAX_ARCHIVE_MANIFEST:
                        raise IntegrityError(f"{what}: docker save gave a {member.size}-byte manifest.json")
                    data = tar.extractfile(member)
                    assert data is not None
                    archive_manifest = json.loads(data.read())
                else:
                    data = tar.extractfile(member)
                    assert data is not None
                    digests[name] = store.add_stream(data)[0]  # type: ignore[arg-type]
    except docker.errors.DockerException as exc:
        raise UsageError(f"{what}: docker save failed: {exc}") from None
    except (tarfile.TarError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{what}: docker save gave an unreadable archive: {exc}") from None
    finally:
        if progress is not None:
            progress.finish()
    _check_archive_manifest(archive_manifest, digests, links, image_id, store, what)


def _normal(name: str) -> str:
    return posixpath.normpath(name).lstrip("/").removeprefix("./")


def _resolve(name: Any, digests: dict[str, str], links: dict[str, str], what: str) -> str:
    if not isinstance(name, str):
        raise IntegrityError(f"{what}: docker save's manifest.json names {name!r}")
    path = _normal(name)
    for _ in range(MAX_LINK_HOPS):
        if path in digests:
            return digests[path]
        if path not in links:
            break
        path = links[path]
    raise IntegrityError(f"{what}: docker save's manifest.json names {name!r}, which the archive lacks")


def _check_archive_manifest(
    doc: Any, digests: dict[str, str], links: dict[str, str], image_id: str, store: BlobStore, what: str
) -> None:
    if not isinstance(doc, list) or len(doc) != 1 or not isinstance(doc[0], dict):
        raise IntegrityError(f"{what}: docker save gave no single-image manifest.json")
    entry = doc[0]
    config = _resolve(entry.get("Config"), digests, links, what)
    if config != image_id:
        raise IntegrityError(f"{what}: docker save gave config {config}, not image {image_id}")
    try:
        diff_ids = parse_config(store.path(config).read_bytes()).diff_ids
    except LayoutError as exc:
        raise IntegrityError(f"{what}: {exc}") from None
    layers = entry.get("Layers")
    if not isinstance(layers, list) or len(layers) != len(diff_ids):
        raise IntegrityError(f"{what}: docker save's manifest.json and the image config disagree on layers")
    for index, (layer, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
        digest = _resolve(layer, digests, links, what)
        if digest != diff_id:
            raise IntegrityError(
                f"{what}: layer {index} was exported as {digest}, not its diff ID {diff_id} "
                "(only uncompressed layers, as the classic image store saves them, are supported)"
            )


class ImageExporter:
    """Image components for a bundle build: one engine connection (opened on first use) and
    the blob store. `component_files` gives the image's record and its files as (path in
    component, stored file), what the bundle writer takes (enclave.images.collect)."""

    def __init__(self, store: BlobStore | None = None, show_progress: bool = True) -> None:
        self.store = store or BlobStore(cache_root() / "images")
        self.show_progress = show_progress
        self._client: docker.DockerClient | None = None

    def component_files(self, ref: str, where: str) -> ImageInput:
        exported = export_image(self._engine(where), ref, self.store, where, self.show_progress)
        return ImageInput(
            exported.layout.record, tuple((path, exported.files[path]) for path in exported.layout.paths())
        )

    def _engine(self, where: str) -> docker.DockerClient:
        if self._client is None:
            import docker

            try:
                self._client = docker.from_env(timeout=ENGINE_TIMEOUT)
            except docker.errors.DockerException as exc:
                raise UsageError(
                    f"{where}: no Docker engine answers to export the image from: {exc}"
                ) from None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
