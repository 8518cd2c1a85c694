"""Build a bundle from a manifest, and co-sign an existing one (FORMAT.md).

Each input is read twice at most: once to hash (chunks in parallel on every core), once to
copy into the archive (output.Sink: O_DIRECT from an aligned buffer). For a single-file,
non-differential bundle the two run at the same time (`_write_overlapped`): the copy goes to
the offset the head will end at, and the head is written last; on few cores a file that
needs plain digests is read only once, its buffers hashed and written from the same memory
(`_hash_while_writing`). A file that changes during the build fails it rather than producing
a bundle whose statement does not match its content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import mmap
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from enclave import __version__
from enclave.bundle.digest import (
    STREAM_BLOCK,
    FileDigest,
    chunk_count,
    default_workers,
    digest_files,
    new_hash,
    stream_digests,
)
from enclave.bundle.manifest import Manifest, load_manifest
from enclave.bundle.modelcard import gguf_metadata
from enclave.bundle.modelsig import sign_model, signature_member
from enclave.bundle.output import DIRECT_ALIGN, Sink, open_output
from enclave.bundle.provenance import PROVENANCE_NAME, provenance_statement, sign_provenance, source_names
from enclave.bundle.sbom import build_sbom
from enclave.bundle.source import ArchiveSource
from enclave.bundle.statement import BundleStatement, ComponentEntry, ImageRecord, Member, base_of
from enclave.bundle.tarformat import (
    CONTENT_PREFIX,
    ENVELOPE_NAME,
    SBOM_NAME,
    check_name,
    check_tree,
    collision_key,
    member_header,
    member_span,
    padding,
    trailer_size,
)
from enclave.bundle.verify import check_archive, open_archive, read_envelope
from enclave.bundle.volumes import VOLUME_SUFFIX, write_index
from enclave.canonical import format_time
from enclave.errors import IntegrityError, UnsafeArchiveError, UsageError
from enclave.fileio import read_regular
from enclave.progress import Progress
from enclave.trust.dsse import IN_TOTO_PAYLOAD_TYPE, MAX_ENVELOPE, Envelope
from enclave.trust.keys import SigningKey


@dataclass(frozen=True)
class ImageInput:
    """An image component's content, collected before the build (enclave.images.collect: the
    writer never talks to an engine): its record for the statement, and its files in component
    order as (path inside the component, the file holding its bytes) (FORMAT.md, "Images")."""

    record: ImageRecord
    files: tuple[tuple[str, Path], ...]


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


def collect(
    manifest: Manifest, images: Mapping[str, ImageInput]
) -> tuple[list[tuple[ComponentEntry, list[SourceFile]]], list[SourceFile]]:
    """Every component's files, named as archive members; `images` holds the image components'
    content by component name."""
    groups: list[tuple[ComponentEntry, list[SourceFile]]] = []
    everything: list[SourceFile] = []
    taken: dict[str, str] = {collision_key(ENVELOPE_NAME): ENVELOPE_NAME, collision_key(SBOM_NAME): SBOM_NAME}
    for component in manifest.components:
        image: ImageRecord | None = None
        if component.kind == "image":
            collected = images.get(component.name)
            if collected is None:
                raise UsageError(
                    f"{manifest.source}: component {component.name}: image {component.ref} was not "
                    "collected for this build (enclave.images.collect exports it from the engine)"
                )
            image = collected.record
            prefix = f"{CONTENT_PREFIX}{component.name}/"
            pairs = [(prefix + relative, path) for relative, path in collected.files]
        elif component.path is None:
            raise UsageError(f"{manifest.source}: component {component.name}: no path")
        else:
            pairs = list(_files_of(component.name, component.path))
        files: list[SourceFile] = []
        for name, path in pairs:
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
        entry = ComponentEntry(
            component.name, component.kind, tuple(f.name for f in files), component.format, image
        )
        groups.append((entry, files))
        everything += files
    try:  # a file that is also another's directory (`a` and `A/x`): extraction would fail
        check_tree([*taken.values()])
    except UnsafeArchiveError as exc:
        raise UsageError(f"{manifest.source}: {exc}") from None
    return groups, everything


def _same_file(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns, before.st_ino, before.st_dev) == (
        after.st_size,
        after.st_mtime_ns,
        after.st_ino,
        after.st_dev,
    )


def begin_build(manifest_path: Path, keys: Sequence[SigningKey]) -> tuple[Manifest, datetime]:
    """What a build checks before it reads any input: a key to sign with, the manifest, and
    the build time (`created_time`, taken when the build starts)."""
    _need_keys(keys)
    return load_manifest(manifest_path), created_time()


# What collects the content of a manifest's image components (by component name). Passed in by
# a caller above this layer, so the format writer never imports the container engine.
ImageCollector = Callable[[Manifest], Mapping[str, "ImageInput"]]


def _need_keys(keys: Sequence[SigningKey]) -> None:
    if not keys:
        raise UsageError("at least one --key is needed to sign the bundle")


def build_bundle(
    manifest_path: Path,
    out_dir: Path,
    keys: Sequence[SigningKey],
    digest: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    volume_size: int | None = None,
    base: Path | None = None,
    images: ImageCollector | None = None,
) -> Path:
    """Check the keys, the manifest and the build time, then collect the image components'
    content with `images` (enclave.images.collect.collect_images exports them from a container
    engine; a manifest with image components needs it), then `write_bundle`."""
    manifest, created = begin_build(manifest_path, keys)
    collected = images(manifest) if images is not None else {}
    return write_bundle(
        manifest, created, collected, out_dir, keys, digest, workers, show_progress, volume_size, base
    )


def write_bundle(
    manifest: Manifest,
    created_at: datetime,
    images: Mapping[str, ImageInput],
    out_dir: Path,
    keys: Sequence[SigningKey],
    digest: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    volume_size: int | None = None,
    base: Path | None = None,
) -> Path:
    """Build, sign and write the bundle of `manifest`, dated `created_at`, its image components'
    content already collected in `images` (by component name). Returns the path that names it
    for `verify`: the bundle file, or with `volume_size` the signed volume index beside
    `NAME-VERSION.bundle.NNN`.

    With `base` (an older bundle of the same name, or its BUNDLE.dsse.json as the high side
    keeps it), a differential bundle: content chunks the base already has are left out; the
    statement still lists every file and chunk, and names the base.

    Besides the content the bundle carries its provenance documents (FORMAT.md, "Provenance
    documents"): the CycloneDX SBOM, the SLSA provenance (signed by the ECDSA keys among
    `keys`), and for each model component an OpenSSF model signature by the first of them.

    A single-file, non-differential bundle is written while it is hashed (`_write_overlapped`);
    volumes and differential bundles hash first, then copy.
    """
    _need_keys(keys)
    algorithm = digest or manifest.digest
    created = format_time(created_at)
    groups, files = collect(manifest, images)
    total = sum(f.stat.st_size for f in files)
    model_files = {f.name for entry, group in groups if entry.kind == "model" for f in group}
    wants = [_plain_wanted(f, algorithm, manifest.chunk_size, f.name in model_files) for f in files]
    facts = _model_facts(groups)
    base_ref = read_base(base, manifest.name, algorithm, manifest.chunk_size) if base is not None else None

    def assemble(hashed: Sequence[_Hashed]) -> _Head:
        return _assemble(manifest, algorithm, digest, created, groups, files, hashed, keys, facts, base_ref)

    progress = Progress("hash", total) if show_progress else None

    def hash_files(which: Sequence[int]) -> list[_Hashed]:
        chosen = [files[i] for i in which]
        return _hash_inputs(
            chosen, [wants[i] for i in which], algorithm, manifest.chunk_size, workers, progress
        )

    target = out_dir / manifest.bundle_name
    head: _Head | None = None
    if volume_size is None and base is None:
        streaming = _Streaming(algorithm, wants, _single_read(files, wants, workers), progress)
        head, written = _write_overlapped(
            target, files, wants, algorithm, manifest.chunk_size, assemble, hash_files, streaming
        )
    else:
        head, written = assemble(hash_files(range(len(files)))), False
    if progress is not None:
        progress.finish()
    if not written:  # volumes, a differential bundle, or the overlapped layout guessed wrong
        with open_output(target, volume_size) as sink:
            sink.write(head.data)
            copy_progress = Progress("write", total) if show_progress else None
            _write_content(
                sink, files, head.content, manifest.chunk_size, head.mtime, head.span, copy_progress
            )
            if copy_progress is not None:
                copy_progress.finish()
    if volume_size is None:
        return target
    return write_index(target, sink.finals, head.statement, head.envelope.payload, keys, volume_size)


@dataclass(frozen=True)
class _Head:
    """Everything before the content members, and the statement it signs."""

    envelope: Envelope
    statement: BundleStatement
    content: list[Member]  # the content members, in archive order
    data: bytes  # the head's archive bytes: envelope, SBOM, provenance, model signatures

    @property
    def mtime(self) -> int:
        return self.statement.mtime

    @property
    def span(self) -> int:
        return len(self.data)


def _assemble(
    manifest: Manifest,
    algorithm: str,
    digest: str | None,
    created: str,
    groups: Sequence[tuple[ComponentEntry, Sequence[SourceFile]]],
    files: Sequence[SourceFile],
    hashed: Sequence[_Hashed],
    keys: Sequence[SigningKey],
    facts: dict[str, dict[str, str]],
    base_ref: tuple[BundleStatement, dict[str, object]] | None,
) -> _Head:
    """The statement, provenance documents and signed envelope for these digests."""
    content = [
        Member(
            f.name,
            h.digest.size,
            f.mode,
            h.digest.digest.hex(),
            tuple(c.hex() for c in h.digest.chunks) if len(h.digest.chunks) > 1 else (),
            h.plain[algorithm].hex() if len(h.digest.chunks) > 1 else "",
        )
        for f, h in zip(files, hashed, strict=True)
    ]
    components = tuple(entry for entry, _ in groups)
    signatures = _model_signatures(
        components, content, dict(zip((f.name for f in files), hashed, strict=True)), keys
    )
    sbom = build_sbom(
        manifest.name, manifest.version, created, algorithm, components, content, __version__, facts
    )
    described = [
        Member.of_bytes(name, data, algorithm, manifest.chunk_size)
        for name, data in [(SBOM_NAME, sbom), *signatures]
    ]
    inputs = [(f.name, f.path) for entry, group in groups if entry.image is None for f in group]
    provenance = sign_provenance(
        provenance_statement(
            manifest,
            algorithm,
            digest,
            components,
            [*described, *content],
            source_names(manifest, inputs),
            created,
            format_time(created_time()),  # SOURCE_DATE_EPOCH again when reproducible
            __version__,
        ),
        keys,
    )
    head = [(SBOM_NAME, sbom), (PROVENANCE_NAME, provenance), *signatures]
    extra: dict[str, object] = {}
    if base_ref is not None:
        base_statement, extra["base"] = base_ref
        content = left_out(content, base_statement, manifest.chunk_size)
    statement = BundleStatement(
        manifest.name,
        manifest.version,
        created,
        algorithm,
        manifest.chunk_size,
        components,
        (
            described[0],
            Member.of_bytes(PROVENANCE_NAME, provenance, algorithm, manifest.chunk_size),
            *described[1:],
            *content,
        ),
        extra,
    )
    envelope = Envelope(IN_TOTO_PAYLOAD_TYPE, statement.to_payload())
    for key in keys:
        envelope.sign(key)
    data = b"".join(
        _member_bytes(name, member_data, statement.mtime)
        for name, member_data in [(ENVELOPE_NAME, envelope.to_json()), *head]
    )
    return _Head(envelope, statement, content, data)


class _LayoutMoved(Exception):
    """The head came out a different number of blocks than predicted (see _write_overlapped)."""

    def __init__(self, head: _Head) -> None:
        super().__init__("head size mispredicted")
        self.head = head


def _write_overlapped(
    target: Path,
    files: Sequence[SourceFile],
    wants: Sequence[frozenset[str]],
    algorithm: str,
    chunk_size: int,
    assemble: Callable[[Sequence[_Hashed]], _Head],
    hash_files: Callable[[Sequence[int]], list[_Hashed]],
    streaming: _Streaming,
) -> tuple[_Head, bool]:
    """Copy the content into the bundle while it is hashed; write the head last. Returns the
    head and whether the bundle was written (False: the head's size was mispredicted, nothing
    is left behind, and the caller writes the bundle the sequential way).

    The envelope comes first in the archive but signs every digest, so the content's offset
    is the head's size. Every field of the head has a fixed length given the files' sizes
    (hex digests, counts, names, times), except ECDSA signatures (DER, a few bytes either way);
    the head is padded to 512-byte blocks, so assembling it with placeholder digests predicts
    its size exactly unless a signature length crosses a block boundary. The content (its
    headers depend on name, size, mode and time only) is copied at that offset by a thread;
    the files in `streaming.files` are hashed by that copy, from the buffers it writes
    (one read), the others by the main thread meanwhile (read twice, both passes at once).
    The head is written at offset 0 only if its real size matches; otherwise the partial
    file is discarded and the bundle is written again the sequential way.
    """
    placeholders = [_placeholder(f, w, algorithm, chunk_size) for f, w in zip(files, wants, strict=True)]
    predicted = assemble(placeholders)
    stop = threading.Event()
    failure: list[BaseException] = []
    by_copy: dict[int, _Hashed] = {}
    try:
        with open_output(target) as sink:
            sink.skip(predicted.span)

            def copy() -> None:
                try:
                    by_copy.update(
                        _write_content(
                            sink,
                            files,
                            predicted.content,
                            chunk_size,
                            predicted.mtime,
                            predicted.span,
                            None,
                            stop,
                            streaming,
                        )
                    )
                except BaseException as exc:  # handed to the main thread
                    failure.append(exc)

            copier = threading.Thread(target=copy, name="bundle-copy")
            copier.start()
            try:
                others = iter(hash_files([i for i in range(len(files)) if i not in streaming.files]))
            except BaseException:
                stop.set()
                _join(copier, stop)
                raise
            _join(copier, stop)
            if failure:
                raise failure[0]
            hashed = [by_copy[i] if i in streaming.files else next(others) for i in range(len(files))]
            for source in files:  # the hash read and the copy read saw the same file
                if not _same_file(source.stat, source.path.stat()):
                    raise UsageError(f"{source.path}: changed while the bundle was being built")
            head = assemble(hashed)
            if head.span != predicted.span:
                raise _LayoutMoved(head)
            sink.write_at(0, head.data)
    except _LayoutMoved as moved:
        return moved.head, False
    return head, True


def _join(thread: threading.Thread, stop: threading.Event) -> None:
    """Wait for `thread` even through Ctrl-C: the sink's file must not close under it."""
    interrupted: BaseException | None = None
    while thread.is_alive():
        try:
            thread.join()
        except BaseException as exc:  # KeyboardInterrupt while waiting: stop it, then re-raise
            stop.set()
            interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted


def _placeholder(source: SourceFile, wanted: frozenset[str], algorithm: str, chunk_size: int) -> _Hashed:
    """Zero digests of the right lengths and counts: the statement's shape, not its values."""
    zero = bytes(new_hash(algorithm).digest_size)
    chunks = tuple(zero for _ in range(chunk_count(source.stat.st_size, chunk_size)))
    plain = {name: bytes(new_hash(name).digest_size) for name in wanted}
    return _Hashed(FileDigest(source.stat.st_size, zero, chunks), plain)


@dataclass(frozen=True)
class _Streaming:
    """Which files the archive copy hashes as it writes them (indices into the build's files),
    with what, and where hashing progress goes."""

    algorithm: str
    wants: Sequence[frozenset[str]]
    files: frozenset[int]
    progress: Progress | None


SINGLE_READ_MIN = 4 * STREAM_BLOCK  # smaller files keep two reads and the sink's buffering


def _single_read(
    files: Sequence[SourceFile], wants: Sequence[frozenset[str]], workers: int | None
) -> frozenset[int]:
    """The files the overlapped build hashes inside its copy: the large ones that need a plain
    digest, when the cores are few. A file's lanes (its chunk hash, one or two plain hashes
    and the writer) then fill the cores, and a second read of every byte only takes CPU from
    them. With more cores, reading twice lets several such files hash side by side
    (`_hash_inputs`) while the copy runs. Small files are not worth it: each one hashed in
    the copy costs a direct write of the sink's pending bytes (`Sink.detach`)."""
    if (workers or default_workers()) >= 4:  # enough cores to hash two such files side by side
        return frozenset()
    return frozenset(
        i
        for i, (source, wanted) in enumerate(zip(files, wants, strict=True))
        if wanted and source.stat.st_size >= SINGLE_READ_MIN
    )


