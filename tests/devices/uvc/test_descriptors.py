"""The webcam's descriptors, read back with usbwire's own descriptor parser."""

from __future__ import annotations

import struct
import uuid

from usbwire.devices.uvc import StreamTransfer, VideoFormat, Webcam, WebcamConfig
from usbwire.devices.uvc.descriptors import YUY2_GUID
from usbwire.protocol.constants import Speed, TransferType
from usbwire.protocol.descriptors import ConfigurationDescriptor, DeviceDescriptor

CS_INTERFACE = 0x24


def split(raw: bytes) -> list[bytes]:
    """Class-specific descriptors back to back -> one bytes each."""
    out = []
    while raw:
        out.append(raw[: raw[0]])
        raw = raw[raw[0] :]
    return out


def configuration(webcam: Webcam) -> ConfigurationDescriptor:
    return ConfigurationDescriptor.parse(webcam.descriptors.configuration(0))


def test_device_is_a_video_function_behind_an_interface_association() -> None:
    webcam = Webcam(WebcamConfig(formats=(VideoFormat.YUYV,)))
    device = DeviceDescriptor.parse(webcam.descriptors.device())
    assert (device.bDeviceClass, device.bDeviceSubClass, device.bDeviceProtocol) == (0xEF, 0x02, 0x01)
    config = configuration(webcam)
    assert config.extra == bytes([
        8, 11,      # interface association descriptor
        0, 2,       # first interface 0, two interfaces
        0x0E, 0x03, # video class, interface collection
        0, 0,
    ])  # fmt: skip
    assert config.bNumInterfaces == 2
    control = config.alternates(0)
    assert [(i.bInterfaceClass, i.bInterfaceSubClass, i.bNumEndpoints) for i in control] == [(0x0E, 0x01, 0)]


def test_control_interface_links_the_camera_to_the_streaming_terminal() -> None:
    control = configuration(Webcam(WebcamConfig(formats=(VideoFormat.YUYV,)))).alternates(0)[0]
    header, camera, output = split(control.extra)
    bcd_uvc, total, clock, in_collection, streaming = struct.unpack_from("<HHIBB", header, 3)
    assert (header[1], header[2]) == (CS_INTERFACE, 0x01)
    assert (bcd_uvc, total, in_collection, streaming) == (0x0110, len(control.extra), 1, 1)
    assert clock > 0
    terminal_id, terminal_type = struct.unpack_from("<BH", camera, 3)
    assert (camera[2], terminal_id, terminal_type) == (0x02, 1, 0x0201)  # input terminal: camera
    assert camera[14] == 3 and camera[15:18] == bytes(3)  # bControlSize 3, no controls
    assert (output[2], *struct.unpack_from("<BHBB", output, 3)) == (0x03, 2, 0x0101, 0, 1)  # streaming, from 1


def test_streaming_header_formats_and_frames_agree() -> None:
    webcam = Webcam(WebcamConfig(sizes=((160, 120), (320, 240)), rates=(30, 10)))
    streaming = configuration(webcam).alternates(1)[0]
    parts = split(streaming.extra)
    header = parts[0]
    formats, total, endpoint = struct.unpack_from("<BHB", header, 3)
    assert (header[2], formats, total, endpoint) == (0x01, 2, len(streaming.extra), 0x81)
    subtypes = [p[2] for p in parts[1:]]
    assert subtypes == [0x04, 0x05, 0x05, 0x0D, 0x06, 0x07, 0x07, 0x0D]
    yuyv = parts[1]
    assert uuid.UUID(bytes_le=yuyv[5:21]) == YUY2_GUID and yuyv[21] == 16  # 16 bits per pixel
    frames = [parts[2], parts[3], parts[6], parts[7]]
    for frame, (width, height) in zip(frames, [(160, 120), (320, 240)] * 2, strict=True):
        _, _, w, h, _, _, buffer, default, count = struct.unpack_from("<BBHHIIIIB", frame, 3)
        intervals = struct.unpack_from(f"<{count}I", frame, 26)
        assert (w, h, buffer) == (width, height, width * height * 2)
        assert intervals == (333_333, 1_000_000) and default == 333_333
        assert frame[0] == 26 + 4 * count


def test_iso_streaming_has_zero_bandwidth_alt_0_then_rising_packet_sizes() -> None:
    alternates = configuration(Webcam()).alternates(1)
    assert alternates[0].bNumEndpoints == 0
    endpoints = [a.endpoints[0] for a in alternates[1:]]
    assert all(e.transfer_type == TransferType.ISOCHRONOUS and e.bmAttributes == 0x05 for e in endpoints)
    assert [(e.max_packet_size, e.transactions) for e in endpoints] == [
        (128, 1), (256, 1), (512, 1), (1024, 1), (1024, 2), (1024, 3),
    ]  # fmt: skip
    assert endpoints[-1].wMaxPacketSize == 0x1400  # 1024 | 2 additional transactions << 11
    assert {e.bInterval for e in endpoints} == {1}


def test_full_speed_iso_packets_stop_at_1023_bytes() -> None:
    alternates = configuration(Webcam(WebcamConfig(speed=Speed.FULL))).alternates(1)
    assert [a.endpoints[0].wMaxPacketSize for a in alternates[1:]] == [128, 256, 512, 1023]


def test_bulk_webcam_has_one_setting_with_a_bulk_endpoint() -> None:
    alternates = configuration(Webcam(WebcamConfig(transfer=StreamTransfer.BULK))).alternates(1)
    assert len(alternates) == 1
    (endpoint,) = alternates[0].endpoints
    assert (endpoint.bEndpointAddress, endpoint.transfer_type, endpoint.wMaxPacketSize) == (
        0x81,
        TransferType.BULK,
        512,
    )
