"""Use devices exported by a USB/IP server: from Python, or through the kernel's vhci."""

from usbwire.client.remote import Imported, ServerUnreachable, import_device, list_devices

__all__ = ["Imported", "ServerUnreachable", "import_device", "list_devices"]
