"""The USB/IP PDUs as typed values.

Every PDU is a slotted, keyword-only dataclass whose fields follow the wire order and the
names of the kernel's structures. They are values: never change one after building it. The
URB-phase PDUs are not ``frozen`` only because that costs a microsecond per PDU on the hot
path. A PDU that could never be put on the wire cannot be
built: ``__post_init__`` raises :class:`LocalProtocolError` naming the field. The decoder
reuses these checks and re-raises them as :class:`RemoteProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from usbwire.errors import LocalProtocolError
from usbwire.protocol.constants import (
    AUTH_NONCE_SIZE,
    AUTH_PROOF_SIZE,
    BUSID_SIZE,
    MAX_ISO_PACKETS,
    PATH_SIZE,
    Direction,
    OpStatus,
    Speed,
)

_new = object.__new__
_U8 = 0xFF
_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_S32_MIN = -(2**31)
_S32_MAX = 2**31 - 1


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise LocalProtocolError(f"{name}={value} is outside {low}..{high}", field=name, value=value)


def _range_error(obj: object, ranges: tuple[tuple[str, int, int], ...]) -> None:
    """Raise for the first field of ``obj`` outside its range (the slow path of a failed check)."""
    for name, low, high in ranges:
        _check_range(name, getattr(obj, name), low, high)


def _check_text(name: str, value: str, size: int) -> None:
    # The kernel's fields are NUL-terminated, so one byte of the fixed size is the terminator.
    encoded = value.encode()
    if len(encoded) >= size or b"\0" in encoded:
        raise LocalProtocolError(f"{name}={value!r} does not fit {size - 1} bytes", field=name, value=value)


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """One interface record of OP_REP_DEVLIST (class triple of an interface)."""

    bInterfaceClass: int
    bInterfaceSubClass: int
    bInterfaceProtocol: int

    def __post_init__(self) -> None:
        _check_range("bInterfaceClass", self.bInterfaceClass, 0, _U8)
        _check_range("bInterfaceSubClass", self.bInterfaceSubClass, 0, _U8)
        _check_range("bInterfaceProtocol", self.bInterfaceProtocol, 0, _U8)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceInfo:
    """The 312-byte ``usbip_usb_device`` record, plus its interfaces when DEVLIST sends them."""

    path: str
    busid: str
    busnum: int
    devnum: int
    speed: Speed
    idVendor: int
    idProduct: int
    bcdDevice: int
    bDeviceClass: int = 0
    bDeviceSubClass: int = 0
    bDeviceProtocol: int = 0
    bConfigurationValue: int = 0
    bNumConfigurations: int = 1
    bNumInterfaces: int = 0
    # Only OP_REP_DEVLIST carries interface records; OP_REP_IMPORT leaves this empty.
    interfaces: tuple[InterfaceInfo, ...] = ()

    def __post_init__(self) -> None:
        _check_text("path", self.path, PATH_SIZE)
        _check_text("busid", self.busid, BUSID_SIZE)
        _check_range("busnum", self.busnum, 0, _U32)
        _check_range("devnum", self.devnum, 0, _U32)
        _check_range("speed", int(self.speed), 0, _U32)
        for name in ("idVendor", "idProduct", "bcdDevice"):
            _check_range(name, getattr(self, name), 0, _U16)
        for name in (
            "bDeviceClass",
            "bDeviceSubClass",
            "bDeviceProtocol",
            "bConfigurationValue",
            "bNumConfigurations",
            "bNumInterfaces",
        ):
            _check_range(name, getattr(self, name), 0, _U8)
        if self.interfaces and len(self.interfaces) != self.bNumInterfaces:
            raise LocalProtocolError(
                f"{len(self.interfaces)} interface records but bNumInterfaces={self.bNumInterfaces}",
                field="bNumInterfaces",
                value=self.bNumInterfaces,
            )

    @property
    def devid(self) -> int:
        """The id every CMD_* header of an import must carry."""
        # A u32, as the Linux tools compute it (busnum and devnum are u32 on the wire).
        return ((self.busnum << 16) | self.devnum) & _U32


@dataclass(frozen=True, slots=True, kw_only=True)
class OpReqDevlist:
    """OP_REQ_DEVLIST: which devices may I import?"""


@dataclass(frozen=True, slots=True, kw_only=True)
class OpRepDevlist:
    """OP_REP_DEVLIST: the exportable devices, each with its interface records."""

    devices: tuple[DeviceInfo, ...] = ()
    status: OpStatus = OpStatus.OK

    def __post_init__(self) -> None:
        for device in self.devices:
            if len(device.interfaces) != device.bNumInterfaces:
                raise LocalProtocolError(
                    f"device {device.busid} lists {len(device.interfaces)} interfaces, "
                    f"bNumInterfaces={device.bNumInterfaces}",
                    field="interfaces",
                    value=len(device.interfaces),
                )


@dataclass(frozen=True, slots=True, kw_only=True)
class OpReqImport:
    """OP_REQ_IMPORT: hand me the device with this busid."""

    busid: str

    def __post_init__(self) -> None:
        _check_text("busid", self.busid, BUSID_SIZE)


@dataclass(frozen=True, slots=True, kw_only=True)
class OpRepImport:
    """OP_REP_IMPORT: the device record on success, only a status otherwise."""

    status: OpStatus
    device: DeviceInfo | None = None

    def __post_init__(self) -> None:
        if (self.status == OpStatus.OK) != (self.device is not None):
            raise LocalProtocolError(
                "OP_REP_IMPORT carries a device record exactly when status is OK",
                field="status",
                value=int(self.status),
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class OpReqChallenge:
    """usbwire extension: the client asks for a nonce to prove it knows a token."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OpRepChallenge:
    """usbwire extension: the server's fresh nonce."""

    nonce: bytes

    def __post_init__(self) -> None:
        if len(self.nonce) != AUTH_NONCE_SIZE:
            raise LocalProtocolError("the nonce is 32 bytes", field="nonce", value=len(self.nonce))


