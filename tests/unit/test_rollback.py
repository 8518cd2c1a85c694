"""Rollback state: semantic versions, refusals (RollbackRefused, exit 5), atomic writes,
corruption, the auditor's re-check; through the library (Admission), then `test_cli_*` end to end."""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enclave.admission import Admission, Admitted
from enclave.cli import main
from enclave.errors import RollbackError, RollbackRefused, ThresholdNotMet, TrustError, UsageError
from enclave.trust.root import TrustRoot
from enclave.trust.rotation import apply_chain
from enclave.trust.state import RollbackState, SemVer, StateDir, atomic_write, compare_versions
from tests.conftest import BuildFn, Keys, RotateFn, make_root

# Each list is in ascending precedence (semver 2.0.0, section 11, and its example).
ORDERED = [
    "0.9.9",
    "1.0.0-0",
    "1.0.0-2",
    "1.0.0-10",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.1.0",
    "1.10.0",
    "2.0.0",
]


def test_semver_precedence() -> None:
    for lower, higher in itertools.pairwise(ORDERED):
        assert compare_versions(lower, higher) == -1, (lower, higher)
        assert compare_versions(higher, lower) == 1, (lower, higher)
    assert compare_versions("1.0.0+build.1", "1.0.0+build.2") == 0  # build metadata has no precedence
    assert compare_versions("1.0.0-rc.1+a", "1.0.0-rc.1") == 0


@pytest.mark.parametrize(
    "text", ["1.0", "01.0.0", "1.0.0-01", "1.0.0-", "1.0.0+", "v1.0.0", "1.0.0-a..b", ""]
)
def test_semver_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a semantic version"):
        SemVer.parse(text)


def test_packaging_would_order_differently() -> None:
    """Why enclave has its own comparator: PEP 440 orders build metadata and rejects semver tags."""
    packaging = pytest.importorskip("packaging.version")
    assert packaging.Version("1.0.0+b") > packaging.Version("1.0.0+a")
    with pytest.raises(packaging.InvalidVersion):
        packaging.Version("1.0.0-alpha.beta")


def admit(state_dir: Path, bundle: Path, trust: Path | None = None, **where: Any) -> Admitted:
    """An admission into `state_dir` (its rollback record), as `bundle verify` runs one."""
    return Admission(state_dir, trust).verify(bundle, **where)


def refused(state_dir: Path, bundle: Path, trust: Path | None = None, **where: Any) -> RollbackRefused:
    with pytest.raises(RollbackRefused) as caught:
        admit(state_dir, bundle, trust, **where)
    assert caught.value.exit_code == 5
    return caught.value


def test_newer_accepted_older_refused(build: BuildFn, root_path: Path, state_dir: Path) -> None:
    old, new = build(version="1.0.0"), build(version="1.2.0")
    admitted = admit(state_dir, new, root_path)
    assert admitted.mode == "admission" and "rollback: first version of demo seen here" in admitted.checks
    before = (state_dir / "rollback.json").read_bytes()
    error = refused(state_dir, old, root_path)
    assert (error.name, error.version, error.accepted) == ("demo", "1.0.0", "1.2.0")
    assert "version 1.0.0 is older than 1.2.0 already accepted (rollback)" in str(error)
    assert (state_dir / "rollback.json").read_bytes() == before
    record = json.loads(before)["bundles"]["demo"]
    assert record["version"] == "1.2.0" and record["rootVersion"] == 1
    assert record["statementDigest"] == admitted.statement_digest


def test_same_version_same_content_is_accepted_again(
    build: BuildFn, root_path: Path, state_dir: Path
) -> None:
    bundle = build()
    admit(state_dir, bundle, root_path)
    again = admit(state_dir, bundle, root_path)
    assert "rollback: demo 1.0.0 is the version already accepted (same content)" in again.checks


def test_same_version_other_content_is_refused(
    build: BuildFn, root_path: Path, tmp_path: Path, state_dir: Path
) -> None:
    first, second = build(version="1.0.0"), build(version="1.0.0")  # different random weights
    admit(state_dir, first, root_path)
    target = tmp_path / "never"
    error = refused(state_dir, second, root_path, extract_to=target)
    assert (error.name, error.version, error.accepted) == ("demo", "1.0.0", "1.0.0")
    assert "was accepted before with different content" in str(error)
    assert not target.exists()


