"""Probe and commit (UVC 1.1 §4.3.1.1): the host proposes, the device settles, the host commits.

The host SET_CURs a proposal on VS_PROBE_CONTROL; the device replaces what it cannot do with
the nearest thing it can and fills in the fields only it knows (dwMaxVideoFrameSize,
dwMaxPayloadTransferSize, the clock); GET_CUR returns the settled values, which the host then
SET_CURs on VS_COMMIT_CONTROL to start streaming with them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from usbwire.devices.uvc.descriptors import CLOCK_HZ
from usbwire.devices.uvc.modes import (
    HEADER_LENGTH,
    ISO_SETTINGS,
    Format,
    Frame,
    StreamTransfer,
    WebcamConfig,
    iso_setting_for,
)
from usbwire.errors import Stall

# The UVC 1.1 layout (34 bytes); UVC 1.0 hosts send and read the first 26.
_CONTROL = struct.Struct("<HBBIHHHHHIIIBBBB")
CONTROL_LENGTH = _CONTROL.size
UVC10_LENGTH = 26
# bmFramingInfo: the FID bit is toggled per frame and EOF marks a frame's last payload.
FRAMING_FID_EOF = 0x03


@dataclass(frozen=True, slots=True)
class StreamingControl:
    """The VS_PROBE_CONTROL / VS_COMMIT_CONTROL block, fields named as in UVC 1.1 table 4-75."""

    bmHint: int = 0
    bFormatIndex: int = 0
    bFrameIndex: int = 0
    dwFrameInterval: int = 0
    wKeyFrameRate: int = 0
    wPFrameRate: int = 0
    wCompQuality: int = 0
    wCompWindowSize: int = 0
    wDelay: int = 0
    dwMaxVideoFrameSize: int = 0
    dwMaxPayloadTransferSize: int = 0
    dwClockFrequency: int = 0
    bmFramingInfo: int = 0
    bPreferedVersion: int = 0
    bMinVersion: int = 0
    bMaxVersion: int = 0

    def to_bytes(self) -> bytes:
        return _CONTROL.pack(
            self.bmHint, self.bFormatIndex, self.bFrameIndex, self.dwFrameInterval, self.wKeyFrameRate,
            self.wPFrameRate, self.wCompQuality, self.wCompWindowSize, self.wDelay, self.dwMaxVideoFrameSize,
            self.dwMaxPayloadTransferSize, self.dwClockFrequency, self.bmFramingInfo, self.bPreferedVersion,
            self.bMinVersion, self.bMaxVersion,
        )  # fmt: skip

    @classmethod
    def from_bytes(cls, raw: bytes) -> StreamingControl:
        """A UVC 1.0 (26-byte) or 1.1 block; missing 1.1 fields read as zero.

        Raises:
            Stall: shorter than a UVC 1.0 block.
        """
        if len(raw) < UVC10_LENGTH:
            raise Stall(f"a streaming control block is {CONTROL_LENGTH} bytes, got {len(raw)}")
        return cls(*_CONTROL.unpack(raw[:CONTROL_LENGTH].ljust(CONTROL_LENGTH, b"\0")))


@dataclass(frozen=True, slots=True)
class Negotiated:
    """A settled control with the format and frame it names."""

    control: StreamingControl
    format: Format
    frame: Frame

    @property
    def interval_s(self) -> float:
        return self.control.dwFrameInterval / 10_000_000


class Negotiator:
    """Settles proposals against the advertised formats, for one link speed and transfer type."""

    def __init__(self, config: WebcamConfig, formats: tuple[Format, ...]) -> None:
        self.config = config
        self.formats = formats

    def settle(self, proposal: StreamingControl) -> Negotiated:
        """The nearest supported stream to ``proposal`` (an unknown format or frame: the default)."""
        fmt = next((f for f in self.formats if f.index == proposal.bFormatIndex), self.formats[0])
        frame = fmt.frame(proposal.bFrameIndex) or fmt.frames[0]
        interval = frame.nearest_interval(proposal.dwFrameInterval)
        return self._complete(proposal, fmt, frame, interval)

    def check_commit(self, proposal: StreamingControl) -> Negotiated:
        """A commit must name what a probe could have settled on.

        Raises:
            Stall: an unknown format or frame, or an interval the frame does not offer.
        """
        fmt = next((f for f in self.formats if f.index == proposal.bFormatIndex), None)
        frame = fmt.frame(proposal.bFrameIndex) if fmt else None
        if fmt is None or frame is None:
            raise Stall(f"commit of format {proposal.bFormatIndex} frame {proposal.bFrameIndex}: no such frame")
        if proposal.dwFrameInterval not in frame.intervals:
            raise Stall(f"commit of frame interval {proposal.dwFrameInterval}: not offered")
        return self._complete(proposal, fmt, frame, proposal.dwFrameInterval)

    def default(self) -> Negotiated:
        fmt = self.formats[0]
        return self._complete(StreamingControl(), fmt, fmt.frames[0], fmt.frames[0].default_interval)

    def bounds(self, current: Negotiated) -> tuple[StreamingControl, StreamingControl]:
        """GET_MIN and GET_MAX: the current frame's shortest and longest interval."""
        low = replace(current.control, dwFrameInterval=min(current.frame.intervals))
        high = replace(current.control, dwFrameInterval=max(current.frame.intervals))
        return low, high

    def _complete(self, proposal: StreamingControl, fmt: Format, frame: Frame, interval: int) -> Negotiated:
        control = StreamingControl(
            bmHint=proposal.bmHint,
            bFormatIndex=fmt.index,
            bFrameIndex=frame.index,
            dwFrameInterval=interval,
            # No key frames, P-frames or quality knobs: MJPEG frames are all key frames.
            dwMaxVideoFrameSize=frame.buffer_size,
            dwMaxPayloadTransferSize=self.payload_size(frame, interval),
            dwClockFrequency=CLOCK_HZ,
            bmFramingInfo=FRAMING_FID_EOF,
        )
        return Negotiated(control, fmt, frame)

    def payload_size(self, frame: Frame, interval: int) -> int:
        """Iso: the packet size of the setting the stream needs (hosts pick the smallest that
        holds it). Bulk: a whole frame after one header, one payload per frame."""
        if self.config.transfer == StreamTransfer.BULK:
            return HEADER_LENGTH + frame.buffer_size
        setting = ISO_SETTINGS[self.config.speed][iso_setting_for(frame, interval, self.config.speed) - 1]
        return setting.bytes_per_interval
