"""The overlapped build (content copied while it is hashed, head written last) and its
fallback; the aligned direct-I/O sink it writes through."""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enclave.admission import Admission
from enclave.bundle import build as build_module
from enclave.bundle.build import sign_bundle
from enclave.bundle.output import DIRECT_ALIGN, WRITE_BLOCK, direct_suits, open_output
from enclave.errors import UsageError
from tests.conftest import BuildFn, Keys, write_inputs

NOW = datetime.now(UTC)


@pytest.mark.parametrize(
    ("skip", "sizes"),
    [
        (1536, [100, 7, 5000]),  # everything stays in the buffer until publish
        (DIRECT_ALIGN, [WRITE_BLOCK + 3, 1]),  # the first buffer is flushed before write_at
        (DIRECT_ALIGN * 3 + 512, [WRITE_BLOCK * 2 - 700, 12345]),
    ],
)
def test_skip_then_write_at_gives_the_exact_bytes(tmp_path: Path, skip: int, sizes: list[int]) -> None:
    parts = [os.urandom(n) for n in sizes]
    source = tmp_path / "source"
    source.write_bytes(parts[0])
    head = os.urandom(skip)
    target = tmp_path / "out.bin"
    with open_output(target) as sink:
        sink.skip(skip)
        fd = os.open(source, os.O_RDONLY)
        try:
            sink.copy_from(fd, 0, len(parts[0]))
        finally:
            os.close(fd)
        for part in parts[1:]:
            sink.write(part)
        sink.write_at(0, head)
    assert target.read_bytes() == head + b"".join(parts)
    assert not list(tmp_path.glob(".out.bin.partial-*"))


def test_volumes_split_at_unaligned_sizes(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 777)
    part = 1024 * 1024 + 511  # parts end off any alignment: each part's last write is cut back
    with open_output(tmp_path / "v.bundle", part) as sink:
        sink.write(data[:1000])
        sink.write(data[1000:])
    volumes = sorted(tmp_path.glob("v.bundle.*"))
    assert [v.stat().st_size for v in volumes] == [part, part, len(data) - 2 * part]
    assert b"".join(v.read_bytes() for v in volumes) == data


def test_skip_is_refused_for_volumes_or_after_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError), open_output(tmp_path / "a", 2 * 1024 * 1024) as sink:
        sink.skip(512)
    with pytest.raises(ValueError), open_output(tmp_path / "b") as sink:
        sink.write(b"x")
        sink.skip(512)
    assert not list(tmp_path.iterdir())


def test_direct_io_only_on_block_device_filesystems(tmp_path: Path) -> None:
    assert direct_suits(tmp_path) == (os.major(tmp_path.stat().st_dev) != 0)
    if Path("/dev/shm").is_dir():
        assert not direct_suits(Path("/dev/shm"))  # tmpfs: buffered


