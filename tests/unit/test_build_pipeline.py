"""The build's streamed hashing pipeline (digest.stream_digests): one read into a ring of
aligned buffers, every hash and the archive writer consuming it at its own pace, with bounded
memory; and the single-read build that writes those buffers straight into the bundle."""

from __future__ import annotations

import dataclasses
import hashlib
import mmap
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enclave.admission import Admission
from enclave.bundle import build as build_module
from enclave.bundle.digest import FileDigest, digest_files, stream_digests
from enclave.bundle.output import DIRECT_ALIGN, open_output
from enclave.errors import UsageError
from tests.conftest import Keys

KIB = 1024
MIB = 1024 * KIB
NOW = datetime.now(UTC)


def reader(data: bytes, calls: list[int] | None = None) -> Callable[[memoryview, int], int]:
    def read_into(view: memoryview, offset: int) -> int:
        if calls is not None:
            calls.append(offset)
        view[:] = data[offset : offset + len(view)]
        return len(view)

    return read_into


def lanes_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("digest-lane")]


def reference(data: bytes, tmp_path: Path, chunk: int, algorithm: str = "sha384") -> FileDigest:
    path = tmp_path / "reference"
    path.write_bytes(data)
    (found,) = digest_files([path], algorithm, chunk)
    return found


@pytest.mark.parametrize(
    ("size", "lead", "block", "chunk"),
    [
        (0, 0, 8 * KIB, 16 * KIB),
        (0, 700, 8 * KIB, 16 * KIB),  # an empty file still passes its lead through
        (1, 0, 8 * KIB, 16 * KIB),
        (8 * KIB, 0, 8 * KIB, 16 * KIB),
        (16 * KIB, 0, 8 * KIB, 16 * KIB),  # exactly one chunk
        (16 * KIB + 1, 512, 8 * KIB, 16 * KIB),
        (100 * KIB + 3, 4095, 8 * KIB, 16 * KIB),  # blocks straddle every chunk boundary
        (100 * KIB + 3, 1536, 32 * KIB, 16 * KIB),  # a block holds several chunks
        (64 * KIB, 8 * KIB - 1, 8 * KIB, 16 * KIB),  # the longest lead
    ],
)
@pytest.mark.parametrize("depth", [1, 2, 5])
def test_digests_and_blocks_are_exact(
    size: int, lead: int, block: int, chunk: int, depth: int, tmp_path: Path
) -> None:
    data = os.urandom(size)
    head = os.urandom(lead)
    seen: list[tuple[bytes, bool]] = []

    def also(buffer: mmap.mmap, length: int, last: bool) -> None:
        seen.append((bytes(buffer[:length]), last))

    found, plain = stream_digests(
        reader(data), size, "sha384", chunk, {"sha384", "sha256"}, None, head, also, block, depth
    )
    assert found == reference(data, tmp_path, chunk)
    assert plain == {"sha384": hashlib.sha384(data).digest(), "sha256": hashlib.sha256(data).digest()}
    assert b"".join(b for b, _ in seen) == head + data  # the writer lane saw every byte, in order
    assert [last for _, last in seen] == [i == len(seen) - 1 for i in range(len(seen))]
    assert all(len(b) == block for b, _ in seen[:-1])  # whole blocks: aligned output offsets
    assert not lanes_alive()


def test_a_slow_lane_bounds_the_reader_but_does_not_stop_the_others() -> None:
    """The ring holds `depth` blocks: with the chunk lane stuck on block 0, the reader stops
    after `depth` reads (memory stays bounded) while the writer lane still takes all of them
    (no lock-step barrier between lanes); once the slow lane moves, everything completes."""
    block, depth = 8 * KIB, 3
    data = os.urandom(block * 10)
    reads: list[int] = []
    written: list[int] = []
    gate = threading.Event()
    stuck = threading.Event()

    def slow_progress(count: int) -> None:  # runs on the chunk lane after each block
        stuck.set()
        assert gate.wait(10)

    def also(buffer: mmap.mmap, length: int, last: bool) -> None:
        written.append(length)

    result: list[tuple[FileDigest, dict[str, bytes]]] = []
    worker = threading.Thread(
        target=lambda: result.append(
            stream_digests(
                reader(data, reads),
                len(data),
                "sha256",
                16 * KIB,
                {"sha256"},
                slow_progress,
                b"",
                also,
                block,
                depth,
            )
        )
    )
    worker.start()
    try:
        assert stuck.wait(10)
        deadline = time.monotonic() + 10
        while len(written) < depth and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # give the reader the chance to overrun, if it could
        assert len(reads) == depth
        assert len(written) == depth
    finally:
        gate.set()
        worker.join(10)
    assert not worker.is_alive()
    assert len(reads) == 10 and len(written) == 10
    _, plain = result[0]
    assert plain == {"sha256": hashlib.sha256(data).digest()}


