"""Resumable imports on the client: the session extension's relay (see protocol/session.py).

The kernel's end of the socketpair stays open for as long as the session can be resumed; a
broken connection is replaced by a new one that resumes the session, so vhci sees a delay
instead of a dead port. Only when the server forgets the session (its window passed, it
restarted) does the relay close the kernel's end, and the port ends as after any cut.
"""

from __future__ import annotations

import contextlib
import logging
import select
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from usbwire.client.handshake import connect, import_socket, read_exactly, request_import
from usbwire.errors import RemoteProtocolError, UsbwireError
from usbwire.protocol.connection import ClientConnection
from usbwire.protocol.constants import (
    DEFAULT_PORT,
    OP_HEADER_SIZE,
    SESSION_ID_SIZE,
    SESSION_SECRET_SIZE,
    OpStatus,
)
from usbwire.protocol.pdu import DeviceInfo, OpRepResume, OpRepSession, OpReqResume, OpReqSession
from usbwire.protocol.session import (
    ACK_EVERY,
    DEAD_AFTER,
    MAX_BACKLOG,
    PINGS_PER_DEADLINE,
    Ack,
    Data,
    End,
    Ping,
    Pong,
    Stream,
    encode,
)

log = logging.getLogger("usbwire.client")

# Both replies have a fixed size, whatever their status: read exactly that, never past it.
SESSION_REPLY_SIZE = OP_HEADER_SIZE + SESSION_ID_SIZE + SESSION_SECRET_SIZE + 4
RESUME_REPLY_SIZE = OP_HEADER_SIZE + 8
CHUNK = 262144


@dataclass(frozen=True, slots=True)
class Ticket:
    """What resuming a session takes: its id and secret, and how long the server waits."""

    session_id: bytes
    secret: bytes
    window: float


def import_resumable(
    host: str,
    busid: str,
    tcp_port: int = DEFAULT_PORT,
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
    token: str | None = None,
) -> tuple[socket.socket, DeviceInfo, Ticket | None]:
    """Import ``busid`` in a resumable session if the server grants one, plainly otherwise.

    A server that does not know the extension (usbipd, older usbwire) drops the connection on
    OP_REQ_SESSION, before any device is touched: the import is then made again, plain, on a
    new connection. The ticket is None for a plain import.
    """
    where = f"{host}:{tcp_port}"
    sock, conn = connect(host, tcp_port, timeout, tls, token)
    try:
        sock.sendall(conn.send(OpReqSession(busid=busid)))
        try:
            conn.receive_data(read_exactly(sock, SESSION_REPLY_SIZE))
            grant = conn.next_event()
        except (OSError, RemoteProtocolError):
            grant = None
    except BaseException:
        sock.close()
        raise
    if not isinstance(grant, OpRepSession):
        sock.close()
        log.info("%s does not offer resumable sessions; importing plainly", where)
        plain, device = import_socket(host, busid, tcp_port, timeout, tls, token)
        return plain, device, None
    try:
        device = request_import(sock, conn, busid, where, tls is not None)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    if grant.status != OpStatus.OK:
        return sock, device, None
    return sock, device, Ticket(grant.session_id, grant.secret, grant.window_ms / 1000)


class LinkBroken(Exception):
    """The current connection is gone; the session may still be resumed."""


class KernelGone(Exception):
    """The kernel let go of its end (the port was detached): the session ends for good."""


