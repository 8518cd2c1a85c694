"""Which Docker engine to talk to, and how: the local socket, or a remote one over SSH.

`--engine` takes `unix:///path/to/docker.sock` or `ssh://[user@]host[:port]`. Over SSH the SDK
uses paramiko and runs `docker system dial-stdio` on the far side; host keys are checked against
~/.ssh/known_hosts (an unknown host is refused: paramiko's RejectPolicy) and keys, user and port
come from ~/.ssh/config, as for OpenSSH. Plain `tcp://` is refused: an engine API without TLS
hands root on that host to anyone on the path. With no `--engine`, DOCKER_HOST or the local
socket is used, as the docker CLI does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from enclave.errors import ProvisionError, UsageError

if TYPE_CHECKING:
    import docker

ENGINE_TIMEOUT = 900  # seconds per socket read: a vfs engine works for minutes on a large image


def check_engine_url(url: str) -> str:
    """The URL, if it names an engine we may use; else a UsageError saying what is accepted."""
    expected = "expected unix:///path/to/docker.sock or ssh://[user@]host[:port]"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"--engine {url!r}: {exc}; {expected}") from None
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
            raise UsageError(f"--engine {url!r}: {expected}")
        return url
    if parts.scheme == "ssh":
        extra = parts.password or parts.path not in ("", "/") or parts.query or parts.fragment
        if not parts.hostname or extra:
            raise UsageError(f"--engine {url!r}: {expected} (no password, path or query)")
        if port is not None and not 0 < port < 65536:
            raise UsageError(f"--engine {url!r}: port out of range")
        return url
    if parts.scheme in ("tcp", "http", "https"):
        raise UsageError(
            f"--engine {url!r}: a TCP engine API is not accepted (it gives root on that host to "
            f"anyone on the path); {expected}"
        )
    raise UsageError(f"--engine {url!r}: {expected}")


def connect(url: str | None = None, timeout: int = ENGINE_TIMEOUT) -> docker.DockerClient:
    """A client of the engine at `url` (None: DOCKER_HOST or the local socket), checked by a ping."""
    import docker
    import docker.errors
    import paramiko

    where = url or "the local Docker engine"
    if url is not None:
        check_engine_url(url)
    client: docker.DockerClient | None = None
    try:
        client = (
            docker.from_env(timeout=timeout)
            if url is None
            else docker.DockerClient(base_url=url, timeout=timeout, use_ssh_client=False)
        )
        client.ping()
    except (docker.errors.DockerException, paramiko.SSHException, OSError) as exc:
        if client is not None:
            client.close()
        raise ProvisionError(f"{where}: no Docker engine answers: {_first_line(exc)}") from None
    return client


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
