"""Frame sources: the numbered test pattern, image files, Python callables."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from PIL import Image

from usbwire.devices.uvc import (
    FrameRequest,
    ImageSource,
    JpegUnavailable,
    ModeError,
    PatternSource,
    VideoFormat,
    Webcam,
    WebcamConfig,
)
from usbwire.devices.uvc.pattern import FONT, Layout, Pattern, jpeg_comment_counter, jpeg_size, yuyv_counter

YUYV, MJPEG = VideoFormat.YUYV, VideoFormat.MJPEG


@pytest.mark.parametrize("number", [0, 1, 123456, 2**32 - 1])
@pytest.mark.parametrize(("width", "height"), [(160, 120), (320, 240), (640, 480)])
def test_yuyv_pattern_carries_its_number_in_the_bit_row(number: int, width: int, height: int) -> None:
    frame = Pattern(width, height).yuyv(number)
    assert len(frame) == width * height * 2
    assert yuyv_counter(frame, width) == number


def test_the_digits_show_the_number() -> None:
    width, height, number = 320, 240, 407913
    frame = Pattern(width, height).yuyv(number)
    layout = Layout(width, height)
    s = layout.scale
    x = max(0, (width - 4 * s * 6 + s) // 2) & ~1
    y = (height - 5 * s) // 2
    for char in str(number):
        for row, dots in enumerate(FONT[char]):
            for column, dot in enumerate(dots):
                px, py = x + column * s + s // 2, y + row * s + s // 2
                luma = frame[(py * width + px) * 2]
                assert (luma > 128) == (dot == "#"), (char, row, column, luma)
        x += 4 * s


def test_mjpeg_pattern_decodes_and_names_its_number_twice() -> None:
    jpeg = Pattern(320, 240).jpeg(4242)
    assert jpeg_comment_counter(jpeg) == 4242
    with Image.open(io.BytesIO(jpeg)) as image:
        assert (image.format, image.size) == ("JPEG", (320, 240))
        luma = image.convert("L").tobytes()
    # The bit row survives compression too (cells of 10x10 pixels at 320 wide).
    yuyv_like = bytes(b for value in luma for b in (value, 128))
    assert yuyv_counter(yuyv_like, 320) == 4242


def test_jpeg_file_of_the_frame_size_goes_out_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "still.jpg"
    Image.new("RGB", (160, 120), (10, 200, 30)).save(path, "JPEG")
    source = ImageSource(path)
    source.prepare([(MJPEG, 160, 120)])
    assert source.frame(FrameRequest(MJPEG, 160, 120, 0, 0.0)) == path.read_bytes()


def test_raw_yuyv_file_of_the_frame_size_goes_out_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "still.yuyv"
    path.write_bytes(bytes(range(256)) * 150)  # 160 * 120 * 2 bytes
    source = ImageSource(path)
    source.prepare([(YUYV, 160, 120)])
    assert source.frame(FrameRequest(YUYV, 160, 120, 7, 0.0)) == path.read_bytes()


def test_other_images_are_converted_to_every_mode(tmp_path: Path) -> None:
    path = tmp_path / "still.png"
    Image.new("RGB", (64, 48), (255, 255, 255)).save(path)
    source = ImageSource(path)
    source.prepare([(YUYV, 160, 120), (MJPEG, 320, 240)])
    yuyv = source.frame(FrameRequest(YUYV, 160, 120, 0, 0.0))
    assert len(yuyv) == 160 * 120 * 2 and yuyv[:4] == bytes([235, 128, 235, 128])  # white, limited range
    assert jpeg_size(source.frame(FrameRequest(MJPEG, 320, 240, 0, 0.0))) == (320, 240)


def test_unreadable_images_fail_at_start(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a picture")
    with pytest.raises(ModeError, match="not an image"):
        Webcam(WebcamConfig(image=str(path)))
    with pytest.raises(ModeError, match="cannot read"):
        ImageSource(tmp_path / "missing.jpg")


def test_callback_gets_each_frame_request_in_turn() -> None:
    seen: list[FrameRequest] = []

    def grey(request: FrameRequest) -> bytes:
        seen.append(request)
        return bytes([128]) * (request.width * request.height * 2)

    webcam = Webcam(WebcamConfig(formats=(YUYV,), sizes=((160, 120),), rates=(30,)), source=grey)
    webcam.set_configuration(1)
    webcam.set_interface(1, 4)
    assert webcam.stream is not None
    for step in range(3):
        webcam.stream.whole_frame(step / 30)
    assert [(r.format, r.width, r.number) for r in seen] == [(YUYV, 160, n) for n in range(3)]


def test_callback_frame_of_the_wrong_size_is_refused() -> None:
    webcam = Webcam(WebcamConfig(formats=(YUYV,), sizes=((160, 120),)), source=lambda request: b"short")
    webcam.set_configuration(1)
    webcam.set_interface(1, 4)
    assert webcam.stream is not None
    with pytest.raises(ValueError, match="38400 bytes, got 5"):
        webcam.stream.packet(0.0, 1024)


def test_mjpeg_without_pillow_fails_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(JpegUnavailable, match=r"pip install 'usbwire\[webcam\]'"):
        Webcam(WebcamConfig(formats=(MJPEG,)))
    assert WebcamConfig().formats == (YUYV,)  # the default offers what it can
    assert PatternSource().frame(FrameRequest(YUYV, 160, 120, 5, 0.0))
