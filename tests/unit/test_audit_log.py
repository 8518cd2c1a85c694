"""Audit log: durable group commit, signed checkpoints, and every kind of tampering detected."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import itertools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from enclave.errors import IntegrityError, TrustError
from enclave.runtime.audit import (
    AuditLog,
    AuditUnavailable,
    FileSink,
    LogVerificationError,
    export,
    verify_log,
)
from enclave.runtime.audit.records import CHECKPOINT_PAYLOAD_TYPE, TreeHead, encode, now_text
from enclave.runtime.audit.verify import check_log, checkpoints_path
from enclave.runtime.audit.writer import LINGER_SECONDS
from enclave.trust.dsse import Envelope
from enclave.trust.keys import SigningKey
from enclave.trust.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from tests.unit.test_gateway_support import Trust, make_trust, run

START = {
    "policy_digest": "sha256:" + "ab" * 32,
    "policy": "apiVersion: enclave/v1\n",
    "model_digest": "sha256:m",
}


@pytest.fixture
def trust(tmp_path: Path) -> Trust:
    return make_trust(tmp_path / "trust")


async def _write(path: Path, signer: SigningKey, n: int, every: int) -> None:
    log = AuditLog.open(path, signer, checkpoint_every=every, checkpoint_seconds=3600)
    await log.start(START)
    for i in range(n):
        await log.append({"event": "decision", "id": f"req-{i}", "decision": "allow", "rule": None})
    await log.close()


def write_log(path: Path, trust: Trust, n: int = 20, every: int = 5) -> Path:
    run(_write(path, trust.audit, n, every))
    return path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def put(path: Path, entries: list[bytes]) -> None:
    path.write_bytes(b"".join(e + b"\n" for e in entries))


def problems(log: Path, trust: Trust, witness: tuple[Path, ...] = ()) -> list[str]:
    with pytest.raises(LogVerificationError) as caught:
        verify_log(log, trust.root, witness)
    assert caught.value.exit_code == 3
    return caught.value.report.problems


def rechain(entries: list[bytes]) -> list[bytes]:
    """What an insider with write access would do: fix every prev hash after an edit."""
    out: list[bytes] = []
    prev = "0" * 64
    for entry in entries:
        doc = json.loads(entry)
        doc["prev"] = prev
        line = encode(doc)
        out.append(line)
        prev = leaf_hash(line).hex()
    return out


def checkpoint(entries: list[bytes], size: int, log_id: str, key: SigningKey) -> bytes:
    root = MerkleTree([leaf_hash(e) for e in entries]).root(size).hex()
    envelope = Envelope(CHECKPOINT_PAYLOAD_TYPE, TreeHead(log_id, size, root, now_text()).payload())
    envelope.sign(key)
    return envelope.to_json()


def log_id_of(log: Path) -> str:
    return str(json.loads(lines(log)[0])["log_id"])


# -- the writer --------------------------------------------------------------------------------


def test_fresh_log_verifies_with_chain_and_checkpoints(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=23, every=5)
    report = verify_log(log, trust.root)
    # log-open + gateway-start + 23 decisions + gateway-stop
    assert report.records == 26
    assert report.covered_records == 26  # close() checkpoints everything
    assert report.verified_checkpoints >= 5
    assert report.decisions == {"allow": 23}
    assert report.policy_digests == [START["policy_digest"]]
    first = json.loads(lines(log)[0])
    assert first["event"] == "log-open" and first["seq"] == 0 and first["prev"] == "0" * 64


def test_records_carry_the_chain(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=3)
    entries = lines(log)
    for before, after in itertools.pairwise(entries):
        assert json.loads(after)["prev"] == leaf_hash(before).hex()


def test_concurrent_appends_share_one_sync(tmp_path: Path, trust: Trust) -> None:
    commits: list[int] = []

    async def scenario() -> list[int]:
        log = AuditLog.open(tmp_path / "audit.log", trust.audit, checkpoint_seconds=3600)
        log.on_commit = lambda records, seconds: commits.append(records)
        await log.start(START)
        commits.clear()
        seqs = await asyncio.gather(*[log.append({"event": "x", "n": i}) for i in range(200)])
        await log.close()
        return list(seqs)

    seqs = run(scenario())
    assert sorted(seqs) == list(range(2, 202))
    assert sum(commits[:-1]) == 200  # the last commit is the stop record
    assert len(commits) < 50, commits  # group commit: far fewer syncs than records
    verify_log(tmp_path / "audit.log", trust.root)


class SlowSink(FileSink):
    def commit_records(self, data: bytes) -> None:
        time.sleep(0.002)
        super().commit_records(data)


def test_a_steady_stream_of_records_does_not_starve_checkpoints(tmp_path: Path, trust: Trust) -> None:
    path = tmp_path / "audit.log"

    async def scenario() -> None:
        log = AuditLog.open(
            path, trust.audit, checkpoint_every=20, checkpoint_seconds=3600, sink=SlowSink(path)
        )
        await log.start(START)
        waiting = []
        for i in range(400):  # faster than the syncs: records are always queued when one ends
            waiting.append(asyncio.create_task(log.append({"event": "x", "n": i})))
            await asyncio.sleep(0.0005)
        await asyncio.gather(*waiting)
        await log.close()

    run(scenario())
    report = verify_log(path, trust.root)
    assert report.verified_checkpoints >= 10, report.verified_checkpoints


class CountingSink(FileSink):
    """A real file sink that remembers how many records each sync made durable."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.synced: list[int] = []

    def commit_records(self, data: bytes) -> None:
        super().commit_records(data)
        self.synced.append(data.count(b"\n"))


