"""Build a bundle from a manifest, and co-sign an existing one (FORMAT.md).

Each input is read twice at most: once to hash (chunks in parallel on every core), once to
copy into the archive (kernel copy). A file that changes between the two reads fails the
build rather than producing a bundle whose statement does not match its content.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from enclave import __version__
from enclave.bundle.digest import default_workers, digest_files, new_hash
from enclave.bundle.manifest import Manifest, load_manifest
from enclave.bundle.output import Sink, open_output
from enclave.bundle.sbom import build_sbom
from enclave.bundle.source import ArchiveSource
from enclave.bundle.statement import BundleStatement, ComponentEntry, Member
from enclave.bundle.tarformat import (
    CONTENT_PREFIX,
    ENVELOPE_NAME,
    SBOM_NAME,
    check_name,
    collision_key,
    member_header,
    member_span,
    padding,
    trailer_size,
)
from enclave.bundle.verify import check_archive, open_archive, read_envelope
from enclave.bundle.volumes import VOLUME_SUFFIX, write_index
from enclave.errors import UnsafeArchiveError, UsageError
from enclave.progress import Progress
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope
from enclave.trust.keys import SigningKey
from enclave.trust.root import format_time


@dataclass(frozen=True)
class SourceFile:
    name: str  # member name in the archive
    path: Path
    mode: int
    stat: os.stat_result


def created_time() -> datetime:
    """SOURCE_DATE_EPOCH when set (reproducible builds), else now; whole seconds, UTC."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None:
        if not epoch.isdigit():
            raise UsageError(f"SOURCE_DATE_EPOCH={epoch!r} is not a whole number of seconds")
        return datetime.fromtimestamp(int(epoch), UTC)
    return datetime.now(UTC).replace(microsecond=0)


def _files_of(component_name: str, root: Path) -> Iterator[tuple[str, Path]]:
    prefix = f"{CONTENT_PREFIX}{component_name}/"
    if root.is_symlink() or not (root.is_file() or root.is_dir()):
        raise UsageError(
            f"{root}: component {component_name}: only regular files and directories can be bundled"
        )
    if root.is_file():
        yield prefix + root.name, root
        return
    found: list[tuple[str, Path]] = []
    for directory, dirnames, filenames in os.walk(root):
        for entry in [*dirnames, *filenames]:
            path = Path(directory) / entry
            if path.is_symlink():
                raise UsageError(f"{path}: symbolic links cannot be bundled (copy the target instead)")
            if entry in filenames and not path.is_file():
                raise UsageError(f"{path}: not a regular file (device, FIFO or socket)")
        for filename in filenames:
            path = Path(directory) / filename
            found.append((prefix + path.relative_to(root).as_posix(), path))
    yield from sorted(found, key=lambda item: item[0].encode("utf-8"))


def collect(manifest: Manifest) -> tuple[list[tuple[ComponentEntry, list[SourceFile]]], list[SourceFile]]:
    groups: list[tuple[ComponentEntry, list[SourceFile]]] = []
    everything: list[SourceFile] = []
    taken: dict[str, str] = {collision_key(ENVELOPE_NAME): ENVELOPE_NAME, collision_key(SBOM_NAME): SBOM_NAME}
    for component in manifest.components:
        if component.kind == "image" or component.path is None:
            raise UsageError(
                f"{manifest.source}: component {component.name}: kind image is not supported yet"
            )
        files: list[SourceFile] = []
        for name, path in _files_of(component.name, component.path):
            try:
                check_name(name)
            except UnsafeArchiveError as exc:
                raise UsageError(f"{path}: {exc}") from None
            key = collision_key(name)
            if key in taken:
                raise UsageError(
                    f"{path}: member {name!r} collides with {taken[key]!r} (case or Unicode form)"
                )
            taken[key] = name
            stat = path.stat()
            files.append(SourceFile(name, path, 0o755 if stat.st_mode & 0o111 else 0o644, stat))
        entry = ComponentEntry(component.name, component.kind, tuple(f.name for f in files), component.format)
        groups.append((entry, files))
        everything += files
    return groups, everything


def _same_file(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns, before.st_ino, before.st_dev) == (
        after.st_size,
        after.st_mtime_ns,
        after.st_ino,
        after.st_dev,
    )


