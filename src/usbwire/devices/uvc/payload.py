"""The stream of UVC payloads: frames cut into payloads, each behind a header (UVC 1.1 §2.4.3.3).

Sans-I/O: the device asks for the payload of a packet at a given time, and the stream decides
whether a frame is due then. A frame starts at its time (a frame interval after the previous
one) and goes out in as many payloads as it takes; between frames, payloads carry only a header.
The FID bit flips at every frame's first payload and EOF marks its last, as Linux's uvcvideo and
every other host look for.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable

from usbwire.devices.uvc.descriptors import CLOCK_HZ
from usbwire.devices.uvc.modes import HEADER_LENGTH

IDLE_HEADER_LENGTH = 2
# How far behind its schedule a stream may fall and still catch up.
CATCH_UP_S = 1.0


class HeaderBit(enum.IntFlag):
    FID = 0x01
    EOF = 0x02
    PTS = 0x04
    SCR = 0x08
    RES = 0x10
    STI = 0x20
    ERR = 0x40
    EOH = 0x80


def header(fid: int, *, eof: bool = False, pts: int | None = None) -> bytes:
    """A payload header: FID and EOF, and the frame's presentation time when it has one."""
    info = HeaderBit.EOH | (HeaderBit.FID if fid else 0) | (HeaderBit.EOF if eof else 0)
    if pts is None:
        return bytes([IDLE_HEADER_LENGTH, info])
    return struct.pack("<BBI", HEADER_LENGTH, info | HeaderBit.PTS, pts & 0xFFFFFFFF)


class FramePacer:
    """When the next frame is due: one frame interval after the previous one was.

    A host that falls behind for a moment (a busy machine polls late) gets the frames it missed
    back to back, so no frame is lost and the rate over a second stays the negotiated one. After
    a longer pause (the host stopped polling) the schedule starts again from now instead of
    sending a burst of stale frames.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._anchor: float | None = None
        self._count = 0

    @property
    def next_due(self) -> float | None:
        """When the next frame is due (None: at once, nothing was sent yet)."""
        if self._anchor is None:
            return None
        # Counted from the anchor, not summed, so rounding never drifts the rate.
        return self._anchor + self._count * self.interval_s

    def due(self, now: float) -> bool:
        due = self.next_due
        # A microsecond of slack: a packet at the exact due time must not lose to float rounding.
        return due is None or now >= due - 1e-6

    def started(self, now: float) -> None:
        """A frame started at ``now``."""
        due = self.next_due
        if due is None or now - due >= max(CATCH_UP_S, 2 * self.interval_s):
            self._anchor, self._count = now, 0
        self._count += 1


# (frame time in seconds) -> the frame's bytes
FrameMaker = Callable[[float], bytes]


class PayloadStream:
    """Payloads of one stream (from SET_INTERFACE or commit until the host stops it)."""

    def __init__(self, make_frame: FrameMaker, interval_s: float, fid: int = 0) -> None:
        self.make_frame = make_frame
        self.pacer = FramePacer(interval_s)
        self.fid = fid
        self.frames = 0
        self._frame = memoryview(b"")
        self._offset = 0
        self._pts = 0

    @property
    def in_frame(self) -> bool:
        """A frame is partly sent."""
        return self._offset < len(self._frame)

    def packet(self, now: float, size: int) -> bytes:
        """The payload of an iso packet of at most ``size`` bytes, sent at ``now``."""
        if not self.in_frame:
            if not self.pacer.due(now):
                return header(self.fid)
            self._start(now)
        room = size - HEADER_LENGTH
        if room <= 0:
            raise ValueError(f"a {size}-byte packet cannot carry video data")
        chunk = self._frame[self._offset : self._offset + room]
        self._offset += len(chunk)
        return header(self.fid, eof=not self.in_frame, pts=self._pts) + chunk

    def whole_frame(self, now: float) -> bytes:
        """One payload holding a whole frame (bulk streams), sent at ``now``."""
        self._start(now)
        self._offset = len(self._frame)
        return header(self.fid, eof=True, pts=self._pts) + self._frame

    def _start(self, now: float) -> None:
        self.pacer.started(now)
        self._frame = memoryview(self.make_frame(now))
        self._offset = 0
        self._pts = int(now * CLOCK_HZ)
        self.fid ^= 1
        self.frames += 1
