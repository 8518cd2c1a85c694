"""StoreStaging: how verify --extract-to keeps a bundle in the content store, only once every
check passed. On another filesystem than the store, each verified chunk is written from the
buffer it was hashed in (no re-read of the extracted tree); on the same one, nothing is written
and commit hard-links the files (tests/unit/test_store_links.py runs both through verify)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enclave.bundle.output import aligned_buffer
from enclave.bundle.statement import BundleStatement, Member
from enclave.bundle.store import ContentStore
from enclave.errors import IntegrityError

NOW = datetime.now(UTC)


def _statement(chunk_size: int = 1 << 20) -> BundleStatement:
    return BundleStatement("t", "1.0.0", "2026-01-01T00:00:00Z", "sha384", chunk_size, (), ())


def _chunk(data: bytes) -> tuple[str, object]:
    buffer = aligned_buffer(len(data))
    buffer[: len(data)] = data
    return hashlib.sha384(data).hexdigest(), buffer


def test_staged_chunks_are_objects_only_after_commit(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    staging = store.staging(_statement())
    digests = []
    for data in (b"a" * 5000, b"", os.urandom(4096), b"a" * 5000):  # a duplicate is staged once
        digest, buffer = _chunk(data)
        staging.put(digest, buffer, len(data))  # type: ignore[arg-type]
        digests.append(digest)
    assert not any(store.has("sha384", d) for d in digests)
    assert sorted(p.name for p in staging.path.iterdir()) == sorted(set(digests))
    assert staging.commit() == 3
    for digest, data in zip(digests, (b"a" * 5000, b"", None), strict=False):
        if data is not None:
            view = memoryview(bytearray(len(data)))
            store.read_verified("sha384", digest, view)  # exact size and digest: the cut-back held
            assert bytes(view) == data
    assert oct(store.object_path("sha384", digests[0]).stat().st_mode & 0o777) == "0o444"
    assert not list(store.path.glob(".staging-*"))


def test_discard_and_stale_staging_leave_no_object(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    staging = store.staging(_statement())
    digest, buffer = _chunk(b"x" * 10)
    staging.put(digest, buffer, 10)  # type: ignore[arg-type]
    staging.discard()
    assert not store.has("sha384", digest) and not store.path.exists()  # it made the store: gone again
    store.path.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = store.path / f".staging-{dead.stdout.strip()}-0000"
    stale.mkdir()
    (stale / digest).write_bytes(b"x" * 10)
    alive = store.path / f".staging-{os.getpid()}-1111"
    alive.mkdir()
    store.staging(_statement()).discard()
    assert not stale.exists() and alive.exists()  # a live verifier's staging is left alone


def test_malformed_digest_is_refused(tmp_path: Path) -> None:
    staging = ContentStore(tmp_path / "store").staging(_statement())
    with pytest.raises(IntegrityError, match="not a sha384 digest"):
        staging.put("../../x", aligned_buffer(1), 1)


def _tree(directory: Path, files: dict[str, bytes], chunk_size: int) -> BundleStatement:
    """An extracted tree as verify leaves it in its staging directory, and its statement."""
    members = []
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
        members.append(Member.of_bytes(name, data, "sha384", chunk_size))
    return BundleStatement("t", "1.0.0", "2026-01-01T00:00:00Z", "sha384", chunk_size, (), tuple(members))


def test_same_filesystem_links_the_files_at_commit_only(tmp_path: Path) -> None:
    chunk = 1 << 20
    extracted = tmp_path / "x"
    extracted.mkdir()
    big = os.urandom(chunk + 100)  # two chunks: its digest depends on the chunk size
    statement = _tree(extracted, {"a/big": big, "a/same": big, "empty": b""}, chunk)
    store = ContentStore(tmp_path / "store")
    staging = store.staging(statement, extracted)
    assert staging.links and sorted(p.name for p in extracted.iterdir()) == ["a", "empty"]  # probe gone
    digest, buffer = _chunk(big[:chunk])
    staging.put(digest, buffer, chunk)  # type: ignore[arg-type]
    assert list(staging.path.iterdir()) == [] and list(store.entries()) == []
    assert staging.commit() == 2  # "a/same" has the digest of "a/big": one object
    kept = {e.path: e for e in store.entries()}
    big_object = store.file_path("sha384", chunk, statement.members[0].digest)
    assert set(kept) == {big_object, store.file_path("sha384", chunk, statement.members[2].digest)}
    assert kept[big_object].chunk_size == chunk and big_object.parent.parent.name == str(chunk)
    assert big_object.stat().st_ino == (extracted / "a" / "big").stat().st_ino
    assert not list(store.path.glob(".staging-*"))


def test_another_filesystem_or_no_hard_links_stages_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extracted = tmp_path / "x"
    extracted.mkdir()
    statement = _tree(extracted, {"f": b"data"}, 1 << 20)
    if Path("/dev/shm").is_dir():
        shm = ContentStore(Path(tempfile.mkdtemp(dir="/dev/shm")) / "store")
        try:
            assert not shm.staging(statement, extracted).links  # st_dev differs
        finally:
            shutil.rmtree(shm.path.parent)

    def exdev(*args: object, **kwargs: object) -> None:  # a bind mount: same st_dev, link refused
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", exdev)
    staging = ContentStore(tmp_path / "store").staging(statement, extracted)
    assert not staging.links and sorted(p.name for p in extracted.iterdir()) == ["f"]
    digest, buffer = _chunk(b"data")
    staging.put(digest, buffer, 4)  # type: ignore[arg-type]
    assert staging.commit() == 1 and staging.store.has("sha384", digest)