@dataclass(frozen=True, slots=True, kw_only=True)
class OpReqAuth:
    """usbwire extension: the client's nonce and HMAC proof (see usbwire.auth)."""

    nonce: bytes
    proof: bytes

    def __post_init__(self) -> None:
        if len(self.nonce) != AUTH_NONCE_SIZE or len(self.proof) != AUTH_PROOF_SIZE:
            raise LocalProtocolError("nonce and proof are 32 bytes each", field="proof", value=len(self.proof))


@dataclass(frozen=True, slots=True, kw_only=True)
class OpRepAuth:
    """usbwire extension: OK, or the connection ends."""

    status: OpStatus


@dataclass(frozen=True, slots=True)
class IsoPacket:
    """One isochronous packet descriptor (offset and length within the transfer buffer)."""

    offset: int
    length: int
    actual_length: int = 0
    status: int = 0

    def __post_init__(self) -> None:
        _check_range("iso offset", self.offset, 0, _S32_MAX)
        _check_range("iso length", self.length, 0, _S32_MAX)
        _check_range("iso actual_length", self.actual_length, 0, self.length)
        _check_range("iso status", self.status, _S32_MIN, 0)


def _check_iso(packets: tuple[IsoPacket, ...], number_of_packets: int) -> None:
    if len(packets) > MAX_ISO_PACKETS:
        raise LocalProtocolError(
            f"{len(packets)} iso packets, at most {MAX_ISO_PACKETS}",
            field="number_of_packets",
            value=len(packets),
        )
    if packets and number_of_packets != len(packets):
        raise LocalProtocolError(
            f"number_of_packets={number_of_packets} but {len(packets)} iso descriptors",
            field="number_of_packets",
            value=number_of_packets,
        )


