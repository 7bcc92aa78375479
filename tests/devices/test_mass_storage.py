"""The emulated USB disk: SCSI over the Bulk-Only Transport, as Linux's usb-storage drives it.

Most tests run twice: through a real server with the blocking WireClient ("wire") and
straight through the Device API on an event loop of their own ("direct"). The host side
below behaves like usb-storage: CBW, data phase, CSW; a stalled pipe is cleared and the
CSW read again.
"""

from __future__ import annotations

import asyncio
import errno
import os
import struct
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from tests.conftest import RunningServer
from tests.wire import WireClient
from usbwire.backends.emulated import EmulatedExport
from usbwire.demo import DEVICE_KINDS
from usbwire.devices.msc import BLOCK_SIZE, Image, MassStorage
from usbwire.devices.msc import image as image_module
from usbwire.devices.msc.bot import Phase
from usbwire.devices.requests import Setup
from usbwire.errors import Stall
from usbwire.protocol import Direction, Errno, OpStatus, RetSubmit, Speed

T = TypeVar("T")

BUSID = "3-1"  # clear of the demo set's 1-N
DISK_BLOCKS = 2048  # 1 MiB
BULK_IN, BULK_OUT = 0x81, 0x02
EPIPE = -Errno.EPIPE

# Requests (USB 2.0 §9.4, BOT §3)
CLEAR_FEATURE, GET_DESCRIPTOR, SET_CONFIGURATION, SET_INTERFACE = 1, 6, 9, 11
GET_MAX_LUN, BULK_ONLY_RESET = 0xFE, 0xFF

# bCSWStatus
PASSED, FAILED, PHASE_ERROR = 0, 1, 2

# (sense key, ASC, ASCQ)
NO_SENSE = (0x0, 0x00, 0x00)
MEDIUM_NOT_PRESENT = (0x2, 0x3A, 0x00)
UNRECOVERED_READ_ERROR = (0x3, 0x11, 0x00)
INVALID_COMMAND_OPERATION_CODE = (0x5, 0x20, 0x00)
LBA_OUT_OF_RANGE = (0x5, 0x21, 0x00)
INVALID_FIELD_IN_CDB = (0x5, 0x24, 0x00)
SAVING_PARAMETERS_NOT_SUPPORTED = (0x5, 0x39, 0x00)
MEDIUM_REMOVAL_PREVENTED = (0x5, 0x53, 0x02)
MEDIUM_MAY_HAVE_CHANGED = (0x6, 0x28, 0x00)
WRITE_PROTECTED = (0x7, 0x27, 0x00)
MISCOMPARE_DURING_VERIFY = (0xE, 0x1D, 0x00)


# -- CDBs (SPC-4, SBC-3), big-endian fields ----------------------------------------------------


def tur() -> bytes:
    """TEST UNIT READY."""
    return bytes(6)


def inquiry(allocation_length: int = 36, *, vpd_page: int | None = None) -> bytes:
    evpd = 0 if vpd_page is None else 1
    return struct.pack(">BBBHB", 0x12, evpd, vpd_page or 0, allocation_length, 0)


def request_sense(allocation_length: int = 18) -> bytes:
    return bytes([0x03, 0, 0, 0, allocation_length, 0])


def read_capacity_10() -> bytes:
    return bytes([0x25]) + bytes(9)


def read_capacity_16(allocation_length: int = 32) -> bytes:
    return struct.pack(">BBQIBB", 0x9E, 0x10, 0, allocation_length, 0, 0)


def rw10(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", opcode, flags, lba, 0, blocks, 0)


def read10(lba: int, blocks: int) -> bytes:
    return rw10(0x28, lba, blocks)


def write10(lba: int, blocks: int, *, fua: bool = False) -> bytes:
    return rw10(0x2A, lba, blocks, 0x08 if fua else 0)


def mode_sense_6(page: int, allocation_length: int = 192, *, page_control: int = 0, dbd: bool = False) -> bytes:
    return bytes([0x1A, 0x08 if dbd else 0, (page_control << 6) | page, 0, allocation_length, 0])


def mode_sense_10(page: int, allocation_length: int = 192) -> bytes:
    return struct.pack(">BBBBBBBHB", 0x5A, 0, page, 0, 0, 0, 0, allocation_length, 0)


def prevent_allow_medium_removal(prevent: bool) -> bytes:
    return bytes([0x1E, 0, 0, 0, int(prevent), 0])


def start_stop_unit(*, start: bool, load_eject: bool) -> bytes:
    return bytes([0x1B, 0, 0, 0, (0x02 if load_eject else 0) | int(start), 0])


def synchronize_cache_10() -> bytes:
    return bytes([0x35]) + bytes(9)


# -- a USB host ------------------------------------------------------------------------------


@dataclass
class Completion:
    status: int  # 0 or -errno
    data: bytes = b""


class Bus(Protocol):
    """What the host needs from a connection to the device."""

    def bulk_out(self, data: bytes) -> int: ...
    def bulk_in(self, length: int) -> Completion: ...
    def control(self, setup: Setup, data: bytes = b"") -> Completion: ...
    def call(self, function: Callable[[], T]) -> T: ...
    def close(self) -> None: ...


class WireBus:
    """The device imported from a real server over TCP."""

    def __init__(self, server: RunningServer, busid: str) -> None:
        self.server = server
        self.client = WireClient(server.port)
        assert self.client.import_(busid).status == OpStatus.OK

    def _reply(self) -> RetSubmit:
        event = self.client.read_event()
        assert isinstance(event, RetSubmit), event
        return event

    def bulk_out(self, data: bytes) -> int:
        self.client.submit(ep=BULK_OUT & 0x0F, direction=Direction.OUT, data=data)
        return self._reply().status

    def bulk_in(self, length: int) -> Completion:
        self.client.submit(ep=BULK_IN & 0x0F, direction=Direction.IN, length=length)
        reply = self._reply()
        return Completion(reply.status, reply.data)

    def control(self, setup: Setup, data: bytes = b"") -> Completion:
        self.client.submit(ep=0, direction=setup.direction, length=setup.length, data=data, setup=setup.to_bytes())
        reply = self._reply()
        return Completion(reply.status, reply.data)

    def call(self, function: Callable[[], T]) -> T:
        return self.server.call(function)

    def close(self) -> None:
        self.client.close()


class DirectBus:
    """The Device API on an event loop of the test's own; a transfer that waits is an error."""

    def __init__(self, device: MassStorage) -> None:
        self.device = device
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout=5))

    def _transfer(self, address: int, data: bytes, length: int) -> Completion:
        direction = Direction.IN if address & 0x80 else Direction.OUT
        endpoint = self.device.endpoint(address & 0x0F, direction)
        if endpoint is None:
            return Completion(EPIPE)
        try:
            return Completion(0, self.run(self.device.transfer(endpoint, data, length)))
        except Stall:
            return Completion(EPIPE)

    def bulk_out(self, data: bytes) -> int:
        return self._transfer(BULK_OUT, data, len(data)).status

    def bulk_in(self, length: int) -> Completion:
        return self._transfer(BULK_IN, b"", length)

    def control(self, setup: Setup, data: bytes = b"") -> Completion:
        try:
            return Completion(0, self.run(self.device.control(setup, data)))
        except Stall:
            return Completion(EPIPE)

    def call(self, function: Callable[[], T]) -> T:
        return function()

    def close(self) -> None:
        self.loop.close()