def test_unwaited_records_ride_along_with_the_next_waited_commit(tmp_path: Path, trust: Trust) -> None:
    """An outcome record must not start a sync of its own that the next decision then waits
    behind: it goes out with that decision, in one write and one sync, in arrival order."""
    path = tmp_path / "audit.log"

    async def scenario() -> CountingSink:
        sink = CountingSink(path)
        log = AuditLog.open(path, trust.audit, checkpoint_seconds=3600, sink=sink)
        await log.start(START)
        sink.synced.clear()
        log.append_nowait({"event": "outcome", "n": 1})
        await asyncio.sleep(0.005)  # well under the linger: nothing synced yet
        assert sink.synced == []
        seq = await log.append({"event": "decision", "n": 2})
        assert sink.synced == [2]  # both records, one sync
        assert [json.loads(e)["event"] for e in lines(path)[-2:]] == ["outcome", "decision"]
        assert json.loads(lines(path)[-1])["seq"] == seq
        await log.close()
        return sink

    run(scenario())
    assert verify_log(path, trust.root).ok


def test_an_unwaited_record_alone_is_synced_after_the_linger(tmp_path: Path, trust: Trust) -> None:
    path = tmp_path / "audit.log"

    async def scenario() -> None:
        sink = CountingSink(path)
        log = AuditLog.open(path, trust.audit, checkpoint_seconds=3600, sink=sink)
        await log.start(START)
        sink.synced.clear()
        log.append_nowait({"event": "outcome"})
        deadline = time.monotonic() + 10 * LINGER_SECONDS + 1
        while not sink.synced and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert sink.synced == [1]  # durable without any later traffic
        assert json.loads(lines(path)[-1])["event"] == "outcome"
        await log.close()

    run(scenario())


def test_checkpoint_covers_records_still_lingering(tmp_path: Path, trust: Trust) -> None:
    path = tmp_path / "audit.log"

    async def scenario() -> int:
        log = AuditLog.open(path, trust.audit, checkpoint_seconds=3600)
        await log.start(START)
        log.append_nowait({"event": "outcome", "n": 1})
        log.append_nowait({"event": "outcome", "n": 2})
        await log.checkpoint()
        size = log.size  # the checkpoint just written must name both outcome records
        await log.close()
        return size

    size = run(scenario())
    sizes = [
        TreeHead.from_payload(Envelope.from_json(c).payload).tree_size for c in lines(checkpoints_path(path))
    ]
    assert size in sizes
    assert [json.loads(e)["event"] for e in lines(path)[size - 2 : size]] == ["outcome", "outcome"]


