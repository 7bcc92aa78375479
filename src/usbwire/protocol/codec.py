"""Bytes <-> PDUs. Pure functions over buffers; connection state lives in connection.py.

Each ``read_*`` function looks at a buffer that starts at a PDU boundary and returns
``(event, consumed)``, or ``None`` when the buffer does not yet hold the whole PDU. It decides
how many bytes it needs from fixed-size headers first, and checks every length against the
caller's limit *before* waiting for the bytes, so a hostile length never makes us buffer more
than the limit.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from usbwire.errors import LocalProtocolError, RemoteProtocolError
from usbwire.protocol.constants import (
    AUTH_NONCE_SIZE,
    AUTH_PROOF_SIZE,
    BUSID_SIZE,
    DEVICE_RECORD_SIZE,
    INTERFACE_RECORD_SIZE,
    ISO_DESCRIPTOR_SIZE,
    MAX_DEVLIST_DEVICES,
    MAX_ISO_PACKETS,
    OP_HEADER_SIZE,
    SESSION_ID_SIZE,
    SESSION_SECRET_SIZE,
    URB_HEADER_SIZE,
    USBIP_VERSION,
    Command,
    Direction,
    OpCode,
    OpStatus,
    Speed,
)
from usbwire.protocol.pdu import (
    CmdSubmit,
    CmdUnlink,
    DeviceInfo,
    InterfaceInfo,
    IsoPacket,
    OpRepAuth,
    OpRepChallenge,
    OpRepDevlist,
    OpRepImport,
    OpRepResume,
    OpRepSession,
    OpReqAuth,
    OpReqChallenge,
    OpReqDevlist,
    OpReqImport,
    OpReqResume,
    OpReqSession,
    RetSubmit,
    RetUnlink,
)

OP_HEADER = struct.Struct(">HHI")
DEVLIST_COUNT = struct.Struct(">I")
DEVICE_RECORD = struct.Struct(">256s32sIIIHHHBBBBBB")
INTERFACE_RECORD = struct.Struct(">BBBx")
BASIC_HEADER = struct.Struct(">IIIII")
CMD_SUBMIT = struct.Struct(">IIIIIIiiii8s")
RET_SUBMIT = struct.Struct(">IIIIIiiiii8x")
# A RET_SUBMIT of a non-iso URB: command, seqnum, status, actual_length, start_frame and
# number_of_packets; the rest is zero. Fewer fields to pack cut the packing's cost by a quarter.
RET_SUBMIT_PLAIN = struct.Struct(">II12xiiii12x")
CMD_UNLINK = struct.Struct(">IIIIII24x")
RET_UNLINK = struct.Struct(">IIIIIi24x")
ISO_DESCRIPTOR = struct.Struct(">IIIi")
SESSION_GRANT = struct.Struct(f">{SESSION_ID_SIZE}s{SESSION_SECRET_SIZE}sI")
RESUME_TICKET = struct.Struct(f">{SESSION_ID_SIZE}s{SESSION_SECRET_SIZE}sQ")
STREAM_COUNT = struct.Struct(">Q")

assert DEVICE_RECORD.size == DEVICE_RECORD_SIZE
assert CMD_SUBMIT.size == RET_SUBMIT.size == CMD_UNLINK.size == RET_UNLINK.size == URB_HEADER_SIZE

Buffer = bytes | bytearray | memoryview
Read = tuple[object, int] | None


def _remote(error: LocalProtocolError) -> RemoteProtocolError:
    return RemoteProtocolError(str(error), field=error.field, value=error.value)


# ---------------------------------------------------------------------------------------------
# Management phase


def encode_op_header(code: OpCode, status: int = 0) -> bytes:
    return OP_HEADER.pack(USBIP_VERSION, code, status)


def encode_device(device: DeviceInfo) -> bytes:
    return DEVICE_RECORD.pack(
        device.path.encode(),
        device.busid.encode(),
        device.busnum,
        device.devnum,
        device.speed,
        device.idVendor,
        device.idProduct,
        device.bcdDevice,
        device.bDeviceClass,
        device.bDeviceSubClass,
        device.bDeviceProtocol,
        device.bConfigurationValue,
        device.bNumConfigurations,
        device.bNumInterfaces,
    )


def encode_op_req_devlist(_: OpReqDevlist) -> bytes:
    return encode_op_header(OpCode.REQ_DEVLIST)


def encode_op_rep_devlist(rep: OpRepDevlist) -> bytes:
    parts = [encode_op_header(OpCode.REP_DEVLIST, rep.status), DEVLIST_COUNT.pack(len(rep.devices))]
    for device in rep.devices:
        parts.append(encode_device(device))
        parts.extend(
            INTERFACE_RECORD.pack(i.bInterfaceClass, i.bInterfaceSubClass, i.bInterfaceProtocol)
            for i in device.interfaces
        )
    return b"".join(parts)


def encode_op_req_import(req: OpReqImport) -> bytes:
    return encode_op_header(OpCode.REQ_IMPORT) + req.busid.encode().ljust(BUSID_SIZE, b"\0")


def encode_op_rep_import(rep: OpRepImport) -> bytes:
    header = encode_op_header(OpCode.REP_IMPORT, rep.status)
    return header if rep.device is None else header + encode_device(rep.device)


def _read_op_header(buf: Buffer, expected: tuple[OpCode, ...]) -> tuple[OpCode, int]:
    version, code, status = OP_HEADER.unpack_from(buf)
    if version != USBIP_VERSION:
        raise RemoteProtocolError(
            f"version 0x{version:04x}, expected 0x{USBIP_VERSION:04x}",
            field="version",
            value=version,
        )
    if code not in expected:
        raise RemoteProtocolError(
            f"op code 0x{code:04x} where {'/'.join(f'0x{c:04x}' for c in expected)} may come",
            field="code",
            value=code,
        )
    return OpCode(code), status


def _decode_text(raw: bytes, name: str) -> str:
    text = raw.split(b"\0", 1)[0]
    try:
        return text.decode()
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{name} is not UTF-8: {text!r}", field=name, value=text) from None


def decode_device(buf: Buffer, offset: int = 0) -> DeviceInfo:
    fields = DEVICE_RECORD.unpack_from(buf, offset)
    try:
        return DeviceInfo(
            path=_decode_text(fields[0], "path"),
            busid=_decode_text(fields[1], "busid"),
            busnum=fields[2],
            devnum=fields[3],
            speed=_speed(fields[4]),
            idVendor=fields[5],
            idProduct=fields[6],
            bcdDevice=fields[7],
            bDeviceClass=fields[8],
            bDeviceSubClass=fields[9],
            bDeviceProtocol=fields[10],
            bConfigurationValue=fields[11],
            bNumConfigurations=fields[12],
            bNumInterfaces=fields[13],
        )
    except LocalProtocolError as error:
        raise _remote(error) from None


def _speed(value: int) -> Speed:
    try:
        return Speed(value)
    except ValueError:
        raise RemoteProtocolError(f"unknown speed {value}", field="speed", value=value) from None


_OP_REQUESTS = (
    OpCode.REQ_DEVLIST,
    OpCode.REQ_IMPORT,
    OpCode.REQ_CHALLENGE,
    OpCode.REQ_SESSION,
    OpCode.REQ_RESUME,
)


def read_op_request(buf: Buffer) -> Read:
    """A server's first read: OP_REQ_DEVLIST, OP_REQ_IMPORT (or a usbwire extension's request)."""
    if len(buf) < OP_HEADER_SIZE:
        return None
    code, status = _read_op_header(buf, _OP_REQUESTS)
    if status != 0:
        # usbipd refuses a request with a non-zero status; so do we.
        raise RemoteProtocolError(f"request status {status}, must be 0", field="status", value=status)
    if code == OpCode.REQ_DEVLIST:
        return OpReqDevlist(), OP_HEADER_SIZE
    if code == OpCode.REQ_CHALLENGE:
        return OpReqChallenge(), OP_HEADER_SIZE
    if code == OpCode.REQ_SESSION:
        busid, size = _read_busid(buf)
        return (OpReqSession(busid=busid), size) if busid is not None else None
    if code == OpCode.REQ_RESUME:
        if len(buf) < OP_HEADER_SIZE + RESUME_TICKET.size:
            return None
        session_id, secret, received = RESUME_TICKET.unpack_from(buf, OP_HEADER_SIZE)
        return OpReqResume(session_id=session_id, secret=secret, received=received), OP_HEADER_SIZE + RESUME_TICKET.size
    busid, size = _read_busid(buf)
    return (OpReqImport(busid=busid), size) if busid is not None else None


def _read_busid(buf: Buffer) -> tuple[str | None, int]:
    size = OP_HEADER_SIZE + BUSID_SIZE
    if len(buf) < size:
        return None, size
    return _decode_text(bytes(buf[OP_HEADER_SIZE:size]), "busid"), size


def read_op_req_auth(buf: Buffer) -> Read:
    size = OP_HEADER_SIZE + AUTH_NONCE_SIZE + AUTH_PROOF_SIZE
    if len(buf) < OP_HEADER_SIZE:
        return None
    _, status = _read_op_header(buf, (OpCode.REQ_AUTH,))
    if status != 0:
        raise RemoteProtocolError(f"request status {status}, must be 0", field="status", value=status)
    if len(buf) < size:
        return None
    nonce = bytes(buf[OP_HEADER_SIZE : OP_HEADER_SIZE + AUTH_NONCE_SIZE])
    proof = bytes(buf[OP_HEADER_SIZE + AUTH_NONCE_SIZE : size])
    return OpReqAuth(nonce=nonce, proof=proof), size


def read_op_rep_challenge(buf: Buffer) -> Read:
    size = OP_HEADER_SIZE + AUTH_NONCE_SIZE
    if len(buf) < OP_HEADER_SIZE:
        return None
    _, status = _read_op_header(buf, (OpCode.REP_CHALLENGE,))
    if status != 0:
        raise RemoteProtocolError(f"challenge status {status}", field="status", value=status)
    if len(buf) < size:
        return None
    return OpRepChallenge(nonce=bytes(buf[OP_HEADER_SIZE:size])), size


def read_op_rep_auth(buf: Buffer) -> Read:
    if len(buf) < OP_HEADER_SIZE:
        return None
    _, status = _read_op_header(buf, (OpCode.REP_AUTH,))
    return OpRepAuth(status=_op_status(status)), OP_HEADER_SIZE


def encode_op_req_challenge(_: OpReqChallenge) -> bytes:
    return encode_op_header(OpCode.REQ_CHALLENGE)


def encode_op_rep_challenge(rep: OpRepChallenge) -> bytes:
    return encode_op_header(OpCode.REP_CHALLENGE) + rep.nonce


def encode_op_req_auth(req: OpReqAuth) -> bytes:
    return encode_op_header(OpCode.REQ_AUTH) + req.nonce + req.proof


def encode_op_rep_auth(rep: OpRepAuth) -> bytes:
    return encode_op_header(OpCode.REP_AUTH, rep.status)


def encode_op_req_session(req: OpReqSession) -> bytes:
    return encode_op_header(OpCode.REQ_SESSION) + req.busid.encode().ljust(BUSID_SIZE, b"\0")


def encode_op_rep_session(rep: OpRepSession) -> bytes:
    return encode_op_header(OpCode.REP_SESSION, rep.status) + SESSION_GRANT.pack(
        rep.session_id, rep.secret, rep.window_ms
    )


def read_op_rep_session(buf: Buffer) -> Read:
    if len(buf) < OP_HEADER_SIZE:
        return None
    _, status = _read_op_header(buf, (OpCode.REP_SESSION,))
    if len(buf) < OP_HEADER_SIZE + SESSION_GRANT.size:
        return None
    session_id, secret, window_ms = SESSION_GRANT.unpack_from(buf, OP_HEADER_SIZE)
    rep = OpRepSession(status=_op_status(status), session_id=session_id, secret=secret, window_ms=window_ms)
    return rep, OP_HEADER_SIZE + SESSION_GRANT.size


def encode_op_req_resume(req: OpReqResume) -> bytes:
    return encode_op_header(OpCode.REQ_RESUME) + RESUME_TICKET.pack(req.session_id, req.secret, req.received)


def encode_op_rep_resume(rep: OpRepResume) -> bytes:
    return encode_op_header(OpCode.REP_RESUME, rep.status) + STREAM_COUNT.pack(rep.received)


def read_op_rep_resume(buf: Buffer) -> Read:
    if len(buf) < OP_HEADER_SIZE:
        return None
    _, status = _read_op_header(buf, (OpCode.REP_RESUME,))
    if len(buf) < OP_HEADER_SIZE + STREAM_COUNT.size:
        return None
    (received,) = STREAM_COUNT.unpack_from(buf, OP_HEADER_SIZE)
    return OpRepResume(status=_op_status(status), received=received), OP_HEADER_SIZE + STREAM_COUNT.size


def read_op_rep_devlist(buf: Buffer, max_devices: int = MAX_DEVLIST_DEVICES) -> Read:
    need = OP_HEADER_SIZE + DEVLIST_COUNT.size
    if len(buf) < need:
        return None
    _, status = _read_op_header(buf, (OpCode.REP_DEVLIST,))
    (ndev,) = DEVLIST_COUNT.unpack_from(buf, OP_HEADER_SIZE)
    if ndev > max_devices:
        raise RemoteProtocolError(f"ndev={ndev} exceeds {max_devices}", field="ndev", value=ndev)
    devices = []
    offset = need
    for _ in range(ndev):
        if len(buf) < offset + DEVICE_RECORD_SIZE:
            return None
        device = decode_device(buf, offset)
        offset += DEVICE_RECORD_SIZE
        if len(buf) < offset + INTERFACE_RECORD_SIZE * device.bNumInterfaces:
            return None
        interfaces = []
        for _ in range(device.bNumInterfaces):
            interfaces.append(InterfaceInfo(*INTERFACE_RECORD.unpack_from(buf, offset)))
            offset += INTERFACE_RECORD_SIZE
        devices.append(_with_interfaces(device, tuple(interfaces)))
    return OpRepDevlist(devices=tuple(devices), status=_op_status(status)), offset


def _with_interfaces(device: DeviceInfo, interfaces: tuple[InterfaceInfo, ...]) -> DeviceInfo:
    fields = {name: getattr(device, name) for name in DeviceInfo.__dataclass_fields__}
    fields["interfaces"] = interfaces
    return DeviceInfo(**fields)


def _op_status(status: int) -> OpStatus:
    try:
        return OpStatus(status)
    except ValueError:
        raise RemoteProtocolError(f"unknown status {status}", field="status", value=status) from None


def read_op_rep_import(buf: Buffer) -> Read:
    if len(buf) < OP_HEADER_SIZE:
        return None
    _, status = _read_op_header(buf, (OpCode.REP_IMPORT,))
    if status != OpStatus.OK:
        return OpRepImport(status=_op_status(status)), OP_HEADER_SIZE
    if len(buf) < OP_HEADER_SIZE + DEVICE_RECORD_SIZE:
        return None
    device = decode_device(buf, OP_HEADER_SIZE)
    return OpRepImport(status=OpStatus.OK, device=device), OP_HEADER_SIZE + DEVICE_RECORD_SIZE


# ---------------------------------------------------------------------------------------------
# URB phase


def _encode_iso(packets: tuple[IsoPacket, ...]) -> bytes:
    pack = ISO_DESCRIPTOR.pack
    return b"".join(pack(p.offset, p.length, p.actual_length, p.status) for p in packets)


# The URB phase's enum members, as module globals: each is used once or more a URB, and
# looking an enum member up on its class costs ~70 ns on Python 3.11.
_CMD_SUBMIT, _RET_SUBMIT, _CMD_UNLINK, _RET_UNLINK = (
    Command.CMD_SUBMIT,
    Command.RET_SUBMIT,
    Command.CMD_UNLINK,
    Command.RET_UNLINK,
)
_OUT, _IN = Direction.OUT, Direction.IN


def encode_cmd_submit(cmd: CmdSubmit) -> bytes:
    flags = cmd.transfer_flags
    header = CMD_SUBMIT.pack(
        _CMD_SUBMIT,
        cmd.seqnum,
        cmd.devid,
        cmd.direction,
        cmd.ep,
        flags,
        cmd.transfer_buffer_length,
        cmd.start_frame,
        cmd.number_of_packets,
        cmd.interval,
        cmd.setup,
    )
    if cmd.iso_packets:
        return header + cmd.data + _encode_iso(cmd.iso_packets)
    return header + cmd.data if cmd.data else header


def encode_ret_submit(ret: RetSubmit) -> bytes:
    header = encode_ret_submit_header(
        ret.seqnum, ret.status, ret.actual_length, ret.start_frame, ret.number_of_packets, ret.error_count
    )
    if ret.iso_packets:
        return header + ret.data + _encode_iso(ret.iso_packets)
    return header + ret.data if ret.data else header


def encode_ret_submit_header(
    seqnum: int, status: int, actual: int, start_frame: int, number_of_packets: int, error_count: int
) -> bytes:
    """The 48-byte RET_SUBMIT header from its fields (the server's hot path builds no event)."""
    return RET_SUBMIT.pack(_RET_SUBMIT, seqnum, 0, 0, 0, status, actual, start_frame, number_of_packets, error_count)


def encode_cmd_unlink(cmd: CmdUnlink) -> bytes:
    return CMD_UNLINK.pack(_CMD_UNLINK, cmd.seqnum, cmd.devid, 0, 0, cmd.unlink_seqnum)


def encode_ret_unlink(ret: RetUnlink) -> bytes:
    return RET_UNLINK.pack(_RET_UNLINK, ret.seqnum, 0, 0, 0, ret.status)


def _read_iso(buf: Buffer, offset: int, count: int) -> tuple[IsoPacket, ...]:
    unpack = ISO_DESCRIPTOR.unpack_from
    size = ISO_DESCRIPTOR_SIZE
    try:
        return tuple(IsoPacket(*unpack(buf, offset + i * size)) for i in range(count))
    except LocalProtocolError as error:
        raise _remote(error) from None


def _command(buf: Buffer, expected: tuple[Command, ...]) -> int:
    command = int.from_bytes(buf[0:4], "big")
    if command not in expected:
        raise RemoteProtocolError(f"unknown or unexpected command {command}", field="command", value=command)
    return command


_DIRECTIONS = (Direction.OUT, Direction.IN)


@dataclass(frozen=True, slots=True)
class SubmitLimits:
    """What a server accepts in a CMD_SUBMIT, before it reads the payload."""

    max_transfer: int
    devid: int
    is_iso: Callable[[int, Direction], bool]


def read_cmd(buf: Buffer, limits: SubmitLimits) -> Read:
    """A server's read in the URB phase: CMD_SUBMIT or CMD_UNLINK."""
    if len(buf) < URB_HEADER_SIZE:
        return None
    (command, seqnum, devid, direction, ep, flags, length, start_frame, npackets, interval, setup) = (
        CMD_SUBMIT.unpack_from(buf)
    )
    if command != _CMD_SUBMIT:
        _command(buf, (_CMD_SUBMIT, _CMD_UNLINK))
        _, seqnum, devid, _, _, unlink_seqnum = CMD_UNLINK.unpack_from(buf)
        _check_devid(devid, limits.devid)
        return CmdUnlink(seqnum=seqnum, devid=devid, unlink_seqnum=unlink_seqnum), URB_HEADER_SIZE
    if devid != limits.devid:
        _check_devid(devid, limits.devid)
    if direction > 1:
        raise RemoteProtocolError(f"direction={direction}", field="direction", value=direction)
    if ep > 15:
        raise RemoteProtocolError(f"ep={ep}", field="ep", value=ep)
    if length < 0 or length > limits.max_transfer:
        raise RemoteProtocolError(
            f"transfer_buffer_length={length} exceeds the limit {limits.max_transfer}",
            field="transfer_buffer_length",
            value=length,
        )
    direction = _DIRECTIONS[direction]
    iso = ep != 0 and limits.is_iso(ep, direction)
    if iso and not 0 <= npackets <= MAX_ISO_PACKETS:
        raise RemoteProtocolError(
            f"number_of_packets={npackets} outside 0..{MAX_ISO_PACKETS}",
            field="number_of_packets",
            value=npackets,
        )
    data_size = length if direction == _OUT else 0
    end = URB_HEADER_SIZE + data_size
    total = end + (npackets * ISO_DESCRIPTOR_SIZE if iso else 0)
    if len(buf) < total:
        return None
    try:
        cmd = CmdSubmit.decoded(
            seqnum,
            devid,
            direction,
            ep,
            flags,
            length,
            start_frame,
            npackets,
            interval,
            setup,
            bytes(buf[URB_HEADER_SIZE:end]) if data_size else b"",
            _read_iso(buf, end, npackets) if iso else (),
        )
    except LocalProtocolError as error:
        raise _remote(error) from None
    return cmd, total


def _check_devid(devid: int, expected: int) -> None:
    if devid != expected:
        raise RemoteProtocolError(
            f"devid=0x{devid:08x}, the imported device is 0x{expected:08x}",
            field="devid",
            value=devid,
        )


def read_ret(buf: Buffer, outstanding: Callable[[int], CmdSubmit | None]) -> Read:
    """A client's read in the URB phase: RET_SUBMIT or RET_UNLINK."""
    if len(buf) < URB_HEADER_SIZE:
        return None
    command = _command(buf, (_RET_SUBMIT, _RET_UNLINK))
    if command == _RET_UNLINK:
        _, seqnum, _, _, _, status = RET_UNLINK.unpack_from(buf)
        try:
            return RetUnlink(seqnum=seqnum, status=status), URB_HEADER_SIZE
        except LocalProtocolError as error:
            raise _remote(error) from None
    (_, seqnum, _, _, _, status, actual, start_frame, npackets, errors) = RET_SUBMIT.unpack_from(buf)
    request = outstanding(seqnum)
    if request is None:
        raise RemoteProtocolError(f"RET_SUBMIT for unknown seqnum {seqnum}", field="seqnum", value=seqnum)
    if actual < 0 or actual > request.transfer_buffer_length:
        raise RemoteProtocolError(
            f"actual_length={actual} outside 0..{request.transfer_buffer_length}",
            field="actual_length",
            value=actual,
        )
    if request.is_iso and not 0 <= npackets <= request.number_of_packets:
        raise RemoteProtocolError(
            f"number_of_packets={npackets}, {request.number_of_packets} were submitted",
            field="number_of_packets",
            value=npackets,
        )
    data_size = actual if request.direction == _IN else 0
    end = URB_HEADER_SIZE + data_size
    total = end + (npackets * ISO_DESCRIPTOR_SIZE if request.is_iso else 0)
    if len(buf) < total:
        return None
    try:
        ret = RetSubmit(
            seqnum=seqnum,
            status=status,
            actual_length=actual,
            start_frame=start_frame,
            number_of_packets=npackets,
            error_count=errors,
            data=bytes(buf[URB_HEADER_SIZE:end]) if data_size else b"",
            iso_packets=_read_iso(buf, end, npackets) if request.is_iso else (),
        )
    except LocalProtocolError as error:
        raise _remote(error) from None
    for packet in ret.iso_packets:
        # Spreading the packed IN data back to this offset must stay inside the buffer.
        if packet.offset + packet.length > request.transfer_buffer_length:
            raise RemoteProtocolError(
                f"iso packet {packet.offset}+{packet.length} ends past the "
                f"{request.transfer_buffer_length}-byte buffer",
                field="iso offset",
                value=packet.offset,
            )
    return ret, total


def unpack_iso_data(data: bytes, packets: tuple[IsoPacket, ...], buffer_length: int) -> bytearray:
    """Spread the packed IN data of an iso RET_SUBMIT back to each packet's offset."""
    buffer = bytearray(buffer_length)
    position = 0
    for packet in packets:
        buffer[packet.offset : packet.offset + packet.actual_length] = data[position : position + packet.actual_length]
        position += packet.actual_length
    return buffer


def pack_iso_data(buffer: Buffer, packets: tuple[IsoPacket, ...]) -> bytes:
    """Gather each packet's transferred bytes back to back, as RET_SUBMIT carries them."""
    view = memoryview(buffer)
    return b"".join(bytes(view[p.offset : p.offset + p.actual_length]) for p in packets)
