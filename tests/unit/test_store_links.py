"""The content store keeps a published bundle by hard links when it shares the extraction's
filesystem (one write of the content), by chunk copies otherwise; both serve differential
bundles, fail closed on damage and add nothing on a failed run."""

from __future__ import annotations

import filecmp
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from enclave.admission import Admission
from enclave.bundle.build import build_bundle
from enclave.bundle.statement import BundleStatement, Member
from enclave.bundle.store import ContentStore
from enclave.cli import main
from enclave.errors import IntegrityError
from enclave.trust.state import StateDir
from tests.conftest import MANIFEST, BuildFn, Keys, write_inputs
from tests.tarsurgery import Part, join, split
from tests.unit.test_differential import MiB, verify

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = "content/weights/model.gguf"


@pytest.fixture
def versions(keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """v1 full; v2 differential against it, changing chunk 1 of the 3 MiB weights (as in
    test_differential.py); "src" is v2's source tree, what an extraction of v2 must equal."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    signers = [keys.ecdsa, keys.mldsa]
    src = write_inputs(tmp_path / "src")
    (src / "bundle.yaml").write_text(MANIFEST.format(name="m", version="1.0.0", digest="sha384"))
    v1 = build_bundle(src / "bundle.yaml", tmp_path / "v1", signers, show_progress=False)
    with (src / "weights" / "model.gguf").open("r+b") as handle:
        handle.seek(MiB + 10)
        handle.write(os.urandom(100))
    (src / "bundle.yaml").write_text(MANIFEST.format(name="m", version="2.0.0", digest="sha384"))
    diff = build_bundle(src / "bundle.yaml", tmp_path / "diff", signers, show_progress=False, base=v1)
    return {"v1": v1, "diff": diff, "src": src}


def _statement(store: ContentStore, version: str) -> BundleStatement:
    return next(b.statement for b in store.accepted() if b.version == version)


def _weights(statement: BundleStatement) -> Member:
    return statement.members[statement.index[WEIGHTS]]


def _same_as_source(published: Path, src: Path) -> None:
    for name in ("model.gguf", "config.json"):
        assert filecmp.cmp(published / "content" / "weights" / name, src / "weights" / name, shallow=False)
    assert filecmp.cmp(published / "content" / "policy" / "policy.yaml", src / "policy.yaml", shallow=False)


def test_one_filesystem_keeps_files_by_hard_link(
    versions: dict[str, Path], root_path: Path, tmp_path: Path
) -> None:
    high = tmp_path / "high"
    assert verify(versions["v1"], root_path, high, tmp_path / "pub-v1") == 0
    store = ContentStore.under(high)
    v1 = _statement(store, "1.0.0")
    entries = list(store.entries())
    assert entries and all(e.chunk_size == v1.chunk_size for e in entries)  # no chunk objects
    assert not store.objects.exists()
    assert len(entries) == len({m.digest for m in v1.members})
    for member in v1.members:
        kept = store.file_path(v1.digest, v1.chunk_size, member.digest).stat()
        published = (tmp_path / "pub-v1" / member.name).stat()
        assert kept.st_ino == published.st_ino and kept.st_nlink >= 2  # the same bytes, once on disk
    assert store.verify().damaged == ()

    assert verify(versions["diff"], root_path, high, tmp_path / "pub-v2") == 0  # base chunks from files/
    _same_as_source(tmp_path / "pub-v2", versions["src"])
    v2 = _statement(store, "2.0.0")
    new = store.file_path(v2.digest, v2.chunk_size, _weights(v2).digest)
    assert new.stat().st_ino == (tmp_path / "pub-v2" / WEIGHTS).stat().st_ino
    assert not store.objects.exists()


def test_the_link_keeps_the_base_when_the_published_tree_is_deleted(
    versions: dict[str, Path], root_path: Path, tmp_path: Path
) -> None:
    high = tmp_path / "high"
    assert verify(versions["v1"], root_path, high, tmp_path / "pub-v1") == 0
    shutil.rmtree(tmp_path / "pub-v1")
    assert verify(versions["diff"], root_path, high, tmp_path / "pub-v2") == 0
    _same_as_source(tmp_path / "pub-v2", versions["src"])


@pytest.mark.parametrize("damage", ["one byte", "truncated", "removed"])
def test_an_edited_published_file_damages_the_store_and_fails_closed(
    damage: str,
    versions: dict[str, Path],
    root_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The store object is the published file's inode: editing the file in place edits it.
    Chunk 0 of the weights comes from the base; it is re-hashed and the store path named."""
    high = tmp_path / "high"
    assert verify(versions["v1"], root_path, high, tmp_path / "pub-v1") == 0
    store = ContentStore.under(high)
    v1 = _statement(store, "1.0.0")
    stored = store.file_path(v1.digest, v1.chunk_size, _weights(v1).digest)
    published = tmp_path / "pub-v1" / WEIGHTS
    if damage == "one byte":
        with published.open("r+b") as handle:
            handle.seek(10)
            byte = handle.read(1)
            handle.seek(10)
            handle.write(bytes([byte[0] ^ 0x01]))
    elif damage == "truncated":
        os.truncate(published, 3 * MiB)  # chunk 0 is intact: the size still fails it
    else:
        stored.unlink()
    capsys.readouterr()
    assert verify(versions["diff"], root_path, high, tmp_path / "out") == 3
    error = capsys.readouterr().err
    assert str(stored) in error
    assert ("missing from the store" if damage == "removed" else "(damaged)") in error
    assert not (tmp_path / "out").exists()
    assert main(["store", "verify", "--state-dir", str(high)]) == (0 if damage == "removed" else 3)
    if damage != "removed":
        assert f"damaged: {stored}" in capsys.readouterr().err
    with pytest.raises(IntegrityError, match=str(stored)):
        store.read_verified(v1.digest, _weights(v1).chunks[0], memoryview(bytearray(MiB)))
    # The repair FORMAT.md gives: remove the object, verify the (still acceptable) base again.
    stored.unlink(missing_ok=True)
    assert verify(versions["v1"], root_path, high, tmp_path / "pub-v1-again") == 0
    assert verify(versions["diff"], root_path, high, tmp_path / "out") == 0
    _same_as_source(tmp_path / "out", versions["src"])


def test_gc_removes_the_old_versions_file_objects(
    versions: dict[str, Path], root_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    high = tmp_path / "high"
    assert verify(versions["v1"], root_path, high, tmp_path / "pub-v1") == 0
    assert verify(versions["diff"], root_path, high, tmp_path / "pub-v2") == 0
    store = ContentStore.under(high)
    v1, v2 = _statement(store, "1.0.0"), _statement(store, "2.0.0")
    old_only = {m.digest for m in v1.members} - {m.digest for m in v2.members}
    assert _weights(v1).digest in old_only
    removed, _ = store.gc(keep=1)
    assert removed == len(old_only)
    kept = {e.digest for e in store.entries()}
    assert kept == {m.digest for m in v2.members} and not kept & old_only
    assert (tmp_path / "pub-v1" / WEIGHTS).is_file()  # the published tree keeps its own name
    capsys.readouterr()
    assert main(["store", "verify", "--state-dir", str(high)]) == 0


def test_another_filesystem_keeps_chunk_copies(
    versions: dict[str, Path], root_path: Path, tmp_path: Path, shm: Path
) -> None:
    """The state directory on disk, the tree on tmpfs: no hard link can be made; chunks as before."""
    high = tmp_path / "high"
    assert verify(versions["v1"], root_path, high, shm / "pub-v1") == 0
    store = ContentStore.under(high)
    v1 = _statement(store, "1.0.0")
    assert {e.digest for e in store.entries()} == {c for m in v1.members for c in m.chunk_digests()}
    assert all(e.chunk_size is None for e in store.entries()) and not store.files.exists()
    assert verify(versions["diff"], root_path, high, shm / "pub-v2") == 0
    _same_as_source(shm / "pub-v2", versions["src"])
    assert store.verify().damaged == ()


def test_chunk_copies_of_a_linked_base_keep_the_new_version_whole(
    versions: dict[str, Path], root_path: Path, tmp_path: Path, shm: Path
) -> None:
    """v1 kept by links, v2 (differential) extracted elsewhere: v2's base chunks, found only in
    v1's file objects, are copied as chunks, so gc dropping v1 leaves v2 complete."""
    high = tmp_path / "high"
    assert verify(versions["v1"], root_path, high, tmp_path / "pub-v1") == 0
    assert verify(versions["diff"], root_path, high, shm / "pub-v2") == 0
    store = ContentStore.under(high)
    v1 = _statement(store, "1.0.0")
    store.gc(keep=1)
    shutil.rmtree(tmp_path / "pub-v1")
    v2 = _statement(store, "2.0.0")
    assert not store.file_path(v1.digest, v1.chunk_size, _weights(v1).digest).exists()
    for member in v2.members:
        for index, chunk in enumerate(member.chunk_digests()):
            view = memoryview(bytearray(member.chunk_length(index, v2.chunk_size)))
            store.read_verified(v2.digest, chunk, view)


@pytest.mark.parametrize("where", ["same filesystem", "other filesystem"])
def test_failed_verification_keeps_nothing(
    where: str, build: BuildFn, root_path: Path, tmp_path: Path, shm: Path
) -> None:
    """The last member is corrupt: every other member verified (and, across filesystems, its
    chunks were staged), but the run fails, so the store gains nothing and nothing is left."""
    bundle = build()
    parts = split(bundle)
    last = parts[-1]
    data = bytearray(last.data)
    data[-1] ^= 0x01
    parts[-1] = Part(last.name, last.header, bytes(data), last.mtime, last.mode)
    bundle.unlink()
    join(parts, bundle)
    target = (tmp_path if where == "same filesystem" else shm) / "x"
    state = StateDir.open(tmp_path / "state")
    with pytest.raises(IntegrityError, match="digest mismatch"):
        Admission(state, trust=root_path).verify(bundle, extract_to=target)
    store = ContentStore.under(tmp_path / "state")
    assert not store.path.exists()  # not even the directory: it was made for this run
    assert not target.exists() and not list(target.parent.glob(".x.staging-*"))


# A verifier killed (SIGKILL) while it links: after the first file object, before the record.
_KILLED_IN_COMMIT = """
import os, signal, sys
from pathlib import Path
from enclave.admission import Admission
original = os.link
def link(source, target, **kwargs):
    original(source, target, **kwargs)
    if "/store/files/" in str(target):
        os.kill(os.getpid(), signal.SIGKILL)
os.link = link
bundle, root, state, target = map(Path, sys.argv[1:])
Admission(state, trust=root).verify(bundle, extract_to=target)
"""


def test_killed_while_linking_then_run_again(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    bundle = build()
    state, target = tmp_path / "state", tmp_path / "pub"
    argv = [sys.executable, "-c", _KILLED_IN_COMMIT, str(bundle), str(root_path), str(state), str(target)]
    killed = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = ContentStore.under(state)
    assert not target.exists() and store.accepted() == []  # nothing published, no version kept
    assert len(list(store.entries())) == 1  # one verified file linked: an orphan until gc or a rerun
    assert verify(bundle, root_path, state, target) == 0
    statement = store.accepted()[0].statement
    assert {e.digest for e in store.entries()} == {m.digest for m in statement.members}
    assert store.verify().damaged == ()
    assert not list(store.path.glob(".staging-*")) and not list(tmp_path.glob(".pub.staging-*"))
