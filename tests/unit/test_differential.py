"""Differential bundles: only the chunks the high side lacks travel; the result is the full tree."""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

import pytest

from enclave.bundle.build import build_bundle
from enclave.bundle.inspect import inspect_bundle
from enclave.bundle.store import ContentStore
from enclave.cli import main
from tests.conftest import MANIFEST, Keys, write_inputs

MiB = 1024 * 1024


@pytest.fixture
def versions(keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """v1 full; v2 full and differential, where v2 changes one 1 MiB chunk of the 3 MiB weights."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    signers = [keys.ecdsa, keys.mldsa]
    src = write_inputs(tmp_path / "src")
    (src / "bundle.yaml").write_text(MANIFEST.format(name="m", version="1.0.0", digest="sha384"))
    v1 = build_bundle(src / "bundle.yaml", tmp_path / "v1", signers, show_progress=False)
    with (src / "weights" / "model.gguf").open("r+b") as handle:  # a fine-tune touching chunk 1
        handle.seek(MiB + 10)
        handle.write(os.urandom(100))
    (src / "bundle.yaml").write_text(MANIFEST.format(name="m", version="2.0.0", digest="sha384"))
    full = build_bundle(src / "bundle.yaml", tmp_path / "full", signers, show_progress=False)
    diff = build_bundle(src / "bundle.yaml", tmp_path / "diff", signers, show_progress=False, base=v1)
    return {"v1": v1, "full": full, "diff": diff}


def verify(bundle: Path, root: Path, state: Path, target: Path | None = None) -> int:
    extra = ["--extract-to", str(target)] if target else []
    return main(["bundle", "verify", str(bundle), "--trust", str(root), "--state-dir", str(state), *extra])


def test_only_changed_chunks_travel_and_trees_are_identical(
    versions: dict[str, Path], root_path: Path, tmp_path: Path
) -> None:
    doc = inspect_bundle([versions["diff"]])
    weights = next(m for m in doc["members"] if m["name"] == "content/weights/model.gguf")
    assert weights["carried"] == [1]  # 1 of 4 chunks
    assert versions["diff"].stat().st_size < versions["full"].stat().st_size - 2 * MiB
    assert doc["differential"]["base"]["version"] == "1.0.0"
    assert doc["differential"]["bytesFromBase"] >= 2 * MiB

    high = tmp_path / "high"
    assert verify(versions["v1"], root_path, high, tmp_path / "pub-v1") == 0
    assert verify(versions["diff"], root_path, high, tmp_path / "pub-diff") == 0
    assert verify(versions["full"], root_path, tmp_path / "other-high", tmp_path / "pub-full") == 0
    compare = filecmp.dircmp(tmp_path / "pub-diff" / "content", tmp_path / "pub-full" / "content")
    assert not compare.diff_files and not compare.left_only and not compare.right_only
    for member in ["content/weights/model.gguf", "content/weights/config.json", "sbom.cdx.json"]:
        assert filecmp.cmp(tmp_path / "pub-diff" / member, tmp_path / "pub-full" / member, shallow=False)


def test_a_base_never_verified_here_is_refused(
    versions: dict[str, Path], root_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert verify(versions["diff"], root_path, tmp_path / "fresh", tmp_path / "out") == 3
    assert "never verified here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_damaged_store_fails_closed_naming_the_object(
    damage: str,
    versions: dict[str, Path],
    root_path: Path,
    tmp_path: Path,
    shm: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """v1 extracted to another filesystem, so the store keeps its chunks as objects (the file
    objects of one filesystem: tests/unit/test_store_links.py)."""
    high = tmp_path / "high"
    assert verify(versions["v1"], root_path, high, shm / "pub-v1") == 0
    store = ContentStore.under(high)
    v1 = store.accepted()[0].statement
    weights = next(m for m in v1.members if m.name == "content/weights/model.gguf")
    victim = store.object_path(v1.digest, weights.chunks[0])
    if damage == "corrupt":
        os.chmod(victim, 0o644)
        with victim.open("r+b") as handle:
            handle.write(b"X")
    else:
        victim.unlink()
    capsys.readouterr()
    assert verify(versions["diff"], root_path, high, tmp_path / "out") == 3
    assert victim.name in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["store", "verify", "--state-dir", str(high)]) == (3 if damage == "corrupt" else 0)


def test_store_commands(
    versions: dict[str, Path], root_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    high = tmp_path / "high"
    assert verify(versions["v1"], root_path, high, tmp_path / "a") == 0
    assert verify(versions["diff"], root_path, high, tmp_path / "b") == 0
    capsys.readouterr()
    assert main(["store", "ls", "--state-dir", str(high)]) == 0
    listing = capsys.readouterr().out
    assert "m 1.0.0" in listing and "m 2.0.0" in listing
    assert main(["store", "gc", "--keep", "1", "--state-dir", str(high)]) == 0
    assert [b.version for b in ContentStore.under(high).accepted()] == ["2.0.0"]
    assert main(["store", "verify", "--state-dir", str(high)]) == 0
    shutil.rmtree(tmp_path / "b")
