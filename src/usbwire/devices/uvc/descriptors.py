"""The webcam's descriptors: a UVC 1.1 video function of a control and a streaming interface.

VideoControl holds the topology (camera input terminal -> streaming output terminal);
VideoStreaming holds the formats and frames. An iso webcam streams on alternate settings of
increasing bandwidth (alt 0 has no endpoint, so an idle camera reserves none); a bulk webcam
has one setting with a bulk endpoint.
"""

from __future__ import annotations

import enum
import struct
import uuid

from usbwire.devices.descriptors import Configuration, DescriptorType, DeviceDescriptor, Endpoint, Interface
from usbwire.devices.uvc.modes import (
    BULK_PACKET,
    ISO_SETTINGS,
    Format,
    StreamTransfer,
    VideoFormat,
    WebcamConfig,
)
from usbwire.protocol.constants import Direction, TransferType

VIDEO_CLASS = 0x0E
BCD_UVC = 0x0110
# The clock of the presentation time stamps in payload headers (and dwClockFrequency).
CLOCK_HZ = 48_000_000
CONTROL_INTERFACE, STREAMING_INTERFACE = 0, 1
STREAM_ENDPOINT = 1
CAMERA_TERMINAL, OUTPUT_TERMINAL = 1, 2
# UVC 1.1 §2.4.1.2: bits of an isochronous endpoint's bmAttributes, asynchronous sync type.
ASYNCHRONOUS = 0x04
# The GUID of the YUY2 (YUYV 4:2:2) uncompressed format (UVC payload uncompressed §2.2).
YUY2_GUID = uuid.UUID("32595559-0000-0010-8000-00aa00389b71")


class Subclass(enum.IntEnum):
    VIDEOCONTROL = 0x01
    VIDEOSTREAMING = 0x02
    INTERFACE_COLLECTION = 0x03


class VcSubtype(enum.IntEnum):
    HEADER = 0x01
    INPUT_TERMINAL = 0x02
    OUTPUT_TERMINAL = 0x03


class VsSubtype(enum.IntEnum):
    INPUT_HEADER = 0x01
    FORMAT_UNCOMPRESSED = 0x04
    FRAME_UNCOMPRESSED = 0x05
    FORMAT_MJPEG = 0x06
    FRAME_MJPEG = 0x07
    COLORFORMAT = 0x0D


# UVC 1.1 appendix B: terminal types.
ITT_CAMERA = 0x0201
TT_STREAMING = 0x0101


def _cs(subtype: int, body: bytes) -> bytes:
    return bytes([3 + len(body), DescriptorType.CS_INTERFACE, subtype]) + body


def control_descriptors() -> bytes:
    """VC header, camera terminal (no controls) and the output terminal it feeds."""
    camera = _cs(
        VcSubtype.INPUT_TERMINAL,
        struct.pack("<BHBBHHHB", CAMERA_TERMINAL, ITT_CAMERA, 0, 0, 0, 0, 0, 3) + bytes(3),
    )
    output = _cs(VcSubtype.OUTPUT_TERMINAL, struct.pack("<BHBBB", OUTPUT_TERMINAL, TT_STREAMING, 0, CAMERA_TERMINAL, 0))
    units = camera + output
    header_length = 13
    header = _cs(
        VcSubtype.HEADER,
        struct.pack("<HHIBB", BCD_UVC, header_length + len(units), CLOCK_HZ, 1, STREAMING_INTERFACE),
    )
    return header + units


def _frame(kind: VideoFormat, frame_index: int, width: int, height: int, intervals: tuple[int, ...]) -> bytes:
    subtype = VsSubtype.FRAME_UNCOMPRESSED if kind == VideoFormat.YUYV else VsSubtype.FRAME_MJPEG
    size = width * height * 2
    bits = size * 8
    body = struct.pack(
        "<BBHHIIIIB",
        frame_index,
        0,  # bmCapabilities: no still images
        width,
        height,
        bits * 10_000_000 // max(intervals),  # dwMinBitRate: at the slowest rate
        bits * 10_000_000 // min(intervals),  # dwMaxBitRate
        size,  # dwMaxVideoFrameBufferSize
        intervals[0],  # dwDefaultFrameInterval
        len(intervals),  # bFrameIntervalType: discrete intervals follow
    ) + b"".join(struct.pack("<I", i) for i in intervals)
    return _cs(subtype, body)


