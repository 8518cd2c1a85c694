"""SSH sessions to enclave hosts through paramiko, host keys pinned in a known_hosts file.

An unknown host key is refused unless the operator asked for first contact
(`--accept-new-host-keys`): then the key is recorded, written to known_hosts for the Ansible run
(OpenSSH, StrictHostKeyChecking=yes) and its fingerprint goes into the run report. A key that
differs from the pinned one is always refused.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from enclave.errors import UsageError
from enclave.provision.inventory import Host
from enclave.testbed.ssh import known_hosts_name


class HostUnreachable(Exception):
    """The host could not be reached or logged into; str() is the reason."""


class HostKeyRefused(HostUnreachable):
    """The host's key is not pinned (and first contact was not allowed) or differs from the pin."""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint: `SHA256:` + unpadded base64 of the key blob's SHA-256."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class SeenKey:
    host: str  # inventory name
    known_as: str  # the known_hosts host field
    key_type: str
    fingerprint: str
    first_contact: bool


class HostKeyStore:
    """The pinned keys; thread-safe, since hosts are contacted in parallel."""

    def __init__(self, path: Path, accept_new: bool) -> None:
        self.path = path
        self.accept_new = accept_new
        self.keys = paramiko.HostKeys()
        self._lock = threading.Lock()
        self._new: list[tuple[str, paramiko.PKey]] = []
        if path.exists():
            try:
                self.keys.load(str(path))
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise UsageError(f"{path}: unreadable known_hosts: {exc}") from None
        elif not accept_new:
            raise UsageError(
                f"{path}: no known_hosts beside the inventory (first contact: --accept-new-host-keys)"
            )

    def policy(self, host: Host) -> paramiko.MissingHostKeyPolicy:
        store = self

        class _Policy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]  # paramiko is untyped
            def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
                if not store.accept_new:
                    raise HostKeyRefused(
                        f"host key {key.get_name()} {fingerprint(key)} of {hostname} is not pinned in "
                        f"{store.path} (first contact: --accept-new-host-keys)"
                    )
                with store._lock:
                    store.keys.add(hostname, key.get_name(), key)
                    store._new.append((hostname, key))

        return _Policy()

    def is_new(self, known_as: str) -> bool:
        with self._lock:
            return any(name == known_as for name, _ in self._new)

    def save(self) -> None:
        """Append first-contact keys to known_hosts (atomically, mode 0644)."""
        with self._lock:
            if not self._new:
                return
            old = self.path.read_text() if self.path.exists() else ""
            if old and not old.endswith("\n"):
                old += "\n"
            lines = "".join(f"{name} {key.get_name()} {key.get_base64()}\n" for name, key in self._new)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "w") as out:
                out.write(old + lines)
            os.replace(tmp, self.path)
            self._new.clear()


@dataclass(frozen=True)
class Result:
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    def reason(self) -> str:
        """The last line of stderr (or stdout), for one-line error messages."""
        for stream in (self.stderr, self.stdout):
            lines = stream.decode("utf-8", errors="replace").strip().splitlines()
            if lines:
                return lines[-1].strip()
        return f"exit {self.code}"


class Session:
    """One logged-in SSH connection to a host; use as a context manager."""

    def __init__(self, host: Host, store: HostKeyStore, timeout: float = 15.0) -> None:
        self.host = host
        self.timeout = timeout
        self.known_as = known_hosts_name(host.address, host.port)
        self.client = paramiko.SSHClient()
        self.client.set_missing_host_key_policy(store.policy(host))
        if store.path.exists():
            self.client.load_host_keys(str(store.path))
        try:
            self.client.connect(
                host.address,
                port=host.port,
                username=host.user,
                key_filename=str(host.key_file) if host.key_file else None,
                look_for_keys=host.key_file is None,
                allow_agent=host.key_file is None,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
            )
        except HostKeyRefused:
            self.client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            self.client.close()
            raise HostKeyRefused(
                f"host key of {self.known_as} CHANGED: pinned {fingerprint(exc.expected_key)}, "
                f"offered {fingerprint(exc.key)}; refused"
            ) from None
        except paramiko.AuthenticationException as exc:
            self.client.close()
            raise HostUnreachable(f"login as {host.user} refused: {exc}") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.client.close()
            detail = str(exc) or type(exc).__name__
            raise HostUnreachable(f"{host.address}:{host.port}: {detail}") from None
        self.seen = self._seen(store)

    def _seen(self, store: HostKeyStore) -> SeenKey:
        transport = self.client.get_transport()
        assert transport is not None
        key = transport.get_remote_server_key()
        return SeenKey(
            host=self.host.name,
            known_as=self.known_as,
            key_type=key.get_name(),
            fingerprint=fingerprint(key),
            first_contact=store.is_new(self.known_as),
        )

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def run(self, command: str, stdin: bytes | None = None, timeout: float | None = None) -> Result:
        """Run `command` through the login shell; stdin is sent whole, then closed."""
        limit = timeout if timeout is not None else self.timeout
        try:
            chan_in, chan_out, chan_err = self.client.exec_command(command, timeout=limit)
            if stdin is not None:
                chan_in.write(stdin)
            chan_in.channel.shutdown_write()
            out = chan_out.read()
            err = chan_err.read()
            code = chan_out.channel.recv_exit_status()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise HostUnreachable(f"{self.host.name}: connection lost: {exc or type(exc).__name__}") from None
        return Result(code, out, err)

    def sftp(self) -> paramiko.SFTPClient:
        try:
            return self.client.open_sftp()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise HostUnreachable(f"{self.host.name}: SFTP unavailable: {exc}") from None


Connector = Callable[[Host], Session]
