"""The emulated USB disk: descriptors and Python API of a Bulk-Only SCSI device on an image."""

from __future__ import annotations

import hashlib
import os
import secrets
import string
import tempfile

from usbwire.devices.descriptors import Configuration, DeviceDescriptor, Endpoint, Interface
from usbwire.devices.msc.bot import BulkOnlyDevice
from usbwire.devices.msc.image import Image
from usbwire.devices.msc.pages import Identity
from usbwire.devices.msc.scsi import LogicalUnit
from usbwire.protocol.constants import Direction, Speed, TransferType

VENDOR_ID = 0x1209  # pid.codes
PRODUCT_ID = 0x0002  # pid.codes test PID
BULK_IN = 0x81
BULK_OUT = 0x02

# USB class codes of a mass storage interface (USB MSC overview §2, §3).
MASS_STORAGE_CLASS = 0x08
SCSI_TRANSPARENT_SUBCLASS = 0x06
BULK_ONLY_PROTOCOL = 0x50

SCRATCH_DISK_SIZE = 64 * 1024 * 1024

_MAX_PACKET = {Speed.FULL: 64, Speed.HIGH: 512, Speed.SUPER: 1024, Speed.SUPER_PLUS: 1024}
_IDENTITY = Identity(vendor="usbwire", product="Mass Storage", revision="1.00", serial="")


def _descriptor(speed: Speed, serial: str) -> DeviceDescriptor:
    max_packet = _MAX_PACKET.get(speed)
    if max_packet is None:
        raise ValueError(f"a mass storage device cannot run at {speed.name} speed (no bulk endpoints)")
    interface = Interface(
        number=0,
        interface_class=MASS_STORAGE_CLASS,
        interface_subclass=SCSI_TRANSPARENT_SUBCLASS,
        interface_protocol=BULK_ONLY_PROTOCOL,
        endpoints=(
            Endpoint(BULK_IN & 0x0F, Direction.IN, TransferType.BULK, max_packet),
            Endpoint(BULK_OUT, Direction.OUT, TransferType.BULK, max_packet),
        ),
    )
    return DeviceDescriptor(
        vendor_id=VENDOR_ID,
        product_id=PRODUCT_ID,
        manufacturer="usbwire",
        product="Mass Storage",
        serial=serial,
        configurations=(Configuration(value=1, interfaces=(interface,), max_power_ma=100),),
    )


def _default_serial(path: str | os.PathLike[str] | None) -> str:
    # Stable for an image path, so the host's /dev/disk/by-id names survive restarts.
    if path is None:
        return secrets.token_hex(8).upper()
    return hashlib.sha256(os.fsencode(os.path.realpath(path))).hexdigest()[:16].upper()


class MassStorage(BulkOnlyDevice):
    """A USB disk (class 08/06/50: SCSI over Bulk-Only) on a raw image of 512-byte blocks.

    Accepted writes reach the page cache at once and the disk on SYNCHRONIZE CACHE, on a
    write with FUA, when the host stops or ejects the unit, and in :meth:`close` (the end
    of each import). The image stays open while the device exists; call
    :meth:`swap_image` (with None) to release it sooner.

    Args:
        path: The image file, created sparse if missing and ``size`` is given; None for a
            drive with no medium.
        size: Size in bytes of a new image (a multiple of 512).
        read_only: Refuse writes (DATA PROTECT, WRITE PROTECTED) and report the WP bit.
        speed: FULL (64-byte packets), HIGH (512) or SUPER (1024).
        serial: The USB and SCSI serial number: 12 or more hex digits (BOT §4.1.1).
            Derived from the image path by default.

    Raises:
        ValueError: Bad ``size``, ``speed`` or ``serial``; see also :class:`Image`.
        OSError: The image cannot be opened or created.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        size: int | None = None,
        read_only: bool = False,
        speed: Speed = Speed.HIGH,
        *,
        serial: str | None = None,
    ) -> None:
        serial = serial if serial is not None else _default_serial(path)
        if len(serial) < 12 or not set(serial) <= set(string.hexdigits.upper()):
            raise ValueError(f"serial {serial!r} is not 12 or more upper-case hex digits")
        descriptor = _descriptor(speed, serial)
        image = Image(path, size, read_only) if path is not None else None
        identity = Identity(_IDENTITY.vendor, _IDENTITY.product, _IDENTITY.revision, serial)
        super().__init__(descriptor, speed, LogicalUnit(image, identity))

    @property
    def image(self) -> Image | None:
        """The inserted medium (None: no medium)."""
        return self.unit.image

    def swap_image(
        self, path: str | os.PathLike[str] | None, *, size: int | None = None, read_only: bool = False
    ) -> None:
        """Change the medium, as a card reader's user would: the host sees UNIT ATTENTION.

        The old image is synced (blocking) and closed first, so ``path`` may name it again.
        Call this on the event loop that serves the device.

        Args:
            path: The new image (same rules as the constructor), or None to remove the medium.
            size: Size of a new image to create.
            read_only: Open the new image read-only.

        Raises:
            ValueError: As :class:`Image`; the drive is then left without a medium.
            OSError: Syncing the old image or opening the new one failed; the drive is then
                left without a medium.
        """
        old = self.unit.change_medium(None)
        if old is not None and not old.closed:
            try:
                old.sync_now()
            finally:
                old.close()
        if path is not None:
            self.unit.change_medium(Image(path, size, read_only))

    async def close(self) -> None:
        """The import ended: make every accepted write durable; the medium stays in.

        Raises:
            OSError: fsync failed: writes the host saw succeed may be lost.
        """
        image = self.unit.image
        if image is not None and not image.closed and not image.read_only:
            await image.sync()
        self.unit.unplugged()


def scratch_disk(size: int = SCRATCH_DISK_SIZE) -> MassStorage:
    """A high-speed disk on a new sparse image in the temporary directory (the demo's "disk").

    The file is unlinked at once: its blocks are freed when the device goes away.

    Raises:
        OSError: The image cannot be created.
    """
    fd, path = tempfile.mkstemp(prefix="usbwire-disk-", suffix=".img")
    try:
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        return MassStorage(path)
    finally:
        os.unlink(path)