def test_build_metadata_does_not_make_a_version_newer(
    build: BuildFn, root_path: Path, state_dir: Path
) -> None:
    admit(state_dir, build(version="1.0.0+build.1"), root_path)
    error = refused(state_dir, build(version="1.0.0+build.2"), root_path)
    assert (error.version, error.accepted) == ("1.0.0+build.2", "1.0.0+build.1")


def test_prerelease_is_older_than_its_release(build: BuildFn, root_path: Path, state_dir: Path) -> None:
    admit(state_dir, build(version="2.0.0"), root_path)
    error = refused(state_dir, build(version="2.0.0-rc.1"), root_path)
    assert (error.version, error.accepted) == ("2.0.0-rc.1", "2.0.0")
    newer = admit(state_dir, build(version="2.0.1-rc.1"), root_path)
    assert "rollback: demo 2.0.1-rc.1 is newer than 2.0.0" in newer.checks


def test_names_are_independent(build: BuildFn, root_path: Path, state_dir: Path) -> None:
    admit(state_dir, build(name="a", version="3.0.0"), root_path)
    other = admit(state_dir, build(name="b", version="1.0.0"), root_path)
    assert "rollback: first version of b seen here" in other.checks


def test_audit_recheck_with_at_ignores_and_keeps_state(
    build: BuildFn, root_path: Path, state_dir: Path, tmp_path: Path
) -> None:
    old, new = build(version="1.0.0"), build(version="2.0.0")
    admit(state_dir, new, root_path)
    before = (state_dir / "rollback.json").read_bytes()
    audit = Admission(state_dir, root_path, datetime.now(UTC) + timedelta(minutes=1), recheck=True)
    rechecked = audit.verify(old)  # the auditor re-checks an old bundle
    assert rechecked.mode == "audit" and rechecked.extracted_to is None
    assert "rollback: not consulted (an audit re-check records and publishes nothing)" in rechecked.checks
    assert rechecked.receipt is not None  # a re-check still leaves its receipt
    with pytest.raises(UsageError, match="never extracts") as caught:
        audit.verify(old, extract_to=tmp_path / "x")
    assert caught.value.exit_code == 2
    assert not (tmp_path / "x").exists()
    assert (state_dir / "rollback.json").read_bytes() == before
    refused(state_dir, old, root_path)  # admission still refuses it


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "digit changed": lambda data: data.replace(b'"version": "1.2.0"', b'"version": "1.0.0"'),
    "not json": lambda data: b"\x00\x01garbage",
    "checksum removed": lambda data: json.dumps(
        {k: v for k, v in json.loads(data).items() if k != "sha256"}
    ).encode(),
}


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_corrupted_state_file_is_refused_never_reset(
    damage: str, build: BuildFn, root_path: Path, state_dir: Path
) -> None:
    admit(state_dir, build(version="1.2.0"), root_path)
    path = state_dir / "rollback.json"
    corrupted = CORRUPTIONS[damage](path.read_bytes())
    assert corrupted != path.read_bytes()
    path.write_bytes(corrupted)
    for version in ("1.0.0", "9.0.0"):  # not even a newer one passes
        with pytest.raises(RollbackError) as caught:
            admit(state_dir, build(version=version), root_path)
        message = str(caught.value)
        assert caught.value.exit_code == 5
        assert str(path) in message and "corrupted" in message and "\n" not in message
        assert path.read_bytes() == corrupted, "a corrupted state file must be left for the operator"


def test_state_file_replaced_by_a_directory(build: BuildFn, root_path: Path, state_dir: Path) -> None:
    (state_dir / "rollback.json").mkdir()
    with pytest.raises(RollbackError, match="is a directory, not a state file") as caught:
        admit(state_dir, build(), root_path)
    assert caught.value.exit_code == 5


def test_stored_root_corrupted_is_refused(build: BuildFn, root_path: Path, state_dir: Path) -> None:
    admit(state_dir, build(version="1.0.0"), root_path)
    stored = state_dir / "root.json"
    edited = stored.read_bytes().replace(b'"threshold": 2', b'"threshold": 1')
    assert edited != stored.read_bytes()
    stored.write_bytes(edited)
    with pytest.raises(ThresholdNotMet, match="trust root not signed by its root role") as caught:
        admit(state_dir, build(version="2.0.0"), root_path)
    assert caught.value.role == "root" and caught.value.exit_code == 4