@dataclass
class Outcome:
    """How one command went, as the host saw it."""

    status: int  # bCSWStatus
    residue: int  # dCSWDataResidue
    data: bytes = b""
    stalled: set[int] = field(default_factory=set)  # bulk endpoints that stalled


def cbw(cdb: bytes, *, length: int, direction: Direction, tag: int, lun: int = 0) -> bytes:
    return struct.pack(
        "<IIIBBB16s",
        0x43425355,  # dCBWSignature "USBC"
        tag,  # dCBWTag
        length,  # dCBWDataTransferLength
        0x80 if direction == Direction.IN else 0x00,  # bmCBWFlags
        lun,  # bCBWLUN
        len(cdb),  # bCBWCBLength
        cdb,  # CBWCB, zero-padded to 16
    )


def patched(raw: bytes, index: int, value: int) -> bytes:
    """``raw`` with one byte replaced (to break one field of a CBW)."""
    return raw[:index] + bytes([value]) + raw[index + 1 :]


class BotHost:
    """The host side of the Bulk-Only Transport, recovering from stalls as usb-storage does."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.tag = 0x1000

    def configure(self) -> None:
        assert self.bus.control(Setup(0x00, SET_CONFIGURATION, 1, 0, 0)).status == 0

    def clear_halt(self, address: int) -> None:
        assert self.bus.control(Setup(0x02, CLEAR_FEATURE, 0, address, 0)).status == 0

    def reset_recovery(self) -> None:
        """BOT §5.3.4: Bulk-Only Mass Storage Reset, then clear both halts."""
        assert self.bus.control(Setup(0x21, BULK_ONLY_RESET, 0, 0, 0)).status == 0
        self.clear_halt(BULK_IN)
        self.clear_halt(BULK_OUT)

    def command(
        self,
        cdb: bytes,
        *,
        read: int = 0,
        write: bytes = b"",
        direction: Direction | None = None,
        urb_size: int = 65536,
    ) -> Outcome:
        """One command: ``read`` bytes in, or ``write`` out (``direction`` overrides the flag)."""
        self.tag += 1
        length = read or len(write)
        direction = direction or (Direction.OUT if write else Direction.IN)
        assert self.bus.bulk_out(cbw(cdb, length=length, direction=direction, tag=self.tag)) == 0
        outcome = Outcome(status=-1, residue=-1)
        if length and direction == Direction.IN:
            self._data_in(outcome, length, urb_size)
        elif length:
            self._data_out(outcome, write or bytes(length), urb_size)
        csw = self.bus.bulk_in(13)
        if csw.status == EPIPE:
            outcome.stalled.add(BULK_IN)
            self.clear_halt(BULK_IN)
            csw = self.bus.bulk_in(13)
        assert csw.status == 0 and len(csw.data) == 13, csw
        signature, tag, outcome.residue, outcome.status = struct.unpack("<IIIB", csw.data)
        assert (signature, tag) == (0x53425355, self.tag)  # "USBS", the CBW's tag
        return outcome

    def _data_in(self, outcome: Outcome, length: int, urb_size: int) -> None:
        received = bytearray()
        while len(received) < length:
            asked = min(urb_size, length - len(received))
            urb = self.bus.bulk_in(asked)
            if urb.status == EPIPE:
                outcome.stalled.add(BULK_IN)
                self.clear_halt(BULK_IN)
                break
            received += urb.data
            if len(urb.data) < asked:  # a short packet ends the data phase
                break
        outcome.data = bytes(received)

    def _data_out(self, outcome: Outcome, data: bytes, urb_size: int) -> None:
        for offset in range(0, len(data), urb_size):
            if self.bus.bulk_out(data[offset : offset + urb_size]) == EPIPE:
                outcome.stalled.add(BULK_OUT)
                self.clear_halt(BULK_OUT)
                break

    def sense(self) -> tuple[int, int, int]:
        """REQUEST SENSE: (sense key, ASC, ASCQ) from fixed format data."""
        outcome = self.command(request_sense(), read=18)
        assert outcome.status == PASSED and outcome.data[0] & 0x7F == 0x70
        return outcome.data[2] & 0x0F, outcome.data[12], outcome.data[13]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def image_path(tmp_path: Path) -> Path:
    return tmp_path / "disk.img"


@pytest.fixture
def disk(image_path: Path) -> Iterator[MassStorage]:
    device = MassStorage(image_path, size=DISK_BLOCKS * BLOCK_SIZE)
    yield device
    device.swap_image(None)  # release the image (and its lock)


@pytest.fixture(params=["wire", "direct"])
def connect(request: pytest.FixtureRequest) -> Iterator[Callable[[MassStorage], BotHost]]:
    """Plug a device in, through the server or straight; returns a configured host."""
    buses: list[Bus] = []

    def plug(device: MassStorage) -> BotHost:
        bus: Bus
        if request.param == "wire":
            server: RunningServer = request.getfixturevalue("server")
            n = len(buses) + 1
            server.export(EmulatedExport(device, busid=f"3-{n}", busnum=3, devnum=n + 1))
            bus = WireBus(server, f"3-{n}")
        else:
            bus = DirectBus(device)
        buses.append(bus)
        host = BotHost(bus)
        host.configure()
        return host

    yield plug
    for bus in buses:
        bus.close()


@pytest.fixture
def host(disk: MassStorage, connect: Callable[[MassStorage], BotHost]) -> BotHost:
    return connect(disk)


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Inode numbers passed to os.fsync, in order (the server's worker threads included)."""
    inodes: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        inodes.append(os.fstat(fd).st_ino)

    monkeypatch.setattr(os, "fsync", fsync)
    return inodes


def pattern(blocks: int, seed: int = 0) -> bytes:
    """Recognisable block contents: each block names its number."""
    return b"".join(f"block {seed + n:08d} ".encode().ljust(BLOCK_SIZE, b".") for n in range(blocks))


def file_blocks(path: Path, lba: int, blocks: int) -> bytes:
    with path.open("rb") as f:
        f.seek(lba * BLOCK_SIZE)
        return f.read(blocks * BLOCK_SIZE)


# -- identity and descriptors -----------------------------------------------------------------


