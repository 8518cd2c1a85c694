"""The audit log writer: hash-chained records, group commit, signed Merkle checkpoints.

Durability contract: `await log.append(fields)` returns only after the record's bytes are
written *and* fdatasync'd. Concurrent appends are batched into one write and one sync
(group commit), so the sync cost is shared by every request waiting at that moment.

Fail closed: once any write, sync or signature fails the log is *failed* for good (the file
may hold a partial write); every later append raises `AuditUnavailable` and the gateway
answers 503 without forwarding anything. A restart recovers: it verifies the log, cuts off
an incomplete last line (never acknowledged) and records that it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from enclave.errors import IntegrityError, UsageError
from enclave.runtime.audit.records import (
    CHECKPOINT_PAYLOAD_TYPE,
    TAIL_ACCEPTED,
    TreeHead,
    checkpoint_line,
    make_record,
    now_text,
)
from enclave.runtime.audit.verify import analyse, checkpoints_path, unproven_warning
from enclave.trust.dsse import Envelope, Signature, pae
from enclave.trust.keys import PublicKey
from enclave.trust.merkle import GENESIS_PREV, CompactRange, leaf_hash


class AuditUnavailable(Exception):
    """The log cannot take records; callers must refuse service (fail closed)."""


class Signer(Protocol):
    @property
    def keyid(self) -> str: ...

    @property
    def public(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes: ...


class Sink(Protocol):
    """Where bytes go, called from the writer thread only. `commit_records` and
    `append_checkpoint` return once every byte given is written and durable."""

    def commit_records(self, data: bytes) -> None: ...

    def append_checkpoint(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class FileSink:
    """LOG and LOG.checkpoints, opened O_APPEND; each append is durable when it returns
    (`pwritev` with RWF_DSYNC, or write-all + fdatasync where that is not available).

    The sink holds an exclusive `flock` on LOG for its lifetime: two writers (say a gateway
    and a monitoring agent given the same path) would interleave two hash chains and leave
    a log that no longer verifies, so the second one is refused before it reads or writes.
    """

    def __init__(self, log: Path) -> None:
        self._fds: list[int] = []
        self._dsync = hasattr(os, "RWF_DSYNC")
        try:
            self._records = self._open(log)
            self._checkpoints = self._open(checkpoints_path(log))
        except OSError as exc:
            self.close()
            raise UsageError(f"{log}: cannot open audit log for appending: {exc.strerror}") from None
        try:
            fcntl.flock(self._records, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise UsageError(
                f"{log}: another process is writing this audit log (one writer per log file; "
                "give the gateway and the agent a log each)"
            ) from None
        # A new file's directory entry must be durable too, or a crash could lose the file.
        dir_fd = os.open(log.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _open(self, path: Path) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._fds.append(fd)
        return fd

    def _append_durably(self, fd: int, data: bytes) -> None:
        # A log file unlinked or replaced under us would swallow records silently.
        if os.fstat(fd).st_nlink == 0:
            raise OSError("the audit log file was removed while open")
        view = memoryview(data)
        while view:
            if self._dsync:
                # One system call writes and syncs (RWF_DSYNC: the bytes and what is needed to
                # read them back are on stable storage when it returns; offset -1 = the file
                # position, the end under O_APPEND). The writer thread then takes the GIL back
                # once per commit instead of twice: on a busy event loop each take-back is a
                # wait, and that, not the disk, was most of a commit's time.
                try:
                    written = os.pwritev(fd, [view], -1, os.RWF_DSYNC)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    self._dsync = False  # kernel or filesystem without it: write, then sync
                    continue
            else:
                written = os.write(fd, view)
            view = view[written:]
        if not self._dsync:
            os.fdatasync(fd)

    def commit_records(self, data: bytes) -> None:
        self._append_durably(self._records, data)

    def append_checkpoint(self, data: bytes) -> None:
        self._append_durably(self._checkpoints, data)

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


CommitHook = Callable[[int, float], None]  # (records in batch, seconds from write to durable)

# How long a record nobody waits for (an outcome record) may sit in the queue for a commit
# that somebody waits for to carry it. Such records never start a sync of their own at once:
# a sync started for them alone would hold the writer for a full fdatasync just when the next
# request's decision record arrives, which then waits for two syncs instead of one.
LINGER_SECONDS = 0.05


class AuditLog:
    """One writer per log file. Create with `AuditLog.open`, then `await start()` in the loop.

    The writer is a small state machine driven from the event loop: at most one job (a batch
    of records, or a checkpoint) runs in the writer thread at a time; its completion callback
    releases the callers it made durable and immediately starts the next job from whatever
    queued up meanwhile. No task sits between the thread and the callers, which saves an
    event-loop round trip on every commit.
    """

    def __init__(
        self,
        path: Path,
        signer: Signer,
        sink: Sink,
        state: _State,
        checkpoint_every: int,
        checkpoint_seconds: float,
        component: str = "gateway",
    ) -> None:
        self.path = path
        self.component = component
        self.signer = signer
        self._sink = sink
        self._state = state
        self._every = checkpoint_every
        self._interval = checkpoint_seconds
        self._pending: list[tuple[dict[str, Any], asyncio.Future[int] | None]] = []
        self._pending_waited = 0  # entries of _pending with a caller waiting on them
        self._linger: asyncio.TimerHandle | None = None  # flushes records nobody waits for
        self._linger_due = False
        self._barriers: list[asyncio.Future[int]] = []  # callers of checkpoint()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        self._ticker: asyncio.Task[None] | None = None
        self._busy = False
        self._failure: str | None = None
        self._checkpoint_requested = False
        self._closing = False
        self.on_commit: CommitHook | None = None

    # -- construction and recovery (synchronous, before serving) ------------------------------
    @classmethod
    def open(
        cls,
        path: Path,
        signer: Signer,
        *,
        audit_keys: Mapping[str, PublicKey] | None = None,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 10.0,
        sink: Sink | None = None,
        component: str = "gateway",
        accept_unproven_tail: bool = False,
    ) -> AuditLog:
        """Verify what is already in the log and prepare to continue it.

        `audit_keys`: keys whose checkpoints count (the trust root's audit role); default:
        the signer alone. A log that does not verify is never appended to (IntegrityError).
        Neither is one whose last records no checkpoint covers (a crash, or records appended
        by someone else after a clean stop) unless `accept_unproven_tail`: an operator's
        acceptance, then recorded first (`unproven-tail-accepted`, with the records' hashes).
        `component` names the start and stop records (`gateway-start`, `agent-start`, ...).
        """
        if checkpoint_every < 1 or checkpoint_seconds <= 0:
            raise UsageError("checkpoints need a positive record count and interval")
        if sink is None:
            if not path.parent.is_dir():
                raise UsageError(f"{path}: directory {path.parent} does not exist")
            # Lock before recovery reads (and may cut) the file: never recover a live log.
            sink = FileSink(path)
        try:
            state = _recover(
                path, signer, audit_keys or {signer.keyid: signer.public}, component, accept_unproven_tail
            )
        except BaseException:
            sink.close()
            raise
        return cls(path, signer, sink, state, checkpoint_every, checkpoint_seconds, component)

    @property
    def healthy(self) -> bool:
        return self._failure is None

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def size(self) -> int:
        """Records written so far (the next record's seq)."""
        return self._state.seq

    @property
    def log_id(self) -> str:
        return self._state.log_id

    async def start(self, start_fields: dict[str, Any]) -> None:
        """Start the writer; write log-open (new log), log-recovered (if cut) and the start record."""
        self._loop = asyncio.get_running_loop()
        self._ticker = asyncio.create_task(self._tick(), name="audit-checkpoint-timer")
        if self._state.seq == 0:
            await self.append(
                {"event": "log-open", "log_id": self._state.log_id, "audit_key": self.signer.keyid}
            )
        if self._state.accepted:
            await self.append({"event": TAIL_ACCEPTED, **self._state.accepted})
        if self._state.dropped:
            await self.append({"event": "log-recovered", **self._state.dropped})
        await self.append(
            {"event": f"{self.component}-start", "audit_key": self.signer.keyid, **start_fields}
        )
        await self.checkpoint()

    async def close(self, stop_fields: dict[str, Any] | None = None) -> None:
        """Write a stop record and a final checkpoint, then release the files."""
        try:
            if self.healthy and self._loop is not None:
                with contextlib.suppress(AuditUnavailable):
                    await self.append({"event": f"{self.component}-stop", **(stop_fields or {})})
                    await self.checkpoint()
        finally:
            self._closing = True
            if self._linger is not None:
                self._linger.cancel()
            if self._ticker is not None:
                self._ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._ticker
            self._executor.shutdown(wait=True)
            self._sink.close()

    # -- appending ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._failure is not None or self._loop is None or self._closing:
            raise AuditUnavailable(self._failure or "audit log is not running")

    async def append(self, fields: dict[str, Any]) -> int:
        """Append one record; returns its seq once it is durable. Raises AuditUnavailable."""
        self._check_open()
        assert self._loop is not None
        future: asyncio.Future[int] = self._loop.create_future()
        self._pending.append((fields, future))
        self._pending_waited += 1
        self._kick()
        return await future

    def append_nowait(self, fields: dict[str, Any]) -> None:
        """Queue a record for the next group commit without waiting for it (outcome records).

        It rides along with the next commit somebody waits for, or is committed on its own
        after LINGER_SECONDS at the latest."""
        self._check_open()
        self._pending.append((fields, None))
        self._kick()

    async def checkpoint(self) -> None:
        """Sign and write a tree head over every record written so far (if any are new)."""
        self._check_open()
        assert self._loop is not None
        if self._pending:
            # Records still queued (say lingering outcome records) must be in the head too:
            # wait for the last of them, and so for all, to be durable first.
            fields, last = self._pending[-1]
            if last is None:
                last = self._loop.create_future()
                self._pending[-1] = (fields, last)
                self._pending_waited += 1
                self._kick()
            with contextlib.suppress(TypeError, ValueError):  # that record's own bug, not ours
                await last
        future: asyncio.Future[int] = self._loop.create_future()
        self._barriers.append(future)
        self._kick()
        await future

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if self._state.since_checkpoint:
                self._checkpoint_requested = True
                self._kick()

    # -- the state machine (event-loop thread only) ------------------------------------------
    def _kick(self) -> None:
        """Start the next job unless one is running: a due checkpoint first (so a steady
        stream of records cannot starve it), else the records queued so far."""
        if self._busy or self._loop is None:
            return
        if self._failure is not None:
            _fail_all(self._pending, self._failure)
            self._pending, self._pending_waited = [], 0
            self._release_barriers()
            return
        # Not busy means every record encoded so far is durable: a head now covers only those.
        due = self._barriers or self._checkpoint_requested or self._state.since_checkpoint >= self._every
        if due and (self._state.since_checkpoint or self._state.checkpoints == 0):
            self._checkpoint_requested = False
            self._submit(self._checkpoint_job(self._state.head()))
            return
        if due and not self._pending:
            self._checkpoint_requested = False
            self._release_barriers()  # nothing new to sign
        if not self._pending:
            return
        if self._pending_waited or self._barriers or self._linger_due:
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            self._linger_due = False
            batch, self._pending, self._pending_waited = self._pending, [], 0
            entries, waiting = self._encode(batch)
            if entries:
                data = b"\n".join(entries) + b"\n"
                self._submit(self._records_job(data, len(entries), waiting, time.perf_counter()), waiting)
        elif self._linger is None:
            self._linger = self._loop.call_later(LINGER_SECONDS, self._linger_expired)

    def _linger_expired(self) -> None:
        self._linger = None
        self._linger_due = True
        self._kick()

    def _submit(
        self, job: Callable[[], Callable[[], None]], waiting: Sequence[tuple[asyncio.Future[int], int]] = ()
    ) -> None:
        """Run `job` in the writer thread; it returns the callback to run back in the loop.
        If it raises, the log fails and `waiting` callers get AuditUnavailable."""
        assert self._loop is not None
        loop = self._loop
        self._busy = True

        def work() -> None:
            try:
                done = job()
            except BaseException as exc:  # write, sync or signature failure
                error = exc

                def done() -> None:
                    self._fail(error, waiting)

            loop.call_soon_threadsafe(self._finish, done)

        self._executor.submit(work)

    def _finish(self, done: Callable[[], None]) -> None:
        self._busy = False
        done()
        self._kick()

    def _records_job(
        self, data: bytes, records: int, waiting: list[tuple[asyncio.Future[int], int]], started: float
    ) -> Callable[[], Callable[[], None]]:
        def job() -> Callable[[], None]:
            self._sink.commit_records(data)

            def done() -> None:
                if self.on_commit is not None:
                    self.on_commit(records, time.perf_counter() - started)
                for future, seq in waiting:
                    if not future.done():
                        future.set_result(seq)

            return done

        return job

    def _checkpoint_job(self, head: TreeHead) -> Callable[[], Callable[[], None]]:
        def job() -> Callable[[], None]:
            envelope = Envelope(CHECKPOINT_PAYLOAD_TYPE, head.payload())
            signature = self.signer.sign(pae(envelope.payload_type, envelope.payload))
            envelope.signatures.append(Signature(self.signer.keyid, signature))
            self._sink.append_checkpoint(checkpoint_line(envelope) + b"\n")

            def done() -> None:
                self._state.checkpointed(head.tree_size)
                self._release_barriers()

            return done

        return job

    def _release_barriers(self) -> None:
        barriers, self._barriers = self._barriers, []
        for future in barriers:
            if future.done():
                continue
            if self._failure is not None:
                future.set_exception(AuditUnavailable(self._failure))
            else:
                future.set_result(self._state.seq)

    def _encode(
        self, batch: list[tuple[dict[str, Any], asyncio.Future[int] | None]]
    ) -> tuple[list[bytes], list[tuple[asyncio.Future[int], int]]]:
        """Give each record its seq, time and prev hash, in arrival order."""
        entries: list[bytes] = []
        waiting: list[tuple[asyncio.Future[int], int]] = []
        for fields, future in batch:
            try:
                entry = make_record(self._state.seq, self._state.prev, now_text(), fields)
            except (TypeError, ValueError) as exc:  # a caller's bug; it alone fails
                if future is not None and not future.done():
                    future.set_exception(exc)
                continue
            if future is not None:
                waiting.append((future, self._state.seq))
            self._state.advance(leaf_hash(entry))
            entries.append(entry)
        return entries, waiting

    def _fail(self, exc: BaseException | None, waiting: Sequence[tuple[asyncio.Future[int], int]]) -> None:
        """Fail closed for good: the file may hold a partial write, and Linux reports a failed
        fsync only once, so nothing written after a failure may ever be acknowledged."""
        if self._failure is None:
            self._failure = f"audit log {self.path}: {type(exc).__name__}: {exc}"
        for future, _ in waiting:
            if not future.done():
                future.set_exception(AuditUnavailable(self._failure))
        self._release_barriers()


def _fail_all(batch: Sequence[tuple[dict[str, Any], asyncio.Future[int] | None]], reason: str) -> None:
    for _, future in batch:
        if future is not None and not future.done():
            future.set_exception(AuditUnavailable(reason))


class _State:
    """Where the chain and the tree stand: next seq, previous hash, compact Merkle range."""

    def __init__(
        self,
        log_id: str,
        leaves: Sequence[bytes],
        covered: int,
        checkpoints: int,
        dropped: dict[str, Any],
        accepted: dict[str, Any] | None = None,
    ):
        self.log_id = log_id
        self.accepted = accepted  # the fields of an unproven-tail-accepted record to write first
        self.range = CompactRange()
        for leaf in leaves:
            self.range.append(leaf)
        self.seq = len(leaves)
        self.prev = leaves[-1].hex() if leaves else GENESIS_PREV
        self.since_checkpoint = self.seq - covered
        self.checkpoints = checkpoints
        self.dropped = dropped

    def advance(self, digest: bytes) -> None:
        self.range.append(digest)
        self.seq += 1
        self.prev = digest.hex()
        self.since_checkpoint += 1

    def head(self) -> TreeHead:
        return TreeHead(self.log_id, self.range.size, self.range.root().hex(), now_text())

    def checkpointed(self, size: int) -> None:
        self.since_checkpoint = self.seq - size
        self.checkpoints += 1


def _recover(
    path: Path, signer: Signer, keys: Mapping[str, PublicKey], component: str, accept_unproven_tail: bool
) -> _State:
    """Verify an existing log; refuse an unproven tail unless accepted; cut an incomplete last
    line; return where to continue."""
    sidecar = checkpoints_path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise UsageError(f"{path}: directory {path.parent} does not exist") from None
        data = b""
    except OSError as exc:
        raise UsageError(f"{path}: cannot read audit log: {exc.strerror}") from None
    try:
        checkpoint_data: bytes | None = sidecar.read_bytes()
    except FileNotFoundError:
        checkpoint_data = None
    except OSError as exc:
        raise UsageError(f"{sidecar}: cannot read: {exc.strerror}") from None
    if not data:
        if checkpoint_data:
            # Checkpoints of some other history would make the new log fail verification.
            raise UsageError(f"{sidecar}: checkpoints exist but {path} is empty or missing; move them aside")
        return _State(secrets.token_hex(16), [], 0, 0, {})

    def accept(signers: Sequence[PublicKey]) -> str | None:
        return None if signers else "no valid signature by an audit key"

    analysis = analyse(str(path), data, [(str(sidecar), checkpoint_data)], keys, accept)
    report = analysis.report
    if not report.ok:
        raise IntegrityError(
            f"{path}: existing audit log does not verify, refusing to append: {report.problems[0]} "
            "(keep it for forensics and start a new log file)"
        )
    leaves = analysis.tree.leaves
    accepted = _accept_tail(
        path, leaves, report.covered_records, report.last_checkpoint, accept_unproven_tail
    )
    if accepted is not None:
        accepted["component"] = component
    dropped: dict[str, Any] = {}
    if analysis.torn_bytes:
        torn = data[len(data) - analysis.torn_bytes :]
        dropped = {"dropped_bytes": len(torn), "dropped_sha256": hashlib.sha256(torn).hexdigest()}
        os.truncate(path, len(data) - len(torn))
    if checkpoint_data and not checkpoint_data.endswith(b"\n"):
        os.truncate(sidecar, checkpoint_data.rfind(b"\n") + 1)
    log_id = report.log_id or secrets.token_hex(16)
    return _State(log_id, leaves, report.covered_records, len(analysis.checkpoints), dropped, accepted)


def _accept_tail(
    path: Path,
    leaves: Sequence[bytes],
    covered: int,
    checkpoint: Mapping[str, Any] | None,
    accept_unproven_tail: bool,
) -> dict[str, Any] | None:
    """Records after the last checkpoint this log's writer signed prove nothing: a clean stop
    always checkpoints its stop record, so they come from a crash, or from someone who appended
    to the file (with a correct seq and prev). Refuse them, or return the acceptance record."""
    if covered >= len(leaves):
        return None
    if not accept_unproven_tail:
        raise IntegrityError(
            f"{unproven_warning(str(path), covered, len(leaves))}; refusing to extend the log and sign "
            "over them: inspect them (enclave audit verify), then start once with "
            "--accept-unproven-tail to continue and record that an operator accepted them"
        )
    return {
        "records": len(leaves) - covered,
        "first_seq": covered,
        "last_seq": len(leaves) - 1,
        "leaf_hashes": [leaf.hex() for leaf in leaves[covered:]],
        "checkpoint_size": covered,
        "checkpoint_root": checkpoint["root_hash"] if checkpoint else None,
        "accepted_by": "operator (--accept-unproven-tail)",
    }
