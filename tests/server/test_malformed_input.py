"""Malformed input from one client: what the server answers, what it logs, who keeps working.

Every row of the table below is one bad client. Each row names what the client did first
(nothing, or imported a device), the bytes it then sent, and the outcome the server owes it:

* ``Dropped``: a protocol error. The server sends nothing more, closes the connection and logs
  exactly one WARNING naming the problem (USB/IP reference §3.13: errors that end the
  connection).
* ``Refused``: OP_REP_IMPORT with an error status, then close. Not a protocol error: no warning.
* ``Listed``: OP_REP_DEVLIST, then close. The server serves one OP request per connection, as
  usbipd does, and never reads what follows it.
* ``Answered``: the device refuses the request (RET_SUBMIT ``-EPIPE``, a stall), or an UNLINK
  finds nothing (RET_UNLINK 0). The connection stays up, and no warning is logged.
* ``Released``: the client vanished; the device it held is free and importable again.

Whatever the row, another client that imported a second loopback device before the bad one
connected still moves data afterwards, and a device the bad client imported is released and
works for the next importer.

The tests after the table cover what one row cannot: an UNLINK repeated for a URB being
cancelled, a device whose close() is slow, and a client vanishing while the server has stopped
reading from it (its in-flight limit reached).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import (
    RunningServer,
    start_server,
    wait_connections,
    wait_released,
    wait_until,
)
from tests.raw import op_header, setup_packet
from tests.raw import urb_header as any_urb_header
from tests.wire import WireClient, read_until_closed
from usbwire import Limits
from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.base import Device
from usbwire.devices.descriptors import Configuration, DeviceDescriptor, Endpoint, Interface
from usbwire.devices.loopback import Loopback
from usbwire.protocol import (
    ClientConnection,
    Command,
    ConnectionClosed,
    Direction,
    Errno,
    OpRepDevlist,
    OpRepImport,
    OpReqDevlist,
    OpReqImport,
    OpStatus,
    RetSubmit,
    RetUnlink,
    Speed,
    TransferType,
)

LOOPBACK = "1-1"  # the demo loopback device: bus 1, device 2
LOOPBACK_DEVID = 0x0001_0002
urb_header = functools.partial(any_urb_header, devid=LOOPBACK_DEVID, ep=0)
LIVE = "2-1"  # a second loopback device, held by the well-behaved client
ISO = "3-1"  # a device with one isochronous IN endpoint
ISO_DEVID = 0x0003_0002
ISO_EP = 2
SLOW = "4-1"  # a loopback device whose close() takes a while
MAX_TRANSFER = 4096  # the server's Limits.max_transfer in this module

GET_STATUS = 0
SET_DESCRIPTOR = 7
GET_DESCRIPTOR = 6
SET_CONFIGURATION = 9
SYNCH_FRAME = 12
CLEAR_FEATURE = 1
DESCRIPTOR_STRING = 3
VENDOR_IN = 0xC0


# -- the devices ------------------------------------------------------------------------------


def iso_device() -> Device:
    """One interface with one isochronous IN endpoint: CMD_SUBMITs to it carry descriptors."""
    endpoint = Endpoint(ISO_EP, Direction.IN, TransferType.ISOCHRONOUS, 1024, interval=1)
    interface = Interface(number=0, interface_class=0xFF, endpoints=(endpoint,))
    descriptor = DeviceDescriptor(
        vendor_id=0x1209,
        product_id=0x0002,
        configurations=(Configuration(value=1, interfaces=(interface,)),),
    )
    return Device(descriptor, Speed.HIGH)


@pytest.fixture
def server() -> Iterator[RunningServer]:
    """The demo server with a small max_transfer, a second loopback and an iso device."""
    yield from start_server(
        Limits(max_transfer=MAX_TRANSFER),
        extra_exports=[
            EmulatedExport(Loopback(), busid=LIVE, busnum=2, devnum=2),
            EmulatedExport(iso_device(), busid=ISO, busnum=3, devnum=2),
        ],
    )


@pytest.fixture
def live(server: RunningServer) -> Iterator[WireClient]:
    """A client that imported LIVE and moved data before any bad client connected."""
    with WireClient(server.port) as client:
        assert client.import_(LIVE).status == OpStatus.OK
        configure(client)
        assert_loopback_round_trip(client)
        yield client


def configure(client: WireClient) -> None:
    seqnum = client.control_out(0x00, SET_CONFIGURATION, 1, 0)
    reply = client.read_event()
    assert isinstance(reply, RetSubmit) and reply.seqnum == seqnum and reply.status == 0


def assert_loopback_round_trip(client: WireClient) -> None:
    payload = os.urandom(64)
    out = client.submit(ep=1, direction=Direction.OUT, data=payload)
    back = client.submit(ep=1, direction=Direction.IN, length=len(payload))
    first, second = client.read_event(), client.read_event()
    assert isinstance(first, RetSubmit) and (first.seqnum, first.status) == (out, 0)
    assert isinstance(second, RetSubmit) and (second.seqnum, second.status) == (back, 0)
    assert second.data == payload


def assert_importable(server: RunningServer, busid: str) -> None:
    """A fresh client imports ``busid``; a loopback device also moves data."""
    with WireClient(server.port) as client:
        assert client.import_(busid).status == OpStatus.OK
        configure(client)
        if busid == LOOPBACK:
            assert_loopback_round_trip(client)


# -- raw PDUs, built field by field so that they can be wrong -----------------------------------


def busid_field(raw: bytes) -> bytes:
    """The 32-byte busid of OP_REQ_IMPORT, NUL-padded (``raw`` may fill it all)."""
    return raw.ljust(32, b"\0")


def waiting_bulk_in(*, seqnum: int) -> bytes:
    """CMD_SUBMIT of a bulk IN on endpoint 1; it waits, since nothing was sent to the loopback."""
    return urb_header(Command.CMD_SUBMIT, seqnum=seqnum, direction=Direction.IN, ep=1, transfer_buffer_length=64)


def unlink_header(*, seqnum: int = 2, devid: int = LOOPBACK_DEVID, unlink_seqnum: int = 1) -> bytes:
    """A 48-byte CMD_UNLINK (USB/IP reference §3.4)."""
    return struct.pack(">IIIIII24x", Command.CMD_UNLINK, seqnum, devid, 0, 0, unlink_seqnum)


# -- what the bad client does -----------------------------------------------------------------


@dataclass(frozen=True)
class Fresh:
    """The bad client is connected and has sent nothing yet."""


@dataclass(frozen=True)
class Imported:
    """The bad client imported ``busid`` (and sent SET_CONFIGURATION 1 if ``configured``)."""

    busid: str = LOOPBACK
    configured: bool = False


FRESH = Fresh()
IMPORTED = Imported()
CONFIGURED = Imported(configured=True)
ISO_CONFIGURED = Imported(ISO, configured=True)

# Sends the bad input; returns the seqnum whose answer is expected, if any.
Action = Callable[[WireClient], int | None]


class Then(enum.Enum):
    WAIT = "keep the connection open"
    SHUT_WR = "half-close: the server sees EOF, the client can still read"
    CLOSE = "close the socket: the client is gone"


def send(data: bytes, then: Then = Then.WAIT) -> Action:
    def action(client: WireClient) -> None:
        client.sock.sendall(data)
        if then is Then.SHUT_WR:
            client.sock.shutdown(socket.SHUT_WR)
        elif then is Then.CLOSE:
            client.sock.close()

    return action


def vanish_with_bulk_in_pending(client: WireClient) -> None:
    client.submit(ep=1, direction=Direction.IN, length=64)
    # The control reply proves the server took the bulk IN, which now waits for data.
    probe = client.control_in(0x80, GET_DESCRIPTOR, 0x0100, 0, 18)
    reply = client.read_event()
    assert isinstance(reply, RetSubmit) and reply.seqnum == probe
    client.sock.close()


def vanish(client: WireClient) -> None:
    client.sock.close()


# -- what the server owes it ------------------------------------------------------------------


@dataclass(frozen=True)
class Dropped:
    """Protocol error: no reply, the connection is closed, one WARNING containing ``warning``."""

    warning: str

    def check(self, client: WireClient, seqnum: int | None) -> None:
        assert read_until_closed(client.sock) == b""


@dataclass(frozen=True)
class Refused:
    """OP_REP_IMPORT with ``status`` and nothing more; the server closes."""

    status: OpStatus
    warning: None = None

    def check(self, client: WireClient, seqnum: int | None) -> None:
        reader = ClientConnection()
        reader.send(OpReqImport(busid="any"))
        reader.receive_data(read_until_closed(client.sock))
        reader.receive_data(b"")
        assert reader.next_event() == OpRepImport(status=self.status)
        assert reader.next_event() == ConnectionClosed()


@dataclass(frozen=True)
class Listed:
    """OP_REP_DEVLIST (without the held LIVE device) and nothing more; the server closes."""

    warning: None = None

    def check(self, client: WireClient, seqnum: int | None) -> None:
        reader = ClientConnection()
        reader.send(OpReqDevlist())
        reader.receive_data(read_until_closed(client.sock))
        reader.receive_data(b"")
        reply = reader.next_event()
        assert isinstance(reply, OpRepDevlist)
        listed = {device.busid for device in reply.devices}
        assert {LOOPBACK, ISO} <= listed and LIVE not in listed
        assert reader.next_event() == ConnectionClosed()


@dataclass(frozen=True)
class Answered:
    """RET_SUBMIT or RET_UNLINK with ``status`` for the request; the connection stays up."""

    reply: type[RetSubmit] | type[RetUnlink]
    status: int
    warning: None = None

    def check(self, client: WireClient, seqnum: int | None) -> None:
        reply = client.read_event()
        assert isinstance(reply, self.reply)
        assert (reply.seqnum, reply.status) == (seqnum, self.status)
        probe = client.control_in(0x80, GET_DESCRIPTOR, 0x0100, 0, 18)
        after = client.read_event()
        assert isinstance(after, RetSubmit)
        assert (after.seqnum, after.status, after.actual_length) == (probe, 0, 18)


@dataclass(frozen=True)
class Released:
    """The client vanished; one WARNING containing ``warning`` if it left inside a PDU."""

    warning: str | None = None

    def check(self, client: WireClient, seqnum: int | None) -> None:
        """Nothing to read: the socket is gone. The common checks wait for the release."""


Outcome = Dropped | Refused | Listed | Answered | Released

STALL = -Errno.EPIPE

CASES = [
    # -- management phase: the op_common header ----------------------------------------------
    pytest.param(
        FRESH,
        send(op_header(version=0x0110)),
        Dropped("version 0x0110, expected 0x0111"),
        id="op-version-0x0110",
    ),
    pytest.param(
        FRESH,
        send(op_header(version=0x0000) + bytes(8)),
        Dropped("version 0x0000, expected 0x0111"),
        id="op-version-zero",
    ),
    pytest.param(
        FRESH,
        send(b"GET / HTTP/1.1\r\nHost: usbip\r\n\r\n"),
        Dropped("version 0x4745, expected 0x0111"),
        id="http-request-on-the-usbip-port",
    ),
    pytest.param(
        FRESH,
        send(op_header(code=0x8002)),  # OP_REQ_DEVINFO: defined, never implemented by usbipd
        Dropped("op code 0x8002"),
        id="op-code-devinfo-unsupported",
    ),
    pytest.param(
        FRESH,
        send(op_header(code=0x0005)),  # OP_REP_DEVLIST: a reply code sent as a request
        Dropped("op code 0x0005"),
        id="op-code-of-a-reply",
    ),
    pytest.param(
        FRESH,
        send(op_header(code=0xFFFF)),
        Dropped("op code 0xffff"),
        id="op-code-0xffff",
    ),
    pytest.param(
        FRESH,
        send(op_header(code=0x8005, status=1)),
        Dropped("request status 1, must be 0"),
        id="op-request-with-nonzero-status",
    ),
    pytest.param(
        FRESH,
        send(op_header()[:5], then=Then.SHUT_WR),
        Dropped("connection closed inside a PDU (5 bytes of it arrived)"),
        id="op-header-truncated-then-eof",
    ),
    # -- management phase: OP_REQ_IMPORT's busid -----------------------------------------------
    pytest.param(
        FRESH,
        send(op_header(code=0x8003) + b"1-1\0\0\0", then=Then.SHUT_WR),
        Dropped("connection closed inside a PDU (14 bytes of it arrived)"),
        id="import-busid-truncated-then-eof",
    ),
    pytest.param(
        FRESH,
        send(op_header(code=0x8003) + b"1-1" + b"x" * 29),  # 32 bytes, no NUL terminator
        Dropped("does not fit 31 bytes"),
        id="import-busid-not-nul-terminated",
    ),
    pytest.param(
        FRESH,
        send(op_header(code=0x8003) + busid_field(b"\xff\xfe-1")),
        Dropped("busid is not UTF-8"),
        id="import-busid-not-utf8",
    ),
    pytest.param(
        FRESH,
        send(op_header(code=0x8003) + busid_field(b"9-9")),
        Refused(OpStatus.NODEV),
        id="import-unknown-busid",
    ),
    pytest.param(
        FRESH,
        send(op_header(code=0x8003) + busid_field(b"")),
        Refused(OpStatus.NODEV),
        id="import-empty-busid",
    ),
    pytest.param(
        FRESH,
        send(op_header(code=0x8003) + busid_field(LIVE.encode())),
        Refused(OpStatus.DEV_BUSY),
        id="import-of-a-held-device",
    ),
    pytest.param(
        FRESH,
        send(op_header(code=0x8003) + busid_field(b"9-9") + op_header(code=0x8005)),
        Refused(OpStatus.NODEV),
        id="refused-import-followed-by-devlist",
    ),
    # -- management phase: one request per connection ------------------------------------------
    pytest.param(
        FRESH,
        send(op_header(code=0x8005) + op_header(code=0x8005)),
        Listed(),
        id="second-devlist-on-a-devlist-connection",
    ),
    pytest.param(
        FRESH,
        send(op_header(code=0x8005) + op_header(code=0x8003) + busid_field(LOOPBACK.encode())),
        Listed(),
        id="import-on-a-devlist-connection",
    ),
    pytest.param(
        FRESH,
        send(op_header(code=0x8005) + os.urandom(200)),
        Listed(),
        id="garbage-after-devlist-request",
    ),
    # -- URB PDUs before an import ---------------------------------------------------------------
    pytest.param(
        FRESH,
        send(urb_header(Command.CMD_SUBMIT)),
        Dropped("version 0x0000, expected 0x0111"),
        id="cmd-submit-before-import",
    ),
    pytest.param(
        FRESH,
        send(unlink_header()),
        Dropped("version 0x0000, expected 0x0111"),
        id="cmd-unlink-before-import",
    ),
    # -- URB phase: the command word -------------------------------------------------------------
    pytest.param(
        IMPORTED,
        send(urb_header(0)),
        Dropped("unknown or unexpected command 0"),
        id="urb-command-0",
    ),
    pytest.param(
        IMPORTED,
        send(urb_header(Command.RET_SUBMIT)),  # a server-only PDU
        Dropped("unknown or unexpected command 3"),
        id="urb-command-ret-submit-from-client",
    ),
    pytest.param(
        IMPORTED,
        send(urb_header(Command.RET_UNLINK)),  # a server-only PDU
        Dropped("unknown or unexpected command 4"),
        id="urb-command-ret-unlink-from-client",
    ),
    pytest.param(
        IMPORTED,
        send(urb_header(5)),
        Dropped("unknown or unexpected command 5"),
        id="urb-command-5",
    ),
    pytest.param(
        IMPORTED,
        send(urb_header(0xFFFF_FFFF)),
        Dropped("unknown or unexpected command 4294967295"),
        id="urb-command-0xffffffff",
    ),
    pytest.param(
        IMPORTED,
        send(op_header(code=0x8005) + bytes(40)),  # command word 0x01118005
        Dropped("unknown or unexpected command 17924101"),
        id="op-request-after-import",
    ),
    pytest.param(
        IMPORTED,
        send(urb_header(Command.CMD_SUBMIT)[:20], then=Then.SHUT_WR),
        Dropped("connection closed inside a PDU (20 bytes of it arrived)"),
        id="urb-header-truncated-then-eof",
    ),
    # -- URB phase: CMD_SUBMIT header fields -----------------------------------------------------
    pytest.param(
        IMPORTED,
        send(urb_header(Command.CMD_SUBMIT, devid=0x0001_0003)),
        Dropped("devid=0x00010003, the imported device is 0x00010002"),
        id="submit-with-wrong-devid",
    ),
    pytest.param(
        IMPORTED,
        send(unlink_header(devid=0)),
        Dropped("devid=0x00000000, the imported device is 0x00010002"),
        id="unlink-with-wrong-devid",
    ),
    pytest.param(
        CONFIGURED,
        send(urb_header(Command.CMD_SUBMIT, direction=2, ep=1)),
        Dropped("direction=2"),
        id="submit-direction-2",
    ),
    pytest.param(
        CONFIGURED,
        send(urb_header(Command.CMD_SUBMIT, direction=Direction.IN, ep=16)),
        Dropped("ep=16"),
        id="submit-ep-16",
    ),
    pytest.param(
        CONFIGURED,
        send(urb_header(Command.CMD_SUBMIT, ep=1, transfer_buffer_length=-1)),
        Dropped("transfer_buffer_length=-1"),
        id="submit-negative-transfer-buffer-length",
    ),
    pytest.param(
        CONFIGURED,
        # Refused from the header alone: the server never buffers the announced bytes.
        send(urb_header(Command.CMD_SUBMIT, ep=1, transfer_buffer_length=MAX_TRANSFER + 1)),
        Dropped(f"transfer_buffer_length=4097 exceeds the limit {MAX_TRANSFER}"),
        id="submit-out-length-above-max-transfer",
    ),
    pytest.param(
        CONFIGURED,
        send(
            urb_header(
                Command.CMD_SUBMIT,
                direction=Direction.IN,
                ep=1,
                transfer_buffer_length=0x7FFF_FFFF,
            )
        ),
        Dropped(f"transfer_buffer_length=2147483647 exceeds the limit {MAX_TRANSFER}"),
        id="submit-in-length-above-max-transfer",
    ),
    pytest.param(
        CONFIGURED,
        send(
            urb_header(Command.CMD_SUBMIT, ep=1, transfer_buffer_length=100) + bytes(10),
            then=Then.SHUT_WR,
        ),
        Dropped("connection closed inside a PDU (58 bytes of it arrived)"),
        id="submit-out-data-shorter-than-announced-then-eof",
    ),
    pytest.param(
        CONFIGURED,
        send(waiting_bulk_in(seqnum=5) + waiting_bulk_in(seqnum=5)),
        Dropped("seqnum 5 is already in flight"),
        id="submit-duplicate-in-flight-seqnum",
    ),
    pytest.param(
        CONFIGURED,
        send(
            waiting_bulk_in(seqnum=1)
            + waiting_bulk_in(seqnum=2)  # queued behind 1 on the same endpoint
            + unlink_header(seqnum=50, unlink_seqnum=1)
            + unlink_header(seqnum=50, unlink_seqnum=2)
        ),
        Dropped("CMD_UNLINK seqnum 50 is already in flight"),
        id="unlink-duplicate-in-flight-seqnum",
    ),
    # -- URB phase: control transfers whose header contradicts the SETUP packet ------------------
    pytest.param(
        IMPORTED,
        send(
            urb_header(
                Command.CMD_SUBMIT,
                direction=Direction.IN,
                transfer_buffer_length=18,
                setup=setup_packet(0x80, GET_DESCRIPTOR, 0x0100, 0, 64),
            )
        ),
        Dropped("transfer_buffer_length=18 differs from wLength=64"),
        id="control-wlength-differs-from-transfer-buffer-length",
    ),
    pytest.param(
        IMPORTED,
        send(
            urb_header(
                Command.CMD_SUBMIT,
                direction=Direction.OUT,
                transfer_buffer_length=4,
                setup=setup_packet(0x80, GET_DESCRIPTOR, 0x0100, 0, 4),
            )
            + bytes(4)
        ),
        Dropped("direction disagrees with bmRequestType"),
        id="control-direction-disagrees-with-setup",
    ),
    # -- URB phase: isochronous descriptors ------------------------------------------------------
    pytest.param(
        ISO_CONFIGURED,
        send(
            urb_header(
                Command.CMD_SUBMIT,
                devid=ISO_DEVID,
                direction=Direction.IN,
                ep=ISO_EP,
                transfer_buffer_length=1024,
                number_of_packets=1025,
                interval=1,
            )
        ),
        Dropped("number_of_packets=1025 outside 0..1024"),
        id="iso-number-of-packets-1025",
    ),
    pytest.param(
        ISO_CONFIGURED,
        send(
            urb_header(
                Command.CMD_SUBMIT,
                devid=ISO_DEVID,
                direction=Direction.IN,
                ep=ISO_EP,
                transfer_buffer_length=1024,
                number_of_packets=-1,
                interval=1,
            )
        ),
        Dropped("number_of_packets=-1 outside 0..1024"),
        id="iso-number-of-packets-negative",
    ),
    # -- requests the device refuses: answered, the connection stays ----------------------------
    pytest.param(
        IMPORTED,
        lambda client: client.unlink(999),
        Answered(RetUnlink, 0),
        id="unlink-of-unknown-seqnum",
    ),
    pytest.param(
        CONFIGURED,
        lambda client: client.submit(ep=2, direction=Direction.OUT, data=b"ping"),
        Answered(RetSubmit, STALL),
        id="bulk-out-to-endpoint-not-in-configuration",
    ),
    pytest.param(
        CONFIGURED,
        lambda client: client.submit(ep=15, direction=Direction.IN, length=64),
        Answered(RetSubmit, STALL),
        id="bulk-in-from-endpoint-not-in-configuration",
    ),
    pytest.param(
        IMPORTED,
        lambda client: client.submit(ep=1, direction=Direction.OUT, data=b"ping"),
        Answered(RetSubmit, STALL),
        id="bulk-out-before-set-configuration",
    ),
    pytest.param(
        IMPORTED,
        lambda client: client.control_out(0x00, SET_CONFIGURATION, 7, 0),
        Answered(RetSubmit, STALL),
        id="set-configuration-that-does-not-exist",
    ),
    pytest.param(
        CONFIGURED,
        lambda client: client.control_in(0x82, SYNCH_FRAME, 0, 0x81, 2),
        Answered(RetSubmit, STALL),
        id="unsupported-standard-request-synch-frame",
    ),
    pytest.param(
        IMPORTED,
        lambda client: client.control_out(0x00, SET_DESCRIPTOR, 0x0100, 0, bytes(18)),
        Answered(RetSubmit, STALL),
        id="unsupported-standard-request-set-descriptor",
    ),
    pytest.param(
        IMPORTED,
        lambda client: client.control_in(0x80, GET_DESCRIPTOR, DESCRIPTOR_STRING << 8 | 0x42, 0x0409, 255),
        Answered(RetSubmit, STALL),
        id="get-descriptor-of-missing-string-index",
    ),
    pytest.param(
        IMPORTED,
        lambda client: client.control_in(0x80, GET_DESCRIPTOR, 0x4200, 0, 64),
        Answered(RetSubmit, STALL),
        id="get-descriptor-of-unknown-type",
    ),
    pytest.param(
        CONFIGURED,
        lambda client: client.control_in(0x81, GET_STATUS, 0, 5, 2),
        Answered(RetSubmit, STALL),
        id="get-status-of-missing-interface",
    ),
    pytest.param(
        CONFIGURED,
        lambda client: client.control_out(0x02, CLEAR_FEATURE, 0, 0x83),
        Answered(RetSubmit, STALL),
        id="clear-halt-of-missing-endpoint",
    ),
    pytest.param(
        IMPORTED,
        lambda client: client.control_in(VENDOR_IN, 0x55, 0, 0, 8),
        Answered(RetSubmit, STALL),
        id="unsupported-vendor-request",
    ),
    # -- clients that vanish ---------------------------------------------------------------------
    pytest.param(
        CONFIGURED,
        send(urb_header(Command.CMD_SUBMIT, ep=1, transfer_buffer_length=512), then=Then.CLOSE),
        Released("connection closed inside a PDU (48 bytes of it arrived)"),
        id="client-vanishes-mid-pdu",
    ),
    pytest.param(
        CONFIGURED,
        vanish_with_bulk_in_pending,
        Released(),
        id="client-vanishes-with-bulk-in-pending",
    ),
    pytest.param(
        IMPORTED,
        vanish,
        Released(),
        id="client-vanishes-right-after-import",
    ),
]


def warnings(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(("before", "action", "outcome"), CASES)
def test_malformed_input_is_refused_and_other_clients_keep_working(
    server: RunningServer,
    live: WireClient,
    caplog: pytest.LogCaptureFixture,
    *,
    before: Fresh | Imported,
    action: Action,
    outcome: Outcome,
) -> None:
    with WireClient(server.port) as bad:
        if isinstance(before, Imported):
            assert bad.import_(before.busid).status == OpStatus.OK
            if before.configured:
                configure(bad)
        seqnum = action(bad)
        outcome.check(bad, seqnum)

    if isinstance(before, Imported):
        wait_released(server, before.busid)
        assert_importable(server, before.busid)
    wait_connections(server, 1)  # only the live client is left
    assert_loopback_round_trip(live)
    logged = warnings(caplog)
    if outcome.warning is None:
        assert logged == []
    else:
        ((logger, message),) = logged
        assert logger == "usbwire.server"
        assert outcome.warning in message


def test_second_unlink_of_a_urb_being_cancelled_is_answered_zero_after_the_first(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with WireClient(server.port) as client:
        assert client.import_(LOOPBACK).status == OpStatus.OK
        configure(client)
        pending = client.submit(ep=1, direction=Direction.IN, length=64)
        first = client.unlink(pending)
        second = client.unlink(pending)
        # Like the Linux stub, which relabels the URB with the first unlink's seqnum and so
        # no longer finds it for the second: the URB ends once, each unlink gets an answer.
        assert client.read_event() == RetUnlink(seqnum=first, status=-Errno.ECONNRESET)
        assert client.read_event() == RetUnlink(seqnum=second, status=0)
        assert_loopback_round_trip(client)
    assert warnings(caplog) == []


class SlowToClose(Loopback):
    """A loopback whose close() (a storage flush, say) lasts until the test lets it end."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False
        self.may_finish = asyncio.Event()

    async def close(self) -> None:
        self.closing = True
        await self.may_finish.wait()