def test_disk_is_listed_as_a_scsi_bulk_only_mass_storage_device(server: RunningServer, disk: MassStorage) -> None:
    server.export(EmulatedExport(disk, busid=BUSID, busnum=3, devnum=2))
    with WireClient(server.port) as client:
        (device,) = [d for d in client.devlist() if d.busid == BUSID]
    assert (device.idVendor, device.idProduct, device.speed) == (0x1209, 0x0002, Speed.HIGH)
    assert [(i.bInterfaceClass, i.bInterfaceSubClass, i.bInterfaceProtocol) for i in device.interfaces] == [
        (0x08, 0x06, 0x50)  # mass storage, SCSI transparent, Bulk-Only
    ]


@pytest.mark.parametrize(("speed", "max_packet"), [(Speed.FULL, 64), (Speed.HIGH, 512), (Speed.SUPER, 1024)], ids=str)
def test_bulk_endpoints_are_0x81_and_0x02_sized_for_the_speed(image_path: Path, speed: Speed, max_packet: int) -> None:
    config = MassStorage(image_path, size=DISK_BLOCKS * BLOCK_SIZE, speed=speed).descriptors.configuration(0)
    step = 13 if speed >= Speed.SUPER else 7  # SuperSpeed endpoints carry a 6-byte companion
    endpoints = [struct.unpack_from("<BBBBH", config, 18 + i * step) for i in range(2)]
    assert endpoints == [
        (7, 5, 0x81, 0x02, max_packet),  # bLength, ENDPOINT, bulk IN 1
        (7, 5, 0x02, 0x02, max_packet),  # bLength, ENDPOINT, bulk OUT 2
    ]


def test_low_speed_is_refused_for_want_of_bulk_endpoints(image_path: Path) -> None:
    with pytest.raises(ValueError, match="LOW speed"):
        MassStorage(image_path, size=BLOCK_SIZE, speed=Speed.LOW)


def test_serial_string_is_hex_and_the_same_in_vpd_page_0x80(host: BotHost, disk: MassStorage) -> None:
    index = struct.unpack_from("<B", disk.descriptors.device(), 16)[0]  # iSerialNumber
    string = host.bus.control(Setup(0x80, GET_DESCRIPTOR, 0x0300 | index, 0x0409, 255)).data
    serial = string[2:].decode("utf-16-le")
    page = host.command(inquiry(255, vpd_page=0x80), read=255).data
    assert len(serial) >= 12 and all(c in "0123456789ABCDEF" for c in serial)
    assert page[4:].decode("ascii") == serial


def test_get_max_lun_answers_zero(host: BotHost) -> None:
    reply = host.bus.control(Setup(0xA1, GET_MAX_LUN, 0, 0, 1))
    assert (reply.status, reply.data) == (0, b"\x00")


# -- SCSI identification and capacity -------------------------------------------------------


def test_inquiry_reports_a_removable_direct_access_disk(host: BotHost) -> None:
    outcome = host.command(inquiry(36), read=36)
    data = outcome.data
    assert (outcome.status, outcome.residue, len(data)) == (PASSED, 0, 36)
    assert data[0] == 0x00  # connected direct-access block device
    assert data[1] == 0x80  # RMB: removable medium
    assert data[3] & 0x0F == 2  # response data format
    assert data[4] == 31  # additional length
    assert data[8:16] == b"usbwire " and data[16:32] == b"Mass Storage    "


def test_inquiry_vpd_supported_pages_lists_0x00_0x80_0x83(host: BotHost) -> None:
    outcome = host.command(inquiry(255, vpd_page=0x00), read=255)
    assert outcome.data == bytes(
        [
            0x00,  # direct-access block device
            0x00,  # page code
            0x00,
            0x03,  # page length
            0x00,  # supported VPD pages
            0x80,  # unit serial number
            0x83,  # device identification
        ]
    )
    assert outcome.status == PASSED and outcome.residue == 255 - 7


def test_inquiry_vpd_device_identification_has_a_t10_vendor_designator(host: BotHost) -> None:
    data = host.command(inquiry(255, vpd_page=0x83), read=255).data
    page_length = struct.unpack_from(">H", data, 2)[0]
    assert data[1] == 0x83 and len(data) == 4 + page_length
    code_set, designator_type, length = data[4] & 0x0F, data[5] & 0x0F, data[7]
    assert (code_set, designator_type) == (2, 1)  # ASCII, T10 vendor ID based
    assert data[8 : 8 + length].startswith(b"usbwire Mass Storage ")


@pytest.mark.parametrize("page", [0xB0, 0xB1, 0x01])
def test_inquiry_of_an_unsupported_vpd_page_fails_with_invalid_field_in_cdb(host: BotHost, page: int) -> None:
    outcome = host.command(inquiry(255, vpd_page=page), read=255)
    # BOT case 4 (host expects data, device has none): the IN pipe stalls before the CSW.
    assert (outcome.status, outcome.residue, outcome.data, outcome.stalled) == (FAILED, 255, b"", {BULK_IN})
    assert host.sense() == INVALID_FIELD_IN_CDB


def test_standard_inquiry_with_a_page_code_is_invalid_field_in_cdb(host: BotHost) -> None:
    cdb = struct.pack(">BBBHB", 0x12, 0, 0x80, 36, 0)  # page code without EVPD
    assert host.command(cdb, read=36).status == FAILED
    assert host.sense() == INVALID_FIELD_IN_CDB


def test_read_capacity_10_and_16_report_the_last_lba_and_512_byte_blocks(host: BotHost) -> None:
    ten = host.command(read_capacity_10(), read=8)
    sixteen = host.command(read_capacity_16(), read=32)
    assert struct.unpack(">II", ten.data) == (DISK_BLOCKS - 1, 512)
    assert struct.unpack_from(">QI", sixteen.data) == (DISK_BLOCKS - 1, 512)
    assert sixteen.data[12:] == bytes(20)  # no protection, 1 block per physical block, no thin provisioning
    assert (ten.status, sixteen.status) == (PASSED, PASSED)


def test_report_luns_lists_lun_zero_only(host: BotHost) -> None:
    cdb = struct.pack(">BBBxxxIBB", 0xA0, 0, 0, 16, 0, 0)
    assert host.command(cdb, read=16).data == struct.pack(">II", 8, 0) + bytes(8)


def test_unknown_opcode_is_invalid_command_operation_code(host: BotHost) -> None:
    assert host.command(bytes([0xC7]) + bytes(9)).status == FAILED  # vendor-specific opcode
    assert host.sense() == INVALID_COMMAND_OPERATION_CODE


