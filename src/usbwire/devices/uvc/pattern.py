"""The test pattern: colour bars, the frame number in large digits, and the same number as bits.

The digits are for people looking at the picture; the bits (a row of black and white cells
along the top edge, most significant first) and, in MJPEG frames, a JPEG comment are for
programs checking that no frame was lost or repeated. Everything is drawn as rectangles, so one
drawing serves both pixel layouts (YUYV for uncompressed frames, RGB for the JPEG encoder).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from usbwire.errors import UsbwireError

COUNTER_BITS = 32
COMMENT_PREFIX = b"usbwire frame "
DIGITS = 6
# A 3x5 digit font, one string per row.
FONT = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", "..#", "..#", "..#"),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
}
RGB = tuple[int, int, int]
WHITE, BLACK = (255, 255, 255), (0, 0, 0)
# 75% colour bars, as test cards have them.
BARS: tuple[RGB, ...] = (
    (191, 191, 191), (191, 191, 0), (0, 191, 191), (0, 191, 0),
    (191, 0, 191), (191, 0, 0), (0, 0, 191), (0, 0, 0),
)  # fmt: skip


class JpegUnavailable(UsbwireError):
    """MJPEG needs a JPEG encoder, and Pillow is not installed."""

    def __init__(self) -> None:
        super().__init__("MJPEG frames need Pillow (pip install 'usbwire[webcam]'), or use --format yuyv")


def jpeg_available() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def yuv(rgb: RGB) -> tuple[int, int, int]:
    """BT.601 limited range, what YUYV webcams send."""
    r, g, b = rgb
    y = 16 + (65.738 * r + 129.057 * g + 25.064 * b) / 256
    u = 128 + (-37.945 * r - 74.494 * g + 112.439 * b) / 256
    v = 128 + (112.439 * r - 94.154 * g - 18.285 * b) / 256
    return round(y), round(u), round(v)


@dataclass(frozen=True, slots=True)
class Rect:
    x0: int
    y0: int
    x1: int
    y1: int
    colour: RGB


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the pattern's parts go in a frame of one size (cells are even so YUYV pairs stay whole)."""

    width: int
    height: int

    @property
    def cell(self) -> int:
        """Width and height of a counter bit."""
        return max(2, (self.width // COUNTER_BITS) & ~1)

    @property
    def scale(self) -> int:
        """Pixels per font dot."""
        return max(2, (self.height // 24) & ~1)

    def background(self) -> Iterator[Rect]:
        bar = self.width // len(BARS) & ~1
        for n, colour in enumerate(BARS):
            x1 = self.width if n == len(BARS) - 1 else (n + 1) * bar
            yield Rect(n * bar, self.cell, x1, self.height, colour)
        yield Rect(0, 0, self.width, self.cell, BLACK)

    def counter(self, number: int) -> Iterator[Rect]:
        for bit in range(COUNTER_BITS):
            if number >> (COUNTER_BITS - 1 - bit) & 1:
                yield Rect(bit * self.cell, 0, (bit + 1) * self.cell, self.cell, WHITE)
        s = self.scale
        text = f"{number % 10**DIGITS:0{DIGITS}d}"
        advance = 4 * s
        x = max(0, (self.width - advance * len(text) + s) // 2) & ~1
        y = max(self.cell, (self.height - 5 * s) // 2)
        yield Rect(max(0, x - s), y - s, min(self.width, x + advance * len(text)), min(self.height, y + 6 * s), BLACK)
        for char in text:
            for row, dots in enumerate(FONT[char]):
                for column, dot in enumerate(dots):
                    if dot == "#":
                        x0 = x + column * s
                        if x0 + s <= self.width and y + (row + 1) * s <= self.height:
                            yield Rect(x0, y + row * s, x0 + s, y + (row + 1) * s, WHITE)
            x += advance


class Canvas:
    """A frame buffer of one pixel layout: YUYV (2 bytes a pixel) or RGB (3)."""

    def __init__(self, width: int, height: int, layout: str) -> None:
        self.width, self.height, self.layout = width, height, layout
        self.pixel_bytes = 2 if layout == "yuyv" else 3
        self.pixels = bytearray(width * height * self.pixel_bytes)

    def fill(self, rect: Rect) -> None:
        if self.layout == "yuyv":
            y, u, v = yuv(rect.colour)
            run = bytes([y, u, y, v]) * ((rect.x1 - rect.x0) // 2)
        else:
            run = bytes(rect.colour) * (rect.x1 - rect.x0)
        stride = self.width * self.pixel_bytes
        start = rect.x0 * self.pixel_bytes
        for row in range(rect.y0, rect.y1):
            offset = row * stride + start
            self.pixels[offset : offset + len(run)] = run


class Pattern:
    """Draws numbered test frames of one size."""

    def __init__(self, width: int, height: int) -> None:
        self.layout = Layout(width, height)
        self._backgrounds: dict[str, bytes] = {}

    def yuyv(self, number: int) -> bytes:
        return bytes(self._draw("yuyv", number).pixels)

    def rgb(self, number: int) -> bytes:
        return bytes(self._draw("rgb", number).pixels)

    def jpeg(self, number: int, quality: int = 85) -> bytes:
        """The frame as a JPEG with the number also in a comment segment.

        Raises:
            JpegUnavailable: Pillow is not installed.
        """
        try:
            from PIL import Image
        except ImportError:
            raise JpegUnavailable() from None
        image = Image.frombytes("RGB", (self.layout.width, self.layout.height), self.rgb(number))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality)
        return with_comment(out.getvalue(), COMMENT_PREFIX + str(number).encode())

    def _draw(self, layout: str, number: int) -> Canvas:
        canvas = Canvas(self.layout.width, self.layout.height, layout)
        background = self._backgrounds.get(layout)
        if background is None:
            for rect in self.layout.background():
                canvas.fill(rect)
            background = self._backgrounds[layout] = bytes(canvas.pixels)
        canvas.pixels[:] = background
        for rect in self.layout.counter(number):
            canvas.fill(rect)
        return canvas


def with_comment(jpeg: bytes, text: bytes) -> bytes:
    """``jpeg`` with a COM segment right after its SOI marker."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + jpeg[2:]


def yuyv_counter(frame: bytes, width: int) -> int:
    """The frame number a YUYV pattern frame carries in its bit row."""
    cell = Layout(width, 0).cell
    stride = width * 2
    row = cell // 2
    number = 0
    for bit in range(COUNTER_BITS):
        x = bit * cell + cell // 2
        luma = frame[row * stride + x * 2]
        number = number << 1 | (luma > 128)
    return number


def jpeg_comment_counter(jpeg: bytes) -> int | None:
    """The frame number in a pattern JPEG's comment segment, if it has one."""
    for kind, body in jpeg_segments(jpeg):
        if kind == 0xFE and body.startswith(COMMENT_PREFIX):
            return int(body[len(COMMENT_PREFIX) :])
    return None


def jpeg_segments(jpeg: bytes) -> Iterator[tuple[int, bytes]]:
    """The marker segments before the entropy-coded data: (marker, body)."""
    offset = 2
    while offset + 4 <= len(jpeg) and jpeg[offset] == 0xFF:
        kind = jpeg[offset + 1]
        length = struct.unpack_from(">H", jpeg, offset + 2)[0]
        yield kind, jpeg[offset + 4 : offset + 2 + length]
        if kind == 0xDA:  # start of scan: compressed data follows
            return
        offset += 2 + length


def jpeg_size(jpeg: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment."""
    for kind, body in jpeg_segments(jpeg):
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC) and len(body) >= 5:
            height, width = struct.unpack_from(">HH", body, 1)
            return width, height
    return None