def test_an_import_while_the_last_one_is_closing_waits_for_the_close_then_is_served(
    server: RunningServer,
) -> None:
    device = SlowToClose()
    server.export(EmulatedExport(device, busid=SLOW, busnum=4, devnum=2))
    try:
        with WireClient(server.port) as first:
            assert first.import_(SLOW).status == OpStatus.OK
            configure(first)
        wait_until(lambda: server.call(lambda: device.closing), "close() to start")
        # The reset that ends close() would undo the configuration of an early importer: the
        # import is answered once close() is over, as `usbip detach; usbip attach` expects.
        with WireClient(server.port) as second:
            second.sock.sendall(second.conn.send(OpReqImport(busid=SLOW)))
            second.sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                second.sock.recv(1, socket.MSG_PEEK)  # no answer while the device closes
            second.sock.settimeout(10)
            server.call(device.may_finish.set)
            reply = second.read_event()
            assert isinstance(reply, OpRepImport) and reply.status == OpStatus.OK
            second.device = reply.device
            configure(second)
            assert_loopback_round_trip(second)
    finally:
        server.call(device.may_finish.set)


@pytest.fixture
def impatient_server() -> Iterator[RunningServer]:
    """The demo server, giving each connection half a second to have its request answered."""
    yield from start_server(Limits(request_timeout=0.5))