def test_request_sense_reports_no_sense_after_a_good_command_and_clears_what_it_reported(
    host: BotHost,
) -> None:
    assert host.command(read10(DISK_BLOCKS, 1), read=512).status == FAILED
    assert host.sense() == LBA_OUT_OF_RANGE
    assert host.sense() == NO_SENSE  # read once
    host.command(read10(DISK_BLOCKS, 1), read=512)
    assert host.command(tur()).status == PASSED
    assert host.sense() == NO_SENSE  # a later command cleared it


# -- reading and writing --------------------------------------------------------------------


def test_written_blocks_read_back_and_are_in_the_image_file(host: BotHost, image_path: Path) -> None:
    data = pattern(8)
    written = host.command(write10(100, 8), write=data)
    read = host.command(read10(100, 8), read=len(data))
    assert (written.status, written.residue, written.stalled) == (PASSED, 0, set())
    assert (read.status, read.residue, read.data) == (PASSED, 0, data)
    assert file_blocks(image_path, 100, 8) == data


@pytest.mark.parametrize(
    ("read_cdb", "write_cdb"),
    [
        pytest.param(
            bytes([0x08, 0x00, 0x01, 0x23, 4, 0]),  # READ(6): LBA 0x123, 4 blocks
            bytes([0x0A, 0x00, 0x01, 0x23, 4, 0]),
            id="6",
        ),
        pytest.param(
            struct.pack(">BBIIBB", 0xA8, 0, 0x123, 4, 0, 0),  # READ(12)
            struct.pack(">BBIIBB", 0xAA, 0, 0x123, 4, 0, 0),
            id="12",
        ),
        pytest.param(
            struct.pack(">BBQIBB", 0x88, 0, 0x123, 4, 0, 0),  # READ(16)
            struct.pack(">BBQIBB", 0x8A, 0, 0x123, 4, 0, 0),
            id="16",
        ),
    ],
)
def test_read_and_write_6_12_16_address_the_same_blocks_as_10(host: BotHost, read_cdb: bytes, write_cdb: bytes) -> None:
    data = pattern(4, seed=7)
    assert host.command(write_cdb, write=data).status == PASSED
    assert host.command(read10(0x123, 4), read=len(data)).data == data
    assert host.command(read_cdb, read=len(data)).data == data


def test_data_phases_span_many_urbs(host: BotHost, image_path: Path) -> None:
    data = pattern(512)  # 256 KiB, as usb-storage moves it in scatter-gather pieces
    written = host.command(write10(1000, 512), write=data, urb_size=16384)
    read = host.command(read10(1000, 512), read=len(data), urb_size=12288)  # not a divisor
    assert (written.status, written.residue) == (PASSED, 0)
    assert (read.status, read.residue, read.data == data) == (PASSED, 0, True)
    assert file_blocks(image_path, 1000, 512) == data


def test_pipelined_urbs_of_a_1_mib_write_and_read(server: RunningServer, disk: MassStorage) -> None:
    # The whole command is queued at once, CSW read included: endpoints with nothing to do
    # yet hold their URBs, as a device NAKs.
    server.export(EmulatedExport(disk, busid=BUSID, busnum=3, devnum=2))
    data = os.urandom(1 << 20)
    pieces = [data[i : i + 131072] for i in range(0, len(data), 131072)]
    with WireClient(server.port) as client:
        assert client.import_(BUSID).status == OpStatus.OK
        client.control_out(0x00, SET_CONFIGURATION, 1, 0)
        assert client.read_event().status == 0  # type: ignore[union-attr]
        write = cbw(write10(0, 2048), length=len(data), direction=Direction.OUT, tag=1)
        read = cbw(read10(0, 2048), length=len(data), direction=Direction.IN, tag=2)
        batch = [client.submit_bytes(ep=1, direction=Direction.IN, length=13)]  # CSW first
        batch += [client.submit_bytes(ep=2, direction=Direction.OUT, data=d) for d in [write, *pieces, read]]
        batch += [client.submit_bytes(ep=1, direction=Direction.IN, length=len(p)) for p in pieces]
        batch += [client.submit_bytes(ep=1, direction=Direction.IN, length=13)]
        client.sock.sendall(b"".join(raw for _, raw in batch))
        replies: dict[int, RetSubmit] = {}
        while len(replies) < len(batch):
            event = client.read_event()
            assert isinstance(event, RetSubmit)
            replies[event.seqnum] = event
    ordered = [replies[seqnum] for seqnum, _ in batch]
    assert all(r.status == 0 for r in ordered)
    first_csw, last_csw = ordered[0].data, ordered[-1].data
    assert struct.unpack("<IIIB", first_csw) == (0x53425355, 1, 0, PASSED)
    assert struct.unpack("<IIIB", last_csw) == (0x53425355, 2, 0, PASSED)
    assert b"".join(r.data for r in ordered[-1 - len(pieces) : -1]) == data


def test_out_of_range_lba_is_illegal_request_lba_out_of_range(host: BotHost) -> None:
    outcome = host.command(read10(DISK_BLOCKS - 1, 2), read=1024)  # one block past the end
    assert (outcome.status, outcome.residue, outcome.stalled) == (FAILED, 1024, {BULK_IN})
    assert host.sense() == LBA_OUT_OF_RANGE
    outcome = host.command(write10(DISK_BLOCKS, 1), write=pattern(1))
    assert (outcome.status, outcome.residue, outcome.stalled) == (FAILED, 512, {BULK_OUT})
    assert host.sense() == LBA_OUT_OF_RANGE


def test_the_last_block_is_in_range(host: BotHost) -> None:
    assert host.command(write10(DISK_BLOCKS - 1, 1), write=pattern(1)).status == PASSED
    assert host.command(read10(DISK_BLOCKS - 1, 1), read=512).data == pattern(1)


def test_write_to_a_read_only_disk_is_data_protect_write_protected(
    connect: Callable[[MassStorage], BotHost], image_path: Path
) -> None:
    image_path.write_bytes(pattern(64))
    host = connect(MassStorage(image_path, read_only=True))
    outcome = host.command(write10(3, 1), write=bytes(512))
    assert (outcome.status, outcome.residue, outcome.stalled) == (FAILED, 512, {BULK_OUT})
    assert host.sense() == WRITE_PROTECTED
    assert host.command(read10(3, 1), read=512).data == pattern(64)[3 * 512 : 4 * 512]
    assert image_path.read_bytes() == pattern(64)


def test_read_error_fails_the_command_with_unrecovered_read_error(host: BotHost, image_path: Path) -> None:
    os.truncate(image_path, 16 * BLOCK_SIZE)  # the image shrinks under the device
    outcome = host.command(read10(8, 16), read=16 * 512, urb_size=4096)
    assert (outcome.status, outcome.stalled) == (FAILED, {BULK_IN})
    assert outcome.data == bytes(4096) and outcome.residue == 16 * 512 - 4096  # the first URB got through
    assert host.sense() == UNRECOVERED_READ_ERROR


