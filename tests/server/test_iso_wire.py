"""Isochronous URBs on the wire: every RET_SUBMIT field the kernel's vhci-hcd reads back."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import pytest

from tests.conftest import RunningServer, start_server
from tests.devices.test_hid import reply
from tests.devices.test_iso import Counter
from tests.wire import WireClient
from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.descriptors import Endpoint
from usbwire.errors import Stall
from usbwire.protocol import Direction, Errno, IsoPacket, UrbFlag

BUSID = "3-1"
# As snd-usb-audio and uvcvideo submit them: each URB right after the previous one.
ISO_ASAP = UrbFlag.ISO_ASAP
SET_CONFIGURATION, SET_INTERFACE = 9, 11


class Stalling(Counter):
    """A streaming device that refuses a transfer (a protocol stall)."""

    async def iso_in(self, endpoint: Endpoint, lengths: Sequence[int]) -> Sequence[bytes | int]:
        raise Stall("no stream now")


class Broken(Counter):
    """A streaming device whose firmware falls over in the middle of a transfer."""

    async def iso_in(self, endpoint: Endpoint, lengths: Sequence[int]) -> Sequence[bytes | int]:
        raise RuntimeError("firmware crashed")


@pytest.fixture
def streaming() -> Iterator[tuple[RunningServer, WireClient]]:
    yield from _streaming(Counter(failing=frozenset({2})))


def _streaming(device: Counter) -> Iterator[tuple[RunningServer, WireClient]]:
    for server in start_server(extra_exports=[EmulatedExport(device, BUSID, busnum=3)], demo=False):
        with WireClient(server.port) as client:
            client.import_(BUSID)
            client.control_out(0x00, SET_CONFIGURATION, 1, 0)
            assert reply(client).status == 0
            client.control_out(0x01, SET_INTERFACE, 1, 0)
            assert reply(client).status == 0
            yield server, client


def _packets(*lengths: int) -> tuple[IsoPacket, ...]:
    offsets = [sum(lengths[:n]) for n in range(len(lengths))]
    return tuple(IsoPacket(offset, length) for offset, length in zip(offsets, lengths, strict=True))


def test_iso_in_reply_carries_start_frame_packets_error_count_and_packed_data(
    streaming: tuple[RunningServer, WireClient],
) -> None:
    _, client = streaming
    packets = _packets(8, 8, 8, 8)
    seqnum = client.submit(ep=1, direction=Direction.IN, length=32, flags=UrbFlag.ISO_ASAP, iso_packets=packets)
    ret = reply(client)
    assert ret.seqnum == seqnum and ret.status == 0
    assert ret.number_of_packets == 4 and len(ret.iso_packets) == 4
    assert 0 <= ret.start_frame < 2048
    assert ret.error_count == 1
    assert [(p.offset, p.length, p.actual_length, p.status) for p in ret.iso_packets] == [
        (0, 8, 8, 0), (8, 8, 8, 0), (16, 8, 0, -Errno.EXDEV), (24, 8, 8, 0),
    ]  # fmt: skip
    assert ret.actual_length == 24
    # Packed: only the bytes each packet carried, back to back, as the kernel's stub sends them.
    assert ret.data == bytes(8) + b"\x01\0\0\0" * 2 + b"\x03\0\0\0" * 2


def test_consecutive_urbs_get_consecutive_frames(streaming: tuple[RunningServer, WireClient]) -> None:
    _, client = streaming
    first = client.submit(ep=1, direction=Direction.IN, length=40, flags=ISO_ASAP, iso_packets=_packets(*[4] * 10))
    second = client.submit(ep=1, direction=Direction.IN, length=40, flags=ISO_ASAP, iso_packets=_packets(*[4] * 10))
    replies = {ret.seqnum: ret for ret in (reply(client), reply(client))}
    assert replies[second].start_frame == (replies[first].start_frame + 10) & 0x7FF


def test_iso_out_reply_accepts_every_packet_and_carries_no_data(streaming: tuple[RunningServer, WireClient]) -> None:
    _, client = streaming
    client.submit(ep=2, direction=Direction.OUT, data=bytes(range(30)), flags=ISO_ASAP, iso_packets=_packets(10, 20))
    ret = reply(client)
    assert ret.status == 0 and ret.data == b""
    assert ret.actual_length == 30 and ret.error_count == 0
    assert [(p.actual_length, p.status) for p in ret.iso_packets] == [(10, 0), (20, 0)]


def test_a_transfer_the_device_fails_reports_every_packet_failed() -> None:
    for _, client in _streaming(Broken()):
        client.submit(ep=1, direction=Direction.IN, length=16, flags=ISO_ASAP, iso_packets=_packets(8, 8))
        ret = reply(client)
        assert ret.status == -Errno.EPROTO
        assert ret.actual_length == 0 and ret.data == b""
        assert [(p.actual_length, p.status) for p in ret.iso_packets] == [(0, -Errno.EPROTO)] * 2
        # The connection goes on: the next transfer is answered too.
        client.submit(ep=1, direction=Direction.IN, length=8, flags=ISO_ASAP, iso_packets=_packets(8))
        assert reply(client).number_of_packets == 1


def test_a_stalled_transfer_reports_the_stall_in_every_packet() -> None:
    for _, client in _streaming(Stalling()):
        client.submit(ep=1, direction=Direction.IN, length=16, flags=ISO_ASAP, iso_packets=_packets(8, 8))
        ret = reply(client)
        assert ret.status == -Errno.EPIPE
        assert [(p.actual_length, p.status) for p in ret.iso_packets] == [(0, -Errno.EPIPE)] * 2


def test_a_urb_without_iso_asap_starts_at_once_whatever_frame_it_names(
    streaming: tuple[RunningServer, WireClient],
) -> None:
    """Linux's snd-usb-audio sends its URBs without URB_ISO_ASAP, fresh ones naming frame 0: a
    frame of the client's, not of our counter. Taken as ours, it held a stream's start for up to
    a second (and failed the guest's arecord with EIO)."""
    _, client = streaming
    client.submit(ep=1, direction=Direction.IN, length=4, flags=ISO_ASAP, iso_packets=_packets(4))
    named = (reply(client).start_frame + 4 + 1000) & 0x7FF  # a second ahead on our counter
    started = time.monotonic()
    client.submit(ep=1, direction=Direction.IN, length=4, iso_packets=_packets(4), start_frame=named)
    ret = reply(client)
    assert time.monotonic() - started < 0.5, "the URB waited for the frame it named"
    assert (named - ret.start_frame) & 0x7FF > 500, ret.start_frame
