"""Where an emulated microphone's sound comes from and where a speaker's sound goes.

All PCM here is signed 16-bit little-endian, interleaved stereo: what the audio device
declares. A source is read in whole frames at the rate the host chose; a sink receives
frames with the rate they were played at.
"""

from __future__ import annotations

import array
import logging
import math
import os
import sys
import wave
from pathlib import Path
from typing import BinaryIO, Protocol

from usbwire.errors import UsbwireError

log = logging.getLogger("usbwire.devices")

CHANNELS = 2
SAMPLE_BYTES = 2
FRAME_BYTES = CHANNELS * SAMPLE_BYTES
FULL_SCALE = 32767


class Source(Protocol):
    @property
    def rates(self) -> tuple[int, ...]:
        """The sample rates this source can play, preferred first."""
        ...

    def read(self, frames: int, rate: int) -> bytes:
        """The next ``frames`` frames, at ``rate``; never short."""
        ...


class Sink(Protocol):
    def write(self, pcm: bytes, rate: int) -> None: ...

    def flush(self) -> None:
        """Make everything written so far durable (the stream stopped or the import ended)."""
        ...


class ToneSource:
    """A sine tone, continuous in phase across reads (a gap in it shows as a jump)."""

    def __init__(self, frequency: int, level: float = 0.5, rates: tuple[int, ...] = (48000, 44100)) -> None:
        if not 1 <= frequency < min(rates) // 2:
            raise UsbwireError(f"tone frequency {frequency} Hz is outside 1..{min(rates) // 2 - 1} Hz")
        if not 0 < level <= 1:
            raise UsbwireError(f"tone level {level} is outside (0, 1]")
        self.frequency = frequency
        self.level = level
        self.rates = rates
        self._cycles: dict[int, bytes] = {}
        self._position = 0  # frames into the current cycle

    def _cycle(self, rate: int) -> bytes:
        # The shortest whole number of periods that is also a whole number of frames, so
        # reading it round and round is an exact, unbroken tone.
        cycle = self._cycles.get(rate)
        if cycle is None:
            frames = rate // math.gcd(rate, self.frequency)
            amplitude = self.level * FULL_SCALE
            samples = array.array("h")
            for n in range(frames):
                value = round(amplitude * math.sin(2 * math.pi * self.frequency * n / rate))
                samples.extend((value,) * CHANNELS)
            if sys.byteorder == "big":
                samples.byteswap()
            cycle = self._cycles[rate] = samples.tobytes()
        return cycle

    def read(self, frames: int, rate: int) -> bytes:
        cycle = self._cycle(rate)
        length = len(cycle) // FRAME_BYTES
        out = bytearray()
        while frames:
            take = min(frames, length - self._position % length)
            start = (self._position % length) * FRAME_BYTES
            out += cycle[start : start + take * FRAME_BYTES]
            self._position = (self._position + take) % length
            frames -= take
        return bytes(out)


class WavSource:
    """A 16-bit PCM WAV file (mono or stereo), played round and round at its own rate."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._wav = wave.open(str(self.path), "rb")  # noqa: SIM115 - read for the source's whole life
        except (OSError, wave.Error, EOFError) as error:
            raise UsbwireError(f"cannot play {self.path}: {error}") from None
        if self._wav.getsampwidth() != SAMPLE_BYTES or self._wav.getnchannels() not in (1, 2):
            raise UsbwireError(f"{self.path}: only 16-bit mono or stereo PCM WAV files can be played")
        if self._wav.getnframes() == 0:
            raise UsbwireError(f"{self.path} holds no audio")
        self.rates = (self._wav.getframerate(),)
        self._mono = self._wav.getnchannels() == 1

    def read(self, frames: int, rate: int) -> bytes:
        out = bytearray()
        while len(out) < frames * FRAME_BYTES:
            wanted = frames - len(out) // FRAME_BYTES
            chunk = self._wav.readframes(wanted)
            if not chunk:
                self._wav.rewind()
                continue
            out += _stereo(chunk) if self._mono else chunk
        return bytes(out)


def _stereo(mono: bytes) -> bytes:
    samples = array.array("h", mono)
    doubled = array.array("h", bytes(len(mono) * 2))
    doubled[0::2] = samples
    doubled[1::2] = samples
    return doubled.tobytes()


class WavSink:
    """Writes a WAV file whose header is kept up to date, so it is valid while it grows."""

    # Writing every 1 ms packet would patch the header a thousand times a second.
    BUFFER_BYTES = 48000 * FRAME_BYTES // 10

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # The file is made when the host first plays (its rate is in the header); a path it
        # could never be made at is said now, not in the log once a stream starts.
        directory = self.path.parent
        if not directory.is_dir():
            raise UsbwireError(f"cannot write {path}: no directory {directory}")
        if not os.access(directory, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            raise UsbwireError(f"cannot write {path}: permission denied")
        self._wav: wave.Wave_write | None = None
        self._rate = 0
        self._pending = bytearray()

    def write(self, pcm: bytes, rate: int) -> None:
        if self._wav is None:
            try:
                self._wav = wave.open(str(self.path), "wb")  # noqa: SIM115 - written for the sink's whole life
            except OSError as error:
                raise UsbwireError(f"cannot write {self.path}: {error}") from None
            self._wav.setnchannels(CHANNELS)
            self._wav.setsampwidth(SAMPLE_BYTES)
            self._wav.setframerate(rate)
            self._rate = rate
        elif rate != self._rate:
            log.warning("%s: the host now plays at %d Hz; the file stays at %d Hz", self.path, rate, self._rate)
            self._rate = rate
        self._pending += pcm
        if len(self._pending) >= self.BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._wav is not None and self._pending:
            self._wav.writeframes(bytes(self._pending))
            self._pending.clear()
            # The wave module owns the file (and closes it when collected) but offers no flush.
            self._wav._file.flush()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.flush()
        if self._wav is not None:
            self._wav.close()
            self._wav = None


class RawSink:
    """Raw s16le stereo into a file or any binary stream (a pipe, a socket file, BytesIO)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def write(self, pcm: bytes, rate: int) -> None:
        self.stream.write(pcm)

    def flush(self) -> None:
        self.stream.flush()


def open_sink(path: str | Path) -> WavSink | RawSink:
    """A WAV file, or raw s16le 48 kHz stereo when the name ends in ``.raw``."""
    if str(path).endswith(".raw"):
        try:
            return RawSink(open(path, "wb"))
        except OSError as error:
            raise UsbwireError(f"cannot write {path}: {error}") from None
    return WavSink(path)


class NullSink:
    """Sound played to a speaker nobody listens to."""

    def write(self, pcm: bytes, rate: int) -> None:
        pass

    def flush(self) -> None:
        pass


def apply_gain(pcm: bytes, gain: float) -> bytes:
    """Scale 16-bit samples; 0 is silence, 1 leaves them untouched."""
    if gain >= 1.0:
        return pcm
    if gain <= 0.0:
        return bytes(len(pcm))
    samples = array.array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    scaled = array.array("h", [int(sample * gain) for sample in samples])
    if sys.byteorder == "big":
        scaled.byteswap()
    return scaled.tobytes()


__all__ = ["NullSink", "RawSink", "Sink", "Source", "ToneSource", "WavSink", "WavSource", "apply_gain"]