def test_an_import_waiting_for_a_device_that_never_finishes_closing_is_told_it_is_busy(
    impatient_server: RunningServer,
) -> None:
    server = impatient_server
    device = SlowToClose()
    server.export(EmulatedExport(device, busid=SLOW, busnum=4, devnum=2))
    try:
        with WireClient(server.port) as first:
            assert first.import_(SLOW).status == OpStatus.OK
        wait_until(lambda: server.call(lambda: device.closing), "close() to start")
        with WireClient(server.port) as second:
            assert second.import_(SLOW).status == OpStatus.DEV_BUSY
    finally:
        server.call(device.may_finish.set)
    wait_released(server, SLOW)
    with WireClient(server.port) as third:
        assert third.import_(SLOW).status == OpStatus.OK


@pytest.fixture
def narrow_server() -> Iterator[RunningServer]:
    """The demo server, reading no new requests while 4 URBs of a connection are unanswered."""
    yield from start_server(Limits(max_in_flight=4))


@pytest.mark.parametrize("unread", [0, 1], ids=["nothing-unread", "one-request-left-unread"])
def test_client_vanishing_while_the_server_is_not_reading_frees_the_device(
    narrow_server: RunningServer, unread: int
) -> None:
    server = narrow_server
    with WireClient(server.port) as client:
        assert client.import_(LOOPBACK).status == OpStatus.OK
        configure(client)
        batch = [client.submit_bytes(ep=1, direction=Direction.IN, length=64) for _ in range(4)]
        client.sock.sendall(b"".join(raw for _, raw in batch))
        # Four bulk INs wait for data: the server stops reading until one of them ends.
        wait_until(
            lambda: server.call(lambda: server.server.status()["connections"][0]["in_flight"]) == 4,
            "the server to take all four bulk INs",
        )
        for _ in range(unread):
            # Left in the server's socket buffer, in front of the FIN that follows.
            client.submit(ep=1, direction=Direction.IN, length=64)
    wait_released(server, LOOPBACK)
    assert_importable(server, LOOPBACK)
