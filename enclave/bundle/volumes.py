"""Media volumes: a bundle split into fixed-size parts, and their signed index.

`NAME-VERSION.volumes.dsse.json` is a DSSE envelope (same keys and rule as the bundle) over an
in-toto statement whose subjects are the volume files. A courier checks one volume alone
against it; the verifier uses it to find, order and size-check the volumes, then streams
across them (enclave.bundle.source) without reassembling a copy.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave.bundle.digest import digest_files
from enclave.bundle.output import open_output, volume_path
from enclave.bundle.source import ArchiveSource
from enclave.bundle.statement import (
    HEX_LENGTH,
    MAX_CHUNK,
    MIN_CHUNK,
    STATEMENT_TYPE,
    BundleStatement,
    _fields,
    _hex,
    _int,
)
from enclave.bundle.verify import read_envelope
from enclave.canonical import canonical
from enclave.errors import DocumentLimitError, IntegrityError, TrustError, UsageError
from enclave.fileio import open_regular, read_regular, require_regular
from enclave.progress import Progress
from enclave.strictjson import strict_json
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, MAX_ENVELOPE, Envelope
from enclave.trust.keys import SigningKey
from enclave.trust.trusted import TrustedRoot

VOLUMES_PREDICATE = "urn:enclave:predicate:volumes:v1"
VOLUME_SUFFIX = re.compile(r"\.bundle\.(\d{3})$")
INDEX_SUFFIX = ".volumes.dsse.json"
# FORMAT.md 13: the `bundle` field, NAME-VERSION.bundle, one path segment.
BUNDLE_FILE = re.compile(r"[a-z0-9][0-9A-Za-z.+-]{0,200}\.bundle", re.ASCII)
MAX_VOLUMES = 1000  # .000 to .999


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
    envelope: Envelope  # its signatures are checked by the caller (TrustedRoot.require)

    def paths(self) -> list[Path]:
        return [self.path.parent / v.name for v in self.volumes]


def index_path(bundle: Path) -> Path:
    """`out/a-1.0.0.bundle` (or any of its volumes) -> `out/a-1.0.0.volumes.dsse.json`."""
    name = VOLUME_SUFFIX.sub(".bundle", bundle.name)
    return bundle.with_name(name.removesuffix(".bundle") + INDEX_SUFFIX)


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


def load_index(path: Path, trusted: TrustedRoot) -> VolumeIndex:
    """The courier's read of an index: its signatures meet the bundle role's rule of `trusted`,
    then it is parsed strictly and bound to its own file name (read_index)."""
    envelope = _read_envelope(path)
    trusted.require("bundle", envelope, path.name)
    return _index_of(path, envelope)


def read_index(path: Path) -> VolumeIndex:
    """The index parsed strictly and bound to its own file name, its signatures NOT yet checked:
    an admission first needs the volumes it names to read the roots the bundle carries, and only
    then knows the root that judges the index. `NAME-VERSION.volumes.dsse.json` must say bundle
    `NAME-VERSION.bundle` (an index copied over another bundle's is refused, 3)."""
    return _index_of(path, _read_envelope(path))


def _read_envelope(path: Path) -> Envelope:
    raw = read_regular(path, "volume index", MAX_ENVELOPE)
    envelope = Envelope.from_json(raw, path.name)
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise TrustError(f"{path.name}: payloadType {envelope.payload_type!r} is not {IN_TOTO_PAYLOAD_TYPE}")
    return envelope


def _index_of(path: Path, envelope: Envelope) -> VolumeIndex:
    try:
        index = _parse(path, strict_json(envelope.payload, MAX_ENVELOPE), envelope)
    except DocumentLimitError as exc:
        raise TrustError(f"{path.name}: volume index {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{path.name}: invalid volume index: {exc}") from None
    expected = index.bundle.removesuffix(".bundle") + INDEX_SUFFIX
    if path.name != expected:
        raise IntegrityError(
            f"{path}: the index of {index.bundle} (named {expected}), not of the bundle this file"
            " name stands for: an index is bound to its name"
        )
    return index


def _parse(path: Path, doc: Any, envelope: Envelope) -> VolumeIndex:
    _fields(doc, {"_type", "subject", "predicateType", "predicate"}, set(), "index")
    if doc["_type"] != STATEMENT_TYPE or doc["predicateType"] != VOLUMES_PREDICATE:
        raise ValueError("not an enclave volume index")
    pred = _fields(
        doc["predicate"],
        {"bundle", "statementDigest", "digest", "chunkSize", "volumeSize", "volumes"},
        set(),
        "predicate",
    )
    bundle = pred["bundle"]
    if not isinstance(bundle, str) or not BUNDLE_FILE.fullmatch(bundle):
        raise ValueError(f"predicate.bundle {str(bundle)[:80]!r} is not a file name NAME-VERSION.bundle")
    algorithm = pred["digest"]
    if algorithm not in HEX_LENGTH:
        raise ValueError(f"unsupported digest {algorithm!r}")
    statement = _fields(pred["statementDigest"], {"sha256"}, set(), "predicate.statementDigest")
    statement_digest = _hex(statement["sha256"], "sha256", "predicate.statementDigest.sha256")
    chunk_size = _int(pred["chunkSize"], "predicate.chunkSize", MIN_CHUNK, MAX_CHUNK)
    volume_size = _int(pred["volumeSize"], "predicate.volumeSize", 1, 1 << 50)
    if not isinstance(doc["subject"], list) or not isinstance(pred["volumes"], list):
        raise ValueError("subject and predicate.volumes must be lists")
    if not 0 < len(pred["volumes"]) <= MAX_VOLUMES or len(doc["subject"]) != len(pred["volumes"]):
        raise ValueError(f"subject and predicate.volumes must list the same 1 to {MAX_VOLUMES} volumes")
    volumes = []
    for number, (subject, entry) in enumerate(zip(doc["subject"], pred["volumes"], strict=True)):
        name = f"{bundle}.{number:03d}"
        _fields(subject, {"name", "digest"}, set(), f"subject[{number}]")
        _fields(entry, {"name", "size"}, set(), f"predicate.volumes[{number}]")
        if subject["name"] != name or entry["name"] != name:
            raise ValueError(f"volume {number} must be named {name!r} in subject and predicate.volumes")
        last = number == len(pred["volumes"]) - 1
        size = _int(entry["size"], f"volume {name}: size", 1, volume_size)
        if not last and size != volume_size:
            raise ValueError(f"volume {name}: {size} bytes; every volume but the last has volumeSize")
        digest = _fields(subject["digest"], {algorithm}, set(), f"subject[{number}].digest")[algorithm]
        volumes.append(Volume(name, size, _hex(digest, algorithm, f"subject[{number}].digest")))
    return VolumeIndex(
        path, bundle, statement_digest, algorithm, chunk_size, volume_size, tuple(volumes), envelope
    )


def check_volume(volume: Path, index: VolumeIndex, show_progress: bool = False) -> Volume:
    """The courier's check of one volume: listed, the signed size, the signed digest."""
    entry = next((v for v in index.volumes if v.name == volume.name), None)
    if entry is None:
        raise IntegrityError(f"{volume.name}: not a volume of {index.bundle}")
    if not volume.exists():
        raise IntegrityError(f"{volume}: volume missing")
    require_regular(volume, "volume")
    size = volume.stat().st_size
    if size != entry.size:
        raise IntegrityError(
            f"{volume}: {size} bytes, the index signs {entry.size} (truncated or padded volume)"
        )
    progress = Progress("verify-volume", size) if show_progress else None
    (digest,) = digest_files([volume], index.algorithm, index.chunk_size, progress=progress)
    if progress is not None:
        progress.finish()
    if digest.digest.hex() != entry.digest:
        raise IntegrityError(f"{volume}: digest does not match the signed index (damaged or wrong volume)")
    return entry


def locate(path: Path) -> tuple[list[Path], VolumeIndex | None]:
    """The files that make up the bundle named by `path` (a bundle, a volume or an index).

    With volumes, the index decides which files, in which order and of what size; a missing,
    extra-short or swapped-in volume is named before any content is read. The index's
    signatures are not checked here: the caller checks them with the root it arrives at after
    applying the roots the bundle carries, then `bind`s the index to the volumes' statement.
    """
    if path.name.endswith(".volumes.dsse.json"):
        index_file = path
    elif VOLUME_SUFFIX.search(path.name) or (not path.exists() and volume_path(path, 0).exists()):
        index_file = index_path(path)
    else:
        return [path], None
    if not index_file.exists():
        raise UsageError(f"{index_file}: volume index missing (it travels with the volumes)")
    index = read_index(index_file)
    if VOLUME_SUFFIX.search(path.name) and path.name not in {v.name for v in index.volumes}:
        raise IntegrityError(f"{path}: not a volume of {index.bundle} ({len(index.volumes)} volumes)")
    for volume, entry in zip(index.paths(), index.volumes, strict=True):
        if not volume.exists():
            raise IntegrityError(f"{volume}: volume missing")
        require_regular(volume, "volume")
        size = volume.stat().st_size
        if size != entry.size:
            raise IntegrityError(
                f"{volume}: {size} bytes, the index signs {entry.size} (truncated or padded volume)"
            )
    return index.paths(), index


def bind(index: VolumeIndex, digest: str) -> None:
    """The index names the statement the volumes carry (`digest`: sha256 of the first volume's
    envelope payload): else an index of another bundle, or volumes of another (3). The
    envelope's signatures are checked by the admission itself."""
    if digest != index.statement_digest:
        raise IntegrityError(
            f"{index.path.name}: names statement sha256 {index.statement_digest[:16]}, the volumes carry"
            f" {digest[:16]} (the index or the volumes are another bundle's)"
        )


def bind_name(index: VolumeIndex, statement: BundleStatement) -> None:
    """The statement `bind` matched is bundle `index.bundle` (3): checked once it is parsed."""
    if index.bundle != f"{statement.name}-{statement.version}.bundle":
        raise IntegrityError(
            f"{index.path.name}: says bundle {index.bundle};"
            f" its statement is {statement.name} {statement.version}"
        )


def split_bundle(
    bundle: Path, volume_size: int, keys: Sequence[SigningKey], show_progress: bool = False
) -> tuple[list[Path], Path]:
    """Split a (fully co-signed) single-file bundle into volumes and write the signed index."""
    with ArchiveSource([bundle]) as source:
        member = read_envelope(source)
        statement = BundleStatement.from_payload(member.envelope.payload)
        expected = f"{statement.name}-{statement.version}.bundle"
        if bundle.name != expected:
            raise UsageError(f"{bundle}: this bundle must be named {expected} to be split")
        with open_output(bundle, volume_size) as sink:
            fd = open_regular(bundle, "bundle")
            progress = Progress("split", source.size) if show_progress else None
            try:
                sink.copy_from(fd, 0, source.size, progress)
            finally:
                os.close(fd)
                if progress is not None:
                    progress.finish()
        parts = sink.finals
    return parts, write_index(bundle, parts, statement, member.envelope.payload, keys, volume_size)
