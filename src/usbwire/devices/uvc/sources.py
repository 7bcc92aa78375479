"""Where a webcam's frames come from: the test pattern, an image file, or a Python callable.

A source is asked once, before anything is advertised, whether it can make frames of every
mode (so a bad file fails at start, not when a host starts streaming), then for each frame.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from usbwire.devices.uvc.modes import ModeError, VideoFormat
from usbwire.devices.uvc.pattern import JpegUnavailable, Pattern, jpeg_available, jpeg_size


@dataclass(frozen=True, slots=True)
class FrameRequest:
    """One frame to make: its format and size, its number in the stream, and its time."""

    format: VideoFormat
    width: int
    height: int
    number: int
    time_s: float

    @property
    def mode(self) -> tuple[VideoFormat, int, int]:
        return self.format, self.width, self.height


Mode = tuple[VideoFormat, int, int]


@runtime_checkable
class FrameSource(Protocol):
    def prepare(self, modes: Sequence[Mode]) -> None:
        """Check (and get ready) to make frames of these modes; raise UsbwireError if it cannot."""

    def frame(self, request: FrameRequest) -> bytes:
        """The frame's bytes: YUYV, exactly width * height * 2 of them; MJPEG, one JPEG image."""


class PatternSource:
    """Colour bars with the frame number in digits and bits (see usbwire.devices.uvc.pattern)."""

    def __init__(self) -> None:
        self._patterns: dict[tuple[int, int], Pattern] = {}

    def prepare(self, modes: Sequence[Mode]) -> None:
        if any(kind == VideoFormat.MJPEG for kind, _, _ in modes) and not jpeg_available():
            raise JpegUnavailable()

    def frame(self, request: FrameRequest) -> bytes:
        pattern = self._patterns.get((request.width, request.height))
        if pattern is None:
            pattern = self._patterns[request.width, request.height] = Pattern(request.width, request.height)
        if request.format == VideoFormat.YUYV:
            return pattern.yuyv(request.number)
        return pattern.jpeg(request.number)


class ImageSource:
    """The same picture in every frame.

    MJPEG: a JPEG file of the frame's size goes out as it is; other images are decoded, scaled
    and encoded with Pillow. YUYV: a file of exactly width * height * 2 bytes is taken as raw
    YUYV; other images are decoded and converted with Pillow.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.data = self.path.read_bytes()
        except OSError as error:
            raise ModeError(f"cannot read {self.path}: {error.strerror or error}") from None
        self._frames: dict[Mode, bytes] = {}

    def prepare(self, modes: Sequence[Mode]) -> None:
        for mode in modes:
            self._frames[mode] = self._convert(*mode)

    def frame(self, request: FrameRequest) -> bytes:
        found = self._frames.get(request.mode)
        if found is None:
            found = self._frames[request.mode] = self._convert(*request.mode)
        return found

    def _convert(self, kind: VideoFormat, width: int, height: int) -> bytes:
        if kind == VideoFormat.MJPEG and jpeg_size(self.data) == (width, height):
            return self.data
        if kind == VideoFormat.YUYV and len(self.data) == width * height * 2:
            return self.data
        if not jpeg_available():
            raise ModeError(
                f"{self.path} is not a {width}x{height} {kind.label} frame; converting it needs Pillow "
                "(pip install 'usbwire[webcam]')"
            )
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(self.data)) as opened:
                image = opened.convert("RGB").resize((width, height))
        except (UnidentifiedImageError, OSError) as error:
            raise ModeError(f"{self.path}: not an image Pillow can read ({error})") from None
        if kind == VideoFormat.MJPEG:
            out = io.BytesIO()
            image.save(out, "JPEG", quality=90)
            return out.getvalue()
        return rgb_to_yuyv(image)


def rgb_to_yuyv(image: object) -> bytes:
    """A Pillow RGB image as limited-range YUYV (chroma of each pair's left pixel)."""
    ycbcr = image.convert("YCbCr")  # type: ignore[attr-defined]
    y, cb, cr = (band.tobytes() for band in ycbcr.split())
    # Pillow's YCbCr is full range (JPEG's); YUYV webcams send 16..235 luma and 16..240 chroma.
    luma = bytes(16 + round(i * 219 / 255) for i in range(256))
    chroma = bytes(16 + round(i * 224 / 255) for i in range(256))
    y, cb, cr = y.translate(luma), cb.translate(chroma), cr.translate(chroma)
    out = bytearray(len(y) * 2)
    out[0::4] = y[0::2]
    out[1::4] = cb[0::2]
    out[2::4] = y[1::2]
    out[3::4] = cr[0::2]
    return bytes(out)


class CallbackSource:
    """Frames from a Python callable: ``make(request) -> bytes``."""

    def __init__(self, make: Callable[[FrameRequest], bytes]) -> None:
        self.make = make

    def prepare(self, modes: Sequence[Mode]) -> None:
        return None

    def frame(self, request: FrameRequest) -> bytes:
        return self.make(request)
