"""PDU bytes packed field by field, apart from the codec, so that tests can make them wrong."""

from __future__ import annotations

import struct

USBIP_VERSION = 0x0111
CMD_SUBMIT = 1
DIRECTION_OUT = 0


def setup_packet(request_type: int, request: int, value: int, index: int, length: int) -> bytes:
    """The 8-byte SETUP packet, little-endian as on the USB bus."""
    return struct.pack("<BBHHH", request_type, request, value, index, length)


def op_header(*, version: int = USBIP_VERSION, code: int = 0x8005, status: int = 0) -> bytes:
    """op_common: the 8 bytes in front of every OP request."""
    return struct.pack(">HHI", version, code, status)


def urb_header(
    command: int = CMD_SUBMIT,
    *,
    devid: int,
    ep: int,
    seqnum: int = 1,
    direction: int = DIRECTION_OUT,
    transfer_flags: int = 0,
    transfer_buffer_length: int = 0,
    start_frame: int = 0,
    number_of_packets: int = 0,
    interval: int = 0,
    setup: bytes = bytes(8),
) -> bytes:
    """A 48-byte URB-phase header laid out as CMD_SUBMIT (USB/IP reference §3.2), no payload."""
    return struct.pack(
        ">IIIIIIiiii8s",
        command,
        seqnum,
        devid,
        direction,
        ep,
        transfer_flags,
        transfer_buffer_length,
        start_frame,
        number_of_packets,
        interval,
        setup,
    )