@dataclass(slots=True, kw_only=True)
class CmdSubmit:
    """USBIP_CMD_SUBMIT (client -> server): start one transfer."""

    seqnum: int
    devid: int
    direction: Direction
    ep: int
    transfer_flags: int = 0
    transfer_buffer_length: int = 0
    start_frame: int = 0
    number_of_packets: int = 0
    interval: int = 0
    setup: bytes = bytes(8)
    # OUT only: exactly transfer_buffer_length bytes (for iso, the whole buffer with its gaps).
    data: bytes = b""
    # Isochronous endpoints only.
    iso_packets: tuple[IsoPacket, ...] = ()

    def __post_init__(self) -> None:
        # One chained comparison per field, no calls: this runs for every URB.
        if not (
            0 <= self.seqnum <= _U32
            and 0 <= self.devid <= _U32
            and 0 <= self.ep <= 15
            and 0 <= self.transfer_flags <= _U32
            and 0 <= self.transfer_buffer_length <= _S32_MAX
            and _S32_MIN <= self.interval <= _S32_MAX
            and _S32_MIN <= self.start_frame <= _S32_MAX
            and _S32_MIN <= self.number_of_packets <= _S32_MAX
        ):
            _range_error(self, _CMD_SUBMIT_RANGES)
        if len(self.setup) != 8:
            raise LocalProtocolError("setup must be 8 bytes", field="setup", value=self.setup)
        if self.direction == Direction.OUT:
            if len(self.data) != self.transfer_buffer_length:
                raise LocalProtocolError(
                    f"OUT data is {len(self.data)} bytes, transfer_buffer_length={self.transfer_buffer_length}",
                    field="transfer_buffer_length",
                    value=self.transfer_buffer_length,
                )
        elif self.data:
            raise LocalProtocolError("an IN request carries no data", field="direction", value=int(self.direction))
        self.check_payload()

    @classmethod
    def decoded(
        cls,
        seqnum: int,
        devid: int,
        direction: Direction,
        ep: int,
        transfer_flags: int,
        transfer_buffer_length: int,
        start_frame: int,
        number_of_packets: int,
        interval: int,
        setup: bytes,
        data: bytes,
        iso_packets: tuple[IsoPacket, ...],
    ) -> CmdSubmit:
        """Build from fields a decoder read with fixed-width formats and bounded itself.

        Skips the range checks those formats already guarantee (a microsecond per URB) but
        not :meth:`check_payload`, which no wire format can.
        """
        cmd = _new(cls)
        cmd.seqnum = seqnum
        cmd.devid = devid
        cmd.direction = direction
        cmd.ep = ep
        cmd.transfer_flags = transfer_flags
        cmd.transfer_buffer_length = transfer_buffer_length
        cmd.start_frame = start_frame
        cmd.number_of_packets = number_of_packets
        cmd.interval = interval
        cmd.setup = setup
        cmd.data = data
        cmd.iso_packets = iso_packets
        if iso_packets:
            cmd.check_payload()
        elif ep == 0:
            _check_control(cmd)  # what check_payload would do, one call shorter (every control URB)
        return cmd

    def check_payload(self) -> None:
        """Iso descriptors and the control setup packet agree with the rest of the request."""
        _check_iso(self.iso_packets, self.number_of_packets)
        for packet in self.iso_packets:
            if packet.offset + packet.length > self.transfer_buffer_length:
                raise LocalProtocolError(
                    f"iso packet {packet.offset}+{packet.length} ends past the buffer",
                    field="iso offset",
                    value=packet.offset,
                )
            if packet.actual_length:
                raise LocalProtocolError(
                    "submitted iso packets have actual_length 0",
                    field="iso actual_length",
                    value=packet.actual_length,
                )
        if self.ep == 0:
            _check_control(self)

    @property
    def is_iso(self) -> bool:
        return bool(self.iso_packets)


_CMD_SUBMIT_RANGES = (
    ("seqnum", 0, _U32),
    ("devid", 0, _U32),
    ("ep", 0, 15),
    ("transfer_flags", 0, _U32),
    ("transfer_buffer_length", 0, _S32_MAX),
    ("interval", _S32_MIN, _S32_MAX),
    ("start_frame", _S32_MIN, _S32_MAX),
    ("number_of_packets", _S32_MIN, _S32_MAX),
)
_RET_SUBMIT_RANGES = (
    ("seqnum", 0, _U32),
    ("status", _S32_MIN, 0),
    ("actual_length", 0, _S32_MAX),
    ("start_frame", _S32_MIN, _S32_MAX),
    ("number_of_packets", _S32_MIN, _S32_MAX),
    ("error_count", 0, _S32_MAX),
)


def _check_control(cmd: CmdSubmit) -> None:
    # The server's USB core refuses a control URB whose length disagrees with wLength,
    # and the data stage direction is fixed by bmRequestType.
    if cmd.iso_packets:
        # ep 0 is never isochronous: no server reads descriptors after a control request.
        raise LocalProtocolError(
            "a control transfer has no iso packets", field="iso_packets", value=len(cmd.iso_packets)
        )
    w_length = int.from_bytes(cmd.setup[6:8], "little")
    if w_length != cmd.transfer_buffer_length:
        raise LocalProtocolError(
            f"transfer_buffer_length={cmd.transfer_buffer_length} differs from wLength={w_length}",
            field="transfer_buffer_length",
            value=cmd.transfer_buffer_length,
        )
    setup_in = bool(cmd.setup[0] & 0x80)
    if w_length and setup_in != (cmd.direction == Direction.IN):
        raise LocalProtocolError(
            "direction disagrees with bmRequestType of the setup packet",
            field="direction",
            value=int(cmd.direction),
        )


