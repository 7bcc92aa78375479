"""One TCP connection of the server, as an asyncio Protocol.

Bytes go into a sans-I/O :class:`ServerConnection`; events come out and are answered. In the
URB phase of a plain import the bytes first pass the connection's fast lane, which answers the
transfers the device completes at once without making events; whatever it leaves (a transfer
that must wait, an UNLINK, a malformed PDU) goes the full way. Replies leave in few writes: the
first of a burst alone, the rest together (the fast lane paces them by the client's depth).
Having answered, the fast lane reads the client's next commands itself while they are there
(``_read_ahead``), sparing a trip through the event loop per URB.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from usbwire import auth
from usbwire.addresses import host_port
from usbwire.backends.base import KernelExport
from usbwire.errors import RemoteProtocolError
from usbwire.keepalive import keepalive
from usbwire.protocol.connection import FastLane, ServerConnection
from usbwire.protocol.constants import Direction, OpStatus, TransferType
from usbwire.protocol.pdu import (
    NEED_DATA,
    CmdSubmit,
    CmdUnlink,
    ConnectionClosed,
    OpRepAuth,
    OpRepChallenge,
    OpRepDevlist,
    OpRepImport,
    OpRepResume,
    OpRepSession,
    OpReqAuth,
    OpReqChallenge,
    OpReqDevlist,
    OpReqImport,
    OpReqResume,
    OpReqSession,
)
from usbwire.protocol.state import State
from usbwire.server.access import Client
from usbwire.server.dispatch import Dispatcher
from usbwire.server.session import ServerSession

if TYPE_CHECKING:
    from usbwire.backends.base import ExportedDevice
    from usbwire.protocol.pdu import DeviceInfo
    from usbwire.server.server import Server

log = logging.getLogger("usbwire.server")

# Bytes one read may bring (what asyncio's and uvloop's transports ask the socket for).
READ_SIZE = 256 * 1024
# Seconds between checks that a client we stopped reading from is still there.
LIVENESS_PERIOD = 1.0
# How the fast lane's answers leave (UsbipProtocol._answer_fast). Replies written together
# to a client with many URBs in flight: 8 to 16 all did well in bench/, 12 best of both.
REPLY_GROUP = 12
# A client answered one reply per write: fewer answers per read than this, on average...
SHALLOW = 8 * 16  # (in 16ths)
# ... and reads smaller than this (big transfers are throughput-bound: grouped).
BIG_READ = 32 * 1024
# Reads made right after answering (see _read_ahead) before the loop's other work has a turn.
READ_AHEAD_MOST = 16
# After a read ahead finds nothing, that many reads (doubling per miss, up to this) go without.
READ_AHEAD_BACKOFF = 64
# Replies of more pieces than this are joined rather than handed to writev one by one (see
# BufferedUsbipProtocol): many small ones join for less than writev takes to gather them.
VECTORED_MOST = 12


class UsbipProtocol(asyncio.Protocol):
    """Serves one client: a DEVLIST, a refused IMPORT, or a whole import session."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.conn = ServerConnection(max_transfer=server.limits.max_transfer)
        self.transport: asyncio.Transport | None = None
        # How a reply of several pieces leaves (set with the transport): its writelines,
        # unless a subclass knows better.
        self._writelines: Callable[[list[bytes]], object]
        self.peer = "?"
        self.busid: str | None = None
        self.device: ExportedDevice | None = None
        self.dispatcher: Dispatcher | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0  # in _out
        self._flush_scheduled = False
        self._reading_paused = False
        self._writing_paused = False
        self._closing = False
        self._liveness: asyncio.TimerHandle | None = None
        self.client = Client("?")
        self._challenge = b""
        self._request_timer: asyncio.TimerHandle | None = None
        self._release_wait: asyncio.Task[None] | None = None  # an import's, see _import_admitted
        self._first_of_batch = False
        # Inside _process, which looks at flow control once at the end of the batch.
        self._processing = False
        self._reply_busid = ""
        # usbwire's session extension (server/session.py): granted before the import, framing
        # the URB stream after it.
        self.session: ServerSession | None = None
        self._session_busid: str | None = None
        self._process_scheduled = False
        # The connection's fast lane while URBs of a plain import may take it.
        self._fast: FastLane | None = None
        self._depth = 0  # see _answer_fast
        self._lane_urbs = 0  # answered by the fast lane (the dispatcher counts the rest)
        # The socket's descriptor while the fast lane may read ahead on it (-1: it may not).
        self._read_ahead_fd = -1
        self._read_ahead_skip = 0
        self._read_ahead_backoff = 0
        self._read_error: OSError | None = None  # what a read ahead found instead of bytes

    # -- asyncio callbacks ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._writelines = self.transport.writelines
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets it too, but a reply split by Nagle costs ~40 ms: never rely on defaults.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A client whose host or path died without a FIN is noticed in seconds, not hours.
            keepalive(sock)
        peer = transport.get_extra_info("peername")
        self.peer = _format_peer(peer)
        address = peer[0] if isinstance(peer, tuple) else "local"
        self.client = Client(address, _certificate_names(transport.get_extra_info("peercert")))
        if not self.server.connection_opened(self):
            self._abort(f"more than {self.server.limits.max_connections_per_client} connections from {address}")
            return
        log.debug("%s connected", self.client.describe())
        self._request_timer = asyncio.get_running_loop().call_later(
            self.server.limits.request_timeout, self._request_timed_out
        )

    def data_received(self, data: bytes) -> None:
        fast = self._fast
        if fast is None:
            self._receive(data)
        elif self._answer_fast(fast, data) and self._read_ahead_fd >= 0:
            self._read_ahead(fast)

    def _answer_fast(self, fast: FastLane, data: bytes) -> bool:
        """Answer ``data`` through the fast lane; whether every byte received is dealt with."""
        # The URB phase of a plain import: answer here what the device completes at once.
        # What the fast lane hands over (a URB that waits, an UNLINK, a bad PDU) goes on to
        # _process; what it holds (a command whose OUT data is still arriving) waits for the
        # next read. This runs for every read, so it is written out here, and makes its writes
        # itself: no session frames a plain import's replies, and the lane is taken away
        # before we close the transport. (Each call or attribute saved is ~1% of the rate at
        # 1 URB in flight.)
        conn = self.conn
        out = self._out
        # The first answer leaves alone, so that the client works on it while we make the
        # rest.
        answered = fast(data, out, 1)
        if answered:
            transport = self.transport
            assert transport is not None
            group = 0
            while True:
                self._out = []
                self._out_bytes = 0  # (of replies sent before, now leaving with these)
                if len(out) == 1:
                    transport.write(out[0])
                else:
                    # One vectored write, so IN data is not copied into a joined buffer first.
                    self._writelines(out)
                drained = conn.drained
                if drained or transport.is_closing():
                    break
                if not group:
                    # Then, to a client that keeps few small URBs in flight, one by one as
                    # the C server does: each write keeps the client's core awake, where a
                    # batch lets it fall asleep, and waking a core costs tens of us in a VM.
                    # To a client with many in flight or with big transfers, in groups, which
                    # saves writes where the CPU is the limit (bench/ measured both).
                    group = 1 if self._depth <= SHALLOW and len(data) < BIG_READ else REPLY_GROUP
                out = self._out
                made = fast(b"", out, group)
                if not made:
                    break
                answered += made
            self._lane_urbs += answered
            self.server.stats.replies += answered
        else:
            drained = conn.drained
        # How deep the client's queue looks: a running average of answers per read, in 16ths.
        self._depth = (self._depth * 3 + answered * 16) >> 2
        if not drained and conn.buffered > conn.held:
            self._process()  # handed over: a URB that waits, an UNLINK, a bad PDU
        return drained

    def _read_ahead(self, fast: FastLane) -> None:
        """Read the client's next commands now, without going back to the event loop.

        Writing a reply wakes the client; sharing our core, it runs at once, before our write
        even returns, and has its next command sent by the time we run again. Going back
        through the loop to learn that costs more than the command itself: the socket's
        descriptor is read here instead, into the server's read buffer, a few times before
        the loop's other work has its turn. A client elsewhere has rarely answered yet: each
        read that finds nothing doubles the number of callbacks that go without one, so that
        such a client costs a failed read now and then, not one per URB. TLS is never read
        past its transport: only plain sockets get here.
        """
        if self._read_ahead_skip:
            self._read_ahead_skip -= 1
            return
        # Into a kept buffer, then copied out: os.read would allocate all READ_SIZE bytes each
        # time (an mmap, above 128 KiB), and a smaller read would cut big OUT transfers into
        # pieces for the lane to join (bench/: -25% at 64 KiB).
        buffer = self.server.read_buffer
        into = [buffer]
        for _ in range(READ_AHEAD_MOST):
            try:
                size = os.readv(self._read_ahead_fd, into)
            except BlockingIOError:
                self._read_ahead_backoff = min(self._read_ahead_backoff * 2 or 1, READ_AHEAD_BACKOFF)
                self._read_ahead_skip = self._read_ahead_backoff
                return
            except OSError as error:
                # Taken from the socket by this read, the error would not reach the transport:
                # the connection ends with it here.
                self._read_error = error
                assert self.transport is not None
                self.transport.abort()
                return
            self._read_ahead_backoff = 0
            if not size:
                return  # the client closed its end: the transport reads that again and ends us
            if not self._answer_fast(fast, buffer[:size].tobytes()) or self._fast is None or self._reading_paused:
                return
            if self.transport is None or self.transport.is_closing():
                return  # a reply could not be written: the client is gone

    def _receive(self, data: bytes) -> None:
        """Bytes outside the fast lane (handshake, sessions, devices that answer later): through
        the connection's events, in _process."""
        session = self.session
        if session is not None and session.started:
            try:
                data = session.receive(data)
            except RemoteProtocolError as error:
                self.server.stats.protocol_errors += 1
                self._abort(f"session protocol error: {error}")
                return
            if data:
                self.conn.receive_data(data)
            if session.ended_by_peer:
                self.conn.receive_data(b"")  # the stream ends here: the USB/IP side sees a clean close
            self._process()
            return
        self.conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        if self.session is not None and self.session.started:
            return False  # the link ended, not the stream: the session may resume it
        self.conn.receive_data(b"")
        self._process()
        return False

    def _request_timed_out(self) -> None:
        if self.dispatcher is None and not self._closing and self.busid is None:
            timeout = self.server.limits.request_timeout
            if self._release_wait is None:
                self._abort(f"no request within {timeout:g} s")
                return
            self._release_wait.cancel()
            self._release_wait = None
            log.warning("%s import refused: the device did not finish closing within %g s", self.peer, timeout)
            self._refuse_import(OpStatus.DEV_BUSY)

    def connection_lost(self, exc: Exception | None) -> None:
        exc = exc or self._read_error
        self._closing = True
        self._fast = None
        if self._request_timer is not None:
            self._request_timer.cancel()
        if self._liveness is not None:
            self._liveness.cancel()
        if self._release_wait is not None:
            self._release_wait.cancel()
        if self.session is not None and self.session.suspend():
            window = self.server.limits.resume_window
            log.info("%s: link of %s lost (%s); holding it %g s for a resumption", self.peer, self.busid, exc, window)
            return
        self._end(exc)

    def _end(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.close()
        if self.dispatcher is not None:
            self.dispatcher.close()
        if self.busid is not None:
            log.info("%s released %s (%s)", self.peer, self.busid, exc or "connection closed")
            self._release()
        self.server.connection_closed(self)

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop taking new requests until it does.
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # -- events -------------------------------------------------------------------------------

    def _process(self) -> None:
        conn = self.conn
        # Replies produced while processing leave in the one write at the end, without a
        # scheduled flush per batch.
        self._flush_scheduled = True
        self._first_of_batch = True
        self._processing = True
        framed = self.session is not None and self.session.started
        while not self._closing:
            if framed and self._busy():
                break  # the rest waits in the buffer; frames (pings, acks) are still read
            try:
                if self._fast is not None:
                    made = self._fast(b"", self._out)
                    self._lane_urbs += made
                    self.server.stats.replies += made
                event = conn.next_event()
                if type(event) is CmdSubmit:
                    self.dispatcher.submit(event)  # type: ignore[union-attr]
                    continue
                if type(event) is CmdUnlink:
                    self.dispatcher.unlink(event)  # type: ignore[union-attr]
                    continue
            except RemoteProtocolError as error:
                self.server.stats.protocol_errors += 1
                self._abort(f"protocol error: {error}")
                return
            if event is NEED_DATA:
                break
            if isinstance(event, OpReqDevlist):
                self._devlist()
            elif isinstance(event, OpReqImport):
                self._import(event.busid)
            elif isinstance(event, OpReqChallenge):
                self._challenge = auth.nonce()
                self.send(self.conn.send(OpRepChallenge(nonce=self._challenge)))
            elif isinstance(event, OpReqAuth):
                self._authenticate(event)
            elif isinstance(event, OpReqSession):
                self._grant_session(event.busid)
            elif isinstance(event, OpReqResume):
                self._resume(event)
                return
            elif isinstance(event, ConnectionClosed):
                self._close("client closed the connection" if self.busid else None)
                return
        self._first_of_batch = False
        self._processing = False
        self._flush()
        self._update_reading()
        if self.session is not None and self.session.started:
            self.session.acknowledge()

    def _authenticate(self, request: OpReqAuth) -> None:
        name = auth.verify(self.server.policy.tokens, self._challenge, request.nonce, request.proof)
        if name is None:
            log.warning("%s: authentication failed (no token matches the proof); closing", self.peer)
            self.send(self.conn.send(OpRepAuth(status=OpStatus.NA)))
            self._close(None)
            return
        self.client = self.client.with_token(name)
        log.info("%s authenticated with token %s", self.peer, name)
        self.send(self.conn.send(OpRepAuth(status=OpStatus.OK)))

    # -- usbwire's session extension ---------------------------------------------------------

    def _grant_session(self, busid: str) -> None:
        limits = self.server.limits
        if limits.resume_window <= 0 or self.session is not None or not self._may_frame(busid):
            self.send(self.conn.send(OpRepSession(status=OpStatus.NA)))
            return
        session = self.server.sessions.open(
            limits.resume_window, limits.liveness_timeout, lambda: self.conn.buffered, self._session_expired, self
        )
        self.session, self._session_busid = session, busid
        window_ms = int(limits.resume_window * 1000)
        grant = OpRepSession(status=OpStatus.OK, session_id=session.id, secret=session.secret, window_ms=window_ms)
        self.send(self.conn.send(grant))

    def _may_frame(self, busid: str) -> bool:
        """Whether the import of ``busid`` will be ours to frame: the kernel's stub takes the
        socket itself, so imports it serves stay plain. Behind an import gate the request may
        name the device indirectly (fleet tokens): then any kernel export rules sessions out."""
        registry = self.server.registry
        candidates = [registry.get(busid)] if self.server.gate is None else list(registry)
        return not any(isinstance(device, KernelExport) for device in candidates)

    def _resume(self, request: OpReqResume) -> None:
        """Hand this connection to the import it resumes; this object is done with it."""
        session = self.server.sessions.find(request.session_id, request.secret)
        if session is None or not session.can_resume(request.received):
            log.info("%s: resumption refused (no such session, or it cannot continue)", self.peer)
            self.send(self.conn.send(OpRepResume(status=OpStatus.NODEV)))
            self._close(None)
            return
        transport = self.transport
        assert transport is not None
        reply = self.conn.send(OpRepResume(status=OpStatus.OK, received=session.stream.received))
        self._closing = True
        self._fast = None
        self.transport = None
        if self._request_timer is not None:
            self._request_timer.cancel()
        self.server.connection_closed(self)
        owner = session.owner
        assert isinstance(owner, UsbipProtocol)
        owner.adopt(transport, reply, request.received, self.peer)

    def adopt(self, transport: asyncio.Transport, reply: bytes, peer_received: int, peer: str) -> None:
        """Go on with our import over ``transport``, a resuming client's new connection."""
        assert self.session is not None
        log.info("%s resumed %s (was %s)", peer, self.busid, self.peer)
        self.peer = peer
        self.transport = transport
        transport.set_protocol(self)
        self._closing = self._reading_paused = self._writing_paused = False
        self.session.resume(transport, reply, peer_received)
        self._update_reading()
        if self.conn.buffered:
            self._process()

    def _session_expired(self) -> None:
        window = self.server.limits.resume_window
        self._end(TimeoutError(f"the client did not resume within {window:g} s"))

    def _devlist(self) -> None:
        policy = self.server.policy
        devices = [d for d in self.server.registry.available() if policy.allows(d, self.client)]
        self.send(self.conn.send(OpRepDevlist(devices=tuple(devices))))
        log.info("%s listed %d device(s)", self.peer, len(devices))
        self._close(None)

    def _import(self, busid: str) -> None:
        if self.session is not None and busid != self._session_busid:
            log.warning("%s: session asked for %s, import of %s refused", self.peer, self._session_busid, busid)
            self._refuse_import(OpStatus.NA)
            return
        if self.server.gate is not None:
            # The gate may have to ask elsewhere (fleet mode: etcd). Meanwhile the state machine
            # holds whatever else arrives until the reply has been sent.
            asyncio.get_running_loop().create_task(self._import_through_gate(busid))
            return
        self._import_admitted(busid, busid)

    async def _import_through_gate(self, requested: str) -> None:
        assert self.server.gate is not None
        admitted = await self.server.gate.admit(requested, self.client)
        if self._closing:
            return
        if isinstance(admitted, OpStatus):
            # Not the busid field itself: in fleet mode it holds a claim's token.
            log.warning("%s import refused by the import gate: %s", self.peer, admitted.text)
            self._refuse_import(admitted)
            return
        self._import_admitted(admitted, requested)

    def _import_admitted(self, busid: str, requested: str) -> None:
        # The reply names the device as the request did (BUSID#TOKEN in fleet mode).
        self._reply_busid = requested
        device = self.server.registry.get(busid)
        if device is not None and not self.server.policy.allows(device.info, self.client):
            log.warning("%s import of %s denied (%s)", self.peer, busid, self.client.describe())
            self._refuse_import(OpStatus.NA)
            return
        claimed = self.server.registry.claim(busid, self)
        if claimed == OpStatus.DEV_BUSY and self.server.registry.being_let_go(busid):
            # The last import has ended and the device is still closing (a disk syncing its
            # writes): an attach right after a detach waits for it rather than fail.
            log.info("%s import of %s waits for the last import's end", self.peer, busid)
            self._release_wait = asyncio.get_running_loop().create_task(self._import_once_released(busid, requested))
            return
        if isinstance(claimed, OpStatus):
            log.info("%s import of %r refused: %s", self.peer, busid, claimed.text)
            self._refuse_import(claimed)
            return
        if isinstance(claimed, KernelExport):
            if self.session is not None:
                # Exported to the kernel after the session was granted: it cannot be framed.
                self.server.registry.release(busid, self)
                self._refuse_import(OpStatus.NA)
                return
            self._hand_over(busid, claimed)
            return
        self.busid = busid
        self.device = claimed
        asyncio.get_running_loop().create_task(self._open(claimed))

    async def _import_once_released(self, busid: str, requested: str) -> None:
        # (The request timeout still runs: an importer waits at most that long.)
        await self.server.registry.until_released(busid)
        self._release_wait = None
        if not self._closing:
            self._import_admitted(busid, requested)

    def _refuse_import(self, status: OpStatus) -> None:
        """Answer the import with ``status`` and end the connection (the caller logged why)."""
        refused = self.server.stats.refused_imports
        refused[status.name] = refused.get(status.name, 0) + 1
        self.send(self.conn.send(OpRepImport(status=status)))
        self._close(None)

    def _hand_over(self, busid: str, device: KernelExport) -> None:
        """Give the connection to the kernel's stub: the fastest path on Linux."""
        assert self.transport is not None
        # From here on every byte belongs to the kernel: a userspace read would steal URBs.
        self.transport.pause_reading()
        sock = self.transport.get_extra_info("socket")
        try:
            device.hand_over(sock.fileno())
        except OSError as error:
            self.server.registry.release(busid, self)
            log.warning("%s import of %s: the kernel refused the socket: %s", self.peer, busid, error)
            self._refuse_import(OpStatus.NA)
            return
        self.server.registry.release(busid, self)
        self.server.stats.imports += 1
        log.info("%s imported %s (handed to the kernel's usbip-host)", self.peer, busid)
        self.send(self.conn.send(OpRepImport(status=OpStatus.OK, device=self._as_requested(device.info))))
        # close() only drops our descriptor after the reply is written: the kernel keeps its own
        # reference and the TCP connection lives on. Never shutdown() here.
        self._close(None)

    async def _open(self, device: ExportedDevice) -> None:
        try:
            await device.open()
        except Exception as error:
            log.error("%s import of %s failed: %s", self.peer, self.busid, error)
            self._release()
            if not self._closing:
                self._refuse_import(OpStatus.DEV_ERR)
            return
        if self._closing:
            self._release()
            return
        self.conn.is_iso = lambda ep, direction: _is_iso(device, ep, direction)
        self.dispatcher = Dispatcher(device, self.conn, self.send, self._urb_done)
        self.send(self.conn.send(OpRepImport(status=OpStatus.OK, device=self._as_requested(device.info))))
        self.server.stats.imports += 1
        log.info("%s imported %s%s", self.peer, self.busid, " (resumable session)" if self.session else "")
        if self.session is not None:
            self._write_out()  # the reply goes unframed; all after it in frames
            assert self.transport is not None
            self.session.start(self.transport)
        elif device.completes_at_once:
            self._fast = self.conn.fast_lane(device.complete_now)
            assert self.transport is not None
            self._read_ahead_fd = _plain_socket_fd(self.transport)
        self._process()  # URBs may already be waiting in the buffer

    def _as_requested(self, info: DeviceInfo) -> DeviceInfo:
        return info if info.busid == self._reply_busid else dataclasses.replace(info, busid=self._reply_busid)

    def device_removed(self) -> None:
        """The registry dropped our device (unexport, unplug): end the import."""
        self.evict("device removed")

    def evict(self, reason: str) -> None:
        """End the import on the registry's word (fleet mode: the claim it was made under is gone)."""
        if self.session is not None and self.session.suspended:
            # No link to abort: the import waits for a resumption that must not come now.
            self.session.ending = True
            self._end(RuntimeError(f"{reason} while waiting for the client to resume"))
            return
        if self.transport is not None and not self.transport.is_closing():
            self._abort(reason)

    # -- output and flow control ------------------------------------------------------------

    def send(self, data: bytes, payload: bytes = b"") -> None:
        self._out.append(data)
        self._out_bytes += len(data) + len(payload)
        if payload:
            self._out.append(payload)
        self.server.stats.replies += 1
        if self._first_of_batch:
            # The first answer of a burst leaves at once, so the client can work on it while
            # we make the rest (which then leave together, in one write).
            self._first_of_batch = False
            self._write_out()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._write_out()

    def _write_out(self) -> None:
        if self._out and self.session is not None and self.session.started:
            # Kept for a resumption even while no link is up.
            out = self._out
            self._out = []
            self._out_bytes = 0
            self.session.send(out[0] if len(out) == 1 else b"".join(out))
            return
        if self._out and self.transport is not None and not self.transport.is_closing():
            out = self._out
            self._out = []
            self._out_bytes = 0
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                # One vectored write, so IN data is not copied into a joined buffer first.
                self._writelines(out)

    def _urb_done(self) -> None:
        if not self._processing:
            self._update_reading()

    def _busy(self) -> bool:
        in_flight = self.dispatcher.in_flight if self.dispatcher else 0
        session_busy = self.session is not None and self.session.busy(self._out_bytes)
        return self._writing_paused or in_flight >= self.server.limits.max_in_flight or session_busy

    def _update_reading(self) -> None:
        if self.transport is None or self._closing:
            return
        busy = self._busy()
        if self.session is not None and self.session.started:
            # The transport keeps reading, or pings would go unheard and a busy link would
            # look dead; URBs wait in the buffer instead, and are acknowledged only once taken.
            if not busy and self.conn.buffered and not self._process_scheduled:
                self._process_scheduled = True
                asyncio.get_running_loop().call_soon(self._process_buffered)
            return
        if busy and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
            self._schedule_liveness_check()
        elif not busy and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
            if self._liveness is not None:
                self._liveness.cancel()
                self._liveness = None

    def _process_buffered(self) -> None:
        self._process_scheduled = False
        if not self._closing:
            self._process()

    def _schedule_liveness_check(self) -> None:
        # A transport that does not read does not notice the peer leaving either, and the
        # URBs that keep us paused may wait forever (an IN nobody will feed). Peek now and
        # then, without consuming anything, to release the device of a vanished client.
        self._liveness = asyncio.get_running_loop().call_later(LIVENESS_PERIOD, self._check_liveness)

    def _check_liveness(self) -> None:
        self._liveness = None
        if not self._reading_paused or self._closing or self.transport is None:
            return
        if _peer_gone(self.transport.get_extra_info("socket")):
            self._abort("client vanished while the server was not reading")
        else:
            self._schedule_liveness_check()

    def _close(self, reason: str | None) -> None:
        if reason:
            log.info("%s: %s", self.peer, reason)
        if self.session is not None:
            self.session.ending = True
        self._closing = True
        self._fast = None
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def _abort(self, reason: str) -> None:
        log.warning("%s: %s; closing", self.peer, reason)
        if self.session is not None:
            self.session.ending = True
        self._closing = True
        self._fast = None
        if self.transport is not None:
            self.transport.abort()

    def _release(self) -> None:
        if self.busid is None or self.device is None:
            return
        busid, device = self.busid, self.device
        self.busid = None
        self.server.spawn(self._close_device(busid, device))

    async def _close_device(self, busid: str, device: ExportedDevice) -> None:
        # The device stays claimed until close() has finished, as the stub stays "used" until
        # its reset is done: an importer let in sooner would have its SET_CONFIGURATION undone
        # by the reset that ends an emulated device's close(). One that comes meanwhile waits.
        self.server.registry.letting_go(busid, self)
        try:
            await device.close()
        finally:
            self.server.registry.release(busid, self)

    def status(self) -> dict[str, object]:
        state = self.conn.state.value if self.conn.state is not State.URB else "importing"
        if self.session is not None and self.session.suspended:
            state = "waiting for the client to resume"
        return {
            "peer": self.peer,
            "busid": self.busid,
            "state": state,
            "urbs": self._lane_urbs + (self.dispatcher.urbs if self.dispatcher else 0),
            "in_flight": self.dispatcher.in_flight if self.dispatcher else 0,
        }


_TCP_ESTABLISHED = 1  # tcpi_state of Linux's struct tcp_info


def _peer_gone(sock: socket.socket) -> bool:
    """Whether the peer closed or reset the connection, found without consuming any byte."""
    if hasattr(socket, "TCP_INFO") and sock.family in (socket.AF_INET, socket.AF_INET6):
        # Linux: the TCP state tells even when unread requests sit in front of the FIN, which
        # a peek cannot see past (CLOSE_WAIT after the peer's FIN, CLOSE after a reset).
        try:
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != _TCP_ESTABLISHED
        except OSError:
            pass
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as peek:
            return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _plain_socket_fd(transport: asyncio.Transport) -> int:
    """The descriptor of the socket under ``transport`` if its bytes are the client's own
    (no TLS in between), else -1."""
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_extra_info("ssl_object") is not None:
        return -1
    return int(sock.fileno())


def _is_iso(device: ExportedDevice, ep: int, direction: Direction) -> bool:
    return device.endpoint_type(ep, direction) == TransferType.ISOCHRONOUS


class BufferedUsbipProtocol(UsbipProtocol, asyncio.BufferedProtocol):
    """UsbipProtocol for asyncio's own event loop, whose transport gives a plain protocol a
    new 256 KiB bytes object for every read (allocated, its pages faulted in, shrunk, freed):
    reads land in the server's read buffer instead and what arrived is copied out, as uvloop
    does inside."""

    _write_fd = -1  # the plain socket's, while _write_gathered writes to it

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.server.read_buffer[:nbytes].tobytes())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if sys.version_info < (3, 12) and self.transport is not None:
            # Python 3.11's writelines joins the pieces into one new bytes object before it
            # writes: a copy of all IN data (bench/: 64 KiB bulk runs 24% faster without it).
            # From 3.12 it gathers them itself.
            self._write_fd = _plain_socket_fd(self.transport)
            if self._write_fd >= 0:
                self._writelines = self._write_gathered

    def _write_gathered(self, out: list[bytes]) -> None:
        """The transport's writelines, but the pieces go to writev where they lie; only what
        the socket does not take now is handed to the transport, which sends it when it can."""
        transport = self.transport
        assert transport is not None
        if len(out) > VECTORED_MOST or transport.get_write_buffer_size() or transport.is_closing():
            transport.writelines(out)  # (behind what waits in the transport, if anything does)
            return
        try:
            sent = os.writev(self._write_fd, out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            transport.writelines(out)  # the transport meets the error itself, and ends us
            return
        for index, piece in enumerate(out):
            if sent < len(piece):
                transport.writelines([piece[sent:], *out[index + 1 :]])
                return
            sent -= len(piece)


def _format_peer(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return host_port(str(peer[0]), peer[1])
    return str(peer or "local")


def _certificate_names(certificate: object) -> frozenset[str]:
    """Common names in a verified client certificate's subject (empty without mTLS)."""
    if not isinstance(certificate, dict):
        return frozenset()
    names = set()
    for entry in certificate.get("subject", ()):
        for key, value in entry:
            if key == "commonName":
                names.add(str(value))
    return frozenset(names)
