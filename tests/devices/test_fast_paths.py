"""Transfers a device completes without waiting (the server's fast lane) agree with the full path.

``control_now``, ``transfer_now`` and ``EmulatedExport.complete_now`` either finish a transfer
exactly as ``control``, ``transfer`` and ``submit`` would, or decline it having done nothing.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.raw import setup_packet
from usbwire.backends.base import Urb
from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.base import Device
from usbwire.devices.descriptors import Configuration, DeviceDescriptor, Endpoint, Interface
from usbwire.devices.loopback import REQUEST_READ, REQUEST_WRITE, Loopback
from usbwire.devices.requests import Setup
from usbwire.errors import Stall
from usbwire.protocol import Direction, Errno, TransferType, UrbFlag

GET_STATUS, GET_DESCRIPTOR, GET_CONFIGURATION, SET_CONFIGURATION = 0, 6, 8, 9
BULK_OUT, BULK_IN = 0x01, 0x81


def configured_loopback(capacity: int = 4096) -> Loopback:
    device = Loopback(capacity=capacity)
    device.set_configuration(1)
    return device


STANDARD_REQUESTS = [
    setup_packet(0x80, GET_DESCRIPTOR, 0x0100, 0, 18),
    setup_packet(0x80, GET_DESCRIPTOR, 0x0100, 0, 8),
    setup_packet(0x80, GET_DESCRIPTOR, 0x0200, 0, 255),
    setup_packet(0x80, GET_DESCRIPTOR, 0x0302, 0x0409, 255),
    setup_packet(0x80, GET_STATUS, 0, 0, 2),
    setup_packet(0x80, GET_CONFIGURATION, 0, 0, 1),
]


@pytest.mark.parametrize("setup", STANDARD_REQUESTS, ids=lambda raw: str(Setup.from_bytes(raw)))
def test_a_standard_request_is_answered_now_as_control_answers_it(setup: bytes) -> None:
    device = configured_loopback()
    expected = asyncio.run(device.control(Setup.from_bytes(setup), b""))
    assert device.control_now(setup, b"") == expected
    assert device.control_now(setup, b"") == expected  # and again, from the kept answer


def test_set_configuration_takes_effect_on_the_fast_path_too() -> None:
    device = Loopback()
    assert device.control_now(setup_packet(0x00, SET_CONFIGURATION, 1, 0, 0), b"") == b""
    assert device.configuration is not None
    assert device.control_now(setup_packet(0x80, GET_CONFIGURATION, 0, 0, 1), b"") == b"\x01"


def test_a_vendor_request_is_declined_untouched_and_left_to_control() -> None:
    device = configured_loopback()
    write = setup_packet(0x40, REQUEST_WRITE, 0, 0, 5)
    assert device.control_now(write, b"hello") is None
    read = Setup.from_bytes(setup_packet(0xC0, REQUEST_READ, 0, 0, 5))
    assert asyncio.run(device.control(read, b"")) == b""  # the declined write did not happen


def test_a_host_asking_for_every_descriptor_variant_does_not_grow_the_device_without_bound() -> None:
    device = configured_loopback()
    for length in range(1, 300):
        setup = setup_packet(0x80, GET_DESCRIPTOR, 0x0200, 0, length)
        assert device.control_now(setup, b"") == device.descriptors.configuration(0)[:length]
    assert len(device._descriptor_answers) <= 64


def test_an_unknown_standard_request_stalls_on_the_fast_path() -> None:
    with pytest.raises(Stall):
        configured_loopback().control_now(setup_packet(0x80, GET_DESCRIPTOR, 0x0900, 0, 9), b"")


def test_the_loopback_hands_back_the_very_bytes_an_out_transfer_brought() -> None:
    device = configured_loopback()
    data = bytes(range(64))
    assert device.transfer_now(BULK_OUT, data, len(data)) == b""
    assert device.transfer_now(BULK_IN, b"", 64) is data


def test_the_loopback_is_a_byte_stream_across_transfers_of_any_size() -> None:
    device = configured_loopback()
    for chunk in (b"abc", b"defg", b"hi"):
        device.transfer_now(BULK_OUT, chunk, len(chunk))
    assert device.transfer_now(BULK_IN, b"", 2) == b"ab"
    assert device.transfer_now(BULK_IN, b"", 5) == b"cdefg"
    assert device.transfer_now(BULK_IN, b"", 64) == b"hi"
    assert device.transfer_now(BULK_IN, b"", 64) is None  # nothing queued: the IN must wait


def test_a_full_loopback_declines_an_out_transfer_and_takes_it_once_drained() -> None:
    device = configured_loopback(capacity=8)
    assert device.transfer_now(BULK_OUT, bytes(8), 8) == b""
    assert device.transfer_now(BULK_OUT, b"x", 1) is None
    assert device.transfer_now(BULK_IN, b"", 8) == bytes(8)
    assert device.transfer_now(BULK_OUT, b"x", 1) == b""


def test_an_out_transfer_waiting_for_room_completes_when_an_in_drains_the_loopback() -> None:
    async def main() -> bytes:
        device = configured_loopback(capacity=4)
        out_endpoint, in_endpoint = device.endpoint(1, Direction.OUT), device.endpoint(1, Direction.IN)
        assert out_endpoint is not None and in_endpoint is not None
        await device.transfer(out_endpoint, b"full", 4)
        waiting = asyncio.ensure_future(device.transfer(out_endpoint, b"next", 4))
        await asyncio.sleep(0)
        assert not waiting.done()
        assert await device.transfer(in_endpoint, b"", 4) == b"full"
        await asyncio.wait_for(waiting, 5)
        return await device.transfer(in_endpoint, b"", 4)

    assert asyncio.run(main()) == b"next"


def test_a_halted_endpoint_stalls_on_the_fast_path() -> None:
    device = configured_loopback()
    endpoint = device.endpoint(1, Direction.IN)
    assert endpoint is not None
    device.halt(endpoint)
    with pytest.raises(Stall):
        device.transfer_now(BULK_IN, b"", 64)


class Streamer(Device):
    """A device with an isochronous endpoint next to an interrupt one."""

    def __init__(self) -> None:
        interface = Interface(
            0,
            0xFF,
            endpoints=(
                Endpoint(1, Direction.IN, TransferType.ISOCHRONOUS, 64, interval=1),
                Endpoint(2, Direction.IN, TransferType.INTERRUPT, 8, interval=1),
            ),
        )
        super().__init__(DeviceDescriptor(0x1209, 0x00F1, (Configuration(1, (interface,)),)))
        self.set_configuration(1)

    def in_now(self, endpoint: Endpoint, length: int) -> bytes | None:
        return b"\x01\x02"


def test_isochronous_and_absent_endpoints_are_left_to_the_full_path() -> None:
    device = Streamer()
    assert device.transfer_now(0x81, b"", 64) is None  # isochronous: paced by the bus clock
    assert device.transfer_now(0x83, b"", 8) is None  # not in the configuration
    assert device.transfer_now(0x82, b"", 8) == b"\x01\x02"


def test_the_export_answers_a_short_transfer_as_submit_does_when_short_is_not_ok() -> None:
    export = EmulatedExport(Streamer(), "9-1")
    now = export.complete_now(2, Direction.IN, UrbFlag.SHORT_NOT_OK, 8, bytes(8), b"")
    urb = Urb(2, Direction.IN, TransferType.INTERRUPT, 8, flags=UrbFlag.SHORT_NOT_OK)
    full = asyncio.run(export.submit(urb))
    assert now == (full.status, len(full.data), full.data) == (-Errno.EREMOTEIO, 2, b"\x01\x02")


def test_the_export_turns_a_stall_into_epipe_and_declines_what_must_wait() -> None:
    export = EmulatedExport(configured_loopback(), "9-2")
    stall = setup_packet(0x80, GET_DESCRIPTOR, 0x0900, 0, 9)
    assert export.complete_now(0, Direction.IN, 0, 9, stall, b"") == (-Errno.EPIPE, 0, b"")
    assert export.complete_now(1, Direction.IN, 0, 64, bytes(8), b"") is None
    assert export.complete_now(1, Direction.OUT, 0, 3, bytes(8), b"abc") == (0, 3, b"")
    assert export.complete_now(1, Direction.IN, 0, 64, bytes(8), b"") == (0, 3, b"abc")


class Faulty(Streamer):
    """Its interrupt endpoint babbles (answers more than asked) or breaks."""

    def __init__(self, answer: bytes | Exception) -> None:
        super().__init__()
        self.answer = answer

    def in_now(self, endpoint: Endpoint, length: int) -> bytes | None:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_device_answering_more_than_was_asked_babbles() -> None:
    fast = EmulatedExport(Faulty(bytes(9)), "9-3").complete_now
    assert fast(2, Direction.IN, 0, 8, bytes(8), b"") == (-Errno.EOVERFLOW, 0, b"")


def test_a_device_failing_on_the_fast_path_fails_only_that_urb(caplog: pytest.LogCaptureFixture) -> None:
    device = Faulty(RuntimeError("sensor unplugged"))
    fast = EmulatedExport(device, "9-3").complete_now
    assert fast(2, Direction.IN, 0, 8, bytes(8), b"") == (-Errno.EPROTO, 0, b"")
    assert "sensor unplugged" in caplog.text
    device.answer = b"ok"
    assert fast(2, Direction.IN, 0, 8, bytes(8), b"") == (0, 2, b"ok")
