"""Sans-I/O USB/IP connections: feed bytes in, take events out; give events, get bytes.

Nothing here touches a socket. ``ServerConnection`` and ``ClientConnection`` share the state
machine of ``state.py`` and differ in what they read and what they remember: a server must know
which endpoints are isochronous to parse CMD_SUBMIT, a client must remember each outstanding
CMD_SUBMIT to parse its RET_SUBMIT (which carries neither direction nor endpoint).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

from usbwire.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from usbwire.protocol import codec
from usbwire.protocol.codec import SubmitLimits
from usbwire.protocol.constants import URB_HEADER_SIZE, Direction, Errno
from usbwire.protocol.pdu import (
    NEED_DATA,
    CmdSubmit,
    CmdUnlink,
    ConnectionClosed,
    Event,
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
    RetSubmit,
    RetUnlink,
    _NeedData,
)
from usbwire.protocol.state import SENDER, Role, State, next_state

DEFAULT_MAX_TRANSFER = 16 * 1024 * 1024

# A transfer completed at once: (status, actual_length, IN data); None when it was not.
Completed = tuple[int, int, bytes] | None
# The fast lane's handler (see ServerConnection.fast_lane): called with (ep, direction,
# transfer_flags, transfer_buffer_length, setup, OUT data) of one plain CMD_SUBMIT, it returns
# what the transfer completed with, or None, having done nothing, to leave the command to
# next_event.
Immediate = Callable[[int, int, int, int, bytes, bytes], Completed]
# More commands than fit in any receive buffer: the fast lane's default "no limit".
MAX_BATCH = 1 << 30


class FastLane(Protocol):
    """What :meth:`ServerConnection.fast_lane` returns."""

    def __call__(self, data: bytes, out: list[bytes], most: int = MAX_BATCH, /) -> int:
        """Take ``data``, append the answers of at most ``most`` commands to ``out``; how many."""


_ENCODERS: dict[type[Event], Callable[[object], bytes]] = {
    OpReqDevlist: codec.encode_op_req_devlist,  # type: ignore[dict-item]
    OpReqChallenge: codec.encode_op_req_challenge,  # type: ignore[dict-item]
    OpRepChallenge: codec.encode_op_rep_challenge,  # type: ignore[dict-item]
    OpReqAuth: codec.encode_op_req_auth,  # type: ignore[dict-item]
    OpRepAuth: codec.encode_op_rep_auth,  # type: ignore[dict-item]
    OpReqSession: codec.encode_op_req_session,  # type: ignore[dict-item]
    OpRepSession: codec.encode_op_rep_session,  # type: ignore[dict-item]
    OpReqResume: codec.encode_op_req_resume,  # type: ignore[dict-item]
    OpRepResume: codec.encode_op_rep_resume,  # type: ignore[dict-item]
    OpRepDevlist: codec.encode_op_rep_devlist,  # type: ignore[dict-item]
    OpReqImport: codec.encode_op_req_import,  # type: ignore[dict-item]
    OpRepImport: codec.encode_op_rep_import,  # type: ignore[dict-item]
    CmdSubmit: codec.encode_cmd_submit,  # type: ignore[dict-item]
    RetSubmit: codec.encode_ret_submit,  # type: ignore[dict-item]
    CmdUnlink: codec.encode_cmd_unlink,  # type: ignore[dict-item]
    RetUnlink: codec.encode_ret_unlink,  # type: ignore[dict-item]
}

NextEvent = Event | ConnectionClosed | _NeedData


def _lane_size(chunk: bytes, start: int, max_transfer: int) -> int:
    """How many bytes the fast lane needs to read the command at ``start``: its header,
    and a plain CMD_SUBMIT's OUT data."""
    if len(chunk) - start < URB_HEADER_SIZE:
        return URB_HEADER_SIZE
    command, _, _, direction, _, _, length, _, npackets, _, _ = codec.CMD_SUBMIT.unpack_from(chunk, start)
    if command == 1 and direction == 0 and 0 <= length <= max_transfer and npackets in (0, -1):
        return URB_HEADER_SIZE + int(length)
    return URB_HEADER_SIZE  # the lane answers or hands it over from its header


