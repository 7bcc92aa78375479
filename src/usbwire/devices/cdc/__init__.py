"""Communications class devices: a CDC-ACM serial port."""

from usbwire.devices.cdc.acm import LineCoding, Serial

__all__ = ["LineCoding", "Serial"]
