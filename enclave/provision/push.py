"""Push the verified bundle content to a host over SFTP, resumably, re-checked on the host.

Layout on the host: /var/lib/enclave/incoming/NAME-VERSION/<member name> (every member, plus the
signed envelope): the whole signed tree, so the monitoring agent can re-verify it as `bundle
verify --extract-to` would have published it. Directories in it are 0755 and files read-only, so
a non-root container given the directory (the agent, uid 10001) can read all of it; the gate is
`incoming`, 0750 and the login user's.

Bytes go to `<name>.part`; a later run resumes a cut transfer: the host hashes the .part's whole
chunks (compared with the signed chunk digests) and its trailing partial chunk (compared with
the same range of the verified local copy), and the transfer continues from the last byte that
is still right. Before anything uses a file, the host re-hashes it against the
signed statement (hostside.py) and only then gives it its final name, read-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shlex
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from enclave.bundle.digest import hash_range, new_hash
from enclave.bundle.statement import BundleStatement
from enclave.bundle.tarformat import ENVELOPE_NAME
from enclave.provision import hostside
from enclave.provision.ssh import HostUnreachable, Session

INCOMING = "/var/lib/enclave/incoming"
BLOCK = 1024 * 1024
TREE_DIR_MODE = 0o755  # directories of the pushed tree (files are read-only: hostside.py)
ATTEMPTS = 2  # a file that fails its digest on the host is sent once more, from byte 0
HOSTSIDE_SOURCE = Path(hostside.__file__).read_text(encoding="utf-8")

OnBytes = Callable[[str, int], None]  # (host, bytes just written)


class PushError(Exception):
    """The content could not be placed on the host intact; str() names the file and reason."""


@dataclass(frozen=True)
class PushFile:
    name: str  # path under the bundle directory, as in the archive
    local: Path
    size: int
    mode: int
    digest: str  # hex, the signed digest (the envelope's: of the verified bytes)
    chunks: tuple[str, ...]  # hex per chunk for multi-chunk files, else ()


@dataclass(frozen=True)
class Payload:
    remote_dir: str
    algorithm: str
    chunk_size: int
    files: tuple[PushFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class PushResult:
    host: str
    files: int
    bytes_total: int
    bytes_sent: int = 0
    resumed: dict[str, int] = field(default_factory=dict)  # file -> offset the transfer continued from
    retried: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "bytes": self.bytes_total,
            "sent": self.bytes_sent,
            "resumed": dict(self.resumed),
            "retried": list(self.retried),
            "verifiedOnHost": True,
            "seconds": round(self.seconds, 3),
        }


def plan_payload(statement: BundleStatement, extracted: Path) -> Payload:
    """What goes to each host: every member and the signed envelope, so the host can re-verify
    the whole tree on its own later. The playbooks run from the controller but go too (they are
    small): a tree with members missing could not be told apart from a tampered one."""
    files = [
        PushFile(m.name, extracted / m.name, m.size, m.mode, m.digest, m.chunks) for m in statement.members
    ]
    envelope = extracted / ENVELOPE_NAME
    raw = envelope.read_bytes()
    h = new_hash(statement.digest)
    h.update(raw)
    files.append(PushFile(ENVELOPE_NAME, envelope, len(raw), 0o644, h.hexdigest(), ()))
    remote = posixpath.join(INCOMING, f"{statement.name}-{statement.version}")
    return Payload(remote, statement.digest, statement.chunk_size, tuple(files))


def remaining_bytes(payload: Payload, existing: dict[str, int]) -> int:
    """Bytes still to send, given sizes of files already under the host's bundle directory
    (relative names; `.part` files count as partial)."""
    need = 0
    for f in payload.files:
        if existing.get(f.name) == f.size:
            continue
        need += f.size - min(existing.get(f.name + hostside.PART, 0), f.size)
    return need


def resume_offset(
    file: PushFile,
    chunk_size: int,
    part: dict[str, Any] | None,
    local_digest: Callable[[int, int], str],
) -> int:
    """Where to continue writing `file`'s .part, from the host's report of it (hostside.state).

    Whole chunks must match the signed chunk digests (a single-chunk file has none: its one
    chunk is only whole when complete, and then the signed file digest applies); the trailing
    partial chunk must match the verified local bytes. Anything else is cut off.
    """
    if not part:
        return 0
    size = int(part["size"])
    if size > file.size:
        return 0
    signed = list(file.chunks) or [file.digest]
    good = 0
    for got, want in zip(part["chunks"], signed, strict=False):
        if got != want:
            break
        good += 1
    offset = good * chunk_size
    tail = part.get("tail")
    whole_chunks_good = good == len(part["chunks"])
    if (
        whole_chunks_good
        and tail is not None
        and size > offset
        and local_digest(offset, size - offset) == tail
    ):
        offset = size
    return min(offset, file.size)


def push(
    session: Session,
    payload: Payload,
    on_bytes: OnBytes | None = None,
) -> PushResult:
    """Put `payload` on the host behind `session`; raises PushError or HostUnreachable."""
    started = time.monotonic()
    host = session.host.name
    result = PushResult(host, len(payload.files), payload.size)
    _prepare_dir(session, payload.remote_dir)
    sftp = session.sftp()
    try:
        pending = list(payload.files)
        for attempt in range(ATTEMPTS):
            states = _host_call(session, "state", _request(payload, pending, with_digests=False))["files"]
            for f in pending:
                entry = states[f.name]
                if entry["part"] is None and entry["final"] == f.size:
                    continue  # already there: re-verified below like everything else
                offset = resume_offset(
                    f, payload.chunk_size, entry["part"], _local_digest(f, payload.algorithm)
                )
                if offset and attempt == 0:
                    result.resumed[f.name] = offset
                result.bytes_sent += _send(
                    sftp, payload.remote_dir, f, offset, lambda n: _count(on_bytes, host, n)
                )
            verdict = _host_call(session, "verify", _request(payload, pending, with_digests=True))["files"]
            failed = [f for f in pending if not verdict[f.name]["ok"]]
            if not failed:
                break
            if attempt + 1 == ATTEMPTS:
                worst = failed[0]
                raise PushError(
                    f"{worst.name}: failed its digest on the host twice "
                    f"({verdict[worst.name]['error']}); removed from the host"
                )
            result.retried += [f.name for f in failed]
            pending = failed
    finally:
        sftp.close()
    result.seconds = time.monotonic() - started
    return result


def _count(on_bytes: OnBytes | None, host: str, n: int) -> None:
    if on_bytes is not None:
        on_bytes(host, n)


def _request(payload: Payload, files: Sequence[PushFile], with_digests: bool) -> dict[str, Any]:
    return {
        "root": payload.remote_dir,
        "algorithm": payload.algorithm,
        "chunk_size": payload.chunk_size,
        "files": [
            {"name": f.name, "size": f.size}
            | ({"mode": f.mode, "digest": f.digest, "chunks": list(f.chunks)} if with_digests else {})
            for f in files
        ],
    }


def _host_call(session: Session, operation: str, request: dict[str, Any]) -> dict[str, Any]:
    python = shlex.quote(session.host.python)
    command = f"{python} -c {shlex.quote(HOSTSIDE_SOURCE)} {operation}"
    # Hashing gigabytes takes time: allow about 50 MB/s on the host, at least 5 minutes.
    volume = sum(int(f["size"]) for f in request["files"])
    out = session.run(command, stdin=json.dumps(request).encode(), timeout=max(300.0, volume / 50e6))
    if out.code != 0:
        raise PushError(f"host-side {operation} failed: {out.reason()}")
    try:
        answer: dict[str, Any] = json.loads(out.stdout)
    except ValueError:
        raise PushError(f"host-side {operation}: unreadable answer") from None
    return answer


def _prepare_dir(session: Session, remote_dir: str) -> None:
    """/var/lib/enclave/incoming belongs to the login user (it writes over SFTP) and is 0750; the
    rest of /var/lib/enclave stays root's. The bundle directory and those under it are 0755
    (also when an earlier push left them 0750): readable through a bind mount of the directory
    by the agent's non-root user."""
    incoming = shlex.quote(INCOMING)
    parent = shlex.quote(posixpath.dirname(INCOMING))
    remote = shlex.quote(remote_dir)
    out = session.run(
        f"sudo -n install -d -m 0755 -o root -g root {parent} && "
        f'sudo -n install -d -m 0750 -o "$(id -u)" -g "$(id -g)" {incoming} && '
        f"install -d -m {TREE_DIR_MODE:04o} {remote} && "
        f"find {remote} -type d ! -perm {TREE_DIR_MODE:04o} -exec chmod {TREE_DIR_MODE:04o} {{}} +"
    )
    if out.code != 0:
        raise PushError(f"cannot create {remote_dir}: {out.reason()}")


