"""An emulated boot-protocol USB keyboard: type text from Python, read the host's LEDs."""

from __future__ import annotations

import asyncio
import enum

from usbwire.devices.descriptors import Configuration, DeviceDescriptor, Endpoint, Interface
from usbwire.devices.hid.common import HidDevice, ReportType, hid_descriptor
from usbwire.devices.hid.keycodes import keystrokes
from usbwire.devices.hid.report import BOOT_KEYBOARD
from usbwire.errors import Stall
from usbwire.protocol.constants import Direction, Speed, TransferType


class Led(enum.IntFlag):
    NUM_LOCK = 0x01
    CAPS_LOCK = 0x02
    SCROLL_LOCK = 0x04
    COMPOSE = 0x08
    KANA = 0x10


KEYBOARD = DeviceDescriptor(
    vendor_id=0x1209,
    product_id=0x0003,
    manufacturer="usbwire",
    product="Emulated keyboard",
    serial="KBD0001",
    max_packet_size0=8,
    configurations=(
        Configuration(
            value=1,
            max_power_ma=100,
            remote_wakeup=True,
            interfaces=(
                Interface(
                    number=0,
                    interface_class=0x03,
                    interface_subclass=0x01,  # boot interface
                    interface_protocol=0x01,  # keyboard
                    extra=hid_descriptor(BOOT_KEYBOARD),
                    endpoints=(
                        Endpoint(1, Direction.IN, TransferType.INTERRUPT, 8, interval=10),
                        Endpoint(2, Direction.OUT, TransferType.INTERRUPT, 8, interval=10),
                    ),
                ),
            ),
        ),
    ),
)


class Keyboard(HidDevice):
    """Each typed character becomes a key-down report followed by an all-keys-up report."""

    report_descriptor = BOOT_KEYBOARD
    report_size = 8

    def __init__(self, speed: Speed = Speed.FULL) -> None:
        super().__init__(KEYBOARD, speed)
        self.leds = Led(0)
        self._leds_changed = asyncio.Event()

    def type_text(self, text: str) -> int:
        """Queue ``text``; returns how many reports were queued (two per character)."""
        strokes = keystrokes(text)  # refuse the whole text before queueing any of it
        for modifiers, usage in strokes:
            self.press(modifiers, usage)
            self.release()
        return 2 * len(strokes)

    def press(self, modifiers: int, *usages: int) -> None:
        if len(usages) > 6:
            raise ValueError("a boot keyboard reports at most 6 keys at once")
        self.queue_report(bytes([modifiers, 0, *usages]).ljust(8, b"\0"))

    def release(self) -> None:
        self.queue_report(bytes(8))

    async def leds_changed(self) -> Led:
        """Wait for the host to set the LEDs; returns the new state."""
        self._leds_changed.clear()
        await self._leds_changed.wait()
        return self.leds

    def set_report(self, report_type: int, report_id: int, data: bytes) -> None:
        if report_type != ReportType.OUTPUT or not data:
            raise Stall(f"no report of type {report_type} to set")
        self._set_leds(data[0])

    async def handle_out(self, endpoint: Endpoint, data: bytes) -> None:
        if data:
            self._set_leds(data[0])

    def _set_leds(self, value: int) -> None:
        self.leds = Led(value & 0x1F)
        self._leds_changed.set()