COPY_RUN = 64 * 1024 * 1024  # the copier checks for a stop between runs of this size


def _write_content(
    sink: Sink,
    files: Sequence[SourceFile],
    content: Sequence[Member],
    chunk_size: int,
    mtime: int,
    offset: int,
    progress: Progress | None,
    stop: threading.Event | None = None,
    streaming: _Streaming | None = None,
) -> dict[int, _Hashed]:
    """The content members (header, carried chunks, padding) and the end-of-archive zeros;
    `offset` is where the first content member starts. Returns the digests of the files in
    `streaming`, which are hashed from the buffers they are written from."""
    hashed: dict[int, _Hashed] = {}
    for index, (source, member) in enumerate(zip(files, content, strict=True)):
        size = member.archive_size(chunk_size)
        if not member.in_archive:
            continue
        header = member_header(member.name, size, member.mode, mtime)
        sink.write(header)
        src = os.open(source.path, os.O_RDONLY)
        try:
            if streaming is not None and index in streaming.files:
                hashed[index] = _hash_while_writing(
                    sink, source.path, src, size, chunk_size, streaming, index, stop
                )
            else:
                for start, length in _runs(member, chunk_size):
                    for at in range(start, start + max(length, 1), COPY_RUN):
                        _check_stop(stop)
                        sink.copy_from(src, at, min(COPY_RUN, start + length - at))
            if not _same_file(source.stat, os.fstat(src)):
                raise UsageError(f"{source.path}: changed while the bundle was being built")
        finally:
            os.close(src)
        sink.write(b"\x00" * padding(size))
        offset += len(header) + size + padding(size)
        if progress is not None:
            progress(size)
    sink.write(b"\x00" * trailer_size(offset))
    return hashed


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise UsageError("build stopped")


