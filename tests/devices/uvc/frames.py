"""What a host does with UVC payloads: put the frames back together (a test helper)."""

from __future__ import annotations

from dataclasses import dataclass, field

FID, EOF = 0x01, 0x02


@dataclass
class Reassembler:
    """Frames from payloads: a new FID starts a frame, EOF ends it; header-only payloads count for nothing."""

    frames: list[bytes] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    _fid: int | None = None
    _current: bytearray | None = None

    def feed(self, payload: bytes, now: float) -> None:
        if len(payload) < 2 or payload[0] > len(payload):
            return
        info, data = payload[1], payload[payload[0] :]
        if not data:
            return
        if self._current is None or info & FID != self._fid:
            self._current = bytearray()
            self._fid = info & FID
            self.starts.append(now)
        self._current += data
        if info & EOF:
            self.frames.append(bytes(self._current))
            self._current = None