def _gather(held: list[tuple[bytes, int]], max_transfer: int) -> bool | None:
    """Join the front command's bytes, spread over the first chunks of ``held``, into one
    chunk (their one copy): True when done, False while they have not all arrived, None
    when the front chunk already has what the lane would read (it must hand over)."""
    chunk, start = held[0]
    size = _lane_size(chunk, start, max_transfer)
    have = len(chunk) - start
    if have >= size:
        return None
    if have + sum(len(c) - s for c, s in held[1:]) < size:
        return False
    pieces = [memoryview(chunk)[start:]]
    del held[0]
    missing = size - have
    while missing:
        chunk, start = held[0]
        take = min(missing, len(chunk) - start)
        pieces.append(memoryview(chunk)[start : start + take])
        if start + take == len(chunk):
            del held[0]
        else:
            held[0] = (chunk, start + take)
        missing -= take
    held.insert(0, (b"".join(pieces), 0))
    if have < URB_HEADER_SIZE:  # only the header was gathered: now its OUT data, if any
        return _gather(held, max_transfer) is not False
    return True


class Connection:
    """What both roles share: the receive buffer, the state and the error latch."""

    role: Role

    def __init__(self) -> None:
        self.state = State.OP_REQUEST
        self._buffer = bytearray()
        self._position = 0
        # Bytes received after the buffer's, kept by the fast lane where they arrived (a bytes
        # object and where its unread part starts) instead of being copied into the buffer.
        self._held: list[tuple[bytes, int]] = []
        self._eof = False
        self._error: ProtocolError | None = None
        self._urb_reader: Callable[[memoryview], codec.Read] | None = None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its end."""
        if self._held:
            self._spill()
        if not data:
            self._eof = True
            return
        self._append(data)

    def _append(self, data: bytes | bytearray | memoryview) -> None:
        if self._position and self._position * 2 >= len(self._buffer):
            # Drop consumed bytes once they are half the buffer: amortised O(1) per byte.
            del self._buffer[: self._position]
            self._position = 0
        self._buffer += data

    def _spill(self) -> None:
        """Move what the fast lane holds into the buffer, behind what is there."""
        for chunk, start in self._held:
            self._append(memoryview(chunk)[start:])
        self._held.clear()  # the same list for the connection's life, as the buffer

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buffer) - self._position + self.held

    @property
    def drained(self) -> bool:
        """Whether every byte received has been turned into events or answered: what a server
        asks after each read, and so cheaper than ``buffered == 0``."""
        return self._position == len(self._buffer) and not self._held

    @property
    def held(self) -> int:
        """Of :attr:`buffered`, the bytes the fast lane keeps to answer itself: a command
        whose OUT data has not all arrived, or commands left when it was told to stop."""
        held = self._held
        # Asked for after every read, and nearly always empty: a generator costs 0.15 us.
        return sum(len(chunk) - start for chunk, start in held) if held else 0

    def next_event(self) -> NextEvent:
        """The next complete event, ``NEED_DATA``, or ``ConnectionClosed`` after a clean EOF."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except ProtocolError as error:
            remote = (
                error
                if isinstance(error, RemoteProtocolError)
                else RemoteProtocolError(str(error), field=error.field, value=error.value)
            )
            self._error = remote
            raise remote from None

    def _next_event(self) -> NextEvent:
        if self._held:
            self._spill()
        # In the URB phase (every URB) the reader is fixed; ask for it only before.
        reader = self._urb_reader if self.state is _URB else None
        if reader is None:
            reader = self._reader()
            if self.state is _URB:
                self._urb_reader = reader
        if self._position == len(self._buffer):
            return ConnectionClosed() if self._eof else NEED_DATA
        if reader is None:
            if self.state is State.DONE:
                raise RemoteProtocolError(
                    f"{self.buffered} bytes after the end of the exchange",
                    field="state",
                    value=self.state.name,
                )
            # Our own reply is due first; the bytes wait in the buffer.
            return NEED_DATA
        view = memoryview(self._buffer)[self._position :]
        try:
            result = reader(view)
        finally:
            # A live view would stop the buffer from growing in receive_data.
            view.release()
        if result is None:
            if self._eof:
                raise RemoteProtocolError(
                    f"connection closed inside a PDU ({self.buffered} bytes of it arrived)",
                    field="length",
                    value=self.buffered,
                )
            return NEED_DATA
        event, size = result
        self._position += size
        self._received(event)  # type: ignore[arg-type]
        if self.state is not _URB:
            # In the URB phase the readers only produce the commands (or replies) that
            # phase allows, so the table lookup is needed only before it.
            self.state = next_state(self.state, event)  # type: ignore[arg-type]
        return event  # type: ignore[return-value]

    def send(self, event: Event) -> bytes:
        """Bytes for ``event``; raises LocalProtocolError if it may not be sent now."""
        kind = type(event)
        if SENDER[kind] is not self.role:
            raise LocalProtocolError(
                f"a {self.role.value} does not send {kind.__name__}",
                field="role",
                value=self.role.value,
            )
        state = self.state if self.state is _URB and kind in _URB_EVENTS else next_state(self.state, event)
        self._sending(event)
        self.state = state
        return _ENCODERS[kind](event)

    def _reader(self) -> Callable[[memoryview], codec.Read] | None:
        raise NotImplementedError

    def _received(self, event: Event) -> None:
        raise NotImplementedError

    def _sending(self, event: Event) -> None:
        raise NotImplementedError


