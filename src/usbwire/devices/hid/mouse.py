"""An emulated boot-protocol USB mouse with a wheel."""

from __future__ import annotations

import enum

from usbwire.devices.descriptors import Configuration, DeviceDescriptor, Endpoint, Interface
from usbwire.devices.hid.common import HidDevice, hid_descriptor
from usbwire.devices.hid.report import BOOT_MOUSE
from usbwire.protocol.constants import Direction, Speed, TransferType


class Button(enum.IntFlag):
    LEFT = 0x01
    RIGHT = 0x02
    MIDDLE = 0x04


MOUSE = DeviceDescriptor(
    vendor_id=0x1209,
    product_id=0x0004,
    manufacturer="usbwire",
    product="Emulated mouse",
    serial="MOUSE0001",
    max_packet_size0=8,
    configurations=(
        Configuration(
            value=1,
            max_power_ma=100,
            interfaces=(
                Interface(
                    number=0,
                    interface_class=0x03,
                    interface_subclass=0x01,
                    interface_protocol=0x02,  # mouse
                    extra=hid_descriptor(BOOT_MOUSE),
                    endpoints=(Endpoint(1, Direction.IN, TransferType.INTERRUPT, 4, interval=10),),
                ),
            ),
        ),
    ),
)


def _clamp(value: int) -> int:
    return max(-127, min(127, value))


class Mouse(HidDevice):
    """Moves are split into steps of at most 127 counts, the most one report can carry."""

    report_descriptor = BOOT_MOUSE
    report_size = 4

    def __init__(self, speed: Speed = Speed.FULL) -> None:
        super().__init__(MOUSE, speed)
        self.buttons = Button(0)

    def move(self, dx: int, dy: int, wheel: int = 0) -> int:
        """Queue a relative move; returns the number of reports queued."""
        count = 0
        while True:
            step_x, step_y, step_wheel = _clamp(dx), _clamp(dy), _clamp(wheel)
            self._report(step_x, step_y, step_wheel)
            count += 1
            dx, dy, wheel = dx - step_x, dy - step_y, wheel - step_wheel
            if not (dx or dy or wheel):
                return count

    def click(self, button: Button = Button.LEFT) -> int:
        self.buttons |= button
        self._report(0, 0, 0)
        self.buttons &= ~button
        self._report(0, 0, 0)
        return 2

    def _report(self, dx: int, dy: int, wheel: int) -> None:
        self.queue_report(bytes([int(self.buttons)]) + bytes(b & 0xFF for b in (dx, dy, wheel)))
