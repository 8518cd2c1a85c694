"""The gateway's TLS listener: aiohttp behind a handshake the gateway watches.

aiohttp's own TLS site hands the socket to asyncio with `ssl=`, and a failed handshake (a
certificate from another CA, a TLS 1.2 client when only 1.3 is allowed, plain HTTP on the TLS
port) then vanishes without a trace. Here every accepted connection starts as plain TCP, is
upgraded with `loop.start_tls` (public asyncio API), and only a connection whose handshake
succeeded is handed to aiohttp's request handler; a failed one is reported (peer address and
reason) so the gateway records it. The cost is one task per connection, not per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

HANDSHAKE_SECONDS = 30.0
HandshakeFailed = Callable[[str | None, BaseException], None]


def peer_text(peer: Any) -> str | None:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        return f"{host}:{peer[1]}"
    return None


class _Handshake(asyncio.Protocol):
    """Owns a new connection until its TLS handshake ends, then hands it to aiohttp."""

    def __init__(self, site: WatchedTLSSite) -> None:
        self._site = site
        self._handler: asyncio.Protocol | None = None
        self._early: list[bytes] = []  # application data that arrived before the hand-over
        self._eof = False
        self._lost: tuple[Exception | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._raw: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the ClientHello stays in the socket for the TLS layer
        self._raw = transport
        self._task = asyncio.get_running_loop().create_task(self._upgrade(transport))
        self._site.pending.add(self)

    async def _upgrade(self, raw: asyncio.Transport) -> None:
        peer = peer_text(raw.get_extra_info("peername"))
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                raw, self, self._site.context, server_side=True, ssl_handshake_timeout=HANDSHAKE_SECONDS
            )
        except asyncio.CancelledError:
            raw.close()
            raise
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
            raw.close()
            self._site.on_failure(peer, exc)
            return
        finally:
            self._site.pending.discard(self)
        if tls is None or self._lost is not None:
            return
        handler = self._site.factory()
        self._handler = handler
        tls.set_protocol(handler)
        handler.connection_made(tls)
        for chunk in self._early:
            handler.data_received(chunk)
        self._early.clear()
        if self._eof and not handler.eof_received():
            tls.close()

    # Before the hand-over the TLS layer delivers to this protocol; afterwards to the handler.
    def data_received(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.data_received(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self._handler is not None:
            return self._handler.eof_received()
        self._eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handler is not None:
            self._handler.connection_lost(exc)
        else:
            self._lost = (exc,)

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._raw is not None:
            self._raw.abort()


class WatchedTLSSite(web.TCPSite):
    """`web.TCPSite` whose TLS handshakes the gateway sees, failures included."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        context: ssl.SSLContext,
        on_failure: HandshakeFailed,
        *,
        backlog: int = 128,
        reuse_address: bool | None = None,
    ) -> None:
        super().__init__(runner, host, port, backlog=backlog, reuse_address=reuse_address)
        self.context = context
        self.on_failure = on_failure
        self.pending: set[_Handshake] = set()
        server = runner.server
        assert server is not None
        self.factory: Callable[[], asyncio.Protocol] = server  # aiohttp's request-handler factory

    @property
    def name(self) -> str:
        return super().name.replace("http://", "https://", 1)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Handshake(self),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        for handshake in list(self.pending):
            with contextlib.suppress(Exception):
                handshake.abort()
        self.pending.clear()
        await super().stop()
