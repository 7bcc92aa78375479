"""Random and mutated byte streams against a live server: it answers or closes, and lives on.

Each example opens one fuzz connection and sends it bytes: either anything at all from the
first byte (OP phase), or, after a real import of the loopback device, a stream of valid
CMD_SUBMIT/CMD_UNLINK PDUs with bit flips, truncation, splices and overwritten fields. Then:

* while the fuzz connection is still open, a fresh client gets a DEVLIST answer;
* once the fuzz client half-closes, the server closes too, well within the socket timeout;
* the loopback device is released, and a fresh client imports it and moves data through it;
* nothing was logged at ERROR or above (an unexpected exception in the server or a device),
  and at most one WARNING, from ``usbwire.server``: the protocol error that ended the fuzz
  connection, if there was one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator
from typing import TypeAlias

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningServer, start_server, wait_released
from tests.raw import setup_packet
from tests.wire import WireClient, read_until_closed
from usbwire import Limits
from usbwire.protocol import CmdSubmit, CmdUnlink, Direction, OpStatus, RetSubmit, UrbFlag
from usbwire.protocol.codec import encode_cmd_submit, encode_cmd_unlink

LOOPBACK = "1-1"
LOOPBACK_DEVID = 0x0001_0002
TIMEOUT_S = 5.0  # every socket of this module; the server must answer or close well within it
MAX_STREAM = 4096  # bytes per fuzz connection: far below every buffer limit of the server

FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class WarningsAndErrors(logging.Handler):
    """Collects every record at WARNING or above, from any thread and any logger."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    """One server for all examples (a 64 KiB max_transfer, so mutated lengths hit it too)."""
    yield from start_server(Limits(max_transfer=65536))


@pytest.fixture(scope="module")
def logged() -> Iterator[WarningsAndErrors]:
    handler = WarningsAndErrors()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


# -- valid PDUs to start from -------------------------------------------------------------------


def op_devlist() -> bytes:
    return struct.pack(">HHI", 0x0111, 0x8005, 0)


def op_import(busid: bytes) -> bytes:
    return struct.pack(">HHI", 0x0111, 0x8003, 0) + busid.ljust(32, b"\0")[:32]


def control_in(seqnum: int, request_type: int, request: int, value: int, index: int, length: int) -> bytes:
    return encode_cmd_submit(
        CmdSubmit(
            seqnum=seqnum,
            devid=LOOPBACK_DEVID,
            direction=Direction.IN,
            ep=0,
            transfer_flags=UrbFlag.DIR_IN,
            transfer_buffer_length=length,
            setup=setup_packet(request_type, request, value, index, length),
        )
    )


def control_out(seqnum: int, request_type: int, request: int, value: int, index: int, data: bytes) -> bytes:
    return encode_cmd_submit(
        CmdSubmit(
            seqnum=seqnum,
            devid=LOOPBACK_DEVID,
            direction=Direction.OUT,
            ep=0,
            transfer_buffer_length=len(data),
            setup=setup_packet(request_type, request, value, index, len(data)),
            data=data,
        )
    )


def bulk_out(seqnum: int, data: bytes) -> bytes:
    return encode_cmd_submit(
        CmdSubmit(
            seqnum=seqnum,
            devid=LOOPBACK_DEVID,
            direction=Direction.OUT,
            ep=1,
            transfer_buffer_length=len(data),
            data=data,
        )
    )


def bulk_in(seqnum: int, length: int) -> bytes:
    return encode_cmd_submit(
        CmdSubmit(
            seqnum=seqnum,
            devid=LOOPBACK_DEVID,
            direction=Direction.IN,
            ep=1,
            transfer_flags=UrbFlag.DIR_IN,
            transfer_buffer_length=length,
        )
    )


def unlink(seqnum: int, target: int) -> bytes:
    return encode_cmd_unlink(CmdUnlink(seqnum=seqnum, devid=LOOPBACK_DEVID, unlink_seqnum=target))


# A PDU given its seqnum, as a strategy: what a driver of the loopback device would send.
Pdu: TypeAlias = Callable[[int], bytes]

PDUS: st.SearchStrategy[Pdu] = st.one_of(
    st.just(lambda seqnum: control_out(seqnum, 0x00, 9, 1, 0, b"")),  # SET_CONFIGURATION 1
    st.just(lambda seqnum: control_in(seqnum, 0x80, 6, 0x0100, 0, 18)),  # device descriptor
    st.just(lambda seqnum: control_in(seqnum, 0x80, 6, 0x0200, 0, 255)),  # configuration
    st.just(lambda seqnum: control_in(seqnum, 0x80, 6, 0x0302, 0x0409, 255)),  # a string
    st.just(lambda seqnum: control_in(seqnum, 0x82, 0, 0, 0x81, 2)),  # GET_STATUS(ep 0x81)
    st.just(lambda seqnum: control_out(seqnum, 0x02, 1, 0, 0x81, b"")),  # CLEAR_FEATURE(HALT)
    st.binary(max_size=64).map(lambda data: lambda seqnum: control_out(seqnum, 0x40, 1, 0, 0, data)),
    st.integers(0, 64).map(lambda length: lambda seqnum: control_in(seqnum, 0xC0, 2, 0, 0, length)),
    st.binary(max_size=512).map(lambda data: lambda seqnum: bulk_out(seqnum, data)),
    st.integers(0, 1024).map(lambda length: lambda seqnum: bulk_in(seqnum, length)),
    st.integers(1, 40).map(lambda back: lambda seqnum: unlink(seqnum, max(1, seqnum - back))),
)


@st.composite
def urb_streams(draw: st.DrawFn) -> bytes:
    """CMD_SUBMIT/CMD_UNLINK PDUs a well-behaved client could send, seqnums from 1."""
    pdus = draw(st.lists(PDUS, max_size=12))
    return b"".join(pdu(seqnum) for seqnum, pdu in enumerate(pdus, start=1))


# -- mutations ----------------------------------------------------------------------------------

# Values that sit on the server's boundaries when they land in a length, count or id field.
INTERESTING_U32 = [
    *[0, 1, 2, 3, 4, 5, 15, 16, 48],  # commands, directions, endpoints, the header size
    *[1024, 1025, 65536, 65537],  # the iso packet limit, max_transfer, and one past each
    *[LOOPBACK_DEVID, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF],  # the devid, sign boundaries
]


@st.composite
def mutated(draw: st.DrawFn, streams: st.SearchStrategy[bytes]) -> bytes:
    """``streams`` after a few bit flips, truncations, splices, deletions and overwrites."""
    data = bytearray(draw(streams))
    for kind in draw(st.lists(st.sampled_from(["flip", "cut", "splice", "delete", "u32", "insert"]), max_size=4)):
        size = len(data)
        if kind == "flip" and size:
            bit = draw(st.integers(0, size * 8 - 1))
            data[bit // 8] ^= 1 << (bit % 8)
        elif kind == "cut" and size:
            del data[draw(st.integers(0, size - 1)) :]
        elif kind == "splice" and size:
            start = draw(st.integers(0, size - 1))
            piece = data[start : start + draw(st.integers(1, 96))]
            at = draw(st.integers(0, size))
            data[at:at] = piece
        elif kind == "delete" and size:
            start = draw(st.integers(0, size - 1))
            del data[start : start + draw(st.integers(1, 48))]
        elif kind == "u32" and size >= 4:
            # Header fields are 4-byte aligned, at least up to the first odd-sized payload.
            at = draw(st.integers(0, (size - 4) // 4)) * 4
            data[at : at + 4] = draw(st.sampled_from(INTERESTING_U32)).to_bytes(4, "big")
        elif kind == "insert":
            at = draw(st.integers(0, size))
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data[:MAX_STREAM])


OP_STREAMS = st.one_of(
    st.binary(max_size=512),
    mutated(st.just(op_devlist())),
    mutated(st.builds(op_import, st.sampled_from([LOOPBACK.encode(), b"9-9", b""]))),
    mutated(st.builds(lambda stream: op_import(LOOPBACK.encode()) + stream, urb_streams())),
)


# -- one example --------------------------------------------------------------------------------


def fuzz_connection(server: RunningServer, logged: WarningsAndErrors, stream: bytes, *, imported: bool) -> None:
    logged.records.clear()
    with WireClient(server.port) as client:
        fuzz = client.sock
        fuzz.settimeout(TIMEOUT_S)
        if imported:
            assert client.import_(LOOPBACK).status == OpStatus.OK
        # The server may drop us before we are done: a fine answer to garbage.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            fuzz.sendall(stream)
        # Whatever the fuzz connection is up to, it must not block the server for others.
        with WireClient(server.port) as lister:
            lister.sock.settimeout(TIMEOUT_S)
            lister.devlist()
        with contextlib.suppress(OSError):  # already reset by the server
            fuzz.shutdown(socket.SHUT_WR)
        read_until_closed(fuzz)  # raises TimeoutError if the server neither answers nor closes
    assert_serves_the_loopback(server)
    assert_logged_at_most_one_protocol_error(logged)


def assert_serves_the_loopback(server: RunningServer) -> None:
    wait_released(server, LOOPBACK, timeout_s=TIMEOUT_S)
    with WireClient(server.port) as lister:
        lister.sock.settimeout(TIMEOUT_S)
        assert LOOPBACK in {device.busid for device in lister.devlist()}
    with WireClient(server.port) as client:
        client.sock.settimeout(TIMEOUT_S)
        assert client.import_(LOOPBACK).status == OpStatus.OK
        configure = client.control_out(0x00, 9, 1, 0)
        reply = client.read_event()
        assert isinstance(reply, RetSubmit) and (reply.seqnum, reply.status) == (configure, 0)
        payload = os.urandom(32)
        client.submit(ep=1, direction=Direction.OUT, data=payload)
        client.submit(ep=1, direction=Direction.IN, length=len(payload))
        _, back = client.read_event(), client.read_event()
        assert isinstance(back, RetSubmit) and back.data == payload
    wait_released(server, LOOPBACK, timeout_s=TIMEOUT_S)


def assert_logged_at_most_one_protocol_error(logged: WarningsAndErrors) -> None:
    records = [(r.name, r.levelname, r.getMessage()) for r in logged.records]
    assert all(level == "WARNING" and name == "usbwire.server" for name, level, _ in records), records
    assert len(records) <= 1, records


# -- the properties -----------------------------------------------------------------------------


@FUZZ_SETTINGS
@given(stream=OP_STREAMS)
def test_any_bytes_from_the_first_byte_are_answered_or_closed_and_the_server_lives_on(
    server: RunningServer, logged: WarningsAndErrors, stream: bytes
) -> None:
    fuzz_connection(server, logged, stream, imported=False)


@FUZZ_SETTINGS
@given(stream=mutated(urb_streams()))
def test_mutated_urb_streams_after_import_are_answered_or_closed_and_the_server_lives_on(
    server: RunningServer, logged: WarningsAndErrors, stream: bytes
) -> None:
    fuzz_connection(server, logged, stream, imported=True)