def test_verify_compares_the_hosts_data_with_the_medium(host: BotHost) -> None:
    host.command(write10(10, 2), write=pattern(2))
    verify = struct.pack(">BBIBHB", 0x2F, 0x02, 10, 0, 2, 0)  # VERIFY(10), BYTCHK=1
    assert host.command(verify, write=pattern(2)).status == PASSED
    different = bytearray(pattern(2))
    different[700] ^= 0xFF
    assert host.command(verify, write=bytes(different)).status == FAILED
    sense = host.command(request_sense(), read=18).data
    assert (sense[2] & 0x0F, sense[12], sense[13]) == MISCOMPARE_DURING_VERIFY
    assert sense[0] & 0x80 and struct.unpack_from(">I", sense, 3)[0] == 700  # VALID, INFORMATION


def test_verify_without_bytchk_checks_the_range_only(host: BotHost) -> None:
    assert host.command(struct.pack(">BBIBHB", 0x2F, 0, 0, 0, 8, 0)).status == PASSED
    assert host.command(struct.pack(">BBQIBB", 0x8F, 0, DISK_BLOCKS, 1, 0, 0)).status == FAILED
    assert host.sense() == LBA_OUT_OF_RANGE


# -- mode pages -------------------------------------------------------------------------------


@pytest.mark.parametrize("read_only", [False, True], ids=["rw", "ro"])
def test_mode_sense_6_and_10_report_the_write_protect_bit(
    connect: Callable[[MassStorage], BotHost], image_path: Path, read_only: bool
) -> None:
    image_path.write_bytes(bytes(DISK_BLOCKS * BLOCK_SIZE))
    host = connect(MassStorage(image_path, read_only=read_only))
    six = host.command(mode_sense_6(0x3F, 192), read=192).data
    ten = host.command(mode_sense_10(0x3F, 192), read=192).data
    assert bool(six[2] & 0x80) is read_only  # device-specific parameter: WP
    assert bool(ten[3] & 0x80) is read_only
    assert six[2] & 0x10 and ten[3] & 0x10  # DPOFUA: FUA writes are honoured
    assert six[0] + 1 == len(six) and struct.unpack_from(">H", ten)[0] + 2 == len(ten)


def test_mode_sense_all_pages_has_a_block_descriptor_and_caching_with_write_cache_enabled(
    host: BotHost,
) -> None:
    outcome = host.command(mode_sense_6(0x3F, 192), read=192)
    data = outcome.data
    assert data[3] == 8  # block descriptor length
    assert struct.unpack_from(">I", data, 4)[0] == DISK_BLOCKS  # density 0, block count
    assert struct.unpack_from(">I", data, 8)[0] == 512  # reserved, block length
    pages = {}
    offset = 12
    while offset < len(data):
        pages[data[offset] & 0x3F] = data[offset : offset + 2 + data[offset + 1]]
        offset += 2 + data[offset + 1]
    assert sorted(pages) == [0x01, 0x08, 0x0A]
    caching = pages[0x08]
    assert len(caching) == 20 and caching[2] & 0x04  # WCE: Linux then sends SYNCHRONIZE CACHE
    assert outcome.residue == 192 - len(data) and outcome.stalled == {BULK_IN}  # BOT case 5


def test_mode_sense_caching_page_alone_without_block_descriptor(host: BotHost) -> None:
    data = host.command(mode_sense_6(0x08, 255, dbd=True), read=255).data
    assert data[3] == 0 and data[4] == 0x08 and data[5] == 0x12 and data[6] & 0x04
    assert len(data) == 4 + 20


def test_mode_sense_truncates_to_the_allocation_length(host: BotHost) -> None:
    outcome = host.command(mode_sense_6(0x3F, 4), read=4)
    assert (outcome.status, outcome.residue, len(outcome.data), outcome.stalled) == (PASSED, 0, 4, set())
    assert outcome.data[0] == 4 + 8 + 12 + 20 + 12 - 1  # the full length, not the truncated one


@pytest.mark.parametrize(
    ("cdb", "sense"),
    [
        pytest.param(mode_sense_6(0x1C), INVALID_FIELD_IN_CDB, id="unknown-page"),
        pytest.param(mode_sense_6(0x3F, page_control=3), SAVING_PARAMETERS_NOT_SUPPORTED, id="saved-values"),
        pytest.param(bytes([0x1A, 0, 0x08, 0x01, 192, 0]), INVALID_FIELD_IN_CDB, id="unknown-subpage"),
    ],
)
def test_mode_sense_refusals(host: BotHost, cdb: bytes, sense: tuple[int, int, int]) -> None:
    assert host.command(cdb, read=192).status == FAILED
    assert host.sense() == sense


def test_mode_sense_changeable_values_are_all_zero(host: BotHost) -> None:
    data = host.command(mode_sense_6(0x08, 255, page_control=1, dbd=True), read=255).data
    assert data[4:6] == bytes([0x08, 0x12]) and data[6:] == bytes(18)


# -- durability --------------------------------------------------------------------------------


def test_synchronize_cache_fsyncs_the_image(host: BotHost, image_path: Path, fsynced: list[int]) -> None:
    host.command(write10(5, 2), write=pattern(2))
    assert fsynced == []  # writes alone stay in the page cache
    assert host.command(synchronize_cache_10()).status == PASSED
    assert fsynced == [image_path.stat().st_ino]
    assert file_blocks(image_path, 5, 2) == pattern(2)


def test_synchronize_cache_16_fsyncs_too(host: BotHost, image_path: Path, fsynced: list[int]) -> None:
    assert host.command(bytes([0x91]) + bytes(15)).status == PASSED
    assert fsynced == [image_path.stat().st_ino]


def test_write_with_fua_is_on_disk_before_its_status(host: BotHost, image_path: Path, fsynced: list[int]) -> None:
    assert host.command(write10(9, 1, fua=True), write=pattern(1)).status == PASSED
    assert fsynced == [image_path.stat().st_ino]


def test_close_fsyncs_and_keeps_the_medium_for_the_next_import(
    disk: MassStorage, image_path: Path, fsynced: list[int]
) -> None:
    bus = DirectBus(disk)
    host = BotHost(bus)
    host.configure()
    host.command(write10(0, 1), write=pattern(1))
    bus.run(disk.close())
    assert fsynced == [image_path.stat().st_ino]
    assert file_blocks(image_path, 0, 1) == pattern(1)
    assert host.command(read10(0, 1), read=512).data == pattern(1)
    bus.close()


def test_disconnect_flushes_through_close(server: RunningServer, disk: MassStorage, fsynced: list[int]) -> None:
    server.export(EmulatedExport(disk, busid=BUSID, busnum=3, devnum=2))
    bus = WireBus(server, BUSID)
    host = BotHost(bus)
    host.configure()
    host.command(write10(0, 1), write=pattern(1))
    bus.close()
    synced = threading.Event()
    for _ in range(200):
        if fsynced:
            synced.set()
            break
        synced.wait(0.01)
    assert synced.is_set()


