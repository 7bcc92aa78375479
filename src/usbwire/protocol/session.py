"""usbwire's session extension, sans I/O: a URB stream that outlives its TCP connection.

Only between usbwire peers, and only when the client asked for it with OP_REQ_SESSION before
OP_REQ_IMPORT (a plain USB/IP peer never sees any of this). Past OP_REP_IMPORT both sides wrap
the unchanged USB/IP URB stream in frames::

    type (u8) | length (u32, big-endian) | payload

    DATA  1  a piece of the URB stream
    ACK   2  u64: stream bytes received from the peer so far (the peer may forget them)
    PING  3  u64 token: the peer answers PONG with it
    PONG  4  u64 token
    END   5  empty: the stream ends on purpose (detach), nothing will resume it

Each side counts the URB-stream bytes it sent and received, and keeps what it sent until the
peer acknowledges it. When the connection breaks, the client connects again and sends
OP_REQ_RESUME (session id, secret, bytes it received); the server answers OP_REP_RESUME with
the bytes it received, and each side sends again, in DATA frames, everything past the other's
count. Only whole DATA frames count: a frame cut by the break is sent again.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from dataclasses import dataclass

from usbwire.errors import LocalProtocolError, RemoteProtocolError

FRAME_HEADER = struct.Struct(">BI")
COUNT = struct.Struct(">Q")
# Bounds what a peer can make us buffer for one frame; bigger sends are split.
MAX_FRAME = 1024 * 1024
# Past this many sent-but-unacknowledged bytes a side stops producing more (the server stops
# taking URBs, the relay stops reading the kernel) until acknowledgements come.
MAX_BACKLOG = 8 * 1024 * 1024
# Received bytes that make an acknowledgement due before the next ping.
ACK_EVERY = 256 * 1024
# Seconds of silence after which a connection counts as dead. Each side pings four times
# in that span and the peer answers each ping at once, so a live link is never silent for
# long, and a frozen or vanished peer is noticed even when no URB is in flight.
DEAD_AFTER = 5.0
PINGS_PER_DEADLINE = 4
# The longest outage a server hides by default: in-flight URBs wait this long for the client.
DEFAULT_WINDOW = 30.0


class FrameType(enum.IntEnum):
    DATA = 1
    ACK = 2
    PING = 3
    PONG = 4
    END = 5


@dataclass(frozen=True, slots=True)
class Data:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    count: int


@dataclass(frozen=True, slots=True)
class Ping:
    token: int


@dataclass(frozen=True, slots=True)
class Pong:
    token: int


@dataclass(frozen=True, slots=True)
class End:
    pass


Frame = Data | Ack | Ping | Pong | End


def encode(frame: Frame) -> bytes:
    """The bytes of one frame (a DATA frame's payload must fit MAX_FRAME)."""
    if isinstance(frame, Data):
        if len(frame.payload) > MAX_FRAME:
            raise LocalProtocolError(
                f"DATA frame of {len(frame.payload)} bytes", field="length", value=len(frame.payload)
            )
        return FRAME_HEADER.pack(FrameType.DATA, len(frame.payload)) + frame.payload
    if isinstance(frame, End):
        return FRAME_HEADER.pack(FrameType.END, 0)
    kind = {Ack: FrameType.ACK, Ping: FrameType.PING, Pong: FrameType.PONG}[type(frame)]
    value = frame.count if isinstance(frame, Ack) else frame.token
    return FRAME_HEADER.pack(kind, COUNT.size) + COUNT.pack(value)


class Decoder:
    """Bytes of one connection in, whole frames out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        position = 0
        buffer = self._buffer
        while len(buffer) - position >= FRAME_HEADER.size:
            kind, length = FRAME_HEADER.unpack_from(buffer, position)
            _check_header(kind, length)
            end = position + FRAME_HEADER.size + length
            if len(buffer) < end:
                break
            payload = bytes(buffer[position + FRAME_HEADER.size : end])
            frames.append(_frame(kind, payload))
            position = end
        del buffer[:position]
        return frames


def _check_header(kind: int, length: int) -> None:
    if kind == FrameType.DATA:
        if length > MAX_FRAME:
            raise RemoteProtocolError(f"DATA frame of {length} bytes exceeds {MAX_FRAME}", field="length", value=length)
    elif kind == FrameType.END:
        if length:
            raise RemoteProtocolError(f"END frame with {length} payload bytes", field="length", value=length)
    elif kind in (FrameType.ACK, FrameType.PING, FrameType.PONG):
        if length != COUNT.size:
            raise RemoteProtocolError(f"frame type {kind} of {length} bytes", field="length", value=length)
    else:
        raise RemoteProtocolError(f"unknown session frame type {kind}", field="type", value=kind)


def _frame(kind: int, payload: bytes) -> Frame:
    if kind == FrameType.DATA:
        return Data(payload)
    if kind == FrameType.END:
        return End()
    (value,) = COUNT.unpack(payload)
    if kind == FrameType.ACK:
        return Ack(value)
    return Ping(value) if kind == FrameType.PING else Pong(value)


class Stream:
    """One side's view of a resumable stream: counts, the replay buffer, the current link's decoder.

    ``send`` frames outgoing stream bytes and keeps them until acknowledged; ``receive`` turns a
    connection's bytes into frames, counting DATA and applying ACKs; ``resume`` starts a new
    connection and gives what the peer missed.
    """

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.acked = 0
        self._kept: deque[bytes] = deque()  # covers [_kept_from, sent)
        self._kept_from = 0
        self._decoder = Decoder()

    @property
    def backlog(self) -> int:
        """Bytes sent and not yet acknowledged: what a resumption may have to send again."""
        return self.sent - self.acked

    def send(self, payload: bytes) -> bytes:
        """DATA frames carrying ``payload``, which is kept for replay until acknowledged."""
        if not payload:
            return b""
        self._kept.append(payload)
        self.sent += len(payload)
        return _data_frames(payload)

    def receive(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        frames = self._decoder.feed(data)
        for frame in frames:
            if isinstance(frame, Data):
                self.received += len(frame.payload)
            elif isinstance(frame, Ack):
                self._acknowledged(frame.count)
        return frames

    def resume(self, peer_received: int) -> bytes:
        """Start a new connection: forget the old one's partial frame; DATA frames of what the
        peer, which has ``peer_received`` bytes, has not got.

        Raises RemoteProtocolError when the peer claims bytes never sent or already acknowledged
        as more (the stream cannot be continued).
        """
        self._decoder = Decoder()
        self._acknowledged(peer_received)
        pending = b"".join(self._kept)[peer_received - self._kept_from :]
        return _data_frames(pending) if pending else b""

    def _acknowledged(self, count: int) -> None:
        if not self.acked <= count <= self.sent:
            raise RemoteProtocolError(
                f"the peer acknowledges {count} bytes; {self.acked} were acknowledged and {self.sent} sent",
                field="count",
                value=count,
            )
        self.acked = count
        while self._kept and self._kept_from + len(self._kept[0]) <= count:
            self._kept_from += len(self._kept.popleft())


def _data_frames(payload: bytes) -> bytes:
    if len(payload) <= MAX_FRAME:
        return FRAME_HEADER.pack(FrameType.DATA, len(payload)) + payload
    view = memoryview(payload)
    return b"".join(
        FRAME_HEADER.pack(FrameType.DATA, len(view[i : i + MAX_FRAME])) + view[i : i + MAX_FRAME]
        for i in range(0, len(payload), MAX_FRAME)
    )