def _reader(path: Path, fd: int, stop: threading.Event | None = None) -> Callable[[memoryview, int], int]:
    """Fills a view from `fd` at an offset; a short read means the file shrank under us."""

    def read_into(view: memoryview, offset: int) -> int:
        _check_stop(stop)
        got = os.preadv(fd, [view], offset)
        if got != len(view):
            raise UsageError(f"{path}: changed while the bundle was being built")
        return got

    return read_into


def _hash_while_writing(
    sink: Sink,
    path: Path,
    src: int,
    size: int,
    chunk_size: int,
    streaming: _Streaming,
    index: int,
    stop: threading.Event | None,
) -> _Hashed:
    """Read a whole file once into aligned buffers that are hashed (every lane on its own
    thread) and written to the output with O_DIRECT from where they were read, no copy.
    The sink's pending bytes before the file (its last partial DIRECT_ALIGN block, e.g.
    this member's header) go first, so each buffer sits at an aligned output offset; the
    last buffer's partial block goes back to the sink, in front of the padding."""
    lead = sink.detach()
    rest = bytearray()

    def write(buffer: mmap.mmap, length: int, last: bool) -> None:
        whole = length - length % DIRECT_ALIGN if last else length
        sink.write_blocks(buffer, whole)
        if last:
            rest.extend(buffer[whole:length])

    file_digest, plains = stream_digests(
        _reader(path, src, stop),
        size,
        streaming.algorithm,
        chunk_size,
        streaming.wants[index],
        streaming.progress,
        lead,
        write,
    )
    sink.write(bytes(rest))
    return _Hashed(file_digest, plains)


