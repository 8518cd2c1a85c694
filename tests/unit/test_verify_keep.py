"""verify --extract-to keeps every verified chunk in the content store from the buffer it was
hashed in (no re-read of the extracted tree), and only once every check passed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enclave.bundle.output import aligned_buffer
from enclave.bundle.statement import BundleStatement
from enclave.bundle.store import ContentStore
from enclave.bundle.verify import verify_bundle
from enclave.errors import IntegrityError
from enclave.trust.root import TrustRoot
from enclave.trust.state import StateDir
from tests.conftest import BuildFn
from tests.tarsurgery import Part, join, split

NOW = datetime.now(UTC)


def _chunk(data: bytes) -> tuple[str, object]:
    buffer = aligned_buffer(len(data))
    buffer[: len(data)] = data
    return hashlib.sha384(data).hexdigest(), buffer


def test_staged_chunks_are_objects_only_after_commit(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    staging = store.staging("sha384")
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
    staging = store.staging("sha384")
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
    store.staging("sha384").discard()
    assert not stale.exists() and alive.exists()  # a live verifier's staging is left alone


def test_malformed_digest_is_refused(tmp_path: Path) -> None:
    staging = ContentStore(tmp_path / "store").staging("sha384")
    with pytest.raises(IntegrityError, match="not a sha384 digest"):
        staging.put("../../x", aligned_buffer(1), 1)


def test_published_bundle_has_every_chunk_kept(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    bundle = build()
    state = StateDir.open(tmp_path / "state")
    verify_bundle(
        [bundle], TrustRoot.load(root_path), NOW, extract_to=tmp_path / "x", show_progress=False, state=state
    )
    store = ContentStore.under(tmp_path / "state")
    statement = BundleStatement.from_payload(store.accepted()[0].statement.to_payload())
    wanted = {c for m in statement.members for c in m.chunk_digests()}
    assert {d for _, d, _ in store.iter_objects()} == wanted
    assert store.verify().damaged == ()
    assert not list(store.path.glob(".staging-*"))


def test_failed_verification_keeps_nothing(build: BuildFn, root_path: Path, tmp_path: Path) -> None:
    """The last member is corrupt: chunks before it verified (and were staged), but the run
    fails, so the store gains no object and no staging directory is left."""
    bundle = build()
    parts = split(bundle)
    last = parts[-1]
    data = bytearray(last.data)
    data[-1] ^= 0x01
    parts[-1] = Part(last.name, last.header, bytes(data), last.mtime, last.mode)
    bundle.unlink()
    join(parts, bundle)
    state = StateDir.open(tmp_path / "state")
    with pytest.raises(IntegrityError, match="digest mismatch"):
        verify_bundle(
            [bundle],
            TrustRoot.load(root_path),
            NOW,
            extract_to=tmp_path / "x",
            show_progress=False,
            state=state,
        )
    store = ContentStore.under(tmp_path / "state")
    assert list(store.iter_objects()) == []
    assert not list(store.path.glob(".staging-*")) and not (tmp_path / "x").exists()
