"""HID class devices: a boot keyboard and a boot mouse."""

from usbwire.devices.hid.keyboard import Keyboard, Led
from usbwire.devices.hid.mouse import Button, Mouse

__all__ = ["Button", "Keyboard", "Led", "Mouse"]