# -- medium changes ---------------------------------------------------------------------------


def test_swapped_image_is_reported_as_unit_attention_then_ready(
    host: BotHost, disk: MassStorage, tmp_path: Path
) -> None:
    other = tmp_path / "other.img"
    host.bus.call(lambda: disk.swap_image(other, size=64 * BLOCK_SIZE))
    assert host.command(inquiry(36), read=36).status == PASSED  # INQUIRY does not take the attention
    assert host.command(tur()).status == FAILED
    assert host.sense() == MEDIUM_MAY_HAVE_CHANGED
    assert host.command(tur()).status == PASSED
    assert struct.unpack(">II", host.command(read_capacity_10(), read=8).data) == (63, 512)


def test_without_a_medium_the_unit_is_not_ready(host: BotHost, disk: MassStorage) -> None:
    host.bus.call(lambda: disk.swap_image(None))
    assert host.command(tur()).status == FAILED
    assert host.sense() == MEDIUM_NOT_PRESENT
    assert host.command(read_capacity_10(), read=8).status == FAILED
    assert host.command(inquiry(36), read=36).status == PASSED


def test_eject_is_refused_while_removal_is_prevented(host: BotHost) -> None:
    assert host.command(prevent_allow_medium_removal(True)).status == PASSED
    assert host.command(start_stop_unit(start=False, load_eject=True)).status == FAILED
    assert host.sense() == MEDIUM_REMOVAL_PREVENTED
    assert host.command(prevent_allow_medium_removal(False)).status == PASSED
    assert host.command(start_stop_unit(start=False, load_eject=True)).status == PASSED
    assert host.command(tur()).status == FAILED
    assert host.sense() == MEDIUM_NOT_PRESENT
    assert host.command(start_stop_unit(start=True, load_eject=True)).status == PASSED
    host.command(tur())
    assert host.sense() == MEDIUM_MAY_HAVE_CHANGED
    assert host.command(tur()).status == PASSED


# -- the Bulk-Only Transport --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cdb", "direction", "length", "status", "residue", "moved", "stalled"),
    [
        # The thirteen cases of BOT §6.7: host expects none (n), in (i) or out (o) vs device.
        pytest.param(tur(), Direction.OUT, 0, PASSED, 0, 0, set(), id="1-Hn=Dn"),
        pytest.param(inquiry(36), Direction.IN, 0, PHASE_ERROR, 0, 0, set(), id="2-Hn<Di"),
        pytest.param(write10(0, 1), Direction.OUT, 0, PHASE_ERROR, 0, 0, set(), id="3-Hn<Do"),
        pytest.param(tur(), Direction.IN, 512, PASSED, 512, 0, {BULK_IN}, id="4-Hi>Dn"),
        pytest.param(inquiry(96), Direction.IN, 96, PASSED, 60, 36, {BULK_IN}, id="5-Hi>Di"),
        pytest.param(read10(0, 1), Direction.IN, 512, PASSED, 0, 512, set(), id="6-Hi=Di"),
        pytest.param(read10(0, 2), Direction.IN, 512, PHASE_ERROR, 0, 512, set(), id="7-Hi<Di"),
        pytest.param(write10(0, 1), Direction.IN, 512, PHASE_ERROR, 512, 0, {BULK_IN}, id="8-Hi<>Do"),
        pytest.param(tur(), Direction.OUT, 512, PASSED, 512, 0, {BULK_OUT}, id="9-Ho>Dn"),
        pytest.param(read10(0, 1), Direction.OUT, 512, PHASE_ERROR, 512, 0, {BULK_OUT}, id="10-Ho<>Di"),
        pytest.param(write10(0, 1), Direction.OUT, 1024, PASSED, 512, 0, {BULK_OUT}, id="11-Ho>Do"),
        pytest.param(write10(0, 1), Direction.OUT, 512, PASSED, 0, 0, set(), id="12-Ho=Do"),
        pytest.param(write10(0, 2), Direction.OUT, 512, PHASE_ERROR, 0, 0, set(), id="13-Ho<Do"),
    ],
)
def test_thirteen_cases_of_host_and_device_expectations(
    host: BotHost,
    image_path: Path,
    cdb: bytes,
    direction: Direction,
    length: int,
    status: int,
    residue: int,
    moved: int,
    stalled: set[int],
) -> None:
    data = pattern(length // BLOCK_SIZE) if direction == Direction.OUT else b""
    outcome = host.command(cdb, read=length if direction == Direction.IN else 0, write=data, direction=direction)
    assert (outcome.status, outcome.residue, outcome.stalled) == (status, residue, stalled)
    assert len(outcome.data) == moved
    if status == PHASE_ERROR:
        host.reset_recovery()  # what a host must do after a phase error (BOT §6.7)
    assert host.command(tur()).status == PASSED


def test_case_13_writes_nothing(host: BotHost, image_path: Path) -> None:
    host.command(write10(0, 2), write=pattern(1))
    assert file_blocks(image_path, 0, 2) == bytes(1024)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(cbw(tur(), length=0, direction=Direction.OUT, tag=1)[:30], id="short"),
        pytest.param(b"USBD" + cbw(bytes(6), length=0, direction=Direction.OUT, tag=1)[4:], id="signature"),
        pytest.param(cbw(bytes(6), length=0, direction=Direction.OUT, tag=1, lun=1), id="lun-1"),
        pytest.param(cbw(b"", length=0, direction=Direction.OUT, tag=1), id="empty-cdb"),
        pytest.param(patched(cbw(bytes(6), length=0, direction=Direction.OUT, tag=1), 12, 0x01), id="flags"),
    ],
)
def test_invalid_cbw_stalls_both_pipes_until_reset_recovery(host: BotHost, raw: bytes) -> None:
    assert host.bus.bulk_out(raw) == 0  # the CBW itself is received...
    assert host.bus.bulk_in(13).status == EPIPE  # ...then both pipes stall
    assert host.bus.bulk_out(cbw(bytes(6), length=0, direction=Direction.OUT, tag=2)) == EPIPE
    host.clear_halt(BULK_IN)  # clearing a halt alone does not help (BOT §6.6.1)
    host.clear_halt(BULK_OUT)
    assert host.bus.bulk_in(13).status == EPIPE
    assert host.bus.bulk_out(cbw(bytes(6), length=0, direction=Direction.OUT, tag=2)) == EPIPE
    host.reset_recovery()
    outcome = host.command(tur())
    assert (outcome.status, outcome.residue, outcome.stalled) == (PASSED, 0, set())


