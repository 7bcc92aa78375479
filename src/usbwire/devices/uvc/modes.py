"""What a webcam offers: formats, frame sizes and rates, and which of them fit its link.

A mode (format, size, rate) is advertised only when a frame interval's worth of packets on the
device's fastest streaming setting can carry a whole frame: at full speed a 1023-byte iso packet
per millisecond is about 1 MB/s, so 320x240 YUYV (150 KiB a frame) gets at most 6 fps there,
not 15. MJPEG frames are bounded by the same buffer size as YUYV ones (a camera must accept the
worst case), so the rule is the same for both.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from usbwire.devices.uvc.pattern import jpeg_available
from usbwire.errors import UsbwireError
from usbwire.protocol.constants import Speed

# UVC 1.1 §2.4.3.3: the payload header; ours carries the frame's presentation time (PTS).
HEADER_LENGTH = 6
# Frame intervals are given in 100 ns units (UVC 1.1 §3.9.2.3).
INTERVAL_UNITS_PER_S = 10_000_000


class VideoFormat(enum.Enum):
    YUYV = "yuyv"
    MJPEG = "mjpeg"

    @property
    def label(self) -> str:
        return self.name


class StreamTransfer(enum.Enum):
    ISO = "iso"
    BULK = "bulk"


@dataclass(frozen=True, slots=True)
class IsoSetting:
    """One alternate setting of the streaming interface: bytes per (micro)frame."""

    max_packet_size: int
    additional_transactions: int = 0

    @property
    def bytes_per_interval(self) -> int:
        return self.max_packet_size * (self.additional_transactions + 1)


# Increasing bandwidth, as hosts expect (they pick the smallest that is enough). High speed ends
# with high-bandwidth endpoints: 2 and 3 transactions of 1024 bytes per microframe.
ISO_SETTINGS: dict[Speed, tuple[IsoSetting, ...]] = {
    Speed.FULL: (IsoSetting(128), IsoSetting(256), IsoSetting(512), IsoSetting(1023)),
    Speed.HIGH: (
        IsoSetting(128),
        IsoSetting(256),
        IsoSetting(512),
        IsoSetting(1024),
        IsoSetting(1024, 1),
        IsoSetting(1024, 2),
    ),
}
# Service intervals per second with bInterval 1: frames at full speed, microframes at high speed.
INTERVALS_PER_S = {Speed.FULL: 1000, Speed.HIGH: 8000}
BULK_PACKET = {Speed.FULL: 64, Speed.HIGH: 512}
# The most bulk data a bus can carry (USB 2.0 §5.8.4: 19 x 64 bytes per frame at full speed,
# 13 x 512 per microframe at high speed), bandwidth no iso endpoint reserves.
BULK_BYTES_PER_S = {Speed.FULL: 19 * 64 * 1000, Speed.HIGH: 13 * 512 * 8000}

DEFAULT_SIZES = ((160, 120), (320, 240), (640, 480))
DEFAULT_RATES = (30, 15, 10, 5)


class ModeError(UsbwireError):
    """The webcam was asked for something it cannot offer (on its link)."""


def available_formats() -> tuple[VideoFormat, ...]:
    """Both formats when Pillow can encode JPEG, else YUYV only."""
    return (VideoFormat.YUYV, VideoFormat.MJPEG) if jpeg_available() else (VideoFormat.YUYV,)


@dataclass(frozen=True, slots=True)
class WebcamConfig:
    """What the webcam advertises; every (format, size, rate) that fits its link."""

    # MJPEG frames of the pattern need a JPEG encoder (Pillow): offered by default when there is one.
    formats: tuple[VideoFormat, ...] = field(default_factory=available_formats)
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES
    rates: tuple[int, ...] = DEFAULT_RATES
    transfer: StreamTransfer = StreamTransfer.ISO
    speed: Speed = Speed.HIGH
    # Frames from this file instead of the test pattern (see usbwire.devices.uvc.sources).
    image: str | None = None

    def __post_init__(self) -> None:
        if self.speed not in ISO_SETTINGS:
            raise ModeError(f"a webcam runs at full or high speed, not {self.speed.name.lower()}")
        if not self.formats or not self.sizes or not self.rates:
            raise ModeError("a webcam needs at least one format, size and frame rate")
        for width, height in self.sizes:
            # YUYV packs two pixels in four bytes; the pattern's cells are even too.
            if width < 16 or height < 16 or width % 2 or width > 4096 or height > 4096:
                raise ModeError(f"unsupported frame size {width}x{height} (even width, 16..4096)")
        for rate in self.rates:
            if not 1 <= rate <= 120:
                raise ModeError(f"unsupported frame rate {rate} (1..120 fps)")

    @classmethod
    def parse(
        cls,
        *,
        formats: Sequence[str] = (),
        size: str | None = None,
        fps: int | None = None,
        transfer: str = "iso",
        speed: str = "high",
        image: str | None = None,
    ) -> WebcamConfig:
        """A config from command-line words (``--size 320x240``); unset ones keep their default.

        Raises:
            ModeError: a word that means nothing here.
        """
        options: dict[str, Any] = {"image": image}
        try:
            if formats:
                options["formats"] = tuple(dict.fromkeys(VideoFormat(f.lower()) for f in formats))
            options["transfer"] = StreamTransfer(transfer)
        except ValueError as error:
            raise ModeError(str(error)) from None
        if size is not None:
            width, x, height = size.lower().partition("x")
            if not (x and width.isdigit() and height.isdigit()):
                raise ModeError(f"size {size!r} is not WIDTHxHEIGHT")
            options["sizes"] = ((int(width), int(height)),)
        if fps is not None:
            options["rates"] = (fps,)
        speeds = {"full": Speed.FULL, "high": Speed.HIGH}
        if speed not in speeds:
            raise ModeError(f"speed {speed!r} is not one of {', '.join(speeds)}")
        options["speed"] = speeds[speed]
        return cls(**options)


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame descriptor: one size of a format, with its frame intervals (100 ns units)."""

    index: int
    width: int
    height: int
    intervals: tuple[int, ...]

    @property
    def buffer_size(self) -> int:
        return self.width * self.height * 2

    @property
    def default_interval(self) -> int:
        return self.intervals[0]

    def nearest_interval(self, wanted: int) -> int:
        if wanted <= 0:
            return self.default_interval
        return min(self.intervals, key=lambda interval: (abs(interval - wanted), interval))