_URB_EVENTS = frozenset({CmdSubmit, CmdUnlink, RetSubmit, RetUnlink})
# Enum members every URB asks for, several times: module globals, as looking an enum member
# up on its class costs ~70 ns on Python 3.11.
_URB, _OUT, _IN = State.URB, Direction.OUT, Direction.IN


class ServerConnection(Connection):
    """The exporting side: reads OP requests and commands, sends replies."""

    role = Role.SERVER

    def __init__(
        self,
        *,
        max_transfer: int = DEFAULT_MAX_TRANSFER,
        is_iso: Callable[[int, Direction], bool] = lambda ep, direction: False,
    ) -> None:
        super().__init__()
        self.max_transfer = max_transfer
        self._is_iso = is_iso
        self.devid: int | None = None
        self._read_cmd: Callable[[memoryview], codec.Read] | None = None
        self._outstanding: dict[int, CmdSubmit] = {}
        self._unlinks: dict[int, int] = {}

    @property
    def is_iso(self) -> Callable[[int, Direction], bool]:
        """Called with (endpoint number, direction) for every CMD_SUBMIT: only the device's
        active configuration tells whether iso descriptors follow."""
        return self._is_iso

    @is_iso.setter
    def is_iso(self, is_iso: Callable[[int, Direction], bool]) -> None:
        self._is_iso = is_iso
        self._read_cmd = self._urb_reader = None

    @property
    def outstanding(self) -> int:
        """CMD_SUBMITs received and not yet answered."""
        return len(self._outstanding)

    def _reader(self) -> Callable[[memoryview], codec.Read] | None:
        if self.state is State.OP_REQUEST:
            return codec.read_op_request
        if self.state is State.AUTH_REQUEST:
            return codec.read_op_req_auth
        if self.state is _URB:
            if self._read_cmd is None:
                assert self.devid is not None
                limits = SubmitLimits(self.max_transfer, self.devid, self._is_iso)
                self._read_cmd = functools.partial(codec.read_cmd, limits=limits)
            return self._read_cmd
        return None

    def _received(self, event: Event) -> None:
        if type(event) is CmdSubmit:  # the common case first: this runs for every URB
            if event.seqnum in self._outstanding:
                raise RemoteProtocolError(
                    f"seqnum {event.seqnum} is already in flight",
                    field="seqnum",
                    value=event.seqnum,
                )
            self._outstanding[event.seqnum] = event
        elif isinstance(event, CmdUnlink):
            self._unlinks[event.seqnum] = event.unlink_seqnum

    def answer(self, request: CmdSubmit, status: int, actual_length: int, data: bytes) -> tuple[bytes, bytes]:
        """The RET_SUBMIT for a non-iso ``request``, as its header and its IN data (to be sent
        in that order): ``send(RetSubmit(...))`` without the event object and without copying
        the data behind the header, for the server's hot path. The same checks hold."""
        if self._outstanding.get(request.seqnum) is not request or self.state is not _URB:
            raise LocalProtocolError(
                f"no CMD_SUBMIT {request.seqnum} is waiting for an answer", field="seqnum", value=request.seqnum
            )
        _check_sizes(request, actual_length, data)
        if request.is_iso:
            raise LocalProtocolError("an iso request is answered with its packets", field="iso_packets", value=0)
        del self._outstanding[request.seqnum]
        header = codec.encode_ret_submit_header(
            request.seqnum, status, actual_length, request.start_frame, request.number_of_packets, 0
        )
        return header, data

    def fast_lane(self, complete: Immediate) -> FastLane:
        """A receiver for the URB phase that answers, straight from the bytes, the plain
        CMD_SUBMITs that ``complete`` finishes at once.

        The returned function takes newly received bytes (as :meth:`receive_data` does), a
        list and optionally the most commands to answer; it appends each RET_SUBMIT's header,
        and its IN data right behind it, to the list and returns how many it answered.

        It hands over to :meth:`next_event`, moving the rest into the buffer, at the first PDU
        that is not a CMD_SUBMIT passing every check of the full reader, at the first one for
        an endpoint with an earlier command still unanswered (each endpoint completes in
        order), and at the first one ``complete`` declines. It reads every command as a plain
        one: ``complete`` must decline isochronous endpoints (whose PDUs carry packet
        descriptors). What it has not answered otherwise (a command still arriving, or those
        past ``most``) it holds where the bytes arrived, for its next call; :attr:`held` counts
        them. No event object is made, nothing is looked up twice and a payload is copied
        once, which is what lets a Python server keep up with the wire.
        """
        if self.state is not _URB or self.devid is None:
            raise LocalProtocolError("the fast lane is for the URB phase", field="state", value=self.state.name)
        buffer = self._buffer  # the same object for the connection's life: it changes in place
        held = self._held  # likewise
        devid = self.devid
        max_transfer = self.max_transfer
        outstanding = self._outstanding
        unpack = codec.CMD_SUBMIT.unpack_from
        pack = codec.RET_SUBMIT_PLAIN.pack

        def run(source: bytes | bytearray, position: int, most: int, out: list[bytes]) -> tuple[int, bool]:
            """Answer the commands in ``source`` (the buffer, or the bytes at the front of
            ``held``) from ``position``: how many, and whether next_event must read on."""
            end = len(source)
            append = out.append
            answered = 0
            try:
                while end - position >= URB_HEADER_SIZE and answered < most:
                    (command, seqnum, cmd_devid, direction, ep, flags, length, start_frame, npackets, _, setup) = (
                        unpack(source, position)
                    )
                    if (
                        command != 1  # CMD_SUBMIT
                        or cmd_devid != devid
                        or direction > 1
                        or ep > 15
                        or not 0 <= length <= max_transfer
                        or seqnum in outstanding
                    ):
                        return answered, True  # next_event reads it, and names what is wrong
                    if ep == 0 and (setup[6] | setup[7] << 8 != length or (length and setup[0] >> 7 != direction)):
                        return answered, True  # a setup packet disagreeing with the URB: the same
                    if outstanding and _endpoint_busy(outstanding, ep, direction):
                        return answered, True  # an earlier command of its endpoint waits: behind it
                    if direction:
                        data_end = position + URB_HEADER_SIZE
                        result = complete(ep, direction, flags, length, setup, b"")
                    else:
                        data_end = position + URB_HEADER_SIZE + length
                        if data_end > end:
                            break  # its data has not all arrived
                        if not length:
                            out_data = b""
                        elif source is buffer:
                            # One copy out of the buffer (a bytearray slice would be a second).
                            out_data = bytes(memoryview(buffer)[position + URB_HEADER_SIZE : data_end])
                        else:
                            out_data = source[position + URB_HEADER_SIZE : data_end]  # type: ignore[assignment]
                        result = complete(ep, direction, flags, length, setup, out_data)
                    if result is None:
                        return answered, True
                    status, actual, reply = result
                    if actual > length or (len(reply) != actual if direction else reply):
                        _check_answer_sizes(length, direction, actual, reply)  # raises, naming what is wrong
                    append(pack(3, seqnum, status, actual, start_frame, npackets))  # RET_SUBMIT
                    if reply:
                        append(reply)
                    position = data_end
                    answered += 1
                return answered, False
            finally:
                # What was answered stays answered, even if a later answer is refused.
                if source is buffer:
                    self._position = position
                elif held and held[0][0] is source:
                    if position < end:
                        held[0] = (source, position)
                    else:
                        del held[0]
                elif position < end:
                    held.insert(0, (source, position))  # type: ignore[arg-type]

        def answer(data: bytes, out: list[bytes], most: int = MAX_BATCH) -> int:
            if self._error is not None:
                if data:
                    self.receive_data(data)
                return 0  # next_event raises it again
            if self._position != len(buffer):
                # next_event left bytes in the buffer (and so holds nothing): read on there.
                if data:
                    self.receive_data(data)
                answered, handover = run(buffer, self._position, most, out)
                if answered and not handover and self._position < len(buffer):
                    # What is left is the lane's (a command still arriving, or those past
                    # ``most``): hold it (one copy), so that the reads after it are answered
                    # where they land instead of being copied in behind it. (Not for a device
                    # that answers nothing here, a passthrough one: its commands go to
                    # next_event anyway, and would only be copied once more.)
                    held.append((bytes(memoryview(buffer)[self._position :]), 0))
                    self._position = len(buffer)
                return answered
            if not held:
                if not data:
                    return 0
                # The usual case: nothing held, so the new bytes are read where they are.
                answered, handover = run(data, 0, most, out)
                if handover or (held and answered < most and _gather(held, max_transfer) is None):
                    self._spill()  # next_event reads on from there, in order
                return answered
            if data:
                held.append((data, 0))
            answered = 0
            while held and answered < most:
                source = held[0][0]
                made, handover = run(source, held[0][1], most - answered, out)
                answered += made
                if handover:
                    self._spill()  # next_event reads on from there, in order
                    break
                if held and held[0][0] is source and answered < most:
                    # Stopped at a command whose bytes run on into the next chunks.
                    joined = _gather(held, max_transfer)
                    if joined is None:
                        self._spill()  # not one the lane answers (isochronous): next_event's
                        break
                    if not joined:
                        break  # wait for the rest
            return answered

        return answer

    def _sending(self, event: Event) -> None:
        if type(event) is RetSubmit:  # the common case first: this runs for every URB
            request = self._outstanding.get(event.seqnum)
            if request is None:
                raise LocalProtocolError(
                    f"no CMD_SUBMIT {event.seqnum} is waiting for an answer",
                    field="seqnum",
                    value=event.seqnum,
                )
            _check_answer(event, request)
            del self._outstanding[event.seqnum]
        elif isinstance(event, RetUnlink):
            target = self._unlinks.get(event.seqnum)
            if target is None:
                raise LocalProtocolError(
                    f"no CMD_UNLINK {event.seqnum} is waiting for an answer",
                    field="seqnum",
                    value=event.seqnum,
                )
            in_flight = target in self._outstanding
            if event.status == 0 and in_flight:
                # The client would complete its URB as a success with no data.
                raise LocalProtocolError(
                    f"RET_UNLINK status 0 while CMD_SUBMIT {target} is unanswered",
                    field="status",
                    value=event.status,
                )
            if event.status != 0 and not in_flight:
                raise LocalProtocolError(
                    f"CMD_SUBMIT {target} was already answered; RET_UNLINK status must be 0",
                    field="status",
                    value=event.status,
                )
            del self._unlinks[event.seqnum]
            self._outstanding.pop(target, None)
        elif isinstance(event, OpRepImport) and event.device is not None:
            self.devid = event.device.devid

    def cancelled(self, unlink_seqnum: int) -> RetUnlink:
        """The RET_UNLINK for a CMD_UNLINK whose target was cancelled before completing."""
        return RetUnlink(seqnum=unlink_seqnum, status=-Errno.ECONNRESET)


