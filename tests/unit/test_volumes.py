"""Media volumes: split, the courier's per-volume check, verification streaming across volumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from enclave.bundle.build import build_bundle
from enclave.bundle.volumes import split_bundle
from enclave.cli import main
from tests.conftest import MANIFEST, BuildFn, Keys, write_inputs

VOLUME = 1024 * 1024


@pytest.fixture
def volumes(build: BuildFn, keys: Keys, tmp_path: Path) -> tuple[list[Path], Path]:
    """A co-signed bundle with a 3 MiB weights file, split into 1 MiB volumes."""
    bundle = build()
    parts, index = split_bundle(bundle, VOLUME, [keys.ecdsa, keys.mldsa])
    bundle.unlink()
    return parts, index


def verify(path: Path, root: Path, target: Path) -> int:
    code = main(["bundle", "verify", str(path), "--trust", str(root), "--extract-to", str(target)])
    if code != 0:
        assert not target.exists()
    return code


def test_split_volumes_verify_from_any_name(
    volumes: tuple[list[Path], Path], root_path: Path, tmp_path: Path
) -> None:
    parts, index = volumes
    assert len(parts) >= 4 and all(p.stat().st_size == VOLUME for p in parts[:-1])
    assert verify(parts[0], root_path, tmp_path / "a") == 0
    assert verify(index, root_path, tmp_path / "b") == 0
    assert (tmp_path / "a" / "content" / "weights" / "model.gguf").stat().st_size == 3 * 1024 * 1024 + 123
    for part in parts:  # the courier's check
        assert main(["bundle", "verify-volume", str(part), "--trust", str(root_path)]) == 0


def test_build_writes_volumes_directly(keys: Keys, root_path: Path, tmp_path: Path) -> None:
    src = write_inputs(tmp_path / "src")
    (src / "bundle.yaml").write_text(MANIFEST.format(name="v", version="2.0.0", digest="sha256"))
    index = build_bundle(
        src / "bundle.yaml",
        tmp_path / "out",
        [keys.ecdsa, keys.mldsa],
        show_progress=False,
        volume_size=VOLUME,
    )
    assert index.name == "v-2.0.0.volumes.dsse.json"
    assert not (tmp_path / "out" / "v-2.0.0.bundle").exists()
    assert verify(index, root_path, tmp_path / "x") == 0


def test_missing_volume_is_named(
    volumes: tuple[list[Path], Path], root_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts, index = volumes
    parts[2].unlink()
    assert verify(index, root_path, tmp_path / "x") == 3
    assert parts[2].name in capsys.readouterr().err


def test_truncated_last_volume_is_named(
    volumes: tuple[list[Path], Path], root_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts, _ = volumes
    with parts[-1].open("r+b") as handle:
        handle.truncate(parts[-1].stat().st_size - 100)
    assert verify(parts[0], root_path, tmp_path / "x") == 3
    assert parts[-1].name in capsys.readouterr().err
    assert main(["bundle", "verify-volume", str(parts[-1]), "--trust", str(root_path)]) == 3


def test_swapped_volumes_are_caught_and_named(
    volumes: tuple[list[Path], Path], root_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts, index = volumes
    a, b = parts[1], parts[2]  # same size, so the size check cannot tell
    swap = a.with_name("swap")
    a.rename(swap)
    b.rename(a)
    swap.rename(b)
    assert main(["bundle", "verify-volume", str(a), "--trust", str(root_path)]) == 3
    assert a.name in capsys.readouterr().err
    assert verify(index, root_path, tmp_path / "x") == 3
    assert "digest mismatch [in " in capsys.readouterr().err


def test_corrupt_chunk_in_the_middle_of_a_large_file(
    volumes: tuple[list[Path], Path], root_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts, index = volumes
    with parts[2].open("r+b") as handle:
        handle.seek(VOLUME // 2)
        byte = handle.read(1)
        handle.seek(VOLUME // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert verify(index, root_path, tmp_path / "x") == 3
    err = capsys.readouterr().err
    assert "content/weights/model.gguf" in err and "chunk" in err and parts[2].name in err


def test_index_from_another_bundle_is_refused(
    volumes: tuple[list[Path], Path], build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path
) -> None:
    parts, index = volumes
    other = build(version="1.0.1")
    _, other_index = split_bundle(other, VOLUME, [keys.ecdsa, keys.mldsa])
    doc = json.loads(other_index.read_text())
    assert doc  # a validly signed index, but of different volumes
    shutil.copyfile(other_index, index)
    assert verify(parts[0], root_path, tmp_path / "x") == 3


def test_index_signature_is_checked(build: BuildFn, keys: Keys, root_path: Path, tmp_path: Path) -> None:
    """An index signed by one classical key only does not meet the hybrid bundle rule."""
    single = build()
    new_parts, new_index = split_bundle(single, VOLUME, [keys.ecdsa])
    assert main(["bundle", "verify-volume", str(new_parts[0]), "--trust", str(root_path)]) == 4
    assert verify(new_index, root_path, tmp_path / "x") == 4


def test_cosigning_a_volume_is_refused(volumes: tuple[list[Path], Path], keys: Keys) -> None:
    parts, _ = volumes
    before = parts[0].read_bytes()
    assert main(["bundle", "sign", str(parts[0]), "--key", str(keys.path("ecdsa2"))]) == 2
    assert parts[0].read_bytes() == before


def test_killed_verify_leaves_nothing_published_and_rerun_succeeds(
    build: BuildFn, root_path: Path, tmp_path: Path
) -> None:
    """A verifier killed mid-extraction (SIGKILL) leaves only a staging dir; the next run publishes."""
    import signal
    import subprocess
    import sys
    import time

    bundle = build()
    target = tmp_path / "pub"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_VERIFY, str(bundle), str(root_path), str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".pub.staging-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert list(tmp_path.glob(".pub.staging-*")) and not target.exists()
    assert verify(bundle, root_path, target) == 0
    assert not list(tmp_path.glob(".pub.staging-*"))


# A verifier whose chunk writes are slowed down, so the kill lands mid-extraction.
_SLOW_VERIFY = """
import sys, time
from pathlib import Path
from enclave.admission import Admission
from enclave.bundle import verify as v
original = v._ContentCheck._write
def slow(self, *args):
    time.sleep(0.5)
    return original(self, *args)
v._ContentCheck._write = slow
Admission(trust=Path(sys.argv[2])).verify(Path(sys.argv[1]), extract_to=Path(sys.argv[3]))
"""