def _format(fmt: Format) -> bytes:
    if fmt.kind == VideoFormat.YUYV:
        head = _cs(
            VsSubtype.FORMAT_UNCOMPRESSED,
            struct.pack("<BB", fmt.index, len(fmt.frames))
            + YUY2_GUID.bytes_le
            + struct.pack("<BBBBBB", 16, 1, 0, 0, 0, 0),  # 16 bits a pixel, default frame 1
        )
    else:
        # bmFlags 0: frames vary in size.
        head = _cs(VsSubtype.FORMAT_MJPEG, struct.pack("<BBBBBBBB", fmt.index, len(fmt.frames), 0, 1, 0, 0, 0, 0))
    frames = b"".join(_frame(fmt.kind, f.index, f.width, f.height, f.intervals) for f in fmt.frames)
    # sRGB primaries and transfer, BT.601 matrix: what YUYV cameras use.
    color = _cs(VsSubtype.COLORFORMAT, bytes([1, 1, 4]))
    return head + frames + color


def streaming_descriptors(formats: tuple[Format, ...]) -> bytes:
    """VS input header, then each format with its frames and colour matching."""
    body = b"".join(_format(f) for f in formats)
    header_length = 13 + len(formats)
    header = _cs(
        VsSubtype.INPUT_HEADER,
        struct.pack(
            "<BHBBBBBBB",
            len(formats),
            header_length + len(body),
            0x80 | STREAM_ENDPOINT,
            0,  # bmInfo: no dynamic format change
            OUTPUT_TERMINAL,
            0,  # bStillCaptureMethod: none
            0,  # bTriggerSupport
            0,  # bTriggerUsage
            1,  # bControlSize
        )
        + bytes(len(formats)),  # bmaControls: no per-format controls
    )
    return header + body


def webcam_descriptor(config: WebcamConfig, formats: tuple[Format, ...]) -> DeviceDescriptor:
    association = struct.pack(
        "<BBBBBBBB", 8, DescriptorType.INTERFACE_ASSOCIATION, CONTROL_INTERFACE, 2, VIDEO_CLASS,
        Subclass.INTERFACE_COLLECTION, 0, 0,
    )  # fmt: skip
    control = Interface(
        number=CONTROL_INTERFACE,
        interface_class=VIDEO_CLASS,
        interface_subclass=Subclass.VIDEOCONTROL,
        name="Video control",
        extra=control_descriptors(),
    )
    streaming = _streaming_interfaces(config, formats)
    return DeviceDescriptor(
        vendor_id=0x1209,
        product_id=0x0006,
        device_class=0xEF,  # miscellaneous: the function is described by the association
        device_subclass=0x02,
        device_protocol=0x01,
        manufacturer="usbwire",
        product="Emulated webcam",
        serial="UVC0001",
        configurations=(Configuration(value=1, max_power_ma=200, interfaces=(control, *streaming), extra=association),),
    )


def _streaming_interfaces(config: WebcamConfig, formats: tuple[Format, ...]) -> tuple[Interface, ...]:
    extra = streaming_descriptors(formats)
    if config.transfer == StreamTransfer.BULK:
        bulk = Endpoint(STREAM_ENDPOINT, Direction.IN, TransferType.BULK, BULK_PACKET[config.speed])
        return (_streaming(0, (bulk,), extra),)
    alternates = [_streaming(0, (), extra)]
    for number, setting in enumerate(ISO_SETTINGS[config.speed], start=1):
        endpoint = Endpoint(
            STREAM_ENDPOINT,
            Direction.IN,
            TransferType.ISOCHRONOUS,
            setting.max_packet_size,
            interval=1,
            additional_transactions=setting.additional_transactions,
            sync_attributes=ASYNCHRONOUS,
        )
        alternates.append(_streaming(number, (endpoint,)))
    return tuple(alternates)


def _streaming(alternate: int, endpoints: tuple[Endpoint, ...], extra: bytes = b"") -> Interface:
    # The class-specific descriptors follow the first setting only (UVC 1.1 §3.9).
    return Interface(
        number=STREAMING_INTERFACE,
        interface_class=VIDEO_CLASS,
        interface_subclass=Subclass.VIDEOSTREAMING,
        alternate=alternate,
        endpoints=endpoints,
        name="Video streaming",
        extra=extra,
    )