def _check_sizes(request: CmdSubmit, actual_length: int, data: bytes) -> None:
    _check_answer_sizes(request.transfer_buffer_length, request.direction, actual_length, data)


def _endpoint_busy(outstanding: dict[int, CmdSubmit], ep: int, direction: int) -> bool:
    """Whether a command for ``ep`` in ``direction`` is among ``outstanding`` (endpoint 0, the
    control pipe, is one queue for both directions)."""
    if ep == 0:
        return any(request.ep == 0 for request in outstanding.values())
    return any(request.ep == ep and request.direction == direction for request in outstanding.values())


def _check_answer_sizes(buffer_length: int, direction: int, actual_length: int, data: bytes) -> None:
    if actual_length > buffer_length:
        raise LocalProtocolError(
            f"actual_length={actual_length} exceeds the {buffer_length}-byte buffer",
            field="actual_length",
            value=actual_length,
        )
    if direction == _OUT and data:
        raise LocalProtocolError("an OUT transfer is answered without data", field="data", value=len(data))
    if direction == _IN and len(data) != actual_length:
        raise LocalProtocolError(
            f"{len(data)} IN bytes but actual_length={actual_length}",
            field="data",
            value=len(data),
        )


def _check_answer(ret: RetSubmit, request: CmdSubmit) -> None:
    _check_sizes(request, ret.actual_length, ret.data)
    if ret.iso_packets and sum(p.actual_length for p in ret.iso_packets) != ret.actual_length:
        raise LocalProtocolError(
            f"iso packets sum to {sum(p.actual_length for p in ret.iso_packets)} bytes, "
            f"actual_length={ret.actual_length}",
            field="actual_length",
            value=ret.actual_length,
        )
    if request.is_iso and ret.number_of_packets > request.number_of_packets:
        raise LocalProtocolError(
            f"{ret.number_of_packets} iso packets, {request.number_of_packets} were submitted",
            field="number_of_packets",
            value=ret.number_of_packets,
        )
    if request.is_iso != bool(ret.iso_packets):
        raise LocalProtocolError(
            "iso descriptors go exactly with iso requests",
            field="iso_packets",
            value=len(ret.iso_packets),
        )
    for packet in ret.iso_packets:
        if packet.offset + packet.length > request.transfer_buffer_length:
            raise LocalProtocolError(
                f"iso packet {packet.offset}+{packet.length} ends past the buffer",
                field="iso offset",
                value=packet.offset,
            )