class SessionRelay:
    """Carries one session's URB stream between the kernel's socket and the server, across
    reconnections, until the kernel lets go or the session cannot be resumed."""

    def __init__(
        self,
        network: socket.socket,
        local: socket.socket,
        ticket: Ticket,
        reconnect: Callable[..., tuple[socket.socket, ClientConnection]],
        dead_after: float = DEAD_AFTER,
        on_state: Callable[[str, str], None] = lambda state, detail: None,
    ) -> None:
        self.network = network
        self.local = local
        self.ticket = ticket
        self.reconnect = reconnect  # called with timeout=: a new connection, ready for an OP request
        self.dead_after = dead_after
        self.on_state = on_state  # ("resuming", why) on a break, ("attached", ...) once resumed
        self.stream = Stream()
        self.resumptions = 0
        self.pings = 0  # sent, over every connection
        self._acked_to_peer = 0

    def run(self) -> None:
        try:
            while True:
                try:
                    self._pump()
                except KernelGone:
                    # Tell the server, so it releases the device now rather than after the window.
                    with contextlib.suppress(OSError):
                        self.network.sendall(encode(End()))
                    return
                except LinkBroken as why:
                    log.warning("session link broken (%s); resuming", why)
                    self.on_state("resuming", str(why))
                if not self._resume():
                    return
                self.resumptions += 1
                self.on_state("attached", f"session resumed ({self.resumptions}x)")
        except (UsbwireError, OSError) as error:
            log.warning("session relay ends: %s", error)
        finally:
            self.network.close()
            self.local.close()

    # -- one connection --------------------------------------------------------------------------

    def _pump(self) -> None:
        """Relay until the kernel lets go (KernelGone) or the link breaks (LinkBroken)."""
        network, local = self.network, self.local
        network.settimeout(self.dead_after)  # a full send buffer on a dead link must not hang us
        selector = selectors.DefaultSelector()
        selector.register(network, selectors.EVENT_READ)
        reading_local = False
        last_heard = time.monotonic()
        next_ping = last_heard + self.dead_after / PINGS_PER_DEADLINE
        try:
            while True:
                want_local = self.stream.backlog <= MAX_BACKLOG
                if want_local != reading_local:
                    if want_local:
                        selector.register(local, selectors.EVENT_READ)
                    else:
                        selector.unregister(local)
                    reading_local = want_local
                pending = network.pending() if isinstance(network, ssl.SSLSocket) else 0
                ready: set[object]
                if pending:
                    ready = {network}
                else:
                    timeout = max(0.0, next_ping - time.monotonic())
                    ready = {key.fileobj for key, _ in selector.select(timeout)}
                if network in ready:
                    self._from_network(self._receive(max(pending, CHUNK)))
                    last_heard = time.monotonic()
                if local in ready:
                    self._send(self.stream.send(self._from_kernel()))
                now = time.monotonic()
                if now >= next_ping:
                    if now - last_heard > self.dead_after:
                        raise LinkBroken(f"no word from the server for {now - last_heard:.1f} s")
                    self.pings += 1
                    self._send(encode(Ping(self.pings)) + self._ack(force=True))
                    next_ping = now + self.dead_after / PINGS_PER_DEADLINE
        finally:
            selector.close()

    def _from_kernel(self) -> bytes:
        try:
            data = self.local.recv(CHUNK)
        except OSError:
            raise KernelGone() from None
        if not data:
            raise KernelGone()
        return data

    def _receive(self, size: int) -> bytes:
        try:
            data = self.network.recv(size)
        except OSError as error:
            raise LinkBroken(str(error) or type(error).__name__) from None
        if not data:
            raise LinkBroken("the server closed the connection")
        return data

    def _from_network(self, data: bytes) -> None:
        out = []
        replies = []
        for frame in self.stream.receive(data):
            if isinstance(frame, Data):
                out.append(frame.payload)
            elif isinstance(frame, Ping):
                replies.append(encode(Pong(frame.token)))
            elif isinstance(frame, End):
                raise RemoteProtocolError("the server ended the session stream", field="type", value="END")
        if out:
            try:
                self.local.sendall(b"".join(out))
            except OSError:
                raise KernelGone() from None
        replies.append(self._ack())
        if any(replies):
            self._send(b"".join(replies))

    def _ack(self, force: bool = False) -> bytes:
        received = self.stream.received
        if received > self._acked_to_peer and (force or received - self._acked_to_peer >= ACK_EVERY):
            self._acked_to_peer = received
            return encode(Ack(received))
        return b""

    def _send(self, data: bytes) -> None:
        if not data:
            return
        try:
            self.network.sendall(data)
        except OSError as error:
            # What was sent stays in the stream's replay buffer: the resumption sends it again.
            raise LinkBroken(str(error) or type(error).__name__) from None

    # -- a new connection ------------------------------------------------------------------------

    def _resume(self) -> bool:
        """Resume on a new connection within the window; False when that cannot be done."""
        with contextlib.suppress(OSError):
            self.network.close()
        deadline = time.monotonic() + self.ticket.window
        delay = 0.1
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                verdict = self._try_resume(min(remaining, self.dead_after))
            except (OSError, UsbwireError) as error:
                log.info("resumption attempt failed: %s", error)
            else:
                if verdict:
                    return True
                log.warning("the server no longer holds the session")
                return False
            if self._kernel_gone(min(delay, max(0.0, deadline - time.monotonic()))):
                return False
            delay = min(delay * 2, 1.0)
        log.warning("no resumption within %g s", self.ticket.window)
        return False

    def _try_resume(self, timeout: float) -> bool:
        sock, conn = self.reconnect(timeout=timeout)
        try:
            request = OpReqResume(
                session_id=self.ticket.session_id, secret=self.ticket.secret, received=self.stream.received
            )
            sock.sendall(conn.send(request))
            conn.receive_data(read_exactly(sock, RESUME_REPLY_SIZE))
            reply = conn.next_event()
            if not isinstance(reply, OpRepResume):
                raise RemoteProtocolError(f"{type(reply).__name__} where OP_REP_RESUME was due", field="code")
            if reply.status != OpStatus.OK:
                sock.close()
                return False
            self._acked_to_peer = self.stream.received
            sock.sendall(self.stream.resume(reply.received))
        except BaseException:
            sock.close()
            raise
        self.network = sock
        log.info("session resumed (%d bytes sent again)", self.stream.sent - reply.received)
        return True

    def _kernel_gone(self, wait: float) -> bool:
        """Wait up to ``wait`` s; True if the kernel closed its end meanwhile (port detached).

        URBs the kernel queued meanwhile must not end the wait: only a hang-up counts.
        """
        poller = select.poll()
        poller.register(self.local, select.POLLRDHUP | select.POLLHUP)
        return bool(poller.poll(wait * 1000))
