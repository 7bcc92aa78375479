"""Isochronous transfers of emulated devices: bus pacing, per-packet results, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from tests.conftest import running_server
from usbwire.backends.emulated import EmulatedExport
from usbwire.client import RemoteDevice, connect
from usbwire.devices.base import Device
from usbwire.devices.descriptors import Configuration, DeviceDescriptor, Endpoint, Interface
from usbwire.devices.iso import FRAME, MICROFRAME, IsoClock, service_interval
from usbwire.errors import TransferError
from usbwire.protocol import Direction, Errno, Speed, TransferType

BUSID = "3-1"


def _descriptor(speed_interval: int, packet: int, extra_transactions: int = 0) -> DeviceDescriptor:
    def streaming(alternate: int) -> Interface:
        endpoints = (
            Endpoint(1, Direction.IN, TransferType.ISOCHRONOUS, packet, interval=speed_interval,
                     additional_transactions=extra_transactions),
            Endpoint(2, Direction.OUT, TransferType.ISOCHRONOUS, packet, interval=speed_interval),
        ) if alternate else ()  # fmt: skip
        return Interface(0, 0xFF, alternate=alternate, endpoints=endpoints)

    return DeviceDescriptor(0x1209, 0x00F0, (Configuration(1, (streaming(0), streaming(1))),))


class Counter(Device):
    """Streams packets numbered 0, 1, 2, ...; every packet index in ``failing`` fails."""

    def __init__(self, speed: Speed = Speed.FULL, failing: frozenset[int] = frozenset(), extra: int = 0) -> None:
        super().__init__(_descriptor(1, 64, extra), speed)
        self.failing = failing
        self.sent = 0
        self.received: list[bytes] = []

    async def iso_in(self, endpoint: Endpoint, lengths: Sequence[int]) -> Sequence[bytes | int]:
        out: list[bytes | int] = []
        for length in lengths:
            n, self.sent = self.sent, self.sent + 1
            out.append(-Errno.EXDEV if n in self.failing else n.to_bytes(4, "little") * (length // 4))
        return out

    async def iso_out(self, endpoint: Endpoint, packets: Sequence[bytes]) -> None:
        self.received.extend(packets)


def test_the_service_interval_is_two_to_the_binterval_minus_one_frames() -> None:
    endpoint = Endpoint(1, Direction.IN, TransferType.ISOCHRONOUS, 64, interval=4)
    assert service_interval(endpoint, Speed.FULL) == pytest.approx(8 * FRAME)
    assert service_interval(endpoint, Speed.HIGH) == pytest.approx(8 * MICROFRAME)


def test_a_clock_books_urbs_back_to_back_and_restarts_after_a_gap() -> None:
    clock = IsoClock(FRAME)
    first = clock.reserve(8, now=10.0)
    second = clock.reserve(8, now=10.001)  # queued while the first is running
    assert first.deadline == pytest.approx(10.008)
    assert second.deadline == pytest.approx(10.016)
    assert second.start_frame == (first.start_frame + 8) & 0x7FF
    in_time = clock.reserve(8, now=10.020)  # queued in time, started by the server a bit late
    assert in_time.deadline == pytest.approx(10.024)
    late = clock.reserve(8, now=11.0)  # the host let the stream run dry: as soon as possible
    assert late.deadline == pytest.approx(11.008)


def test_frame_numbers_wrap_at_eleven_bits() -> None:
    slot = IsoClock(FRAME).reserve(1, now=2048 * FRAME + 5 * FRAME)
    assert slot.start_frame == 5


@contextlib.asynccontextmanager
async def streaming(port: int) -> AsyncIterator[RemoteDevice]:
    """The test device imported, configured and on its streaming alternate setting."""
    async with connect("127.0.0.1", BUSID, port=port) as device:
        await device.set_configuration(1)
        await device.set_interface(0, 1)
        yield device


def _with_device(device: Device, body: object) -> None:
    export = EmulatedExport(device, BUSID, busnum=3, devnum=2)
    with running_server(extra_exports=[export], demo=False) as server:
        asyncio.run(body(server.port))  # type: ignore[operator]


def test_in_packets_are_packed_and_spread_back_to_their_offsets() -> None:
    async def body(port: int) -> None:
        async with streaming(port) as device:
            result = await device.iso_transfer(0x81, [64, 16, 64])
        assert [p.actual_length for p in result.packets] == [64, 16, 64]
        assert result.data == bytes(4) * 16 + (1).to_bytes(4, "little") * 4 + (2).to_bytes(4, "little") * 16
        assert result.error_count == 0

    _with_device(Counter(), body)


def test_a_failed_packet_carries_its_own_status_and_the_urb_goes_on() -> None:
    async def body(port: int) -> None:
        async with streaming(port) as device:
            result = await device.iso_transfer(0x81, [8, 8, 8])
        assert [p.status for p in result.packets] == [0, -Errno.EXDEV, 0]
        assert [p.actual_length for p in result.packets] == [8, 0, 8]
        assert result.error_count == 1
        assert result.data[:8] == bytes(8) and result.data[8:16] == bytes(8) and result.data[16:] == b"\x02\0\0\0" * 2

    _with_device(Counter(failing=frozenset({1})), body)


def test_out_packets_reach_the_device_each_cut_at_its_offset() -> None:
    counter = Counter()

    async def body(port: int) -> None:
        async with streaming(port) as device:
            result = await device.iso_transfer(0x02, [b"a" * 10, b"b" * 20, b""])
        packets = [(p.offset, p.length, p.actual_length) for p in result.packets]
        assert packets == [(0, 10, 10), (10, 20, 20), (30, 0, 0)]

    _with_device(counter, body)
    assert counter.received == [b"a" * 10, b"b" * 20, b""]


def test_transfers_take_as_long_as_their_frames_on_the_bus() -> None:
    """Twenty URBs of ten 1 ms packets, four in flight, take 200 ms: not less, not much more."""

    async def body(port: int) -> None:
        async with streaming(port) as device:
            queue: asyncio.Queue[None] = asyncio.Queue(4)

            async def one() -> None:
                await device.iso_transfer(0x81, [64] * 10)
                queue.get_nowait()

            started = time.monotonic()
            tasks = []
            for _ in range(20):
                await queue.put(None)
                tasks.append(asyncio.ensure_future(one()))
            await asyncio.gather(*tasks)
            elapsed = time.monotonic() - started
        assert 0.195 <= elapsed < 0.6, elapsed

    _with_device(Counter(), body)


def test_high_bandwidth_endpoints_advertise_their_extra_transactions() -> None:
    device = Counter(Speed.HIGH, extra=2)
    raw = device.descriptors.configuration(0)
    position = raw.index(bytes([7, 5, 0x81, 0x01]))
    assert int.from_bytes(raw[position + 4 : position + 6], "little") == 64 | (2 << 11)


def test_an_unlinked_transfer_ends_and_the_stream_restarts_at_once() -> None:
    async def body(port: int) -> None:
        async with streaming(port) as device:
            with pytest.raises(TimeoutError):
                await device.iso_transfer(0x81, [64] * 1000, timeout=0.05)  # a whole second of bus time
            started = time.monotonic()
            await device.iso_transfer(0x81, [64] * 5)
            assert time.monotonic() - started < 0.5

    _with_device(Counter(), body)


def test_an_iso_endpoint_of_an_idle_alternate_setting_stalls() -> None:
    async def body(port: int) -> None:
        async with connect("127.0.0.1", BUSID, port=port) as device:
            await device.set_configuration(1)
            with pytest.raises(TransferError):
                await device.iso_transfer(0x81, [64])

    _with_device(Counter(), body)
