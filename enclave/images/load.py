"""`enclave images load`: verify a bundle, then load its images into a Docker engine.

Order (FORMAT.md, "Images"):
1. connect to the engine (fail fast: nothing is verified for an engine that is not there);
2. verify the whole bundle and extract it into a fresh directory: exactly `bundle verify`
   (the CLI runs that command's own code, with its options: trust, state, receipts, volumes),
   so nothing unverified reaches the disk;
3. for every image component, before any image is loaded: regenerate the component's layout
   from its verified config, layer sizes and signed ref, and require the signed image record,
   the set of files and every generated file to match byte for byte, and every layer's SHA-256
   to be its diff ID;
4. load each image by streaming a tar built from the verified files (never the bundle itself,
   never a copy held in memory) and compare the ID the engine reports with the signed ID;
   a mismatch removes the image and fails (exit 3).
The extraction directory is removed afterwards unless the caller named it (--extract-to).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclave.admission import Admission, Admitted
from enclave.bundle.digest import default_workers
from enclave.bundle.statement import BundleStatement, ComponentEntry, ImageRecord
from enclave.bundle.tarformat import CONTENT_PREFIX
from enclave.errors import IntegrityError, ProvisionError, UsageError
from enclave.images.engine import connect
from enclave.images.layout import MAX_CONFIG, ImageLayout, LayoutError, blob_path, make_layout, parse_config
from enclave.images.store import CHUNK, sha256_file

if TYPE_CHECKING:
    import docker

_LOADED = re.compile(r"^Loaded image(?: ID)?: (\S+)\s*$")


@dataclass(frozen=True)
class LoadedImage:
    component: str
    record: ImageRecord
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "size": self.size, **self.record.to_dict()}

    @property
    def check(self) -> str:
        return f"image {self.component}: {self.record.ref} loaded; engine ID {self.record.id} as signed"


@dataclass
class LoadResult:
    verified: Admitted
    images: list[LoadedImage]


@contextlib.contextmanager
def extraction_dir(extract_to: Path | None) -> Iterator[Path]:
    """Where the verified bundle goes: `extract_to` (kept), or a fresh scratch directory on
    disk (under $TMPDIR, default /var/tmp: images are large), removed afterwards."""
    if extract_to is not None:
        yield extract_to
        return
    scratch = Path(tempfile.mkdtemp(prefix="enclave-images-", dir=os.environ.get("TMPDIR") or "/var/tmp"))
    try:
        yield scratch / "bundle"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_verified(
    client: docker.DockerClient, tree: Path, statement: BundleStatement, workers: int | None = None
) -> list[LoadedImage]:
    """Check every image component of a verified tree, then load each into the engine."""
    images = [c for c in statement.components if c.kind == "image"]
    if not images:
        raise UsageError(f"{statement.name} {statement.version}: the bundle has no image components")
    plans = [(entry, check_component(tree, entry, workers)) for entry in images]  # all before any load
    loaded = []
    for entry, layout in plans:
        load_image(client, tree / CONTENT_PREFIX / entry.name, layout, entry.name)
        loaded.append(LoadedImage(entry.name, layout.record, layout.size))
    return loaded


def load_bundle_images(
    admission: Admission,
    bundle: Path,
    engine: str | None = None,
    extract_to: Path | None = None,
    receipt: Path | None = None,
    workers: int | None = None,
    connector: Callable[[str | None], docker.DockerClient] = connect,
) -> LoadResult:
    """The library form of `enclave images load`: connect (an engine that does not answer fails
    before anything is read), admit the bundle into `extract_to` (default: a scratch directory),
    check and load its images."""
    client = connector(engine)
    try:
        with extraction_dir(extract_to) as tree:
            verified = admission.verify(bundle, extract_to=tree, receipt=receipt)
            if extract_to is None:  # the scratch copy is gone when this returns: do not report it
                verified.checks[:] = [c for c in verified.checks if not c.startswith("published ")]
                verified.extracted_to = None
            images = load_verified(client, tree, verified.statement, workers)
    finally:
        client.close()
    verified.checks.append(f"images: {len(images)} layouts match their signed records and diff IDs")
    verified.checks += [image.check for image in images]
    return LoadResult(verified, images)


def check_component(tree: Path, entry: ComponentEntry, workers: int | None = None) -> ImageLayout:
    """The layout of a verified image component, after checking it against its signed record."""
    record = entry.image
    where = f"component {entry.name}"
    if record is None:  # the statement parser requires one; never load an unrecorded image
        raise IntegrityError(f"{where}: kind image without a signed image record")
    prefix = f"{CONTENT_PREFIX}{entry.name}/"
    if any(not m.startswith(prefix) for m in entry.members):
        raise IntegrityError(f"{where}: lists members outside {prefix}")
    present = {m[len(prefix) :] for m in entry.members}
    directory = tree / prefix
    config_name = blob_path(record.id)
    if config_name not in present:
        raise IntegrityError(f"{where}: the config blob of image {record.id} is not in the bundle")
    try:
        config = _read_small(directory / config_name, MAX_CONFIG, where)
        diff_ids = parse_config(config).diff_ids
        missing = [d for d in diff_ids if blob_path(d) not in present]
        if missing:
            raise IntegrityError(f"{where}: layer {missing[0]} of image {record.ref} is not in the bundle")
        sizes = {d: (directory / blob_path(d)).stat().st_size for d in diff_ids}
        layout = make_layout(config, sizes, record.ref)
    except LayoutError as exc:
        raise IntegrityError(f"{where}: {exc}") from None
    if layout.record != record:
        raise IntegrityError(
            f"{where}: signed image record {record.to_dict()} is not what its content gives "
            f"{layout.record.to_dict()}"
        )
    expected = set(layout.paths())
    if present != expected:
        odd = sorted(present - expected) or sorted(expected - present)
        state = "is not part of the image" if present - expected else "is missing"
        raise IntegrityError(f"{where}: {prefix}{odd[0]} {state}")
    for name, data in layout.generated().items():
        if _read_small(directory / name, len(data), where) != data:
            raise IntegrityError(f"{where}: {prefix}{name} is not the one its image gives (byte comparison)")
    _check_blob_digests(directory, [layout.config, *layout.blobs().values()], workers, where)
    return layout


def _read_small(path: Path, limit: int, where: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise IntegrityError(f"{where}: {path.name}: larger than expected ({limit} bytes)")
    return data


def _check_blob_digests(directory: Path, blobs: Sequence[Any], workers: int | None, where: str) -> None:
    """SHA-256 of every blob against the digest it is named by (hashlib releases the GIL)."""
    unique = {b.digest: directory / b.path for b in blobs}
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        found = list(pool.map(sha256_file, unique.values()))
    for (expected, path), actual in zip(unique.items(), found, strict=True):
        if actual != expected:
            raise IntegrityError(f"{where}: {path.name}: SHA-256 is not the digest it is named by")


def image_tar(directory: Path, names: Sequence[str]) -> Iterator[bytes]:
    """A `docker load` archive of `names` under `directory`, as a stream of chunks."""
    parts = [name.split("/") for name in names]
    for folder in sorted({"/".join(p[:i]) + "/" for p in parts for i in range(1, len(p))}):
        info = tarfile.TarInfo(folder)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        yield info.tobuf(tarfile.PAX_FORMAT)
    for name in names:
        path = directory / name
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            info = tarfile.TarInfo(name)
            info.size, info.mode = size, 0o644
            yield info.tobuf(tarfile.PAX_FORMAT)
            sent = 0
            while chunk := f.read(CHUNK):
                sent += len(chunk)
                yield chunk
        if sent != size:
            raise IntegrityError(f"{path}: changed while it was being loaded")
        if size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def load_image(client: docker.DockerClient, directory: Path, layout: ImageLayout, component: str) -> str:
    """Stream the verified image into the engine; its ID must be the signed one (else removed)."""
    import docker.errors

    record = layout.record
    where = f"component {component}: image {record.ref}"
    messages: list[str] = []
    named: list[str] = []
    try:
        for chunk in client.api.load_image(image_tar(directory, layout.paths()), quiet=True):
            if "error" in chunk:
                raise ProvisionError(f"{where}: the engine refused the image: {chunk['error']}")
            line = str(chunk.get("stream", "")).strip()
            if line:
                messages.append(line)
                match = _LOADED.match(line)
                if match:
                    named.append(match.group(1))
        loaded = client.images.get(record.ref)
    except docker.errors.ImageNotFound:
        raise ProvisionError(
            f"{where}: not in the engine after loading ({'; '.join(messages[-2:])})"
        ) from None
    except docker.errors.DockerException as exc:
        raise ProvisionError(f"{where}: loading failed: {exc}") from None
    # The classic image store names an image by its config digest; the containerd store by
    # its manifest's: both are signed, either identifies exactly these bytes.
    signed = (record.id, record.manifest_digest)
    actual = str(loaded.id)
    # What now carries the ref, and any ID the engine said it loaded, must be signed.
    unsigned = [
        i for i in dict.fromkeys([actual, *(n for n in named if n.startswith("sha256:"))]) if i not in signed
    ]
    if unsigned:
        removed = "; ".join(_remove(client, image_id) for image_id in unsigned)
        raise IntegrityError(
            f"{where}: the engine loaded ID {unsigned[0]}, the bundle signed {record.id}; {removed}"
        )
    return actual


def _remove(client: docker.DockerClient, image_id: str) -> str:
    import docker.errors

    try:
        client.images.remove(image_id, force=True)
    except docker.errors.DockerException as exc:
        return f"removing {image_id} failed: {exc}"
    return f"{image_id} was removed"
