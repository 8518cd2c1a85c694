"""SSH material for the testbed: the admin key pair, pinned host keys, a strict reachability probe."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.errors import UsageError


def ensure_keypair(private: Path) -> Path:
    """Create an ed25519 key pair (OpenSSH format, no passphrase: a throwaway lab key) unless
    one is there; return the public key's path (`private` + `.pub`)."""
    public = private.with_name(private.name + ".pub")
    if private.exists() and public.exists():
        try:
            paramiko.Ed25519Key.from_private_key_file(str(private))
        except (OSError, paramiko.SSHException) as err:
            raise UsageError(f"{private}: not a usable ed25519 private key: {err}") from err
        return public
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_file(private, pem, 0o600)
    write_file(public, pub + b" enclave-testbed\n", 0o644)
    return public


def known_hosts_name(address: str, port: int) -> str:
    """Host field of a known_hosts line, as OpenSSH and paramiko look it up."""
    return address if port == 22 else f"[{address}]:{port}"


def probe(
    address: str,
    port: int,
    user: str,
    private_key: Path,
    known_hosts: Path,
    command: str = "sudo -n true",
    timeout: float = 5.0,
) -> str | None:
    """Log in with the key, host-key checking ON (unknown or changed key = failure), run
    `command`; return None on success, else one line saying why not."""
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(str(known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            address,
            port=port,
            username=user,
            key_filename=str(private_key),
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
        _, stdout, _ = client.exec_command(command, timeout=timeout)
        status = stdout.channel.recv_exit_status()
        return None if status == 0 else f"`{command}` exited {status}"
    except (TimeoutError, OSError, paramiko.SSHException) as err:
        return f"{type(err).__name__}: {err}".strip()
    finally:
        client.close()


def port_free(address: str, port: int) -> bool:
    """True when nothing listens on address:port (so a host's sshd can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As sshd does: TIME-WAIT leftovers of an earlier testbed must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (temp file + rename) with `mode` from the start."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
