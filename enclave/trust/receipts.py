"""Verification receipts: one signed JSON statement per verification, kept in a hash chain.

A receipt records what was checked and what was decided, for verifications that passed and
for those that failed: the bundle (statement sha256, or the files' sha256 when no statement
could be read), name and version, the valid signers and their roles, the trust root (version,
digest), the verifier (version, host), the fixed time of the checks, the result, the error
and exit code of a failure, and every check that ran. It is a DSSE envelope
(`application/vnd.enclave.receipt+json`) over the canonical JSON of the receipt, signed by an
`audit` key when one is given (unsigned otherwise: zero signatures).

The log `STATE/receipts.log` holds one envelope per line. Each receipt names its place:
`log.seq` (0, 1, ...) and `log.prev`, the RFC 9162 leaf hash of the previous line's bytes
(64 zeros for the first), the chaining rule of the audit log (docs/GATEWAY.md). A signed
receipt thus also signs its position: records cannot be edited, dropped from the middle,
inserted or reordered without `enclave receipts verify` seeing it. Cutting records off the
end is seen only against a witness: a receipt file kept elsewhere (`--receipt`, which holds
exactly the bytes of its log line). docs/FORMAT.md section 8 is the reference.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from enclave import __version__
from enclave.canonical import canonical, format_time
from enclave.errors import (
    MALFORMED_DOCUMENT,
    EnclaveError,
    IntegrityError,
    TrustError,
    UsageError,
    exit_code_of,
)
from enclave.fileio import open_regular, os_error
from enclave.strictjson import strict_json
from enclave.trust.dsse import Envelope, verify_signatures
from enclave.trust.keys import PublicKey, SigningKey
from enclave.trust.merkle import GENESIS_PREV, leaf_hash
from enclave.trust.root import TrustRoot
from enclave.trust.state import StateDir, fsync_dir, write_all
from enclave.trust.trusted import TrustedRoot

RECEIPT_PAYLOAD_TYPE = "application/vnd.enclave.receipt+json"
RECEIPT_TYPE = "urn:enclave:receipt:v1"
MAX_LINE = 1 << 20  # a receipt is a few KB; a longer "line" is damage, not a receipt
MAX_PROBLEMS = 50
# Free space a verification needs before it starts, for its receipt (a few KB; at most
# MAX_LINE), in the state directory and where --receipt goes: a full disk is refused up front
# (exit 2) rather than found after the state changed.
RECEIPT_ROOM = MAX_LINE


@dataclass
class Evidence:
    """What a verification found so far; `verify_bundle` fills it as each check runs, so a
    receipt can say how far a failed verification got."""

    files: list[str]
    time: datetime
    mode: str = "admission"  # "audit": a re-check as of a past time (--at); no state changed
    statement_digest: str | None = None
    claimed_keyids: list[str] = field(default_factory=list)  # every signature's keyid hint, valid or not
    name: str | None = None
    version: str | None = None
    signers: list[dict[str, Any]] = field(default_factory=list)
    root: TrustRoot | None = None
    checks: list[str] = field(default_factory=list)

    def saw_signers(self, keys: Sequence[PublicKey], root: TrustRoot) -> None:
        self.signers = describe_signers(keys, root)


def describe_signers(keys: Sequence[PublicKey], root: TrustRoot) -> list[dict[str, Any]]:
    """Each valid signer as a receipt (and `bundle verify --json`) names it."""
    return [{"keyid": k.keyid, "scheme": k.scheme, "roles": root.roles_of(k.keyid)} for k in keys]


def _files_digest(files: Sequence[str]) -> str | None:
    """sha256 over the files in order (volumes concatenated); None when one is unreadable."""
    digest = hashlib.sha256()
    try:
        for name in files:  # a regular file only: a FIFO would block the receipt for ever
            with os.fdopen(open_regular(name, "bundle"), "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
    except (OSError, EnclaveError):
        return None
    return digest.hexdigest()


def _message(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, OSError) and not isinstance(error, EnclaveError):
        return str(os_error(error))  # "FILE: reason", as the CLI says it
    return str(error)


def build_receipt(evidence: Evidence, error: BaseException | None = None) -> dict[str, Any]:
    """The receipt document (without its log position). An error that is not an EnclaveError
    is a bug: exit code 1, as the CLI reports it."""
    files = []
    for name in evidence.files:
        try:
            size: int | None = os.stat(name).st_size
        except OSError:
            size = None
        files.append({"path": os.path.abspath(name), "size": size})
    digest: str | None
    if evidence.statement_digest is not None:
        digest, digest_of = evidence.statement_digest, "statement"
    else:  # nothing signed could be read: name the input by its bytes
        digest, digest_of = _files_digest(evidence.files), "files"
    root = evidence.root
    return {
        "_type": RECEIPT_TYPE,
        "result": "verified" if error is None else "failed",
        "exitCode": 0 if error is None else exit_code_of(error),
        "error": None if error is None else {"type": type(error).__name__, "message": _message(error)},
        "bundle": {
            "files": files,
            "name": evidence.name,
            "version": evidence.version,
            "digest": {"sha256": digest},
            "digestOf": digest_of,
            "signatureKeyids": evidence.claimed_keyids,
        },
        "signers": evidence.signers,
        "trustRoot": None
        if root is None
        else {"version": root.version, "digest": root.digest, "expires": root.signed["expires"]},
        "verifier": {"tool": "enclave", "version": __version__, "host": socket.gethostname()},
        "time": format_time(evidence.time),
        "mode": evidence.mode,
        "checks": list(evidence.checks),
    }


# -- the log ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Tail:
    next_seq: int
    prev: str
    complete: int  # bytes of complete lines
    torn: int  # bytes after the last newline (an append cut short by a crash)


def parse_receipt_line(line: bytes, where: str) -> tuple[Envelope, dict[str, Any]]:
    """One log line: a strict envelope over a receipt in canonical form; raises IntegrityError."""
    try:
        envelope = Envelope.from_json(line, where, MAX_LINE)
    except TrustError as exc:
        raise IntegrityError(str(exc)) from None
    if envelope.payload_type != RECEIPT_PAYLOAD_TYPE:
        raise IntegrityError(f"{where}: payload type {envelope.payload_type!r} is not a receipt")
    try:
        doc = strict_json(envelope.payload, MAX_LINE)
        if (
            not isinstance(doc, dict)
            or doc.get("_type") != RECEIPT_TYPE
            or canonical(doc) != envelope.payload
        ):
            raise ValueError("not a receipt in canonical JSON")
        position = doc["log"]
        seq, prev = position["seq"], position["prev"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not isinstance(prev, str):
            raise ValueError("log.seq and log.prev are malformed")
    except MALFORMED_DOCUMENT as exc:
        raise IntegrityError(f"{where}: unreadable receipt ({exc})") from None
    return envelope, doc


class ReceiptLog:
    """`STATE/receipts.log`: appended under the state directory's lock."""

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.path = state.receipts_path

    def _tail(self) -> _Tail:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return _Tail(0, GENESIS_PREV, 0, 0)
        except OSError as exc:
            raise UsageError(f"{self.path}: cannot read the receipt log: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            window = os.pread(fd, min(size, 2 * MAX_LINE + 1), max(0, size - 2 * MAX_LINE - 1))
        finally:
            os.close(fd)
        if size == 0:
            return _Tail(0, GENESIS_PREV, 0, 0)
        end = window.rfind(b"\n")
        torn = len(window) - end - 1
        if torn > MAX_LINE:
            raise IntegrityError(f"{self.path}: {torn} bytes after the last complete line: damaged")
        if end < 0:
            if size > MAX_LINE:
                raise IntegrityError(f"{self.path}: no line break in the last {len(window)} bytes: damaged")
            return _Tail(0, GENESIS_PREV, 0, size)  # the first append was cut short
        start = window.rfind(b"\n", 0, end) + 1
        if start == 0 and size > len(window):
            raise IntegrityError(f"{self.path}: last line longer than {MAX_LINE} bytes: damaged")
        line = window[start:end]
        _envelope, doc = parse_receipt_line(line, f"{self.path} (last receipt)")
        return _Tail(doc["log"]["seq"] + 1, leaf_hash(line).hex(), size - torn, torn)

    def check(self) -> None:
        """Refuse now (before any verification) when the log's end is damaged, or when the
        state directory has no room for one more receipt."""
        with self.state.locked():
            self._tail()
        check_room(self.path.parent, "the receipt log")

    def append(
        self,
        receipt: dict[str, Any],
        signer: SigningKey | None,
        before: Callable[[bytes], None] | None = None,
    ) -> bytes:
        """Place, sign and durably append `receipt`; returns its line (without newline).
        `before(line)` runs first, under the lock (the --receipt copy): when it raises,
        nothing is appended. A write that fails (a full disk) is cut off again: the log never
        keeps a partial line, and the failure is a UsageError naming the log."""
        with self.state.locked():
            tail = self._tail()
            doc = dict(receipt)
            if tail.torn:
                # A crash cut the last append short; it was never acknowledged. Cut it off and say so.
                os.truncate(self.path, tail.complete)
                doc["recovered"] = {"tornBytes": tail.torn}
            doc["log"] = {"seq": tail.next_seq, "prev": tail.prev}
            envelope = Envelope(RECEIPT_PAYLOAD_TYPE, canonical(doc))
            if signer is not None:
                envelope.sign(signer)
            line = envelope.to_json()
            if before is not None:
                before(line)
            created = not self.path.exists()
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
                try:
                    write_all(fd, line + b"\n")
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, tail.complete)  # no partial line stays behind
                    raise
                finally:
                    os.close(fd)
                if created:
                    fsync_dir(self.path.parent)
            except OSError as exc:
                raise os_error(exc, self.path, "cannot append the receipt") from None
        return line