@pytest.mark.parametrize("failing_block", [0, 4, 9])
def test_a_read_failure_ends_every_lane(failing_block: int) -> None:
    data = os.urandom(8 * KIB * 10)

    def read_into(view: memoryview, offset: int) -> int:
        if offset // (8 * KIB) == failing_block:
            raise UsageError("weights.bin: changed while the bundle was being built")
        view[:] = data[offset : offset + len(view)]
        return len(view)

    with pytest.raises(UsageError, match=r"weights\.bin: changed"):
        stream_digests(read_into, len(data), "sha384", 16 * KIB, {"sha384"}, None, b"", None, 8 * KIB, 2)
    assert not lanes_alive()


def test_a_writer_failure_reaches_the_reader_without_a_hang() -> None:
    data = os.urandom(8 * KIB * 40)

    def also(buffer: mmap.mmap, length: int, last: bool) -> None:
        raise OSError(28, "No space left on device")

    started = time.monotonic()
    with pytest.raises(OSError, match="No space left"):
        stream_digests(reader(data), len(data), "sha256", 16 * KIB, {"sha256"}, None, b"", also, 8 * KIB, 2)
    assert time.monotonic() - started < 10
    assert not lanes_alive()


def test_an_interrupt_while_reading_joins_the_lanes() -> None:
    data = os.urandom(8 * KIB * 10)

    def read_into(view: memoryview, offset: int) -> int:
        if offset:
            raise KeyboardInterrupt
        view[:] = data[: len(view)]
        return len(view)

    with pytest.raises(KeyboardInterrupt):
        stream_digests(read_into, len(data), "sha256", 16 * KIB, {"sha256"}, None, b"", None, 8 * KIB, 2)
    assert not lanes_alive()


def test_a_lead_must_fit_in_an_aligned_block() -> None:
    with pytest.raises(ValueError):
        stream_digests(reader(b""), 0, "sha256", MIB, (), None, bytes(8 * KIB), None, 8 * KIB, 2)
    with pytest.raises(ValueError):
        stream_digests(reader(b""), 0, "sha256", MIB, (), None, b"", None, DIRECT_ALIGN + 512, 2)


@pytest.mark.parametrize("first_size", [5000, 512])  # 512: the tail holds skipped bytes too
@pytest.mark.parametrize("directory", ["disk", "tmpfs"])
def test_detach_then_write_blocks_gives_the_exact_bytes(
    directory: str, first_size: int, tmp_path: Path
) -> None:
    """The sink hands back its unaligned tail, the caller writes it again in front of its own
    aligned blocks (O_DIRECT on disk, buffered on tmpfs), and the sink carries on; bytes
    skipped for the head and filled in last come out right even when they were in the tail."""
    if directory == "tmpfs":
        if not Path("/dev/shm").is_dir():
            pytest.skip("no /dev/shm")
        base = Path("/dev/shm") / f"enclave-test-{os.getpid()}-{tmp_path.name}"
        base.mkdir()
    else:
        base = tmp_path
    try:
        target = base / "out.bin"
        head, first, second, after = (os.urandom(n) for n in (1536, first_size, 3 * DIRECT_ALIGN + 77, 999))
        with open_output(target) as sink:
            sink.skip(len(head))
            sink.write(first)
            rest = sink.detach()
            assert len(rest) == (len(head) + len(first)) % DIRECT_ALIGN
            assert rest == (bytes(len(head)) + first)[-len(rest) :]
            buffer = mmap.mmap(-1, 4 * DIRECT_ALIGN)
            joined = rest + second
            whole = len(joined) - len(joined) % DIRECT_ALIGN
            buffer[: len(joined)] = joined
            sink.write_blocks(buffer, whole)
            sink.write(joined[whole:] + after)
            sink.write_at(0, head)
            buffer.close()
        assert target.read_bytes() == head + first + second + after
        assert not list(base.glob(".out.bin.partial-*"))
    finally:
        if directory == "tmpfs":
            for path in base.iterdir():
                path.unlink()
            base.rmdir()


def test_write_blocks_refuses_volumes_and_partial_blocks(tmp_path: Path) -> None:
    buffer = mmap.mmap(-1, DIRECT_ALIGN)
    with pytest.raises(ValueError), open_output(tmp_path / "v", 2 * MIB) as sink:
        sink.detach()
    with pytest.raises(ValueError), open_output(tmp_path / "a") as sink:
        sink.detach()
        sink.write_blocks(buffer, 100)
    with pytest.raises(ValueError), open_output(tmp_path / "b") as sink:
        sink.write(b"x")  # not detached: the buffer holds bytes that belong before the block
        sink.write_blocks(buffer, DIRECT_ALIGN)
    buffer.close()
    assert not list(tmp_path.iterdir())


def model_tree(base: Path, sizes: dict[str, int]) -> Path:
    (base / "w").mkdir(parents=True)
    for name, size in sizes.items():
        with (base / "w" / name).open("wb") as out:
            for at in range(0, size, 4 * MIB):
                out.write(os.urandom(min(4 * MIB, size - at)))
    (base / "notes").mkdir()
    (base / "notes" / "readme.txt").write_text("x" * 1000)  # a member between the streamed ones
    (base / "bundle.yaml").write_text(
        "apiVersion: enclave/v1\nkind: Bundle\nmetadata: {name: pipe, version: 1.0.0}\n"
        "spec:\n  digest: sha384\n  chunkSize: 1MiB\n  components:\n"
        "    - {name: notes, kind: files, path: ./notes}\n"
        "    - {name: w, kind: model, path: ./w}\n"
    )
    return base


