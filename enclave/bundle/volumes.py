"""Media volumes: a bundle split into fixed-size parts, and their signed index.

`NAME-VERSION.volumes.dsse.json` is a DSSE envelope (same keys and rule as the bundle) over an
in-toto statement whose subjects are the volume files. A courier checks one volume alone
against it; the verifier uses it to find, order and size-check the volumes, then streams
across them (enclave.bundle.source) without reassembling a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave.bundle.digest import digest_files
from enclave.bundle.output import open_output, volume_path
from enclave.bundle.source import ArchiveSource
from enclave.bundle.statement import HEX_LENGTH, STATEMENT_TYPE, BundleStatement
from enclave.bundle.verify import check_signatures, read_envelope
from enclave.errors import IntegrityError, TrustError, UsageError
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope
from enclave.trust.keys import SigningKey
from enclave.trust.root import TrustRoot, canonical

VOLUMES_PREDICATE = "urn:enclave:predicate:volumes:v1"
VOLUME_SUFFIX = re.compile(r"\.bundle\.(\d{3})$")


@dataclass(frozen=True)
class Volume:
    name: str
    size: int
    digest: str


@dataclass(frozen=True)
class VolumeIndex:
    path: Path
    bundle: str
    statement_digest: str  # sha256 of the bundle's signed statement
    algorithm: str
    chunk_size: int
    volume_size: int
    volumes: tuple[Volume, ...]

    def paths(self) -> list[Path]:
        return [self.path.parent / v.name for v in self.volumes]


def index_path(bundle: Path) -> Path:
    """`out/a-1.0.0.bundle` (or any of its volumes) -> `out/a-1.0.0.volumes.dsse.json`."""
    name = VOLUME_SUFFIX.sub(".bundle", bundle.name)
    return bundle.with_name(name.removesuffix(".bundle") + ".volumes.dsse.json")


def write_index(
    bundle: Path,
    parts: Sequence[Path],
    statement: BundleStatement,
    payload: bytes,
    keys: Sequence[SigningKey],
    volume_size: int,
) -> Path:
    digests = digest_files(list(parts), statement.digest, statement.chunk_size)
    doc = {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": p.name, "digest": {statement.digest: d.digest.hex()}}
            for p, d in zip(parts, digests, strict=True)
        ],
        "predicateType": VOLUMES_PREDICATE,
        "predicate": {
            "bundle": bundle.name,
            "statementDigest": {"sha256": hashlib.sha256(payload).hexdigest()},
            "digest": statement.digest,
            "chunkSize": statement.chunk_size,
            "volumeSize": volume_size,
            "volumes": [{"name": p.name, "size": d.size} for p, d in zip(parts, digests, strict=True)],
        },
    }
    envelope = Envelope(IN_TOTO_PAYLOAD_TYPE, canonical(doc))
    for key in keys:
        envelope.sign(key)
    target = index_path(bundle)
    with open_output(target) as sink:
        sink.write(envelope.to_json())
    return target


def load_index(path: Path, root: TrustRoot) -> VolumeIndex:
    """Read the index and check its signatures meet the bundle role's rule."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read volume index: {exc.strerror}") from None
    envelope = Envelope.from_json(raw, path.name)
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise TrustError(f"{path.name}: payloadType {envelope.payload_type!r} is not {IN_TOTO_PAYLOAD_TYPE}")
    check_signatures(envelope, root, path.name)
    try:
        return _parse(path, json.loads(envelope.payload))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{path.name}: invalid volume index: {exc}") from None


def _parse(path: Path, doc: dict[str, Any]) -> VolumeIndex:
    if doc["_type"] != STATEMENT_TYPE or doc["predicateType"] != VOLUMES_PREDICATE:
        raise ValueError("not an enclave volume index")
    pred = doc["predicate"]
    algorithm = pred["digest"]
    if algorithm not in HEX_LENGTH:
        raise ValueError(f"unsupported digest {algorithm!r}")
    volumes = []
    for subject, entry in zip(doc["subject"], pred["volumes"], strict=True):
        name = entry["name"]
        if subject["name"] != name or "/" in name or not VOLUME_SUFFIX.search(name):
            raise ValueError(f"bad volume entry {name!r}")
        if not isinstance(entry["size"], int) or entry["size"] < 0:
            raise ValueError(f"volume {name}: bad size")
        volumes.append(Volume(name, entry["size"], str(subject["digest"][algorithm])))
    if [v.name for v in volumes] != [f"{pred['bundle']}.{i:03d}" for i in range(len(volumes))]:
        raise ValueError("volumes are not numbered .000, .001, ... in order")
    return VolumeIndex(
        path, pred["bundle"], pred["statementDigest"]["sha256"], algorithm, int(pred["chunkSize"]),
        int(pred["volumeSize"]), tuple(volumes),
    )  # fmt: skip


def check_volume(volume: Path, index: VolumeIndex) -> Volume:
    """The courier's check of one volume: listed, the signed size, the signed digest."""
    entry = next((v for v in index.volumes if v.name == volume.name), None)
    if entry is None:
        raise IntegrityError(f"{volume.name}: not a volume of {index.bundle}")
    if not volume.is_file():
        raise IntegrityError(f"{volume}: volume missing")
    size = volume.stat().st_size
    if size != entry.size:
        raise IntegrityError(
            f"{volume}: {size} bytes, the index signs {entry.size} (truncated or padded volume)"
        )
    (digest,) = digest_files([volume], index.algorithm, index.chunk_size)
    if digest.digest.hex() != entry.digest:
        raise IntegrityError(f"{volume}: digest does not match the signed index (damaged or wrong volume)")
    return entry


def resolve(path: Path, root: TrustRoot) -> tuple[list[Path], VolumeIndex | None]:
    """The files that make up the bundle named by `path` (a bundle, a volume or an index).

    With volumes, the signed index decides which files, in which order and of what size; a
    missing, extra-short or swapped-in volume is named before any content is read.
    """
    if path.name.endswith(".volumes.dsse.json"):
        index_file = path
    elif VOLUME_SUFFIX.search(path.name) or (not path.exists() and volume_path(path, 0).exists()):
        index_file = index_path(path)
    else:
        return [path], None
    if not index_file.exists():
        raise UsageError(f"{index_file}: volume index missing (it travels with the volumes)")
    index = load_index(index_file, root)
    for volume, entry in zip(index.paths(), index.volumes, strict=True):
        if not volume.is_file():
            raise IntegrityError(f"{volume}: volume missing")
        size = volume.stat().st_size
        if size != entry.size:
            raise IntegrityError(
                f"{volume}: {size} bytes, the index signs {entry.size} (truncated or padded volume)"
            )
    return index.paths(), index


def split_bundle(bundle: Path, volume_size: int, keys: Sequence[SigningKey]) -> tuple[list[Path], Path]:
    """Split a (fully co-signed) single-file bundle into volumes and write the signed index."""
    with ArchiveSource([bundle]) as source:
        member = read_envelope(source)
        statement = BundleStatement.from_payload(member.envelope.payload)
        with open_output(bundle, volume_size) as sink:
            fd = os.open(bundle, os.O_RDONLY)
            try:
                sink.copy_from(fd, 0, source.size)
            finally:
                os.close(fd)
        parts = sink.finals
    return parts, write_index(bundle, parts, statement, member.envelope.payload, keys, volume_size)