def test_set_interface_does_not_end_the_wait_for_reset_recovery(host: BotHost) -> None:
    assert host.bus.bulk_out(b"garbage") == 0
    assert host.bus.control(Setup(0x01, SET_INTERFACE, 0, 0, 0)).status == 0  # clears halts (USB 2.0 §9.4.10)
    assert host.bus.bulk_in(13).status == EPIPE
    host.reset_recovery()
    assert host.command(tur()).status == PASSED


def test_bulk_only_reset_abandons_a_command_in_its_data_phase(host: BotHost, disk: MassStorage) -> None:
    assert host.bus.bulk_out(cbw(read10(0, 8), length=4096, direction=Direction.IN, tag=7)) == 0
    assert len(host.bus.bulk_in(512).data) == 512
    host.reset_recovery()
    assert host.bus.call(lambda: disk.phase) == Phase.COMMAND
    assert host.command(tur()).status == PASSED


def test_a_reset_during_a_slow_fsync_abandons_that_command_for_good(
    disk: MassStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> tuple[bool, bytes]:
        release = asyncio.Event()

        async def slow_sync() -> None:
            await release.wait()

        assert disk.image is not None
        monkeypatch.setattr(disk.image, "sync", slow_sync)
        disk.set_configuration(1)
        bulk_in, bulk_out = disk.endpoint(1, Direction.IN), disk.endpoint(2, Direction.OUT)
        assert bulk_in is not None and bulk_out is not None
        await disk.transfer(bulk_out, cbw(synchronize_cache_10(), length=0, direction=Direction.OUT, tag=1), 31)
        status = asyncio.ensure_future(disk.transfer(bulk_in, b"", 13))  # waits for the fsync
        await asyncio.sleep(0.01)
        await disk.control(Setup(0x21, BULK_ONLY_RESET, 0, 0, 0), b"")  # the host gave up waiting
        release.set()
        await asyncio.sleep(0.01)
        abandoned = not status.done()  # the abandoned command's CSW never comes...
        await disk.transfer(bulk_out, cbw(tur(), length=0, direction=Direction.OUT, tag=2), 31)
        return abandoned, await asyncio.wait_for(status, 1)  # ... the next command's does

    abandoned, csw = asyncio.run(scenario())
    assert abandoned
    assert struct.unpack("<IIIB", csw) == (0x53425355, 2, 0, PASSED)


def slow_writes(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make the image's writer thread hold every write until the returned event is set (a
    slow disk)."""
    release = threading.Event()
    real_write_all = image_module._write_all

    def write_all(fd: int, data: bytes, offset: int, path: str) -> None:
        release.wait(10)
        real_write_all(fd, data, offset, path)

    monkeypatch.setattr(image_module, "_write_all", write_all)
    return release


def test_a_write_commands_status_waits_for_its_blocks_but_its_data_urb_does_not(
    disk: MassStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> tuple[bool, bool, bytes]:
        release = slow_writes(monkeypatch)
        disk.set_configuration(1)
        bulk_in, bulk_out = disk.endpoint(1, Direction.IN), disk.endpoint(2, Direction.OUT)
        assert bulk_in is not None and bulk_out is not None
        await disk.transfer(bulk_out, cbw(write10(7, 1), length=512, direction=Direction.OUT, tag=4), 31)
        # The data URB is answered while its block is still on its way to the image, so the
        # host sends the status request meanwhile...
        await asyncio.wait_for(disk.transfer(bulk_out, pattern(1), 512), 1)
        status = asyncio.ensure_future(disk.transfer(bulk_in, b"", 13))
        await asyncio.sleep(0.01)
        waited = not status.done()  # ... which waits for the block
        release.set()
        csw = await asyncio.wait_for(status, 1)
        assert disk.image is not None
        return waited, await disk.image.read(7 * 512, 512) == pattern(1), csw

    waited, written, csw = asyncio.run(scenario())
    assert waited and written
    assert struct.unpack("<IIIB", csw) == (0x53425355, 4, 0, PASSED)


def test_a_reset_while_the_status_waits_for_the_blocks_abandons_that_command(
    disk: MassStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> bytes:
        release = slow_writes(monkeypatch)
        disk.set_configuration(1)
        bulk_in, bulk_out = disk.endpoint(1, Direction.IN), disk.endpoint(2, Direction.OUT)
        assert bulk_in is not None and bulk_out is not None
        await disk.transfer(bulk_out, cbw(write10(7, 1), length=512, direction=Direction.OUT, tag=5), 31)
        await disk.transfer(bulk_out, pattern(1), 512)
        status = asyncio.ensure_future(disk.transfer(bulk_in, b"", 13))
        await asyncio.sleep(0.01)
        await disk.control(Setup(0x21, BULK_ONLY_RESET, 0, 0, 0), b"")  # the host gave up waiting
        release.set()
        await asyncio.sleep(0.01)
        assert not status.done()  # the abandoned command's CSW never comes...
        await disk.transfer(bulk_out, cbw(tur(), length=0, direction=Direction.OUT, tag=6), 31)
        return await asyncio.wait_for(status, 1)  # ... the next command's does

    assert struct.unpack("<IIIB", asyncio.run(scenario())) == (0x53425355, 6, 0, PASSED)


def test_a_command_on_cached_blocks_completes_without_waiting(disk: MassStorage) -> None:
    # Every stage answered by transfer_now: the server's fast lane, no coroutine per URB.
    disk.set_configuration(1)
    write = cbw(write10(16, 8), length=8 * BLOCK_SIZE, direction=Direction.OUT, tag=1)
    assert disk.transfer_now(0x02, write, 31) == b""
    assert disk.transfer_now(0x02, pattern(8), 8 * BLOCK_SIZE) == b""
    assert disk.image is not None
    disk.image.read_now(0, BLOCK_SIZE)  # (blocks until the writer thread has the block)
    assert struct.unpack("<IIIB", disk.transfer_now(0x81, b"", 13) or b"") == (0x53425355, 1, 0, PASSED)
    read = cbw(read10(16, 8), length=8 * BLOCK_SIZE, direction=Direction.IN, tag=2)
    assert disk.transfer_now(0x02, read, 31) == b""
    assert disk.transfer_now(0x81, b"", 8 * BLOCK_SIZE) == pattern(8)
    assert struct.unpack("<IIIB", disk.transfer_now(0x81, b"", 13) or b"") == (0x53425355, 2, 0, PASSED)


@pytest.mark.parametrize("urb_blocks", [8, 3], ids=["one-urb", "in-pieces"])
def test_a_read_commands_data_is_read_while_the_host_sends_for_it(
    disk: MassStorage, monkeypatch: pytest.MonkeyPatch, urb_blocks: int
) -> None:
    async def scenario() -> tuple[list[bytes | None], list[object]]:
        disk.set_configuration(1)
        assert disk.image is not None
        await disk.image.write(5 * BLOCK_SIZE, pattern(8))
        await disk.image.flush()
        read = cbw(read10(5, 8), length=8 * BLOCK_SIZE, direction=Direction.IN, tag=3)
        assert disk.transfer_now(0x02, read, 31) == b""
        await asyncio.sleep(0)  # the loop's next turn: the CBW's answer has left
        reads: list[object] = []
        monkeypatch.setattr(disk.image, "read_cached", lambda *args: reads.append(args))
        sizes = [min(urb_blocks, 8 - n) * BLOCK_SIZE for n in range(0, 8, urb_blocks)]
        return [disk.transfer_now(0x81, b"", size) for size in sizes], reads

    chunks, reads_at_the_data_urbs = asyncio.run(scenario())
    assert b"".join(chunk or b"" for chunk in chunks) == pattern(8)
    assert reads_at_the_data_urbs == []


def test_the_status_of_a_write_still_behind_is_declined_untouched(
    disk: MassStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = slow_writes(monkeypatch)
    disk.set_configuration(1)
    disk.transfer_now(0x02, cbw(write10(3, 1), length=BLOCK_SIZE, direction=Direction.OUT, tag=8), 31)
    assert disk.transfer_now(0x02, pattern(1), BLOCK_SIZE) == b""
    assert disk.transfer_now(0x81, b"", 13) is None  # the block is not in the image yet
    assert disk.phase == Phase.STATUS
    release.set()
    assert disk.image is not None
    assert disk.image.read_now(3 * BLOCK_SIZE, BLOCK_SIZE) == pattern(1)
    assert struct.unpack("<IIIB", disk.transfer_now(0x81, b"", 13) or b"") == (0x53425355, 8, 0, PASSED)


def test_an_in_urb_queued_before_the_cbw_waits_and_gets_the_csw(disk: MassStorage) -> None:
    async def scenario() -> tuple[bool, bytes]:
        disk.set_configuration(1)
        bulk_in, bulk_out = disk.endpoint(1, Direction.IN), disk.endpoint(2, Direction.OUT)
        assert bulk_in is not None and bulk_out is not None
        pending = asyncio.ensure_future(disk.transfer(bulk_in, b"", 13))
        await asyncio.sleep(0.01)
        waited = not pending.done()  # NAKed: no command yet
        await disk.transfer(bulk_out, cbw(tur(), length=0, direction=Direction.OUT, tag=9), 31)
        return waited, await asyncio.wait_for(pending, 1)

    waited, csw = asyncio.run(scenario())
    assert waited
    assert struct.unpack("<IIIB", csw) == (0x53425355, 9, 0, PASSED)


def test_a_queued_in_urb_stalls_when_the_command_has_no_data_for_it(disk: MassStorage) -> None:
    # BOT case 4 with the data IN URB already waiting: it must stall, not carry the CSW.
    async def scenario() -> tuple[bool, bytes]:
        disk.set_configuration(1)
        bulk_in, bulk_out = disk.endpoint(1, Direction.IN), disk.endpoint(2, Direction.OUT)
        assert bulk_in is not None and bulk_out is not None
        data_urb = asyncio.ensure_future(disk.transfer(bulk_in, b"", 512))
        await asyncio.sleep(0.01)
        await disk.transfer(bulk_out, cbw(tur(), length=512, direction=Direction.IN, tag=3), 31)
        (result,) = await asyncio.wait_for(asyncio.gather(data_urb, return_exceptions=True), 1)
        stalled = isinstance(result, Stall)
        disk.halted.discard(bulk_in.address)  # CLEAR_FEATURE(ENDPOINT_HALT)
        return stalled, await asyncio.wait_for(disk.transfer(bulk_in, b"", 13), 1)

    stalled, csw = asyncio.run(scenario())
    assert stalled
    assert struct.unpack("<IIIB", csw) == (0x53425355, 3, 512, PASSED)


def test_usb_reset_returns_the_transport_to_the_command_phase(disk: MassStorage) -> None:
    bus = DirectBus(disk)
    host = BotHost(bus)
    host.configure()
    assert bus.bulk_out(cbw(b"\x00" * 31, length=0, direction=Direction.OUT, tag=1)) == 0  # invalid
    disk.reset()
    host.configure()
    assert host.command(tur()).status == PASSED
    bus.close()


# -- the image and the Python API -----------------------------------------------------------


def test_a_missing_image_is_created_sparse_with_the_given_size(image_path: Path) -> None:
    disk = MassStorage(image_path, size=1 << 30)
    assert image_path.stat().st_size == 1 << 30
    assert image_path.stat().st_blocks * 512 < 1 << 20  # sparse: nothing allocated yet
    assert disk.image is not None and disk.image.block_count == (1 << 30) // 512
    disk.swap_image(None)


@pytest.mark.parametrize(
    ("existing", "size", "match"),
    [
        (None, 1000, "not a positive multiple of 512"),
        (None, 0, "not a positive multiple of 512"),
        (4096, 8192, "is 4096 bytes, not 8192"),
        (100, None, "smaller than one 512-byte block"),
    ],
)
def test_bad_image_sizes_are_refused(image_path: Path, existing: int | None, size: int | None, match: str) -> None:
    if existing is not None:
        image_path.write_bytes(bytes(existing))
    with pytest.raises(ValueError, match=match):
        Image(image_path, size)


def test_a_missing_image_without_a_size_is_file_not_found(image_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        MassStorage(image_path)


def test_an_image_in_use_by_another_device_is_refused(disk: MassStorage, image_path: Path) -> None:
    with pytest.raises(OSError, match="in use") as error:
        MassStorage(image_path)
    assert error.value.errno == errno.EBUSY


def test_trailing_bytes_short_of_a_block_are_not_part_of_the_disk(image_path: Path) -> None:
    image_path.write_bytes(bytes(3 * BLOCK_SIZE + 100))
    image = Image(image_path)
    assert (image.block_count, image.size) == (3, 3 * BLOCK_SIZE)
    image.close()


@pytest.mark.parametrize("serial", ["ABC", "0123456789ab", "0123456789XY"])
def test_a_serial_must_be_12_or_more_upper_case_hex_digits(image_path: Path, serial: str) -> None:
    with pytest.raises(ValueError, match="hex digits"):
        MassStorage(image_path, size=BLOCK_SIZE, serial=serial)


def test_demo_disk_is_a_64_mib_scratch_image_that_leaves_no_file_behind() -> None:
    factory, _ = DEVICE_KINDS["disk"]
    disk = factory()
    assert isinstance(disk, MassStorage) and disk.image is not None
    assert disk.image.size == 64 << 20
    assert not os.path.exists(disk.image.path)
    disk.swap_image(None)