def check_room(directory: Path, what: str) -> None:
    """Refuse (UsageError) when `directory`'s filesystem has no room for a receipt: fewer than
    RECEIPT_ROOM bytes or no inode free to an unprivileged writer."""
    try:
        fs = os.statvfs(directory)
    except OSError as exc:
        raise os_error(exc, directory, f"cannot check the room for {what}") from None
    if fs.f_bavail * fs.f_frsize < RECEIPT_ROOM or fs.f_favail == 0:
        raise UsageError(
            f"{directory}: filesystem full (less than {RECEIPT_ROOM} bytes or no inode free): no room for "
            f"{what}; nothing was verified or changed"
        )


class ReceiptFile:
    """The --receipt file, reserved before anything is verified: a temporary file created in
    its directory with room allocated for a receipt, so that a missing directory, a missing
    permission, a full disk or no free inode is an error (2) before any state changes, not
    after. `commit(data)` writes the receipt there and links it into place (never over an
    existing file); `discard()` removes the reservation."""

    def __init__(self, path: Path) -> None:
        check_new_file(path)
        self.path = path
        self._temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            self._fd = os.open(self._temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise os_error(exc, path, "cannot write the receipt") from None
        atexit.register(self.discard)  # a command that fails before it records leaves nothing
        try:
            os.posix_fallocate(self._fd, 0, RECEIPT_ROOM)
        except OSError as exc:
            self.discard()
            raise os_error(exc, path, "no room for the receipt") from None

    def commit(self, data: bytes) -> None:
        if len(data) > RECEIPT_ROOM:
            raise UsageError(f"{self.path}: a receipt of {len(data)} bytes exceeds {RECEIPT_ROOM}")
        try:
            os.pwrite(self._fd, data, 0)  # inside the allocated room: no ENOSPC
            os.ftruncate(self._fd, len(data))
            os.fsync(self._fd)
            try:
                os.link(self._temporary, self.path)
            except FileExistsError:
                raise UsageError(f"{self.path}: already exists; a receipt is never overwritten") from None
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise os_error(exc, self.path, "cannot write the receipt") from None
        finally:
            self.discard()

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._temporary.unlink(missing_ok=True)


def check_new_file(path: Path) -> None:
    """A receipt file is evidence: never overwrite one; refuse early when it cannot be written."""
    if path.exists() or path.is_symlink():
        raise UsageError(f"{path}: already exists; a receipt is never overwritten")
    if not path.parent.is_dir():
        raise UsageError(f"{path}: directory {path.parent} does not exist")


def write_new_file(path: Path, data: bytes) -> None:
    """Write `path` complete or not at all, and never over an existing file (link(2) refuses)."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise UsageError(f"{path}: already exists; a receipt is never overwritten") from None
        fsync_dir(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def record(
    log: ReceiptLog,
    evidence: Evidence,
    error: BaseException | None,
    signer: SigningKey | None,
    path: Path | ReceiptFile | None = None,
) -> dict[str, Any]:
    """Append the receipt of one verification to the log, and write the same bytes to `path`
    (best reserved up front: ReceiptFile) before the log line, so the log never records an
    outcome the command does not end with:

    - the copy cannot be written: the log records this run as failed, with that error (2),
      which the command then raises (the verification itself may have passed and been
      recorded in the rollback state: the receipt says so in its checks);
    - the log cannot be written (a full disk): a failed verification keeps its own error and
      exit code, its message saying the receipt is missing; a passed one raises the log's
      error (2): it passed, but left no evidence.
    """
    reserved = ReceiptFile(path) if isinstance(path, Path) else path
    copy_error: EnclaveError | None = None

    def copy(line: bytes) -> None:
        nonlocal copy_error
        if reserved is not None:
            try:
                reserved.commit(line + b"\n")
            except EnclaveError as exc:
                copy_error = exc
                raise

    try:
        try:
            line = log.append(build_receipt(evidence, error), signer, copy)
        except EnclaveError as exc:
            if copy_error is None or exc is not copy_error:
                raise
            # No copy: this run ends failed, and its receipt in the log says exactly that.
            outcome = error or UsageError(f"{exc} (the receipt in {log.path} records this run as failed)")
            line = log.append(build_receipt(evidence, outcome), signer)
            if error is None:
                raise outcome from None
            error.args = (f"{error} (its receipt copy was not written: {exc})",)
    except EnclaveError as failure:
        if error is None or failure is error:
            raise
        error.args = (f"{error} (and no receipt was written: {failure})",)
        return {"seq": None, "hash": None}
    finally:
        if reserved is not None:
            reserved.discard()
    seq = parse_receipt_line(line, str(log.path))[1]["log"]["seq"]
    return {"seq": seq, "hash": leaf_hash(line).hex()}


# -- verification of the log -----------------------------------------------------------------------------
@dataclass
class ReceiptReport:
    log: str
    receipts: int = 0
    signed: int = 0
    unsigned: int = 0
    verified: int = 0
    failed: int = 0
    head: str = GENESIS_PREV  # leaf hash of the last line
    problems: list[str] = field(default_factory=list)  # chain and format: exit 3
    trust_problems: list[str] = field(default_factory=list)  # signatures: exit 4
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.trust_problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def analyse_log(
    data: bytes, name: str, trusted: TrustedRoot, require_signed: bool = False, witnesses: Sequence[Path] = ()
) -> ReceiptReport:
    """Check every line: format, place in the chain, signatures by the root's audit role."""
    report = ReceiptReport(log=name)
    lines = data.split(b"\n")
    torn = lines.pop()
    if torn:
        report.warnings.append(
            f"{name}: the last {len(torn)} bytes are an incomplete line (an append cut short by a crash)"
        )
    audit_keys = trusted.role_keys("audit")
    prev = GENESIS_PREV
    for index, line in enumerate(lines):
        where = f"{name}:{index + 1}"
        if len(report.problems) + len(report.trust_problems) >= MAX_PROBLEMS:
            report.problems.append(f"{where}: stopped after {MAX_PROBLEMS} problems")
            break
        digest = leaf_hash(line).hex()
        try:
            envelope, doc = parse_receipt_line(line, where)
        except IntegrityError as exc:
            report.problems.append(f"{exc}: the line was modified")
            prev = digest
            continue
        report.receipts += 1
        if doc["log"]["seq"] != index:
            report.problems.append(
                f"{where}: log.seq {doc['log']['seq']} where {index} was expected: receipts deleted, "
                "inserted or reordered"
            )
        if doc["log"]["prev"] != prev:
            report.problems.append(
                f"{where}: log.prev is not the hash of the line before it: a receipt was modified, "
                "deleted or reordered"
            )
        prev = digest
        if doc.get("result") == "verified":
            report.verified += 1
        else:
            report.failed += 1
        if not envelope.signatures:
            report.unsigned += 1
            if require_signed:
                report.trust_problems.append(f"{where}: receipt is not signed")
            continue
        unmet = trusted.accepts("audit", verify_signatures(envelope, audit_keys).keys)
        if unmet is None:
            report.signed += 1
        else:
            report.trust_problems.append(f"{where}: receipt not signed by the audit role: {unmet}")
    report.head = prev
    if report.unsigned and not require_signed:
        report.warnings.append(
            f"{report.unsigned} receipts are unsigned (no audit signer when they were made)"
        )
    for witness in witnesses:
        _check_witness(witness, lines, report)
    return report


def _check_witness(path: Path, lines: Sequence[bytes], report: ReceiptReport) -> None:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_LINE + 2)  # a line and its newline; more is refused as damage
    except OSError as exc:
        raise UsageError(f"{path}: cannot read witness receipt: {exc.strerror}") from None
    try:
        _envelope, doc = parse_receipt_line(data.rstrip(b"\n"), str(path))
    except IntegrityError as exc:
        report.problems.append(f"witness {exc}")
        return
    seq = doc["log"]["seq"]
    if seq >= len(lines):
        report.problems.append(
            f"witness {path}: receipt {seq} is missing: the log ends at {len(lines)} "
            "(receipts cut off the end)"
        )
    elif lines[seq] != data.rstrip(b"\n"):
        report.problems.append(f"witness {path}: receipt {seq} in the log differs from the witness copy")


def verify_receipt_log(
    path: Path, trusted: TrustedRoot, require_signed: bool = False, witnesses: Sequence[Path] = ()
) -> ReceiptReport:
    """`enclave receipts verify`: raise IntegrityError (chain) or TrustError (signatures)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no receipt log") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the receipt log: {exc.strerror}") from None
    report = analyse_log(data, str(path), trusted, require_signed, witnesses)
    found = report.problems or report.trust_problems
    if found:
        more = f" (and {len(found) - 1} more problems)" if len(found) > 1 else ""
        error = IntegrityError if report.problems else TrustError
        raise error(f"receipt log does not verify: {found[0]}{more}")
    return report