def _local_digest(f: PushFile, algorithm: str) -> Callable[[int, int], str]:
    def digest(offset: int, length: int) -> str:
        fd = os.open(f.local, os.O_RDONLY)
        try:
            return hash_range(lambda view, at: os.preadv(fd, [view], at), offset, length, algorithm).hex()
        finally:
            os.close(fd)

    return digest


def _mkdirs(sftp: paramiko.SFTPClient, directory: str) -> None:
    missing = []
    while True:
        try:
            if stat.S_ISDIR(sftp.stat(directory).st_mode or 0):
                break
            raise PushError(f"{directory}: exists and is not a directory")
        except FileNotFoundError:
            missing.append(directory)
            directory = posixpath.dirname(directory)
    for path in reversed(missing):
        sftp.mkdir(path, TREE_DIR_MODE)
        sftp.chmod(path, TREE_DIR_MODE)  # the SFTP server's umask may have narrowed it


def _send(
    sftp: paramiko.SFTPClient, remote_dir: str, f: PushFile, offset: int, count: Callable[[int], None]
) -> int:
    """Write f's bytes from `offset` on into its .part; returns how many were sent."""
    target = posixpath.join(remote_dir, f.name) + hostside.PART
    try:
        _mkdirs(sftp, posixpath.dirname(target))
        with contextlib.suppress(FileNotFoundError):
            sftp.remove(posixpath.join(remote_dir, f.name))  # a stale final file is replaced, not trusted
        remote = sftp.open(target, "r+b" if offset else "wb")
    except OSError as exc:
        raise PushError(f"{f.name}: cannot open {target}: {exc}") from None
    sent = 0
    try:
        remote.truncate(offset)
        remote.seek(offset)
        remote.set_pipelined(True)
        with open(f.local, "rb") as local:
            local.seek(offset)
            while True:
                block = local.read(BLOCK)
                if not block:
                    break
                remote.write(block)
                sent += len(block)
                count(len(block))
        remote.chmod(0o600)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise HostUnreachable(f"transfer of {f.name} cut after {offset + sent} bytes: {exc}") from None
    finally:
        with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            remote.close()
    return sent
