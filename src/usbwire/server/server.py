"""The USB/IP server: listening sockets, the export registry, live connections, counters."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import socket
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from ssl import SSLContext
from typing import Any

from usbwire.addresses import host_port
from usbwire.errors import UsbwireError
from usbwire.protocol.connection import DEFAULT_MAX_TRANSFER
from usbwire.protocol.constants import DEFAULT_PORT
from usbwire.protocol.session import DEAD_AFTER, DEFAULT_WINDOW
from usbwire.server.access import AccessPolicy, ImportGate
from usbwire.server.connection import READ_SIZE, BufferedUsbipProtocol, UsbipProtocol
from usbwire.server.registry import Registry
from usbwire.server.session import Sessions

log = logging.getLogger("usbwire.server")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may make the server hold."""

    # URBs accepted but not yet answered, per connection; past it the server stops reading.
    max_in_flight: int = 256
    max_transfer: int = DEFAULT_MAX_TRANSFER
    # Connections open at once from one address; more are closed as they arrive.
    max_connections_per_client: int = 256
    # Seconds a client gets to finish its OP request (DEVLIST/IMPORT): idle sockets that
    # never ask for anything are closed. An imported device is never timed out: USB/IP has
    # no keepalive and an unused disk sends no URBs for hours.
    request_timeout: float = 30.0
    # usbwire's session extension: seconds an import waits for its client to resume after
    # the link broke (0: sessions are refused and imports end with their connection), and
    # seconds of silence after which a session's link counts as dead.
    resume_window: float = DEFAULT_WINDOW
    liveness_timeout: float = DEAD_AFTER

    def __post_init__(self) -> None:
        # Each of these would leave the server up but useless (0 in flight: it never reads a
        # URB; a 0 s liveness: every session link dead at once), so they are refused here.
        for name in ("max_in_flight", "max_transfer", "max_connections_per_client"):
            if getattr(self, name) < 1:
                raise UsbwireError(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        for name in ("request_timeout", "liveness_timeout"):
            if not getattr(self, name) > 0:
                raise UsbwireError(f"{name.replace('_', '-')} must be more than 0 seconds, not {getattr(self, name)}")
        if not self.resume_window >= 0:
            raise UsbwireError(f"resume-window must be 0 seconds (no sessions) or more, not {self.resume_window}")


@dataclass(slots=True)
class Stats:
    connections: int = 0
    imports: int = 0
    refused_imports: dict[str, int] = field(default_factory=dict)  # by OP_REP_IMPORT status name
    replies: int = 0
    protocol_errors: int = 0


@dataclass
class Server:
    """Exports the devices of ``registry`` to USB/IP clients."""

    registry: Registry = field(default_factory=Registry)
    limits: Limits = field(default_factory=Limits)
    stats: Stats = field(default_factory=Stats)
    policy: AccessPolicy = field(default_factory=AccessPolicy)
    gate: ImportGate | None = None

    def __post_init__(self) -> None:
        self._servers: list[asyncio.base_events.Server] = []
        self._connections: set[UsbipProtocol] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self.sessions = Sessions()
        # Where the connections' reads land when the server makes them (asyncio's loop, and a
        # fast lane reading ahead): shared, as what arrives is copied out at once.
        self.read_buffer = memoryview(bytearray(READ_SIZE))

    async def start(
        self,
        host: str | Sequence[str] | None = None,
        port: int = DEFAULT_PORT,
        ssl: SSLContext | None = None,
    ) -> None:
        """Listen on ``host`` (all IPv4 and IPv6 addresses when None); TLS with ``ssl``."""
        loop = asyncio.get_running_loop()
        factory: Callable[[], UsbipProtocol]
        if type(loop).__module__.startswith("uvloop"):
            # uvloop reads into a buffer of its own and makes bytes of exactly what arrived.
            factory = functools.partial(UsbipProtocol, self)
        else:
            factory = functools.partial(BufferedUsbipProtocol, self)
        try:
            server = await loop.create_server(
                factory,
                host=host,
                port=port,
                reuse_address=True,
                ssl=ssl,
                ssl_handshake_timeout=10.0 if ssl else None,
            )
        except OSError as error:
            raise UsbwireError(_cannot_listen(host, port, error)) from None
        self._servers.append(server)
        for sock in server.sockets:
            log.info("listening on %s", _address(sock))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for s in self._servers for sock in s.sockets]

    @property
    def connections(self) -> frozenset[UsbipProtocol]:
        """The connections open now."""
        return frozenset(self._connections)

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def serve_forever(self) -> None:
        await asyncio.gather(*(s.serve_forever() for s in self._servers))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        # Imports waiting for a client to resume end now, and no import starts waiting.
        self.sessions.expire_suspended()
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.abort()
        for server in self._servers:
            await server.wait_closed()
        # abort() reports connection_lost() on a later loop iteration, and only then does a
        # connection hand its device to close(): wait until every connection is gone (aborting
        # again any that the listener accepted just before it closed).
        while self._connections:
            for connection in list(self._connections):
                if connection.transport is not None:
                    connection.transport.abort()
            await asyncio.sleep(0)
        # Let device close() calls (storage flushes) finish before we return.
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def connection_opened(self, connection: UsbipProtocol) -> bool:
        """Count the connection in; False if its address already has too many open."""
        self.stats.connections += 1
        same = sum(1 for c in self._connections if c.client.address == connection.client.address)
        if same >= self.limits.max_connections_per_client:
            return False
        self._connections.add(connection)
        return True

    def connection_closed(self, connection: UsbipProtocol) -> None:
        self._connections.discard(connection)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run background work that must finish even if nobody awaits it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    def status(self) -> dict[str, Any]:
        exports = []
        for device in self.registry:
            info = device.info
            holder = self.registry.holder(info.busid)
            exports.append(
                {
                    "busid": info.busid,
                    "vid_pid": f"{info.idVendor:04x}:{info.idProduct:04x}",
                    "speed": info.speed.name.lower(),
                    "imported_by": getattr(holder, "peer", None),
                }
            )
        return {
            "listening": [f"{h}:{p}" for h, p in self.addresses],
            "exports": exports,
            "connections": [c.status() for c in self._connections],
            "stats": asdict(self.stats),
        }


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return host_port(host, port)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed: %r", task.exception())


def _cannot_listen(host: str | Sequence[str] | None, port: int, error: OSError) -> str:
    where = "every address" if host is None else host if isinstance(host, str) else ", ".join(host)
    # asyncio words the bind error itself; the errno's own text is the part worth reading.
    reason = os.strerror(error.errno) if error.errno and error.errno > 0 else error.strerror or str(error)
    if error.errno == errno.EADDRINUSE:
        reason += " (is usbipd or another USB/IP server using it?)"
    return f"cannot listen on {where} port {port}: {reason}"