class ClientConnection(Connection):
    """The importing side: sends requests and commands, reads replies."""

    role = Role.CLIENT

    def __init__(self) -> None:
        super().__init__()
        self._outstanding: dict[int, CmdSubmit] = {}
        self._unlinks: dict[int, int] = {}

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def _reader(self) -> Callable[[memoryview], codec.Read] | None:
        if self.state is State.DEVLIST_REPLY:
            return codec.read_op_rep_devlist
        if self.state is State.IMPORT_REPLY:
            return codec.read_op_rep_import
        if self.state is State.CHALLENGE_REPLY:
            return codec.read_op_rep_challenge
        if self.state is State.AUTH_REPLY:
            return codec.read_op_rep_auth
        if self.state is State.SESSION_REPLY:
            return codec.read_op_rep_session
        if self.state is State.RESUME_REPLY:
            return codec.read_op_rep_resume
        if self.state is _URB:
            return lambda buf: codec.read_ret(buf, self._outstanding.get)
        return None

    def _received(self, event: Event) -> None:
        if isinstance(event, RetSubmit):
            del self._outstanding[event.seqnum]
        elif isinstance(event, RetUnlink):
            target = self._unlinks.pop(event.seqnum, None)
            if target is not None and event.status != 0:
                # The URB ended by the unlink: no RET_SUBMIT will follow for it.
                self._outstanding.pop(target, None)

    def _sending(self, event: Event) -> None:
        if isinstance(event, CmdSubmit):
            if event.seqnum in self._outstanding or event.seqnum in self._unlinks:
                raise LocalProtocolError(f"seqnum {event.seqnum} is already in use", field="seqnum", value=event.seqnum)
            self._outstanding[event.seqnum] = event
        elif isinstance(event, CmdUnlink):
            self._unlinks[event.seqnum] = event.unlink_seqnum
