"""The emulated keyboard and mouse, driven through a real server as a USB host would."""

from __future__ import annotations

import struct

from tests.conftest import RunningServer
from tests.wire import WireClient
from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.hid import Keyboard, Led, Mouse
from usbwire.devices.hid.report import BOOT_KEYBOARD, BOOT_MOUSE
from usbwire.protocol import Direction, Errno, RetSubmit

KEYBOARD_BUSID, MOUSE_BUSID = "1-2", "1-3"
GET_DESCRIPTOR, SET_CONFIGURATION = 6, 9
SET_REPORT, SET_IDLE, GET_PROTOCOL, SET_PROTOCOL = 0x09, 0x0A, 0x03, 0x0B


def reply(client: WireClient) -> RetSubmit:
    event = client.read_event()
    assert isinstance(event, RetSubmit), event
    return event


def imported(server: RunningServer, busid: str) -> WireClient:
    client = WireClient(server.port)
    client.import_(busid)
    client.control_out(0x00, SET_CONFIGURATION, 1, 0)
    assert reply(client).status == 0
    return client


def device_at(server: RunningServer, busid: str) -> object:
    export = server.server.registry.get(busid)
    assert isinstance(export, EmulatedExport)
    return export.device


def test_keyboard_is_a_boot_keyboard_with_its_report_descriptor(server: RunningServer) -> None:
    with imported(server, KEYBOARD_BUSID) as client:
        client.control_in(0x80, GET_DESCRIPTOR, 0x0200, 0, 255)
        config = reply(client).data
        client.control_in(0x81, GET_DESCRIPTOR, 0x2200, 0, 255)
        report_descriptor = reply(client).data
    interface = config[9:18]
    assert interface[5:8] == bytes([3, 1, 1])  # HID / boot / keyboard
    hid = config[18:27]
    assert hid[1] == 0x21 and struct.unpack_from("<H", hid, 7)[0] == len(BOOT_KEYBOARD)
    assert report_descriptor == BOOT_KEYBOARD


def test_typed_text_arrives_as_key_down_and_key_up_reports(server: RunningServer) -> None:
    keyboard = device_at(server, KEYBOARD_BUSID)
    assert isinstance(keyboard, Keyboard)
    with imported(server, KEYBOARD_BUSID) as client:
        client.control_out(0x21, SET_IDLE, 0, 0)
        assert reply(client).status == 0
        assert server.call(lambda: keyboard.type_text("Hi!\n")) == 8
        reports = []
        for _ in range(8):
            client.submit(ep=1, direction=Direction.IN, length=8, interval=10)
            reports.append(reply(client).data)
    shift = 0x02
    assert reports == [
        bytes([shift, 0, 0x0B, 0, 0, 0, 0, 0]),  # H
        bytes(8),
        bytes([0, 0, 0x0C, 0, 0, 0, 0, 0]),  # i
        bytes(8),
        bytes([shift, 0, 0x1E, 0, 0, 0, 0, 0]),  # !
        bytes(8),
        bytes([0, 0, 0x28, 0, 0, 0, 0, 0]),  # Enter
        bytes(8),
    ]


def test_leds_set_by_the_host_are_visible_to_the_api(server: RunningServer) -> None:
    keyboard = device_at(server, KEYBOARD_BUSID)
    assert isinstance(keyboard, Keyboard)
    with imported(server, KEYBOARD_BUSID) as client:
        client.control_out(0x21, SET_REPORT, 0x0200, 0, bytes([Led.CAPS_LOCK | Led.NUM_LOCK]))
        assert reply(client).status == 0
        assert server.call(lambda: keyboard.leds) == Led.CAPS_LOCK | Led.NUM_LOCK
        client.submit(ep=2, direction=Direction.OUT, data=bytes([Led.SCROLL_LOCK]), interval=10)
        assert reply(client).status == 0
        assert server.call(lambda: keyboard.leds) == Led.SCROLL_LOCK


def test_boot_protocol_can_be_selected(server: RunningServer) -> None:
    with imported(server, KEYBOARD_BUSID) as client:
        client.control_out(0x21, SET_PROTOCOL, 0, 0)
        assert reply(client).status == 0
        client.control_in(0xA1, GET_PROTOCOL, 0, 0, 1)
        assert reply(client).data == b"\x00"


def test_unknown_hid_request_stalls(server: RunningServer) -> None:
    with imported(server, KEYBOARD_BUSID) as client:
        client.control_in(0xA1, 0x42, 0, 0, 1)
        assert reply(client).status == -Errno.EPIPE


def test_mouse_moves_in_steps_a_report_can_carry(server: RunningServer) -> None:
    mouse = device_at(server, MOUSE_BUSID)
    assert isinstance(mouse, Mouse)
    with imported(server, MOUSE_BUSID) as client:
        client.control_in(0x81, GET_DESCRIPTOR, 0x2200, 0, 255)
        assert reply(client).data == BOOT_MOUSE
        assert server.call(lambda: mouse.move(200, -5)) == 2
        assert server.call(mouse.click) == 2
        reports = []
        for _ in range(4):
            client.submit(ep=1, direction=Direction.IN, length=4, interval=10)
            reports.append(reply(client).data)
    assert [struct.unpack("<Bbbb", r) for r in reports] == [
        (0, 127, -5, 0),
        (0, 73, 0, 0),
        (1, 0, 0, 0),
        (0, 0, 0, 0),
    ]