def test_single_read_and_two_read_builds_are_identical(
    tmp_path: Path, keys: Keys, root_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Few cores: the copy hashes the streamed files from the buffers it writes (one read).
    More cores: they are hashed by a separate read. Same bytes either way, and they verify."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    big, edge = build_module.SINGLE_READ_MIN + 4097, build_module.SINGLE_READ_MIN
    src = model_tree(tmp_path / "src", {"a.gguf": big, "b.bin": 0, "c.bin": 511, "d.bin": edge})
    sources = [
        build_module.SourceFile(path.name, path, 0o644, path.stat()) for path in sorted((src / "w").iterdir())
    ]
    wants = [frozenset({"sha384", "sha256"})] * 4
    assert build_module._single_read(sources, wants, 2) == {0, 3}  # the large ones, on few cores
    assert build_module._single_read(sources, wants, 4) == frozenset()
    assert build_module._single_read(sources, [frozenset()] * 4, 2) == frozenset()  # no plain digest
    streamed: list[int] = []
    real = build_module._hash_while_writing

    def spy(*args: object, **kwargs: object) -> object:
        streamed.append(len(streamed))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(build_module, "_hash_while_writing", spy)
    bundles = []
    for workers in (2, 4):
        bundles.append(
            build_module.build_bundle(
                src / "bundle.yaml",
                tmp_path / f"out{workers}",
                [keys.ecdsa],
                workers=workers,
                show_progress=False,
            )
        )
    assert len(streamed) == 2  # a.gguf and d.bin were read once, by the first build only
    assert bundles[0].read_bytes() == bundles[1].read_bytes()
    build_module.sign_bundle(bundles[0], keys.mldsa, show_progress=False)
    Admission(trust=root_path, at=NOW).verify(bundles[0])


def test_a_mispredicted_head_after_a_single_read_build_gives_the_same_bundle(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The single-read copy wrote content at the predicted offset; when the real head comes
    out a block longer, the partial file goes and the bundle is written again in order."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    src = model_tree(tmp_path / "src", {"a.gguf": build_module.SINGLE_READ_MIN + 4097})
    manifest = src / "bundle.yaml"
    expected = build_module.build_bundle(
        manifest, tmp_path / "o1", [keys.ecdsa], workers=2, show_progress=False
    )
    real = build_module._assemble
    calls: list[int] = []

    def grown_prediction(*args: object, **kwargs: object) -> build_module._Head:
        head = real(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(head.span)
        return dataclasses.replace(head, data=head.data + bytes(512)) if len(calls) == 1 else head

    monkeypatch.setattr(build_module, "_assemble", grown_prediction)
    bundle = build_module.build_bundle(
        manifest, tmp_path / "o2", [keys.ecdsa], workers=2, show_progress=False
    )
    assert len(calls) == 2
    assert bundle.read_bytes() == expected.read_bytes()
    assert not list(bundle.parent.glob(".*partial*"))


def test_a_file_that_shrinks_during_a_single_read_build_is_named(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = model_tree(tmp_path / "src", {"a.gguf": build_module.SINGLE_READ_MIN + MIB})
    victim = src / "w" / "a.gguf"
    real = stream_digests

    def shrink_first(*args: object, **kwargs: object) -> object:
        os.truncate(victim, MIB)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(build_module, "stream_digests", shrink_first)
    with pytest.raises(UsageError, match=f"{victim}: changed while the bundle was being built"):
        build_module.build_bundle(
            src / "bundle.yaml", tmp_path / "out", [keys.ecdsa], workers=2, show_progress=False
        )
    assert not list((tmp_path / "out").iterdir())
    assert not lanes_alive()


PEAK_RSS = """
import sys
from pathlib import Path
from enclave.bundle.build import build_bundle
from enclave.trust.keys import SigningKey
key = SigningKey.load(Path(sys.argv[2]), None)
build_bundle(Path(sys.argv[1]), Path(sys.argv[3]), [key], workers=2, show_progress=False)
# VmHWM: this process image's own peak (ru_maxrss would count the forking parent's memory)
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def test_peak_memory_does_not_grow_with_the_file(tmp_path: Path, keys: Keys) -> None:
    """A real build in a fresh interpreter: 8x the weights, the same peak memory (within noise)."""
    peaks = []
    for size in (32 * MIB, 256 * MIB):
        src = model_tree(tmp_path / f"src{size}", {"a.gguf": size})
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                PEAK_RSS,
                str(src / "bundle.yaml"),
                str(keys.path("ecdsa")),
                str(tmp_path / f"o{size}"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert done.returncode == 0, done.stderr
        peaks.append(int(done.stdout.split()[-1]) * 1024)
    assert peaks[1] - peaks[0] < 8 * MIB, peaks
    assert peaks[1] < 160 * MIB, peaks
