"""The image components of a bundle build: each image is exported from the local Docker engine
into the blob store (enclave.images.export). `build_bundle(..., images=collect_images)`
(enclave.bundle.build, which never talks to an engine) writes the bundle from what this collects;
`enclave bundle build` and the demo build that way.
"""

from __future__ import annotations

from enclave.bundle.build import ImageInput
from enclave.bundle.manifest import Manifest
from enclave.errors import UsageError
from enclave.images.export import ImageExporter
from enclave.images.store import BlobStore


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
