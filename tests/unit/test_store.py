"""The content store: chunks kept by digest, damage named, garbage collected by version."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from enclave.bundle.store import ContentStore
from enclave.errors import IntegrityError, UsageError
from tests.conftest import BuildFn
from tests.tarsurgery import split


def _put(store: ContentStore, data: bytes) -> str:
    digest = hashlib.sha384(data).hexdigest()
    store.put_verified("sha384", digest, memoryview(data))
    return digest


def test_put_read_and_idempotence(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    digest = _put(store, b"chunk")
    _put(store, b"chunk")
    assert store.has("sha384", digest)
    view = memoryview(bytearray(5))
    store.read_verified("sha384", digest, view)
    assert bytes(view) == b"chunk"
    assert oct(store.object_path("sha384", digest).stat().st_mode & 0o777) == "0o444"


def test_damaged_and_missing_objects_fail_closed(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    digest = _put(store, b"chunk")
    path = store.object_path("sha384", digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"chunK")
    with pytest.raises(IntegrityError, match="does not match its digest"):
        store.read_verified("sha384", digest, memoryview(bytearray(5)))
    report = store.verify()
    assert report.objects == 1 and report.damaged == (str(path),)
    path.unlink()
    with pytest.raises(IntegrityError, match="missing from the store"):
        store.read_verified("sha384", digest, memoryview(bytearray(5)))
    with pytest.raises(IntegrityError, match="not a sha384 digest"):
        store.object_path("sha384", "../../etc/passwd")


def test_gc_keeps_the_last_versions(build: BuildFn, tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    envelopes = {}
    for version in ("1.0.0", "1.1.0", "2.0.0-rc.1", "2.0.0"):
        parts = split(build(version=version))
        envelopes[version] = parts[0].data
        bundle = store.record(parts[0].data)
        for part in parts[1:]:  # single-chunk members only need one object each here
            member = bundle.statement.members[bundle.statement.index[part.name]]
            if not member.chunks:
                store.put_verified("sha384", member.digest, memoryview(part.data))
    before = sum(1 for _ in store.entries())
    removed, freed = store.gc(keep=2)
    assert [b.version for b in store.accepted()] == ["2.0.0-rc.1", "2.0.0"]
    assert removed > 0 and freed > 0 and sum(1 for _ in store.entries()) == before - removed
    kept = {e.digest for e in store.entries()}
    for bundle in store.accepted():
        assert {m.digest for m in bundle.statement.members if not m.chunks} <= kept
    with pytest.raises(UsageError):
        store.gc(keep=0)
    assert store.find(store.accepted()[0].statement_digest) is not None


def test_file_objects_are_listed_verified_found_and_collected(build: BuildFn, tmp_path: Path) -> None:
    """files/ALG/CHUNKSIZE/HH/HEX holds whole files under their section-2 digest: listed,
    re-hashed chunk by chunk, found for any of their chunks; junk there is damage gc removes."""
    store = ContentStore(tmp_path / "store")
    parts = split(build())
    statement = store.record(parts[0].data).statement
    algorithm, chunk = statement.digest, statement.chunk_size
    data = {part.name: part.data for part in parts[1:]}
    for member in statement.members:
        path = store.file_path(algorithm, chunk, member.digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[member.name])
    big = next(m for m in statement.members if len(m.chunks) > 2)
    assert {e.digest for e in store.entries()} == {m.digest for m in statement.members}
    assert store.verify().damaged == ()
    assert store.has(algorithm, big.chunks[2]) and not store.object_path(algorithm, big.chunks[2]).exists()
    view = memoryview(bytearray(big.chunk_length(2, chunk)))
    store.read_verified(algorithm, big.chunks[2], view)
    assert bytes(view) == data[big.name][2 * chunk : 3 * chunk]

    other = store.file_path(algorithm, chunk, "0" * 96)
    other.parent.mkdir(parents=True, exist_ok=True)
    other.symlink_to(store.file_path(algorithm, chunk, big.digest))  # same bytes, but not a file
    junk = store.files / algorithm / "sixteen" / "ab" / ("ab" * 48)
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"x")
    assert set(store.verify().damaged) == {str(other), str(junk)}
    assert store.gc(keep=1)[0] == 2
    report = store.verify()
    assert report.damaged == () and report.objects == len({m.digest for m in statement.members})