@dataclass(frozen=True, slots=True)
class Format:
    index: int
    kind: VideoFormat
    frames: tuple[Frame, ...] = field(default=())

    def frame(self, index: int) -> Frame | None:
        return next((f for f in self.frames if f.index == index), None)


def interval_of(fps: int) -> int:
    return round(INTERVAL_UNITS_PER_S / fps)


def capacity_bytes_per_s(speed: Speed, transfer: StreamTransfer) -> int:
    """Frame bytes per second the fastest streaming setting carries (payload headers deducted)."""
    if transfer == StreamTransfer.BULK:
        return BULK_BYTES_PER_S[speed]
    best = ISO_SETTINGS[speed][-1].bytes_per_interval
    return (best - HEADER_LENGTH) * INTERVALS_PER_S[speed]


def fits(width: int, height: int, fps: int, speed: Speed, transfer: StreamTransfer) -> bool:
    """Whether frames of this size at this rate fit the link."""
    return width * height * 2 * fps <= capacity_bytes_per_s(speed, transfer)


def build_formats(config: WebcamConfig) -> tuple[Format, ...]:
    """The formats to advertise, each with the sizes and rates that fit the link.

    Raises:
        ModeError: nothing asked for fits the link.
    """
    formats: list[Format] = []
    for kind in config.formats:
        frames: list[Frame] = []
        for width, height in config.sizes:
            rates = sorted({r for r in config.rates if fits(width, height, r, config.speed, config.transfer)})
            if rates:
                # Fastest first: the first interval is the frame's default.
                intervals = tuple(interval_of(r) for r in reversed(rates))
                frames.append(Frame(len(frames) + 1, width, height, intervals))
        if frames:
            formats.append(Format(len(formats) + 1, kind, tuple(frames)))
    if not formats:
        width, height = min(config.sizes, key=lambda s: s[0] * s[1])
        fps = min(config.rates)
        need = width * height * 2 * fps
        have = capacity_bytes_per_s(config.speed, config.transfer)
        raise ModeError(
            f"{width}x{height} at {fps} fps needs {need / 1e6:.2f} MB/s; a {config.speed.name.lower()}-speed "
            f"{config.transfer.value} stream carries at most {have / 1e6:.2f} MB/s"
        )
    return tuple(formats)


def iso_setting_for(frame: Frame, interval: int, speed: Speed) -> int:
    """The alternate setting (1-based) a stream of ``frame`` every ``interval`` needs.

    Asks for enough bandwidth to send a frame in a quarter of its interval, so a host that
    schedules late still has room to catch up before the next frame is due; the fastest
    setting when nothing is that fast (the mode fits the link, so that one is enough).
    """
    packets = max(1, math.floor(interval / INTERVAL_UNITS_PER_S * INTERVALS_PER_S[speed] / 4))
    wanted = math.ceil(frame.buffer_size / packets) + HEADER_LENGTH
    settings = ISO_SETTINGS[speed]
    for number, setting in enumerate(settings, start=1):
        if setting.bytes_per_interval >= wanted:
            return number
    return len(settings)
