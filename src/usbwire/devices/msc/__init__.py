"""USB mass storage: a SCSI disk over the Bulk-Only Transport, backed by a raw image file.

``image.py`` is the medium, ``scsi.py`` (with ``pages.py`` and ``sense.py``) the SCSI
command set, ``bot.py`` the transport over the two bulk endpoints, and ``device.py`` the
USB device and its Python API.
"""

from usbwire.devices.msc.device import PRODUCT_ID, VENDOR_ID, MassStorage, scratch_disk
from usbwire.devices.msc.image import BLOCK_SIZE, Image

__all__ = ["BLOCK_SIZE", "PRODUCT_ID", "VENDOR_ID", "Image", "MassStorage", "scratch_disk"]
