"""Numbers of the USB/IP protocol and of USB itself, as named enums."""

from __future__ import annotations

import enum

USBIP_VERSION = 0x0111
DEFAULT_PORT = 3240

OP_HEADER_SIZE = 8
DEVICE_RECORD_SIZE = 312
INTERFACE_RECORD_SIZE = 4
BUSID_SIZE = 32
PATH_SIZE = 256
URB_HEADER_SIZE = 48
ISO_DESCRIPTOR_SIZE = 16

# The Linux stub's own cap on iso packets per URB (USBIP_MAX_ISO_PACKETS).
MAX_ISO_PACKETS = 1024
AUTH_NONCE_SIZE = 32
AUTH_PROOF_SIZE = 32
SESSION_ID_SIZE = 16
SESSION_SECRET_SIZE = 32
# Largest DEVLIST a client accepts: bounds what a hostile server can make us buffer.
MAX_DEVLIST_DEVICES = 4096


class OpCode(enum.IntEnum):
    """Management-phase operation codes (requests carry 0x8000 on top)."""

    REQ_DEVLIST = 0x8005
    REP_DEVLIST = 0x0005
    REQ_IMPORT = 0x8003
    REP_IMPORT = 0x0003
    # usbwire's authentication extension (challenge-response with a shared token). Plain
    # USB/IP peers never send these; usbipd drops a connection that does.
    REQ_CHALLENGE = 0x80A1
    REP_CHALLENGE = 0x00A1
    REQ_AUTH = 0x80A2
    REP_AUTH = 0x00A2
    # usbwire's session extension (protocol/session.py): a resumable URB stream, and its
    # resumption over a new connection. Asked for only by usbwire clients told to.
    REQ_SESSION = 0x80A3
    REP_SESSION = 0x00A3
    REQ_RESUME = 0x80A4
    REP_RESUME = 0x00A4


class OpStatus(enum.IntEnum):
    """Status of an OP reply (tools/usb/usbip/libsrc/usbip_common.h)."""

    OK = 0
    NA = 1
    DEV_BUSY = 2
    DEV_ERR = 3
    NODEV = 4
    ERROR = 5

    @property
    def text(self) -> str:
        return _OP_STATUS_TEXT[self]


_OP_STATUS_TEXT = {
    OpStatus.OK: "Request Completed Successfully",
    OpStatus.NA: "Request Failed",
    OpStatus.DEV_BUSY: "Device busy (exported)",
    OpStatus.DEV_ERR: "Device in error state",
    OpStatus.NODEV: "Device not found",
    OpStatus.ERROR: "Unexpected response",
}


class Command(enum.IntEnum):
    """URB-phase command codes."""

    CMD_SUBMIT = 1
    CMD_UNLINK = 2
    RET_SUBMIT = 3
    RET_UNLINK = 4


class Direction(enum.IntEnum):
    OUT = 0
    IN = 1


class Speed(enum.IntEnum):
    """enum usb_device_speed, as carried in the device record and the vhci attach string."""

    UNKNOWN = 0
    LOW = 1
    FULL = 2
    HIGH = 3
    WIRELESS = 4
    SUPER = 5
    SUPER_PLUS = 6

    @property
    def text(self) -> str:
        return _SPEED_TEXT.get(self, "Unknown Speed")

    @classmethod
    def from_sysfs(cls, text: str) -> Speed:
        """The speed a Linux device's sysfs ``speed`` attribute names (Mbit/s as text)."""
        return _SPEED_FROM_SYSFS.get(text.strip(), cls.UNKNOWN)


_SPEED_FROM_SYSFS = {
    "1.5": Speed.LOW,
    "12": Speed.FULL,
    "480": Speed.HIGH,
    "5000": Speed.SUPER,
    "10000": Speed.SUPER_PLUS,
    "20000": Speed.SUPER_PLUS,
}

_SPEED_TEXT = {
    Speed.LOW: "Low Speed(1.5Mbps)",
    Speed.FULL: "Full Speed(12Mbps)",
    Speed.HIGH: "High Speed(480Mbps)",
    Speed.WIRELESS: "Wireless",
    Speed.SUPER: "Super Speed(5000Mbps)",
}


class TransferType(enum.IntEnum):
    """bmAttributes bits 1..0 of an endpoint descriptor."""

    CONTROL = 0
    ISOCHRONOUS = 1
    BULK = 2
    INTERRUPT = 3


class UrbFlag(enum.IntFlag):
    """USBIP_URB_* transfer flags that mean something on the wire."""

    SHORT_NOT_OK = 0x0001
    ISO_ASAP = 0x0002
    ZERO_PACKET = 0x0040
    NO_INTERRUPT = 0x0080
    DIR_IN = 0x0200
    DMA_MAP_SG = 0x00040000


class Errno(enum.IntEnum):
    """Linux asm-generic errno values used as URB completion statuses (positive here)."""

    ENOENT = 2
    EXDEV = 18
    ENODEV = 19
    EINVAL = 22
    EPIPE = 32
    ETIME = 62
    ENOSR = 63
    ECOMM = 70
    EPROTO = 71
    EOVERFLOW = 75
    ECONNRESET = 104
    ESHUTDOWN = 108
    ETIMEDOUT = 110
    EREMOTEIO = 121
