"""Measuring a recorded tone: its frequency, its level, and whether it ever jumps (a gap)."""

from __future__ import annotations

import array
import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tone:
    frequency: float
    peak: int
    # The biggest step between neighbouring samples; a dropped or repeated packet makes one
    # far larger than a sine of this frequency and peak ever takes.
    largest_step: int
    seconds: float

    def continuous(self, rate: int) -> bool:
        smooth_step = self.peak * 2 * math.pi * self.frequency / rate
        return self.largest_step <= smooth_step * 1.1 + 2


def left_channel(pcm: bytes) -> array.array[int]:
    samples = array.array("h", pcm[: len(pcm) - len(pcm) % 4])
    return samples[0::2]


def measure(pcm: bytes, rate: int) -> Tone:
    """Frequency from the rising zero crossings (interpolated), over the whole recording."""
    left = left_channel(pcm)
    crossings = [n + left[n] / (left[n] - left[n + 1]) for n in range(len(left) - 1) if left[n] < 0 <= left[n + 1]]
    if len(crossings) < 2:
        return Tone(0.0, max(map(abs, left), default=0), 0, len(left) / rate)
    frequency = (len(crossings) - 1) * rate / (crossings[-1] - crossings[0])
    steps = max(abs(left[n + 1] - left[n]) for n in range(len(left) - 1))
    return Tone(frequency, max(map(abs, left)), steps, len(left) / rate)


def trim_silence(pcm: bytes) -> bytes:
    """The recording without the silence before the first and after the last sound."""
    left = left_channel(pcm)
    loud = [n for n, value in enumerate(left) if abs(value) > 64]
    if not loud:
        return b""
    return pcm[loud[0] * 4 : (loud[-1] + 1) * 4]