def build_bundle(
    manifest_path: Path,
    out_dir: Path,
    keys: Sequence[SigningKey],
    digest: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    volume_size: int | None = None,
) -> Path:
    """Build, sign and write the bundle. Returns the path that names it for `verify`: the
    bundle file, or with `volume_size` the signed volume index beside `NAME-VERSION.bundle.NNN`."""
    if not keys:
        raise UsageError("at least one --key is needed to sign the bundle")
    manifest = load_manifest(manifest_path)
    algorithm = digest or manifest.digest
    created = format_time(created_time())
    groups, files = collect(manifest)
    total = sum(f.stat.st_size for f in files)
    progress = Progress("hash", total) if show_progress else None
    digests = digest_files([f.path for f in files], algorithm, manifest.chunk_size, workers, progress)
    if progress is not None:
        progress.finish()
    content = [
        Member(
            f.name,
            d.size,
            f.mode,
            d.digest.hex(),
            tuple(c.hex() for c in d.chunks) if len(d.chunks) > 1 else (),
        )
        for f, d in zip(files, digests, strict=True)
    ]
    components = tuple(entry for entry, _ in groups)
    sbom = build_sbom(manifest.name, manifest.version, created, algorithm, components, content, __version__)
    sbom_hash = new_hash(algorithm)
    sbom_hash.update(sbom)
    sbom_member = Member(SBOM_NAME, len(sbom), 0o644, sbom_hash.hexdigest())
    statement = BundleStatement(
        manifest.name,
        manifest.version,
        created,
        algorithm,
        manifest.chunk_size,
        components,
        (sbom_member, *content),
    )
    envelope = Envelope(IN_TOTO_PAYLOAD_TYPE, statement.to_payload())
    for key in keys:
        envelope.sign(key)
    target = out_dir / manifest.bundle_name
    mtime = statement.mtime
    with open_output(target, volume_size) as sink:
        offset = _write_member(sink, ENVELOPE_NAME, envelope.to_json(), mtime)
        offset += _write_member(sink, SBOM_NAME, sbom, mtime)
        copy_progress = Progress("write", total) if show_progress else None
        for source, member in zip(files, content, strict=True):
            header = member_header(member.name, member.size, member.mode, mtime)
            sink.write(header)
            src = os.open(source.path, os.O_RDONLY)
            try:
                sink.copy_from(src, 0, member.size)
                if not _same_file(source.stat, os.fstat(src)):
                    raise UsageError(f"{source.path}: changed while the bundle was being built")
            finally:
                os.close(src)
            sink.write(b"\x00" * padding(member.size))
            offset += len(header) + member.size + padding(member.size)
            if copy_progress is not None:
                copy_progress(member.size)
        if copy_progress is not None:
            copy_progress.finish()
        sink.write(b"\x00" * trailer_size(offset))
    if volume_size is None:
        return target
    return write_index(target, sink.finals, statement, envelope.payload, keys, volume_size)


def _write_member(sink: Sink, name: str, data: bytes, mtime: int) -> int:
    header = member_header(name, len(data), 0o644, mtime)
    sink.write(header + data + b"\x00" * padding(len(data)))
    return len(header) + len(data) + padding(len(data))


def sign_bundle(
    path: Path, key: SigningKey, workers: int | None = None, show_progress: bool = True
) -> Envelope:
    """Add `key`'s signature to a bundle, after checking its content against the statement.

    The co-signer checks every byte (two-person integrity: nobody signs what they did not
    check); the content bytes are copied unchanged, only the envelope grows.
    Volumes are split from the co-signed file afterwards (`enclave bundle split`).
    """
    if VOLUME_SUFFIX.search(path.name):
        raise UsageError(f"{path}: co-sign the single-file bundle, then split it into volumes")
    with ArchiveSource([path]) as source:
        tar = open_archive(source)
        member = read_envelope(source, tar)
        statement = BundleStatement.from_payload(member.envelope.payload)
        check_archive(
            source, tar, member, statement, workers=workers or default_workers(), show_progress=show_progress
        )
        envelope = member.envelope
        envelope.sign(key)
        mtime = statement.mtime
        content_end = member.end + sum(member_span(m.name, m.size, m.mode, mtime) for m in statement.members)
        temporary = path.with_name(f".{path.name}.signing-{os.getpid()}")
        temporary.unlink(missing_ok=True)
        with open_output(temporary) as sink:
            offset = _write_member(sink, ENVELOPE_NAME, envelope.to_json(), mtime)
            src = os.open(path, os.O_RDONLY)
            try:
                sink.copy_from(src, member.end, content_end - member.end)
            finally:
                os.close(src)
            offset += content_end - member.end
            sink.write(b"\x00" * trailer_size(offset))
        os.replace(temporary, path)
    return envelope
