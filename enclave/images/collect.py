"""A bundle build whose manifest has image components: each image is exported from the local
Docker engine into the blob store (enclave.images.export), then the bundle is written from what
was collected by enclave.bundle.build, which never talks to an engine. `enclave bundle build`
and the demo build through here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from enclave.bundle.build import ImageInput, begin_build, write_bundle
from enclave.bundle.manifest import Manifest
from enclave.errors import UsageError
from enclave.images.export import ImageExporter
from enclave.images.store import BlobStore
from enclave.trust.keys import SigningKey


def collect_images(manifest: Manifest, store: BlobStore | None = None) -> dict[str, ImageInput]:
    """The manifest's image components by component name, exported from the engine (connected
    to only when the manifest has an image) into `store` (default: the cache's)."""
    exporter = ImageExporter(store)
    images: dict[str, ImageInput] = {}
    try:
        for component in manifest.components:
            if component.kind != "image":
                continue
            if component.ref is None:
                raise UsageError(f"{manifest.source}: component {component.name}: kind image needs a ref")
            where = f"{manifest.source}: component {component.name}"
            images[component.name] = exporter.component_files(component.ref, where)
    finally:
        exporter.close()
    return images


def build_bundle(
    manifest_path: Path,
    out_dir: Path,
    keys: Sequence[SigningKey],
    digest: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    volume_size: int | None = None,
    base: Path | None = None,
) -> Path:
    """Build, sign and write the bundle of any manifest (enclave.bundle.build.write_bundle has
    the details): the key, the manifest and the build time are checked first, then the images
    are exported, then the files are hashed and written."""
    manifest, created = begin_build(manifest_path, keys)
    images = collect_images(manifest)
    return write_bundle(
        manifest, created, images, out_dir, keys, digest, workers, show_progress, volume_size, base
    )