def test_mispredicted_head_falls_back_to_an_identical_bundle(
    build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head whose real size differs from the prediction (an ECDSA signature a few bytes
    shorter across a block boundary) must not leave content at the wrong offset: the bundle
    is written again, byte-identical to one whose prediction held."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    src = write_inputs(tmp_path / "same")
    expected = build(signers=(keys.ecdsa,), source=src).read_bytes()
    real = build_module._assemble
    calls: list[int] = []

    def grown_prediction(*args: object, **kwargs: object) -> build_module._Head:
        head = real(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(head.span)
        if len(calls) == 1:  # the prediction: one block too many
            return dataclasses.replace(head, data=head.data + bytes(512))
        return head

    monkeypatch.setattr(build_module, "_assemble", grown_prediction)
    bundle = build(signers=(keys.ecdsa,), source=src)
    assert len(calls) == 2  # the prediction and the real head, which is then written in order
    assert bundle.read_bytes() == expected
    assert not list(bundle.parent.glob(".*partial*"))
    sign_bundle(bundle, keys.mldsa, show_progress=False)  # the hybrid rule needs ML-DSA too
    Admission(trust=root_path, at=NOW).verify(bundle)


def test_prediction_differs_only_in_signatures(build: BuildFn, monkeypatch: pytest.MonkeyPatch) -> None:
    """Placeholder digests give the real SBOM size and content layout; only the lengths of
    ECDSA signatures can move the head (hence the fallback above)."""
    heads: list[build_module._Head] = []
    real = build_module._assemble

    def spy(*args: object, **kwargs: object) -> build_module._Head:
        heads.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return heads[-1]

    monkeypatch.setattr(build_module, "_assemble", spy)
    build()
    predicted, actual = heads[0], heads[-1]
    assert predicted.envelope.payload != actual.envelope.payload  # the digests did change
    assert predicted.statement.members[0].name == "sbom.cdx.json"  # no signature in it: same size
    assert predicted.statement.members[0].size == actual.statement.members[0].size
    assert [(m.name, m.size, m.mode) for m in predicted.content] == [
        (m.name, m.size, m.mode) for m in actual.content
    ]  # the content layout, written before the digests are known, is the real one


def test_a_failing_copy_removes_everything(
    build: BuildFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise UsageError("disk on fire")

    monkeypatch.setattr(build_module, "_write_content", broken)
    with pytest.raises(UsageError, match="disk on fire"):
        build()
    assert not [p for p in tmp_path.glob("out*/*")]


def test_a_failing_hash_stops_the_copier_before_the_file_closes(
    build: BuildFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = threading.Event()
    real_copy = build_module.Sink.copy_from

    def slow_copy(self: build_module.Sink, src: int, offset: int, count: int) -> None:
        started.set()
        real_copy(self, src, offset, count)

    def failing_hash(*_: object, **__: object) -> list[object]:
        assert started.wait(10)
        raise UsageError("input vanished")

    monkeypatch.setattr(build_module.Sink, "copy_from", slow_copy)
    monkeypatch.setattr(build_module, "_hash_inputs", failing_hash)
    with pytest.raises(UsageError, match="input vanished"):
        build()
    assert not [p for p in tmp_path.glob("out*/*")]
    assert not [t for t in threading.enumerate() if t.name == "bundle-copy"]


def test_input_changed_during_the_overlapped_build_is_refused(
    build: BuildFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_inputs(tmp_path / "changing")
    real_hash = build_module._hash_inputs

    def hash_then_touch(*args: object, **kwargs: object) -> object:
        found = real_hash(*args, **kwargs)  # type: ignore[arg-type]
        model = src / "weights" / "model.gguf"
        os.utime(model, ns=(0, model.stat().st_mtime_ns + 1_000_000_000))
        return found

    monkeypatch.setattr(build_module, "_hash_inputs", hash_then_touch)
    with pytest.raises(UsageError, match="changed while the bundle was being built"):
        build(source=src)
    assert not [p for p in tmp_path.glob("out*/*")]


def test_extraction_of_awkward_sizes_is_exact(tmp_path: Path, keys: Keys, root_path: Path) -> None:
    """Direct writes round the last chunk up to the alignment and cut it back: sizes around
    the alignment and the chunk size come out exact, on disk and on tmpfs (buffered)."""
    src = tmp_path / "src"
    (src / "w").mkdir(parents=True)
    sizes = {"empty": 0, "one": 1, "page": 4096, "page1": 4097, "chunk": 1 << 20, "odd": (2 << 20) + 513}
    for name, size in sizes.items():
        (src / "w" / name).write_bytes(os.urandom(size))
    (src / "w" / "odd").chmod(0o755)
    (src / "bundle.yaml").write_text(
        "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: sizes, version: 1.0.0}\n"
        "spec:\n  digest: sha256\n  chunkSize: 1MiB\n  components:\n"
        "    - {name: w, kind: files, path: ./w}\n"
    )
    bundle = build_module.build_bundle(
        src / "bundle.yaml", tmp_path / "out", [keys.ecdsa, keys.mldsa], show_progress=False
    )
    targets = [tmp_path / "x"]
    if Path("/dev/shm").is_dir():
        targets.append(Path("/dev/shm") / f"enclave-test-{os.getpid()}-{tmp_path.name}")
    for target in targets:
        try:
            Admission(trust=root_path, at=NOW).verify(bundle, extract_to=target)
            for name in sizes:
                out = target / "content" / "w" / name
                assert out.read_bytes() == (src / "w" / name).read_bytes(), (target, name)
                assert out.stat().st_mode & 0o777 == (0o755 if name == "odd" else 0o644)
        finally:
            if target.parent == Path("/dev/shm"):
                shutil.rmtree(target, ignore_errors=True)
