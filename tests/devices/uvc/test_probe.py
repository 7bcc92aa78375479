"""Probe and commit negotiation, as a host drives it with class requests on the interfaces."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import replace

import pytest

from usbwire.devices.requests import Setup
from usbwire.devices.uvc import ErrorCode, StreamTransfer, VideoFormat, Webcam, WebcamConfig
from usbwire.devices.uvc.modes import ISO_SETTINGS
from usbwire.devices.uvc.probe import StreamingControl
from usbwire.errors import Stall
from usbwire.protocol.constants import Speed

SET_CUR, GET_CUR, GET_MIN, GET_MAX, GET_RES, GET_LEN, GET_INFO, GET_DEF = 0x01, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87
PROBE, COMMIT = 0x01, 0x02
STREAMING, CONTROL = 1, 0


def propose(webcam: Webcam, fmt: int, frame: int, interval: int = 0) -> None:
    control = StreamingControl(bFormatIndex=fmt, bFrameIndex=frame, dwFrameInterval=interval)
    request(webcam, SET_CUR, PROBE, control.to_bytes())


def request(webcam: Webcam, code: int, selector: int, data: bytes | int = 34, interface: int = STREAMING) -> bytes:
    if isinstance(data, int):
        setup = Setup(0xA1, code, selector << 8, interface, data)
        return asyncio.run(webcam.control(setup, b""))
    setup = Setup(0x21, code, selector << 8, interface, len(data))
    return asyncio.run(webcam.control(setup, data))


def get(webcam: Webcam, code: int, selector: int = PROBE) -> StreamingControl:
    return StreamingControl.from_bytes(request(webcam, code, selector))


def error_code(webcam: Webcam) -> int:
    return request(webcam, GET_CUR, 0x02, 1, interface=CONTROL)[0]


@pytest.fixture
def webcam() -> Webcam:
    return Webcam(WebcamConfig(sizes=((160, 120), (640, 480)), rates=(30, 15, 5)))


def test_control_block_is_34_bytes_read_and_writable(webcam: Webcam) -> None:
    assert request(webcam, GET_LEN, PROBE, 2) == struct.pack("<H", 34)
    assert request(webcam, GET_INFO, PROBE, 1) == b"\x03"
    assert request(webcam, GET_INFO, COMMIT, 1) == b"\x03"


def test_default_is_the_first_format_first_frame_fastest_rate(webcam: Webcam) -> None:
    default = get(webcam, GET_DEF)
    assert (default.bFormatIndex, default.bFrameIndex, default.dwFrameInterval) == (1, 1, 333_333)
    assert default.dwMaxVideoFrameSize == 160 * 120 * 2
    assert default.bmFramingInfo == 0x03 and default.dwClockFrequency == 48_000_000


def test_probe_settles_on_the_nearest_supported_interval(webcam: Webcam) -> None:
    propose(webcam, 2, 2, 700_000)
    settled = get(webcam, GET_CUR)
    assert (settled.bFormatIndex, settled.bFrameIndex, settled.dwFrameInterval) == (2, 2, 666_667)  # 15 fps
    assert settled.dwMaxVideoFrameSize == 640 * 480 * 2
    low, high = get(webcam, GET_MIN), get(webcam, GET_MAX)
    assert (low.dwFrameInterval, high.dwFrameInterval) == (333_333, 2_000_000)
    assert webcam.probe.format.kind == VideoFormat.MJPEG


def test_probe_of_an_unknown_format_gets_the_default(webcam: Webcam) -> None:
    propose(webcam, 9, 9)
    settled = get(webcam, GET_CUR)
    assert (settled.bFormatIndex, settled.bFrameIndex, settled.dwFrameInterval) == (1, 1, 333_333)


def test_payload_size_names_the_smallest_iso_setting_that_is_fast_enough(webcam: Webcam) -> None:
    sizes = [s.bytes_per_interval for s in ISO_SETTINGS[Speed.HIGH]]
    # 160x120 at 5 fps: 38400 bytes in a quarter of 200 ms (400 microframes) -> 96 + 6 bytes.
    propose(webcam, 1, 1, 2_000_000)
    assert get(webcam, GET_CUR).dwMaxPayloadTransferSize == 128
    # 640x480 at 30 fps: 614400 bytes in 66 microframes -> more than the fastest setting: that one.
    propose(webcam, 1, 2, 333_333)
    assert get(webcam, GET_CUR).dwMaxPayloadTransferSize == sizes[-1] == 3072


def test_bulk_payload_is_a_whole_frame_behind_one_header() -> None:
    webcam = Webcam(WebcamConfig(formats=(VideoFormat.YUYV,), sizes=((320, 240),), transfer=StreamTransfer.BULK))
    assert get(webcam, GET_DEF).dwMaxPayloadTransferSize == 6 + 320 * 240 * 2


def test_commit_takes_what_the_probe_settled(webcam: Webcam) -> None:
    propose(webcam, 1, 2, 666_667)
    settled = request(webcam, GET_CUR, PROBE)
    request(webcam, SET_CUR, COMMIT, settled)
    assert request(webcam, GET_CUR, COMMIT) == settled
    assert webcam.committed is not None and webcam.committed.frame.width == 640


def test_commit_of_an_interval_never_offered_stalls_with_invalid_value(webcam: Webcam) -> None:
    bad = replace(get(webcam, GET_DEF), dwFrameInterval=400_000)
    with pytest.raises(Stall):
        request(webcam, SET_CUR, COMMIT, bad.to_bytes())
    assert error_code(webcam) == ErrorCode.INVALID_VALUE
    assert error_code(webcam) == ErrorCode.NO_ERROR  # reading it was a request that succeeded


def test_uvc_1_0_hosts_send_26_bytes(webcam: Webcam) -> None:
    request(webcam, SET_CUR, PROBE, StreamingControl(bFormatIndex=1, bFrameIndex=2).to_bytes()[:26])
    assert get(webcam, GET_CUR).bFrameIndex == 2
    assert len(request(webcam, GET_CUR, PROBE, 26)) == 26


@pytest.mark.parametrize(
    ("code", "selector", "interface", "error"),
    [
        pytest.param(GET_MIN, COMMIT, STREAMING, ErrorCode.INVALID_REQUEST, id="min-of-commit"),
        pytest.param(GET_CUR, 0x03, STREAMING, ErrorCode.INVALID_CONTROL, id="still-probe"),
        pytest.param(GET_CUR, 0x02, 0x0100 | CONTROL, ErrorCode.INVALID_CONTROL, id="camera-terminal"),
    ],
)
def test_unsupported_requests_stall_and_say_why(
    webcam: Webcam, code: int, selector: int, interface: int, error: ErrorCode
) -> None:
    with pytest.raises(Stall):
        request(webcam, code, selector, 34, interface=interface)
    assert error_code(webcam) == error