def test_stored_root_replaced_by_an_older_root_is_refused(
    build: BuildFn, keys: Keys, rotate: RotateFn, tmp_path: Path, state_dir: Path
) -> None:
    v1 = make_root(keys, tmp_path / "1.root.json")
    v2 = rotate(v1, [keys.root], revoke=[keys.ecdsa2])
    state = StateDir.open(state_dir)
    with state.locked():  # as `trust update v2 --trust v1` stores it
        state.store_root(apply_chain(TrustRoot.load(v1), [TrustRoot.load(v2)]))
    assert admit(state_dir, build(version="1.0.0")).root.version == 2
    (state_dir / "root.json").write_bytes(v1.read_bytes())  # someone puts the old root back
    with pytest.raises(RollbackError, match="older than version 2 trusted here before") as caught:
        admit(state_dir, build(version="2.0.0"))
    assert caught.value.exit_code == 5


def test_record_refuses_an_older_root_version() -> None:
    state = RollbackState().accept("demo", "1.0.0", "a" * 64, 2, "t")
    with pytest.raises(RollbackRefused, match="root rollback") as caught:
        state.check("other", "2.0.0", "b" * 64, 1)
    assert (caught.value.name, caught.value.version, caught.value.accepted) == (None, None, None)
    assert "newer" in state.check("demo", "2.0.0", "b" * 64, 2)


def _crash_during_write(path: Path, data: bytes) -> None:
    """Child process: die (no cleanup, no atexit) right after the data reached the temp file."""
    real_fsync = os.fsync

    def fsync_then_die(fd: Any) -> None:
        real_fsync(fd)
        os._exit(9)

    os.fsync = fsync_then_die
    atomic_write(path, data)


def test_crash_mid_write_leaves_the_old_state(build: BuildFn, root_path: Path, state_dir: Path) -> None:
    admit(state_dir, build(version="1.0.0"), root_path)
    path = state_dir / "rollback.json"
    before = path.read_bytes()
    newer = RollbackState.from_json(before, "x").accept("demo", "5.0.0", "c" * 64, 1, "t").to_json()
    child = multiprocessing.get_context("fork").Process(target=_crash_during_write, args=(path, newer))
    child.start()
    child.join(30)
    assert child.exitcode == 9
    assert path.read_bytes() == before, "the old state must survive a crash mid-write"
    assert list(state_dir.glob(".rollback.json.tmp-*")), "the crash left its temporary file"
    refused(state_dir, build(version="0.5.0"), root_path)  # still enforced
    admit(state_dir, build(version="1.1.0"), root_path)
    assert not list(state_dir.glob(".rollback.json.tmp-*")), "the next writer removes orphans"


def _accept_many(directory: str, start: int) -> None:
    state = StateDir(Path(directory))
    for i in range(start, start + 20):
        # the other process got further (or stored the root first): refusing is the point
        with contextlib.suppress(RollbackError, TrustError):
            state.accept(_digest(state), _root(directory), "race", f"1.{i}.0", "d" * 64, "t")


def _digest(state: StateDir) -> str | None:
    root = state.read_root()
    return root.digest if root else None


def _root(directory: str) -> TrustRoot:
    return TrustRoot.load(Path(directory) / "anchor.json")


def test_concurrent_writers_never_go_backwards(keys: Keys, tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    make_root(keys, directory / "anchor.json")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_accept_many, args=(str(directory), n)) for n in (0, 10)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    final = StateDir(directory).read_rollback().bundles["race"]
    assert final.version == "1.29.0"


# -- the command end to end -------------------------------------------------------------------------
def verify(bundle: Path, *extra: str) -> int:
    return main(["bundle", "verify", str(bundle), *extra])


def test_cli_rollback_refusal_exit_code_and_output(
    build: BuildFn, root_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = build(version="1.0.0"), build(version="1.2.0")
    assert verify(new, "--trust", str(root_path)) == 0
    capsys.readouterr()
    assert verify(old, "--trust", str(root_path)) == 5
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "bundle demo: version 1.0.0 is older than 1.2.0 already accepted (rollback)" in captured.err
    assert verify(old, "--trust", str(root_path), "--json") == 5
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["exitCode"] == 5 and doc["error"]["type"] == "RollbackRefused"


def test_cli_state_dir_option_wins_over_the_environment(
    build: BuildFn, root_path: Path, tmp_path: Path, state_dir: Path
) -> None:
    other = tmp_path / "other-state"
    assert verify(build(), "--trust", str(root_path), "--state-dir", str(other)) == 0
    assert (other / "rollback.json").is_file() and not (state_dir / "rollback.json").exists()
