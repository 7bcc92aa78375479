"""The emulated CDC-ACM serial port: line coding, control lines, data both ways."""

from __future__ import annotations

import asyncio
import os

from tests.conftest import RunningServer
from tests.devices.test_hid import imported, reply
from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.cdc import LineCoding, Serial
from usbwire.protocol import Direction

SERIAL_BUSID = "1-4"
SET_LINE_CODING, GET_LINE_CODING, SET_CONTROL_LINE_STATE = 0x20, 0x21, 0x22


def serial_at(server: RunningServer) -> Serial:
    export = server.server.registry.get(SERIAL_BUSID)
    assert isinstance(export, EmulatedExport) and isinstance(export.device, Serial)
    return export.device


def test_line_coding_round_trips(server: RunningServer) -> None:
    coding = LineCoding(baud=9600, stop_bits=2, parity=1, data_bits=7)
    with imported(server, SERIAL_BUSID) as client:
        client.control_out(0x21, SET_LINE_CODING, 0, 0, coding.to_bytes())
        assert reply(client).status == 0
        client.control_in(0xA1, GET_LINE_CODING, 0, 0, 7)
        assert LineCoding.from_bytes(reply(client).data) == coding
    assert server.call(lambda: serial_at(server).line_coding) == coding


def test_raising_dtr_reports_carrier_on_the_notification_endpoint(server: RunningServer) -> None:
    with imported(server, SERIAL_BUSID) as client:
        client.control_out(0x21, SET_CONTROL_LINE_STATE, 0x03, 0)
        assert reply(client).status == 0
        client.submit(ep=3, direction=Direction.IN, length=16, interval=16)
        notification = reply(client).data
    assert notification[:2] == bytes([0xA1, 0x20]) and notification[8:] == b"\x03\x00"


def test_bytes_cross_in_both_directions(server: RunningServer) -> None:
    serial = serial_at(server)
    to_device, to_host = os.urandom(3000), os.urandom(5000)
    with imported(server, SERIAL_BUSID) as client:
        client.submit(ep=2, direction=Direction.OUT, data=to_device)
        assert reply(client).actual_length == len(to_device)
        received = server.run(asyncio.wait_for(serial.read(), 5))
        server.call(lambda: serial.write(to_host))
        got = b""
        while len(got) < len(to_host):
            client.submit(ep=2, direction=Direction.IN, length=512)
            got += reply(client).data
    assert received == to_device
    assert got == to_host


def test_pty_bridge_carries_bytes_to_the_host_and_back(server: RunningServer) -> None:
    from usbwire.devices.cdc.pty import PtyBridge

    serial = serial_at(server)
    bridge = server.call(lambda: PtyBridge(serial))
    server.call(bridge.start)
    tty = os.open(bridge.path, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(tty, b"from the server's tty")
        with imported(server, SERIAL_BUSID) as client:
            client.submit(ep=2, direction=Direction.IN, length=512)
            assert reply(client).data == b"from the server's tty"
            client.submit(ep=2, direction=Direction.OUT, data=b"from the host")
            assert reply(client).status == 0
            assert os.read(tty, 100) == b"from the host"
    finally:
        os.close(tty)
        server.call(bridge.close)
