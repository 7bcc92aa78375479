"""Parameter data a direct-access block device returns: INQUIRY, VPD and mode pages (SPC-4, SBC-3).

Pure functions of the device's identity and state; the command set in ``scsi.py`` decides
when to call them and cuts the result to the host's allocation length.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from usbwire.devices.msc.sense import INVALID_FIELD_IN_CDB, SAVING_PARAMETERS_NOT_SUPPORTED, CheckCondition

DIRECT_ACCESS_BLOCK_DEVICE = 0x00
VERSION_SPC4 = 0x06
RESPONSE_DATA_FORMAT = 0x02
STANDARD_INQUIRY_SIZE = 36


@dataclass(frozen=True, slots=True)
class Identity:
    """What INQUIRY reports: T10 vendor (8 chars), product (16), revision (4), serial."""

    vendor: str
    product: str
    revision: str
    serial: str
    removable: bool = True


def _ascii(text: str, width: int) -> bytes:
    return text.encode("ascii")[:width].ljust(width, b" ")


def standard_inquiry(identity: Identity) -> bytes:
    """Standard INQUIRY data (SPC-4 §6.6.2), the 36 bytes every host asks for first."""
    return (
        struct.pack(
            ">BBBBBBBB",
            DIRECT_ACCESS_BLOCK_DEVICE,  # peripheral qualifier 0: a unit is connected
            0x80 if identity.removable else 0,  # RMB
            VERSION_SPC4,
            RESPONSE_DATA_FORMAT,
            STANDARD_INQUIRY_SIZE - 5,  # additional length
            0,
            0,
            0,
        )
        + _ascii(identity.vendor, 8)
        + _ascii(identity.product, 16)
        + _ascii(identity.revision, 4)
    )


class VpdPage(enum.IntEnum):
    SUPPORTED_PAGES = 0x00
    UNIT_SERIAL_NUMBER = 0x80
    DEVICE_IDENTIFICATION = 0x83


def vpd_page(identity: Identity, page: int) -> bytes:
    """A vital product data page (SPC-4 §7.8).

    Raises:
        CheckCondition: INVALID FIELD IN CDB for a page we do not have.
    """
    if page == VpdPage.SUPPORTED_PAGES:
        body = bytes(sorted(VpdPage))
    elif page == VpdPage.UNIT_SERIAL_NUMBER:
        body = identity.serial.encode("ascii")
    elif page == VpdPage.DEVICE_IDENTIFICATION:
        # One designator: T10 vendor ID based, naming the logical unit (no IEEE OUI for NAA).
        designator = _ascii(identity.vendor, 8) + f"{identity.product.strip()} {identity.serial}".encode("ascii")
        body = (
            struct.pack(
                ">BBBB",
                0x02,  # protocol identifier 0, code set 2: ASCII
                0x01,  # PIV 0, association 0: the logical unit, designator type 1: T10 vendor ID
                0,
                len(designator),
            )
            + designator
        )
    else:
        raise CheckCondition(INVALID_FIELD_IN_CDB)
    return struct.pack(">BBH", DIRECT_ACCESS_BLOCK_DEVICE, page, len(body)) + body


# -- mode parameters (SPC-4 §7.5) --------------------------------------------------------------


class PageControl(enum.IntEnum):
    CURRENT = 0
    CHANGEABLE = 1
    DEFAULT = 2
    SAVED = 3


class ModePage(enum.IntEnum):
    READ_WRITE_ERROR_RECOVERY = 0x01
    CACHING = 0x08
    CONTROL = 0x0A
    ALL = 0x3F


ALL_SUBPAGES = 0xFF
_WP = 0x80  # device-specific parameter: write protected (SBC-3 §6.4.1)
_DPOFUA = 0x10  # device-specific parameter: DPO and FUA bits are honoured
_WCE = 0x04  # caching page: write cache enabled (the host must SYNCHRONIZE CACHE)


def _page(code: ModePage, body: bytes) -> bytes:
    return bytes([code, len(body)]) + body


def _pages(control: PageControl) -> dict[ModePage, bytes]:
    # Nothing is changeable: the changeable-values mask is all zeros.
    current = control != PageControl.CHANGEABLE
    return {
        ModePage.READ_WRITE_ERROR_RECOVERY: _page(ModePage.READ_WRITE_ERROR_RECOVERY, bytes(10)),
        # Writes land in the page cache until SYNCHRONIZE CACHE: a write-back cache, honestly
        # reported, so that Linux (sd) sends SYNCHRONIZE CACHE on every flush.
        ModePage.CACHING: _page(ModePage.CACHING, bytes([_WCE if current else 0]) + bytes(17)),
        ModePage.CONTROL: _page(ModePage.CONTROL, bytes(10)),  # D_SENSE 0: fixed format sense
    }


@dataclass(frozen=True, slots=True)
class ModeSense:
    """One MODE SENSE request, decoded from a 6- or 10-byte CDB."""

    page: int
    subpage: int
    control: PageControl
    block_descriptors: bool
    long_lba: bool = False


def mode_pages(request: ModeSense) -> bytes:
    """The mode pages asked for, in ascending page order for 0x3F.

    Raises:
        CheckCondition: INVALID FIELD IN CDB for an unknown page or subpage, SAVING
            PARAMETERS NOT SUPPORTED for saved values.
    """
    if request.control == PageControl.SAVED:
        raise CheckCondition(SAVING_PARAMETERS_NOT_SUPPORTED)
    pages = _pages(request.control)
    if request.page == ModePage.ALL and request.subpage in (0, ALL_SUBPAGES):
        return b"".join(pages[code] for code in sorted(pages))
    if request.subpage == 0 and request.page in pages:
        return pages[ModePage(request.page)]
    raise CheckCondition(INVALID_FIELD_IN_CDB)


def _block_descriptor(block_count: int, block_size: int, long_lba: bool) -> bytes:
    if long_lba:
        return struct.pack(">QII", block_count, 0, block_size)
    # Short form: density code 0, a 24-bit count (all ones: "more"), a 24-bit block length.
    return struct.pack(">I", min(block_count, 0xFFFFFF)) + struct.pack(">I", block_size)


def mode_parameters(
    request: ModeSense, *, ten: bool, block_count: int, block_size: int, write_protected: bool
) -> bytes:
    """The full MODE SENSE(6) or (10) parameter data: header, block descriptor, pages.

    Raises:
        CheckCondition: as :func:`mode_pages`.
    """
    pages = mode_pages(request)
    device_specific = _DPOFUA | (_WP if write_protected else 0)
    descriptor = b""
    if request.block_descriptors:
        descriptor = _block_descriptor(block_count, block_size, request.long_lba and ten)
    if ten:
        length = 8 + len(descriptor) + len(pages)
        header = struct.pack(
            ">HBBBBH",
            length - 2,  # mode data length excludes itself
            0,  # medium type
            device_specific,
            1 if len(descriptor) == 16 else 0,  # LONGLBA
            0,
            len(descriptor),
        )
    else:
        length = 4 + len(descriptor) + len(pages)
        header = struct.pack(">BBBB", length - 1, 0, device_specific, len(descriptor))
    return header + descriptor + pages
