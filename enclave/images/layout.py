"""How an image is laid out inside a bundle component (FORMAT.md, "Images"). Pure: no I/O.

One directory per image, readable both as an OCI image layout and as a `docker save` archive:

    oci-layout                      {"imageLayoutVersion":"1.0.0"}
    index.json                      OCI index: one manifest, its platform, the ref as ref.name
    manifest.json                   docker-archive manifest: Config, RepoTags [ref], Layers
    blobs/sha256/<hex>              the image config (hex = the image ID), the OCI manifest,
                                    and every layer as an uncompressed tar (hex = its diff ID)

Everything but the config and the layers is generated from them and the ref, byte for byte
(compact JSON, sorted keys), so a loader regenerates each file and compares bytes instead of
trusting what it parses. Layers are uncompressed: the digest the bundle signs is then the
diff ID the engine itself checks when it registers the layer, and layers do not compress
much anyway (docs/FORMAT.md: the bundle is not compressed).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enclave.bundle.statement import IMAGE_DIGEST, IMAGE_PLATFORM, IMAGE_REF, ImageRecord

OCI_LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
DOCKER_MANIFEST_FILE = "manifest.json"
BLOB_DIR = "blobs/sha256/"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
MAX_CONFIG = 4 * 1024 * 1024  # an image config is a few KB; refuse to parse a huge one
MAX_LAYERS = 512


class LayoutError(ValueError):
    """The image's parts are not consistent; the caller adds where and which exit code."""


@dataclass(frozen=True)
class Blob:
    digest: str  # sha256:<hex>
    size: int

    @property
    def path(self) -> str:
        return blob_path(self.digest)


@dataclass(frozen=True)
class ImageLayout:
    """Everything that goes into an image component, derived from the config, layers and ref."""

    record: ImageRecord
    config: Blob
    layers: tuple[Blob, ...]  # in diff-ID order; the same blob may appear twice
    manifest: bytes  # the OCI image manifest blob

    def generated(self) -> dict[str, bytes]:
        """The small files made from the config, layers and ref (relative path -> bytes)."""
        return {
            blob_path(self.record.manifest_digest): self.manifest,
            INDEX_FILE: index_json(self.record, len(self.manifest)),
            DOCKER_MANIFEST_FILE: docker_manifest(self.config, self.layers, self.record.ref),
            OCI_LAYOUT_FILE: canonical({"imageLayoutVersion": "1.0.0"}),
        }

    def blobs(self) -> dict[str, Blob]:
        """The config and the distinct layers (relative path -> blob)."""
        return {b.path: b for b in (self.config, *self.layers)}

    def paths(self) -> list[str]:
        """Every relative path of the component, sorted by UTF-8 bytes (bundle member order)."""
        return sorted({*self.generated(), *self.blobs()}, key=lambda p: p.encode())

    @property
    def size(self) -> int:
        return self.config.size + sum(b.size for b in {b.path: b for b in self.layers}.values())


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_path(digest: str) -> str:
    if not IMAGE_DIGEST.fullmatch(digest):
        raise LayoutError(f"{digest!r} is not a sha256:<hex> digest")
    return BLOB_DIR + digest.removeprefix("sha256:")


def normalise_ref(ref: str) -> str:
    """NAME or NAME:TAG -> NAME:TAG (`latest` when none, as docker does). Digest references are
    refused: `docker load` can only tag an image by NAME:TAG."""
    if "@" in ref:
        raise LayoutError(f"image reference {ref!r}: give NAME:TAG, not a digest reference")
    last = ref.rsplit("/", 1)[-1]
    full = ref if ":" in last else f"{ref}:latest"
    if len(full) > 255 or not IMAGE_REF.fullmatch(full):
        raise LayoutError(f"image reference {ref!r} is not of the form NAME[:TAG] (lowercase name)")
    return full


@dataclass(frozen=True)
class ImageConfig:
    diff_ids: tuple[str, ...]
    platform: str


def parse_config(data: bytes) -> ImageConfig:
    """The parts of an image config (OCI image-spec config / Docker image JSON) we rely on."""
    if len(data) > MAX_CONFIG:
        raise LayoutError(f"image config of {len(data)} bytes exceeds {MAX_CONFIG}")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"image config is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise LayoutError("image config is not a JSON object")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise LayoutError("image config has no rootfs of type layers")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not diff_ids or len(diff_ids) > MAX_LAYERS:
        raise LayoutError(f"image config must list 1 to {MAX_LAYERS} rootfs.diff_ids")
    for diff_id in diff_ids:
        if not isinstance(diff_id, str) or not IMAGE_DIGEST.fullmatch(diff_id):
            raise LayoutError(f"image config: diff ID {diff_id!r} is not a sha256:<hex> digest")
    raw = [doc.get("os"), doc.get("architecture")] + ([doc["variant"]] if doc.get("variant") else [])
    parts = [p for p in raw if isinstance(p, str) and p]
    if len(parts) != len(raw):
        raise LayoutError("image config has no os/architecture")
    platform = "/".join(parts)
    if not IMAGE_PLATFORM.fullmatch(platform):
        raise LayoutError(f"image config: platform {platform!r} is not os/architecture[/variant]")
    return ImageConfig(tuple(diff_ids), platform)


def make_layout(config: bytes, layer_sizes: Mapping[str, int], ref: str) -> ImageLayout:
    """The layout of the image whose config is `config` (bytes as the engine stores them),
    given the size of each layer blob by digest, under `ref` (NAME:TAG)."""
    parsed = parse_config(config)
    missing = [d for d in parsed.diff_ids if d not in layer_sizes]
    if missing:
        raise LayoutError(f"layer {missing[0]} of the image config is missing")
    config_blob = Blob(sha256_digest(config), len(config))
    layers = tuple(Blob(d, layer_sizes[d]) for d in parsed.diff_ids)
    manifest = oci_manifest(config_blob, layers)
    record = ImageRecord(config_blob.digest, sha256_digest(manifest), parsed.platform, ref)
    return ImageLayout(record, config_blob, layers, manifest)


def _descriptor(media_type: str, blob: Blob) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": blob.digest, "size": blob.size}


def oci_manifest(config: Blob, layers: tuple[Blob, ...]) -> bytes:
    return canonical(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": _descriptor(CONFIG_TYPE, config),
            "layers": [_descriptor(LAYER_TYPE, layer) for layer in layers],
        }
    )


def index_json(record: ImageRecord, manifest_size: int) -> bytes:
    os_name, architecture, *variant = record.platform.split("/")
    platform = {"os": os_name, "architecture": architecture} | ({"variant": variant[0]} if variant else {})
    return canonical(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": [
                {
                    "mediaType": MANIFEST_TYPE,
                    "digest": record.manifest_digest,
                    "size": manifest_size,
                    "platform": platform,
                    "annotations": {REF_NAME: record.ref},
                }
            ],
        }
    )


def docker_manifest(config: Blob, layers: tuple[Blob, ...], ref: str) -> bytes:
    """`docker load`'s manifest.json (engines before 25 read only this file)."""
    return canonical([{"Config": config.path, "RepoTags": [ref], "Layers": [b.path for b in layers]}])


_HEX_NAME = re.compile(r"[0-9a-f]{64}")


def digest_of_path(path: str) -> str | None:
    """`blobs/sha256/<hex>` -> `sha256:<hex>`; None for any other path."""
    if path.startswith(BLOB_DIR) and _HEX_NAME.fullmatch(path[len(BLOB_DIR) :]):
        return "sha256:" + path[len(BLOB_DIR) :]
    return None
