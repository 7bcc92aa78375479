"""Resumable imports on the server: the session extension's link side (see protocol/session.py).

A :class:`ServerSession` belongs to the connection object that made the import; that object
(device, dispatcher, USB/IP state) lives on when its TCP connection breaks. The session keeps
what was sent until the client acknowledges it, pings the client, and declares a silent link
dead. Once the link is gone it holds the import for the window; a client that resumes in time
gets the missed bytes and the URBs go on, otherwise the owner releases the device as after
any ending import.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterator

from usbwire.protocol.constants import SESSION_ID_SIZE, SESSION_SECRET_SIZE
from usbwire.protocol.session import (
    ACK_EVERY,
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

log = logging.getLogger("usbwire.server")


class _Orphan(asyncio.Protocol):
    """Takes over a superseded connection so its end reaches nobody."""


class ServerSession:
    """One resumable import's stream and link."""

    def __init__(
        self,
        sessions: Sessions,
        window: float,
        dead_after: float,
        unprocessed: Callable[[], int],
        on_expired: Callable[[], None],
        owner: object,
    ) -> None:
        self.owner = owner  # the server connection object holding the import
        self.id = secrets.token_bytes(SESSION_ID_SIZE)
        self.secret = secrets.token_bytes(SESSION_SECRET_SIZE)
        self.window = window
        self.dead_after = dead_after
        self.stream = Stream()
        self.transport: asyncio.Transport | None = None
        self.started = False  # framing begins after OP_REP_IMPORT
        self.ending = False  # the import ends for good when this link does
        self.ended_by_peer = False  # an END frame came
        self.resumptions = 0
        self._sessions = sessions
        self._unprocessed = unprocessed  # stream bytes received but not yet taken as URBs
        self._on_expired = on_expired
        self._acked_to_peer = 0
        self._last_heard = 0.0
        self._token = 0
        self._ping: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def suspended(self) -> bool:
        return self.started and self.transport is None

    def busy(self, unsent: int = 0) -> bool:
        """Too much unacknowledged output: take no more URBs until the client catches up.

        ``unsent`` counts replies already made but not yet handed to the stream (a batch being
        gathered): they will be unacknowledged output too, so a batch cannot overshoot the bound.
        """
        return self.stream.backlog + unsent > MAX_BACKLOG

    def start(self, transport: asyncio.Transport) -> None:
        self.started = True
        self._link(transport)

    def send(self, payload: bytes) -> None:
        frames = self.stream.send(payload)
        if self.transport is not None:
            self.transport.write(frames)

    def receive(self, data: bytes) -> bytes:
        """The URB-stream bytes in ``data``; answers pings and takes acknowledgements.

        Raises RemoteProtocolError for a malformed frame or an impossible acknowledgement.
        """
        self._last_heard = time.monotonic()
        payload = []
        for frame in self.stream.receive(data):
            if isinstance(frame, Data):
                payload.append(frame.payload)
            elif isinstance(frame, Ping):
                self._write(encode(Pong(frame.token)))
            elif isinstance(frame, End):
                self.ended_by_peer = self.ending = True
        return b"".join(payload)

    def acknowledge(self, force: bool = False) -> None:
        """Tell the client how far we took its stream, when enough is new (or ``force``)."""
        processed = self.stream.received - self._unprocessed()
        if processed > self._acked_to_peer and (force or processed - self._acked_to_peer >= ACK_EVERY):
            self._acked_to_peer = processed
            self._write(encode(Ack(processed)))

    def suspend(self) -> bool:
        """The link broke: hold the import for the window (True), or let it end (False)."""
        self.transport = None
        self._cancel_ping()
        if not self.started or self.ending or self.window <= 0 or self._sessions.closing:
            return False
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(self.window, self._expired)
        return True

    def can_resume(self, peer_received: int) -> bool:
        return self.started and not self.ending and self.stream.acked <= peer_received <= self.stream.sent

    def resume(self, transport: asyncio.Transport, reply: bytes, peer_received: int) -> None:
        """Continue on ``transport``: ``reply`` (OP_REP_RESUME), then what the client missed."""
        old = self.transport
        if old is not None:
            # The client saw the break before we did: the old connection is dead to us now.
            old.set_protocol(_Orphan())
            old.abort()
            self._cancel_ping()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.resumptions += 1
        # ``reply`` tells the client we hold all we received, taken as URBs or still buffered:
        # it forgets those bytes, so no later ACK may count fewer (it would be impossible).
        self._acked_to_peer = self.stream.received
        transport.write(reply + self.stream.resume(peer_received))
        self._link(transport)

    def close(self) -> None:
        self._cancel_ping()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.transport = None
        self._sessions.discard(self)

    def _link(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._last_heard = time.monotonic()
        self._ping = asyncio.get_running_loop().call_later(self.dead_after / PINGS_PER_DEADLINE, self._tick)

    def _tick(self) -> None:
        self._ping = None
        if self.transport is None:
            return
        silent = time.monotonic() - self._last_heard
        if silent > self.dead_after:
            log.warning("session client silent for %.1f s: the link is dead", silent)
            self.transport.abort()  # connection_lost then suspends the session
            return
        self._token += 1
        self._write(encode(Ping(self._token)))
        self.acknowledge(force=True)
        self._ping = asyncio.get_running_loop().call_later(self.dead_after / PINGS_PER_DEADLINE, self._tick)

    def _write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def _cancel_ping(self) -> None:
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None

    def _expired(self) -> None:
        self._expiry = None
        self._on_expired()


class Sessions:
    """The server's live sessions, found again by id and secret."""

    def __init__(self) -> None:
        self._by_id: dict[bytes, ServerSession] = {}
        self.closing = False  # a closing server suspends nothing

    def open(
        self,
        window: float,
        dead_after: float,
        unprocessed: Callable[[], int],
        on_expired: Callable[[], None],
        owner: object,
    ) -> ServerSession:
        session = ServerSession(self, window, dead_after, unprocessed, on_expired, owner)
        self._by_id[session.id] = session
        return session

    def find(self, session_id: bytes, secret: bytes) -> ServerSession | None:
        session = self._by_id.get(session_id)
        if session is None or not hmac.compare_digest(session.secret, secret):
            return None
        return session

    def discard(self, session: ServerSession) -> None:
        if self._by_id.get(session.id) is session:
            del self._by_id[session.id]

    def __iter__(self) -> Iterator[ServerSession]:
        return iter(list(self._by_id.values()))

    def expire_suspended(self) -> None:
        """End every import waiting for its client (the server is shutting down)."""
        self.closing = True
        for session in self:
            if session.suspended:
                session._expired()
