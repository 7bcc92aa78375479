"""Emulated USB devices on a shared descriptor and control-request framework."""

from usbwire.devices.base import Device
from usbwire.devices.loopback import Loopback

__all__ = ["Device", "Loopback"]
