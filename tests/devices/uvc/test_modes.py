"""A webcam offers only the modes its link can carry."""

from __future__ import annotations

import pytest

from usbwire.devices.uvc import ModeError, StreamTransfer, VideoFormat, Webcam, WebcamConfig, fits
from usbwire.devices.uvc.modes import build_formats, capacity_bytes_per_s
from usbwire.protocol.constants import Speed

ISO, BULK = StreamTransfer.ISO, StreamTransfer.BULK


def offered(config: WebcamConfig) -> dict[tuple[VideoFormat, int, int], list[int]]:
    return {
        (f.kind, fr.width, fr.height): sorted(round(1e7 / i) for i in fr.intervals)
        for f in build_formats(config)
        for fr in f.frames
    }


def test_link_capacities() -> None:
    # One 1023-byte packet a millisecond at full speed; 3 x 1024 bytes a microframe at high speed.
    assert capacity_bytes_per_s(Speed.FULL, ISO) == (1023 - 6) * 1000
    assert capacity_bytes_per_s(Speed.HIGH, ISO) == (3 * 1024 - 6) * 8000


@pytest.mark.parametrize(
    ("width", "height", "fps", "speed", "expected"),
    [
        pytest.param(320, 240, 15, Speed.FULL, False, id="320x240@15-full-speed"),  # 2.3 MB/s > 1 MB/s
        pytest.param(320, 240, 5, Speed.FULL, True, id="320x240@5-full-speed"),
        pytest.param(160, 120, 25, Speed.FULL, True, id="160x120@25-full-speed"),
        pytest.param(160, 120, 30, Speed.FULL, False, id="160x120@30-full-speed"),
        pytest.param(320, 240, 15, Speed.HIGH, True, id="320x240@15-high-speed"),
        pytest.param(640, 480, 30, Speed.HIGH, True, id="640x480@30-high-speed"),
        pytest.param(1280, 720, 30, Speed.HIGH, False, id="1280x720@30-high-speed"),
    ],
)
def test_fits_compares_frame_bytes_per_second_with_the_link(
    width: int, height: int, fps: int, speed: Speed, expected: bool
) -> None:
    assert fits(width, height, fps, speed, ISO) is expected


def test_full_speed_webcam_leaves_out_what_does_not_fit() -> None:
    modes = offered(WebcamConfig(speed=Speed.FULL))
    assert modes == {
        (kind, width, height): rates
        for kind in (VideoFormat.YUYV, VideoFormat.MJPEG)
        for (width, height), rates in [((160, 120), [5, 10, 15]), ((320, 240), [5])]
    }


def test_high_speed_webcam_offers_every_default_mode() -> None:
    modes = offered(WebcamConfig(speed=Speed.HIGH))
    assert len(modes) == 6 and all(rates == [5, 10, 15, 30] for rates in modes.values())


def test_bulk_at_full_speed_carries_a_little_more_than_iso() -> None:
    assert capacity_bytes_per_s(Speed.FULL, BULK) > capacity_bytes_per_s(Speed.FULL, ISO)
    assert not fits(320, 240, 15, Speed.FULL, BULK)


def test_a_mode_that_does_not_fit_is_refused_with_the_numbers() -> None:
    config = WebcamConfig.parse(size="320x240", fps=15, speed="full")
    with pytest.raises(ModeError, match=r"320x240 at 15 fps needs 2\.30 MB/s; .* at most 1\.02 MB/s"):
        Webcam(config)


@pytest.mark.parametrize(
    ("words", "message"),
    [
        pytest.param({"size": "320"}, "not WIDTHxHEIGHT", id="size"),
        pytest.param({"size": "321x240"}, "even width", id="odd-width"),
        pytest.param({"fps": 0}, "unsupported frame rate", id="fps"),
        pytest.param({"formats": ["h264"]}, "h264", id="format"),
        pytest.param({"speed": "super"}, "speed 'super'", id="speed"),
    ],
)
def test_config_words_that_mean_nothing_are_refused(words: dict[str, object], message: str) -> None:
    with pytest.raises(ModeError, match=message):
        WebcamConfig.parse(**words)  # type: ignore[arg-type]