@dataclass(frozen=True)
class _Hashed:
    digest: FileDigest  # the bundle-format digest and its chunks
    plain: dict[str, bytes]  # plain H(content) by algorithm, where it was asked for


def _plain_wanted(source: SourceFile, algorithm: str, chunk_size: int, model: bool) -> frozenset[str]:
    """The plain digests a file needs beyond its chunk digests: the bundle's algorithm when it
    has several chunks (SBOM, SLSA; one chunk's digest already is the plain one), and SHA-256
    for model files (OpenSSF model signature), unless that is already one of the two."""
    multi = chunk_count(source.stat.st_size, chunk_size) > 1
    wanted = {algorithm} if multi else set()
    if model and (multi or algorithm != "sha256"):
        wanted.add("sha256")
    return frozenset(wanted)


def _hash_inputs(
    files: Sequence[SourceFile],
    wants: Sequence[frozenset[str]],
    algorithm: str,
    chunk_size: int,
    workers: int | None,
    progress: Progress | None,
) -> list[_Hashed]:
    """Every file's chunk digests, plus the plain digests in `wants`, in one read of each file.

    Files that need no plain digest are hashed chunk by chunk on all cores (digest_files). A
    plain digest is one sequential pass, so a file that needs one is streamed once in order and
    each block feeds its chunk hash and its plain hashes on separate threads: the file costs
    the slowest of those hashes rather than their sum. Several such files run side by side.
    """
    results: list[_Hashed | None] = [None] * len(files)
    chunked = [i for i, wanted in enumerate(wants) if not wanted]
    found = digest_files([files[i].path for i in chunked], algorithm, chunk_size, workers, progress)
    for i, file_digest in zip(chunked, found, strict=True):
        results[i] = _Hashed(file_digest, {})
    streamed = [i for i, wanted in enumerate(wants) if wanted]
    side_by_side = max(1, (workers or default_workers()) // 2)
    with ThreadPoolExecutor(max_workers=side_by_side) as pool:
        futures = [
            (i, pool.submit(_stream_digest, files[i].path, algorithm, chunk_size, wants[i], progress))
            for i in streamed
        ]
        for i, future in futures:
            results[i] = future.result()
    done = [r for r in results if r is not None]
    assert len(done) == len(files)
    return done


def _stream_digest(
    path: Path, algorithm: str, chunk_size: int, plain: frozenset[str], progress: Progress | None
) -> _Hashed:
    """One sequential read of `path` feeding its chunk hashes and each plain hash, each on its
    own thread (digest.stream_digests)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        file_digest, plains = stream_digests(_reader(path, fd), size, algorithm, chunk_size, plain, progress)
    finally:
        os.close(fd)
    return _Hashed(file_digest, plains)


def _model_signatures(
    components: Sequence[ComponentEntry],
    content: Sequence[Member],
    hashed: Mapping[str, _Hashed],
    keys: Sequence[SigningKey],
) -> list[tuple[str, bytes]]:
    """An OpenSSF model signature per model component, by the first ECDSA P-384 key (the only
    kind model_signing verifies). A build signed only with ML-DSA keys has none."""
    key = next((k for k in keys if k.public.algorithm == "ecdsa-p384"), None)
    if key is None:
        return []
    by_name = {m.name: m for m in content}
    signatures = []
    for component in components:
        if component.kind != "model" or not component.members:
            continue
        prefix = f"{CONTENT_PREFIX}{component.name}/"
        sha256 = {}
        for name in component.members:
            plain = hashed[name].plain.get("sha256")
            if plain is None:  # a sha256 bundle: the plain digest is already at hand
                plain = bytes.fromhex(by_name[name].plain_digest)
            sha256[name.removeprefix(prefix)] = plain.hex()
        signatures.append((signature_member(component.name), sign_model(component.name, sha256, key)))
    return signatures


def _model_facts(groups: Sequence[tuple[ComponentEntry, Sequence[SourceFile]]]) -> dict[str, dict[str, str]]:
    """Model card facts per model component, from its first GGUF file (shards share them)."""
    facts = {}
    for entry, group in groups:
        gguf = next((f for f in group if f.name.endswith(".gguf")), None)
        if entry.kind == "model" and gguf is not None:
            found = gguf_metadata(gguf.path)
            if found:
                facts[entry.name] = found
    return facts


def _member_bytes(name: str, data: bytes, mtime: int) -> bytes:
    return member_header(name, len(data), 0o644, mtime) + data + b"\x00" * padding(len(data))


def _write_member(sink: Sink, name: str, data: bytes, mtime: int) -> int:
    member = _member_bytes(name, data, mtime)
    sink.write(member)
    return len(member)


class BaseChunks:
    """A differential bundle's base as the co-signer holds it: its signed statement (from the
    old bundle or its BUNDLE.dsse.json). A chunk the bundle does not carry must be one of the
    base's chunks: the high side reads it from its content store and re-checks it there. The
    co-signer writes nothing, so the bytes themselves are not needed."""

    def __init__(self, statement: BundleStatement) -> None:
        self.have = {c for m in statement.members for c in m.chunk_digests()}

    def read_verified(self, algorithm: str, digest: str, view: memoryview) -> None:
        if digest not in self.have:
            raise IntegrityError(f"chunk {digest[:16]}: carried neither by this bundle nor by its base")


def co_signing_base(path: Path, statement: BundleStatement, base: Path | None) -> BaseChunks | None:
    """The base a co-signer checks a differential bundle against; `base` is the old bundle or
    its BUNDLE.dsse.json, and must be the very base the signed statement names (by digest)."""
    named = base_of(statement)
    if named is None:
        if base is not None:
            raise UsageError(f"{path}: not a differential bundle; --base/--base-statement do not apply")
        return None
    if base is None:
        raise UsageError(
            f"{path}: a differential bundle on {named.name} {named.version}: give its base "
            "(--base OLD.bundle or --base-statement BUNDLE.dsse.json) to check the chunks it leaves out"
        )
    base_statement, ref = read_base(base, statement.name, statement.digest, statement.chunk_size)
    digest = cast(dict[str, str], ref["statementDigest"])["sha256"]
    if digest != named.statement_digest:
        raise UsageError(
            f"{base}: statement sha256 {digest[:16]}, but {path} builds on {named.name} {named.version} "
            f"(statement {named.statement_digest[:16]}): not its base"
        )
    return BaseChunks(base_statement)


def sign_bundle(
    path: Path,
    key: SigningKey,
    workers: int | None = None,
    show_progress: bool = True,
    base: Path | None = None,
) -> Envelope:
    """Add `key`'s signature to a bundle, after checking its content against the statement.

    The co-signer checks every byte (two-person integrity: nobody signs what they did not
    check); the content bytes are copied unchanged, only the envelope grows. A differential
    bundle is checked against its `base` (co_signing_base): every carried chunk is hashed, and
    every chunk left out must be one of the base's.
    Volumes are split from the co-signed file afterwards (`enclave bundle split`).
    """
    if VOLUME_SUFFIX.search(path.name):
        raise UsageError(f"{path}: co-sign the single-file bundle, then split it into volumes")
    with ArchiveSource([path]) as source:
        tar = open_archive(source)
        member = read_envelope(source, tar)
        statement = BundleStatement.from_payload(member.envelope.payload)
        check_archive(
            source,
            tar,
            member,
            statement,
            workers=workers or default_workers(),
            show_progress=show_progress,
            store=co_signing_base(path, statement, base),
        )
        envelope = member.envelope
        envelope.sign(key)
        mtime = statement.mtime
        content_end = member.end + sum(
            member_span(m.name, m.archive_size(statement.chunk_size), m.mode, mtime)
            for m in statement.members
            if m.in_archive
        )
        temporary = path.with_name(f".{path.name}.signing-{os.getpid()}")
        temporary.unlink(missing_ok=True)
        with open_output(temporary) as sink:
            offset = _write_member(sink, ENVELOPE_NAME, envelope.to_json(), mtime)
            src = os.open(path, os.O_RDONLY)
            copying = Progress("copy", content_end - member.end) if show_progress else None
            try:
                sink.copy_from(src, member.end, content_end - member.end, copying)
            finally:
                os.close(src)
                if copying is not None:
                    copying.finish()
            offset += content_end - member.end
            sink.write(b"\x00" * trailer_size(offset))
        os.replace(temporary, path)
    return envelope


def read_base(
    path: Path, name: str, algorithm: str, chunk_size: int
) -> tuple[BundleStatement, dict[str, object]]:
    """The base's statement, from a bundle or from its envelope file; it must match this build."""
    if path.name.endswith(".json"):
        raw = read_regular(path, "base statement", MAX_ENVELOPE)
        envelope = Envelope.from_json(raw, str(path))
    else:
        with ArchiveSource([path]) as source:
            envelope = read_envelope(source).envelope
    statement = BundleStatement.from_payload(envelope.payload)
    if statement.name != name:
        raise UsageError(f"{path}: base is bundle {statement.name!r}, not {name!r}")
    if (statement.digest, statement.chunk_size) != (algorithm, chunk_size):
        raise UsageError(
            f"{path}: base uses {statement.digest}/{statement.chunk_size}; the build must use the same"
        )
    ref: dict[str, object] = {
        "name": statement.name,
        "version": statement.version,
        "statementDigest": {"sha256": hashlib.sha256(envelope.payload).hexdigest()},
    }
    return statement, ref


def left_out(content: Sequence[Member], base: BundleStatement, chunk_size: int) -> list[Member]:
    """Mark which chunks each member must carry: those the base does not have."""
    have = {c for m in base.members for c in m.chunk_digests()}
    marked = []
    for member in content:
        digests = member.chunk_digests()
        carried = tuple(i for i, d in enumerate(digests) if d not in have)
        marked.append(
            member if len(carried) == len(digests) else dataclasses.replace(member, carried=carried)
        )
    return marked


def _runs(member: Member, chunk_size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) ranges of the input to copy: consecutive carried chunks merged."""
    start = length = 0
    for index in member.carried_chunks():
        chunk_start = index * chunk_size
        if length and start + length == chunk_start:
            length += member.chunk_length(index, chunk_size)
            continue
        if length:
            yield start, length
        start, length = chunk_start, member.chunk_length(index, chunk_size)
    if length or member.size == 0:
        yield start, length
