"""Use devices exported by a USB/IP server: from Python, or through the kernel's vhci."""

from usbwire.client.device import IsoResult, RemoteDevice, connect, open_device
from usbwire.client.remote import Imported, ServerUnreachable, import_device, list_devices
from usbwire.client.sync import SyncDevice

__all__ = [
    "Imported",
    "IsoResult",
    "RemoteDevice",
    "ServerUnreachable",
    "SyncDevice",
    "connect",
    "import_device",
    "list_devices",
    "open_device",
]