@dataclass(slots=True, kw_only=True)
class RetSubmit:
    """USBIP_RET_SUBMIT (server -> client): how one CmdSubmit ended."""

    seqnum: int
    status: int = 0
    actual_length: int = 0
    start_frame: int = 0
    number_of_packets: int = 0
    error_count: int = 0
    # IN only: actual_length bytes; for iso, the packets' bytes packed back to back.
    data: bytes = b""
    iso_packets: tuple[IsoPacket, ...] = ()

    def __post_init__(self) -> None:
        if not (
            0 <= self.seqnum <= _U32
            and _S32_MIN <= self.status <= 0
            and 0 <= self.actual_length <= _S32_MAX
            and _S32_MIN <= self.start_frame <= _S32_MAX
            and _S32_MIN <= self.number_of_packets <= _S32_MAX
            and 0 <= self.error_count <= _S32_MAX
        ):
            _range_error(self, _RET_SUBMIT_RANGES)
        if self.data and len(self.data) != self.actual_length:
            raise LocalProtocolError(
                f"{len(self.data)} data bytes but actual_length={self.actual_length}",
                field="actual_length",
                value=self.actual_length,
            )
        _check_iso(self.iso_packets, self.number_of_packets)
        if self.iso_packets:
            total = sum(p.actual_length for p in self.iso_packets)
            if total != self.actual_length:
                raise LocalProtocolError(
                    f"iso packets sum to {total} bytes but actual_length={self.actual_length}",
                    field="actual_length",
                    value=self.actual_length,
                )

    @classmethod
    def answer(
        cls,
        seqnum: int,
        status: int,
        actual_length: int,
        start_frame: int,
        number_of_packets: int,
        error_count: int,
        data: bytes,
        iso_packets: tuple[IsoPacket, ...],
    ) -> RetSubmit:
        """Build a server's answer whose fields the server computed consistently itself.

        ``ServerConnection.send`` still checks it against the request it answers.
        """
        ret = _new(cls)
        ret.seqnum = seqnum
        ret.status = status
        ret.actual_length = actual_length
        ret.start_frame = start_frame
        ret.number_of_packets = number_of_packets
        ret.error_count = error_count
        ret.data = data
        ret.iso_packets = iso_packets
        return ret


@dataclass(slots=True, kw_only=True)
class CmdUnlink:
    """USBIP_CMD_UNLINK (client -> server): cancel the CmdSubmit numbered unlink_seqnum."""

    seqnum: int
    devid: int
    unlink_seqnum: int

    def __post_init__(self) -> None:
        _check_range("seqnum", self.seqnum, 0, _U32)
        _check_range("devid", self.devid, 0, _U32)
        _check_range("unlink_seqnum", self.unlink_seqnum, 0, _U32)


@dataclass(slots=True, kw_only=True)
class RetUnlink:
    """USBIP_RET_UNLINK (server -> client): -ECONNRESET if cancelled, 0 if it had completed."""

    seqnum: int
    status: int = 0

    def __post_init__(self) -> None:
        _check_range("seqnum", self.seqnum, 0, _U32)
        _check_range("status", self.status, _S32_MIN, 0)


OpEvent = (
    OpReqDevlist | OpRepDevlist | OpReqImport | OpRepImport | OpReqChallenge | OpRepChallenge | OpReqAuth | OpRepAuth
)
UrbEvent = CmdSubmit | RetSubmit | CmdUnlink | RetUnlink
Event = OpEvent | UrbEvent


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its end cleanly, at a PDU boundary."""


@dataclass(frozen=True, slots=True)
class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
"""Returned by ``next_event`` when more bytes must arrive before the next event."""

__all__ = [
    "NEED_DATA",
    "CmdSubmit",
    "CmdUnlink",
    "ConnectionClosed",
    "DeviceInfo",
    "Event",
    "InterfaceInfo",
    "IsoPacket",
    "OpEvent",
    "OpRepAuth",
    "OpRepChallenge",
    "OpRepDevlist",
    "OpRepImport",
    "OpReqAuth",
    "OpReqChallenge",
    "OpReqDevlist",
    "OpReqImport",
    "RetSubmit",
    "RetUnlink",
    "UrbEvent",
]