class FailingSink:
    def __init__(self, fail_after: int = 0) -> None:
        self.calls = 0
        self.fail_after = fail_after

    def commit_records(self, data: bytes) -> None:
        self.calls += 1
        if self.calls > self.fail_after:
            raise OSError(5, "Input/output error")

    def append_checkpoint(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_failed_write_fails_the_log_for_good(tmp_path: Path, trust: Trust) -> None:
    async def scenario() -> None:
        log = AuditLog.open(tmp_path / "audit.log", trust.audit, sink=FailingSink(fail_after=2))
        await log.start(START)
        assert log.healthy
        with pytest.raises(AuditUnavailable, match="Input/output error"):
            await log.append({"event": "decision"})
        assert not log.healthy
        with pytest.raises(AuditUnavailable):
            await log.append({"event": "decision"})
        with pytest.raises(AuditUnavailable):
            log.append_nowait({"event": "outcome"})
        await log.close()

    run(scenario())


class SlowFailingSink(FailingSink):
    """Sync number `fail_after + 1` blocks until released, then fails; later syncs succeed."""

    def __init__(self, fail_after: int) -> None:
        super().__init__(fail_after)
        self.release = threading.Event()

    def commit_records(self, data: bytes) -> None:
        self.calls += 1
        if self.calls == self.fail_after + 1:
            self.release.wait(5)
            raise OSError(5, "Input/output error")


def test_no_batch_is_acknowledged_after_an_earlier_sync_failed(tmp_path: Path, trust: Trust) -> None:
    async def scenario() -> None:
        sink = SlowFailingSink(fail_after=2)
        log = AuditLog.open(tmp_path / "audit.log", trust.audit, sink=sink)
        await log.start(START)
        first = asyncio.create_task(log.append({"event": "first"}))
        await asyncio.sleep(0.05)  # its sync is now blocked in a worker thread
        second = asyncio.create_task(log.append({"event": "second"}))
        await asyncio.sleep(0.05)  # it waits for the next group commit
        assert not second.done()
        sink.release.set()
        for task in (first, second):
            with pytest.raises(AuditUnavailable):
                await task
        # The second batch is never synced, let alone acknowledged: Linux reports a failed
        # fsync once and may report success for the next, so nothing after a failure counts.
        assert sink.calls == 3 and not log.healthy
        await log.close()

    run(scenario())


class BrokenSigner:
    def __init__(self, key: SigningKey) -> None:
        self.keyid = key.keyid
        self.public = key.public

    def sign(self, data: bytes) -> bytes:
        raise RuntimeError("HSM unavailable")


def test_signer_failure_fails_closed(tmp_path: Path, trust: Trust) -> None:
    async def scenario() -> None:
        log = AuditLog.open(tmp_path / "audit.log", BrokenSigner(trust.audit))
        with pytest.raises(AuditUnavailable, match="HSM unavailable"):
            await log.start(START)
        assert not log.healthy
        await log.close()

    run(scenario())


def test_removed_log_file_fails_closed(tmp_path: Path, trust: Trust) -> None:
    async def scenario() -> None:
        log = AuditLog.open(tmp_path / "audit.log", trust.audit)
        await log.start(START)
        (tmp_path / "audit.log").unlink()
        with pytest.raises(AuditUnavailable, match="removed"):
            await log.append({"event": "decision"})
        await log.close()

    run(scenario())


def test_restart_continues_the_same_log(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=4)
    write_log(log, trust, n=4)
    report = verify_log(log, trust.root)
    assert report.decisions == {"allow": 8}
    events = [json.loads(e)["event"] for e in lines(log)]
    assert events.count("log-open") == 1 and events.count("gateway-start") == 2


def test_torn_last_line_is_a_warning_and_is_cut_on_restart(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=4)
    with log.open("ab") as handle:
        handle.write(b'{"v":1,"seq":7,"prev":"ab')  # a crash in the middle of a write
    report = verify_log(log, trust.root)
    assert any("incomplete line" in w for w in report.warnings)
    write_log(log, trust, n=1)
    recovered = [json.loads(e) for e in lines(log) if b"log-recovered" in e]
    assert recovered and recovered[0]["dropped_bytes"] == 25
    assert verify_log(log, trust.root).warnings == []


def test_writer_refuses_a_tampered_log(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=4)
    entries = lines(log)
    entries[3] = entries[3].replace(b'"allow"', b'"refuse"')
    put(log, entries)
    with pytest.raises(IntegrityError, match="refusing to append"):
        AuditLog.open(log, trust.audit)


# -- tampering ---------------------------------------------------------------------------------


def test_modification_is_detected(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust)
    entries = lines(log)
    entries[6] = entries[6].replace(b'"allow"', b'"refuse"')
    put(log, entries)
    found = problems(log, trust)
    assert any("audit.log:8: prev does not match" in p for p in found), found
    assert any("do not match this signed checkpoint" in p for p in found)


def test_modification_of_the_last_record_is_caught_by_its_checkpoint(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust)
    entries = lines(log)
    entries[-1] = entries[-1].replace(b'"gateway-stop"', b'"gateway-stoq"')
    put(log, entries)
    assert any("do not match this signed checkpoint" in p for p in problems(log, trust))


def test_deletion_is_detected(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust)
    entries = lines(log)
    del entries[5]
    put(log, entries)
    found = problems(log, trust)
    assert any("seq 6 where 5 was expected" in p for p in found), found


def test_reordering_is_detected(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust)
    entries = lines(log)
    entries[4], entries[5] = entries[5], entries[4]
    put(log, entries)
    found = problems(log, trust)
    assert any("seq 5 where 4 was expected" in p for p in found), found


def test_truncation_is_detected_by_the_last_checkpoint(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust)
    put(log, lines(log)[:-3])
    found = problems(log, trust)
    assert any("3 records were cut off the end (truncation)" in p for p in found), found


def test_truncation_of_both_files_is_caught_by_a_witness(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=20, every=5)
    witness = tmp_path / "exported-checkpoints.jsonl"
    witness.write_bytes(checkpoints_path(log).read_bytes())
    # Cut the log back to an earlier checkpoint and drop the later checkpoints with it.
    sidecar = checkpoints_path(log)
    kept = [c for c in lines(sidecar) if TreeHead.from_payload(Envelope.from_json(c).payload).tree_size <= 12]
    size = max(TreeHead.from_payload(Envelope.from_json(c).payload).tree_size for c in kept)
    put(sidecar, kept)
    put(log, lines(log)[:size])
    verify_log(log, trust.root)  # consistent on its own: nothing inside can tell
    assert any("truncation" in p for p in problems(log, trust, (witness,)))


def test_forked_checkpoint_same_size_is_detected(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=20, every=5)
    witness = tmp_path / "witness.jsonl"
    witness.write_bytes(checkpoints_path(log).read_bytes())
    # An insider with the audit key rewrites record 3 and re-signs every checkpoint.
    entries = lines(log)
    entries[3] = entries[3].replace(b'"allow"', b'"refuse"')
    entries = rechain(entries)
    put(log, entries)
    sizes = [
        TreeHead.from_payload(Envelope.from_json(c).payload).tree_size for c in lines(checkpoints_path(log))
    ]
    put(checkpoints_path(log), [checkpoint(entries, s, log_id_of(log), trust.audit) for s in sizes])
    verify_log(log, trust.root)  # the rewritten history is self-consistent and validly signed...
    found = problems(log, trust, (witness,))  # ...but not against checkpoints published before
    assert any("fork:" in p and "same size" in p for p in found), found


def test_later_checkpoint_inconsistent_with_earlier_is_a_fork(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=20, every=5)
    sidecar = checkpoints_path(log)
    old = lines(sidecar)
    early = next(c for c in old if TreeHead.from_payload(Envelope.from_json(c).payload).tree_size == 7)
    entries = rechain([*lines(log)[:3], lines(log)[3].replace(b'"allow"', b'"refuse"'), *lines(log)[4:]])
    put(log, entries)
    final = checkpoint(entries, len(entries), log_id_of(log), trust.audit)
    put(sidecar, [early, final])
    found = problems(log, trust)
    assert any("fork:" in p and "not consistent" in p for p in found), found


def test_checkpoint_by_a_key_outside_the_audit_role_is_refused(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust)
    entries = lines(log)
    put(checkpoints_path(log), [checkpoint(entries, len(entries), log_id_of(log), trust.stranger)])
    found = problems(log, trust)
    assert any("not signed by the audit role" in p for p in found), found


def test_reordered_checkpoints_and_missing_checkpoint_file(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust)
    sidecar = checkpoints_path(log)
    put(sidecar, list(reversed(lines(sidecar))))
    assert any("reordered" in p for p in problems(log, trust))
    sidecar.unlink()
    assert any("missing" in p for p in problems(log, trust))


def test_checkpoint_from_another_log_is_refused(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust)
    entries = lines(log)
    put(checkpoints_path(log), [checkpoint(entries, len(entries), "f" * 32, trust.audit)])
    assert any("belongs to log" in p for p in problems(log, trust))


def test_bad_trust_root_is_a_trust_error(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=1)
    doc = json.loads(trust.root.read_bytes())
    doc["signed"]["version"] = 2  # breaks the root's own signature
    trust.root.write_text(json.dumps(doc))
    with pytest.raises(TrustError):
        verify_log(log, trust.root)


# -- export ------------------------------------------------------------------------------------


def test_export_writes_a_self_checking_package(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=12, every=5)
    package = export(log, tmp_path / "evidence", trust.root)
    names = {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()}
    for name in (
        "records.jsonl",
        "checkpoints.jsonl",
        "proofs/inclusion.jsonl",
        "proofs/consistency.json",
        "root.json",
        "model_digests.json",
        "verification.json",
        "package.json",
        "SHA256SUMS",
        f"keys/audit/{trust.audit.keyid}.pem",
        f"policies/{START['policy_digest'].replace(':', '-')}.yaml",
    ):
        assert name in names, name
    assert (package / "records.jsonl").read_bytes() == log.read_bytes()
    for line in (package / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((package / name).read_bytes()).hexdigest() == digest, name
    verification: dict[str, Any] = json.loads((package / "verification.json").read_text())
    assert verification["ok"] is True
    root = bytes.fromhex(verification["last_checkpoint"]["root_hash"])
    proofs = [json.loads(x) for x in (package / "proofs/inclusion.jsonl").read_text().splitlines()]
    assert len(proofs) == verification["covered_records"]
    for proof in proofs:
        path = [bytes.fromhex(h) for h in proof["proof"]]
        assert verify_inclusion(
            bytes.fromhex(proof["leaf_hash"]), proof["seq"], proof["tree_size"], path, root
        )
    for item in json.loads((package / "proofs/consistency.json").read_text()):
        first, second = item["first"], item["second"]
        assert verify_consistency(
            first["tree_size"],
            second["tree_size"],
            bytes.fromhex(first["root_hash"]),
            bytes.fromhex(second["root_hash"]),
            [bytes.fromhex(h) for h in item["proof"]],
        )


def test_export_of_a_tampered_log_still_writes_the_evidence(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust)
    entries = lines(log)
    del entries[4]
    put(log, entries)
    with pytest.raises(LogVerificationError, match="forensic package written"):
        export(log, tmp_path / "evidence", trust.root)
    verification = json.loads((tmp_path / "evidence" / "verification.json").read_text())
    assert verification["ok"] is False and verification["problems"]


def test_check_log_reports_without_raising(tmp_path: Path, trust: Trust) -> None:
    log = write_log(tmp_path / "audit.log", trust, n=2)
    put(log, lines(log)[:-1])
    analysis = check_log(log, trust.root)
    assert not analysis.report.ok and analysis.report.to_dict()["ok"] is False


def test_without_rwf_dsync_each_commit_is_a_write_and_an_fdatasync(
    tmp_path: Path, trust: Trust, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem that refuses RWF_DSYNC gets write + fdatasync, and the log is the same."""
    syncs: list[int] = []
    real_fdatasync = os.fdatasync

    def refuse(*_args: object) -> int:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    def counting_fdatasync(fd: int) -> None:
        syncs.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "pwritev", refuse)
    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
    path = tmp_path / "audit.log"

    async def scenario() -> None:
        log = AuditLog.open(path, trust.audit, checkpoint_seconds=3600)
        await log.start(START)
        for i in range(5):
            await log.append({"event": "decision", "n": i})
        await log.close()

    run(scenario())
    assert len(syncs) >= 7  # start, five decisions, stop (and the closing checkpoint)
    report = verify_log(path, trust.root)
    assert report.ok and report.records >= 7  # with the checkpoint record(s) the log writes
