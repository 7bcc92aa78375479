"""An emulated USB Video Class webcam: probe/commit, then frames paced to the frame interval.

Streaming starts when the host selects a non-zero alternate setting (iso) or commits (bulk),
and stops at alternate setting 0 or when the host clears the bulk endpoint's halt, which is
how Linux's uvcvideo ends a bulk stream.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Sequence

from usbwire.devices.base import Device
from usbwire.devices.descriptors import Configuration, Endpoint
from usbwire.devices.iso import service_interval, wait_until
from usbwire.devices.requests import Recipient, RequestType, Setup
from usbwire.devices.uvc.descriptors import CONTROL_INTERFACE, STREAM_ENDPOINT, STREAMING_INTERFACE, webcam_descriptor
from usbwire.devices.uvc.modes import HEADER_LENGTH, StreamTransfer, VideoFormat, WebcamConfig, build_formats
from usbwire.devices.uvc.payload import PayloadStream
from usbwire.devices.uvc.probe import CONTROL_LENGTH, Negotiated, Negotiator, StreamingControl
from usbwire.devices.uvc.sources import CallbackSource, FrameRequest, FrameSource, ImageSource, PatternSource
from usbwire.errors import Stall
from usbwire.protocol.constants import Direction

log = logging.getLogger("usbwire.devices.uvc")


class UvcRequest(enum.IntEnum):
    SET_CUR = 0x01
    GET_CUR = 0x81
    GET_MIN = 0x82
    GET_MAX = 0x83
    GET_RES = 0x84
    GET_LEN = 0x85
    GET_INFO = 0x86
    GET_DEF = 0x87


class VsControl(enum.IntEnum):
    PROBE = 0x01
    COMMIT = 0x02
    STREAM_ERROR_CODE = 0x06


VC_REQUEST_ERROR_CODE_CONTROL = 0x02


class ErrorCode(enum.IntEnum):
    """UVC 1.1 §4.2.1.2: why the last request stalled, read back with GET_CUR."""

    NO_ERROR = 0x00
    WRONG_STATE = 0x02
    INVALID_UNIT = 0x05
    INVALID_CONTROL = 0x06
    INVALID_REQUEST = 0x07
    INVALID_VALUE = 0x08


# GET_INFO bits: the control answers GET and SET requests.
INFO_GET, INFO_SET = 0x01, 0x02


class Refused(Stall):
    """A stalled class request, with the error code the host may ask for afterwards."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Webcam(Device):
    """A UVC 1.1 webcam offering YUYV and/or MJPEG frames from a :mod:`~usbwire.devices.uvc.sources` source.

    Args:
        config: formats, sizes, rates, transfer type and speed to offer (filtered to the link).
        source: a FrameSource, or a callable ``(FrameRequest) -> bytes``; the test pattern
            (or ``config.image``) by default.

    Raises:
        ModeError: nothing asked for fits the link, or the image cannot be used.
        JpegUnavailable: MJPEG from the pattern or an image without Pillow installed.
    """

    def __init__(
        self,
        config: WebcamConfig | None = None,
        source: FrameSource | Callable[[FrameRequest], bytes] | None = None,
    ) -> None:
        self.config = config or WebcamConfig()
        self.formats = build_formats(self.config)
        super().__init__(webcam_descriptor(self.config, self.formats), self.config.speed)
        self.source = _source(self.config, source)
        self.source.prepare([(f.kind, fr.width, fr.height) for f in self.formats for fr in f.frames])
        self.negotiator = Negotiator(self.config, self.formats)
        self.probe = self.negotiator.default()
        self.committed: Negotiated | None = None
        # The number the next frame carries; it runs on across streams.
        self.frame_number = 0
        self.request_error = ErrorCode.NO_ERROR
        self._stream: PayloadStream | None = None
        self._stream_started = asyncio.Event()
        self._fid = 0
        self._bulk_left = memoryview(b"")
        self._bulk_zero_packet = False

    def describe(self) -> str:
        """What the webcam offers, in one line (e.g. for a log)."""
        modes = ", ".join(
            f.kind.label + "".join(f" {fr.width}x{fr.height}@{round(1e7 / fr.default_interval)}" for fr in f.frames)
            for f in self.formats
        )
        return f"{modes} (the highest rate of each size; {self.config.transfer.value}, {self.speed.name.lower()} speed)"

    @property
    def stream(self) -> PayloadStream | None:
        """The payloads of the running stream, if one runs."""
        return self._stream

    # -- streaming --------------------------------------------------------------------------

    def _start_stream(self) -> None:
        negotiated = self.committed or self.probe
        if self._stream is not None:
            self._fid = self._stream.fid

        def make(now: float) -> bytes:
            return self._make_frame(negotiated, now)

        self._stream = PayloadStream(make, negotiated.interval_s, self._fid)
        self._bulk_left = memoryview(b"")
        self._bulk_zero_packet = False
        self._stream_started.set()
        frame = negotiated.frame
        log.info(
            "webcam streams %s %dx%d at %.4g fps, payloads of up to %d bytes, over %s",
            negotiated.format.kind.label, frame.width, frame.height, 1 / negotiated.interval_s,
            negotiated.control.dwMaxPayloadTransferSize, self._transport(),
        )  # fmt: skip

    def _transport(self) -> str:
        endpoint = self.endpoint(STREAM_ENDPOINT, Direction.IN)
        if endpoint is None or self.config.transfer == StreamTransfer.BULK:
            return "bulk"
        return (
            f"iso alternate setting {self.alternates.get(STREAMING_INTERFACE, 0)} "
            f"({endpoint.additional_transactions + 1} x {endpoint.max_packet_size} bytes)"
        )

    def _stop_stream(self) -> None:
        if self._stream is not None:
            self._fid = self._stream.fid
            log.info("webcam stopped after %d frames", self._stream.frames)
        self._stream = None
        self._stream_started.clear()
        self._bulk_left = memoryview(b"")
        self._bulk_zero_packet = False

    def _make_frame(self, negotiated: Negotiated, now: float) -> bytes:
        frame = negotiated.frame
        kind = negotiated.format.kind
        data = self.source.frame(FrameRequest(kind, frame.width, frame.height, self.frame_number, now))
        if kind == VideoFormat.YUYV and len(data) != frame.buffer_size:
            raise ValueError(f"a {frame.width}x{frame.height} YUYV frame is {frame.buffer_size} bytes, got {len(data)}")
        if kind == VideoFormat.MJPEG and (data[:2] != b"\xff\xd8" or len(data) > frame.buffer_size):
            raise ValueError(f"not a JPEG of at most {frame.buffer_size} bytes")
        self.frame_number += 1
        return data

    async def iso_in(self, endpoint: Endpoint, lengths: Sequence[int]) -> Sequence[bytes | int]:
        stream = self._stream
        if stream is None:
            return [b""] * len(lengths)
        # The packets' slots ended one service interval apart, the last one now.
        period = service_interval(endpoint, self.speed)
        now = asyncio.get_running_loop().time()
        limit = endpoint.max_packet_size * (endpoint.additional_transactions + 1)
        last = len(lengths) - 1
        return [
            stream.packet(now - (last - i) * period, min(length, limit)) if min(length, limit) > HEADER_LENGTH else b""
            for i, length in enumerate(lengths)
        ]

    async def handle_in(self, endpoint: Endpoint, length: int) -> bytes:
        """Bulk streaming: one payload per frame, across as many transfers as it takes."""
        if endpoint.number != STREAM_ENDPOINT:
            raise Stall(f"endpoint 0x{endpoint.address:02x} has no data")
        while not self._bulk_left:
            if self._bulk_zero_packet:
                # The payload ended exactly at a transfer's end: a zero-length packet tells the
                # host so (it would take the next frame's header for more data otherwise).
                self._bulk_zero_packet = False
                return b""
            stream = self._stream
            if stream is None:
                await self._stream_started.wait()
                continue
            due = stream.pacer.next_due
            if due is not None:
                await wait_until(due)
            if stream is self._stream:
                self._bulk_left = memoryview(stream.whole_frame(asyncio.get_running_loop().time()))
        chunk = bytes(self._bulk_left[:length])
        self._bulk_left = self._bulk_left[length:]
        negotiated = self.committed or self.probe
        if not self._bulk_left and len(chunk) == length:
            self._bulk_zero_packet = len(chunk) < negotiated.control.dwMaxPayloadTransferSize
        return chunk

    # -- chapter 9 hooks --------------------------------------------------------------------

    def on_interface(self, number: int, alternate: int) -> None:
        if number != STREAMING_INTERFACE or self.config.transfer != StreamTransfer.ISO:
            return
        if alternate:
            self._start_stream()
        else:
            self._stop_stream()

    def on_clear_halt(self, endpoint: Endpoint) -> None:
        if endpoint.number == STREAM_ENDPOINT and self.config.transfer == StreamTransfer.BULK:
            self._stop_stream()

    def on_configuration(self, configuration: Configuration | None) -> None:
        self._stop_stream()

    # -- class requests ---------------------------------------------------------------------

    async def class_request(self, setup: Setup, data: bytes) -> bytes | None:
        if setup.type != RequestType.CLASS or setup.recipient != Recipient.INTERFACE:
            raise Stall(f"unsupported request {setup}")
        interface, entity, selector = setup.index & 0xFF, setup.index >> 8, setup.value >> 8
        answer: bytes | None
        try:
            if interface == CONTROL_INTERFACE:
                answer = self._control_request(entity, selector, setup.request)
            elif interface == STREAMING_INTERFACE:
                answer = self._streaming_request(selector, setup.request, data)
            else:
                raise Refused(ErrorCode.INVALID_UNIT, f"no interface {interface}")
        except Refused as refused:
            self.request_error = refused.code
            raise
        self.request_error = ErrorCode.NO_ERROR
        return answer

    def _control_request(self, entity: int, selector: int, request: int) -> bytes:
        if entity != 0:
            # The terminals have no controls (their bmControls are all zero).
            raise Refused(ErrorCode.INVALID_CONTROL, f"entity {entity} has no control {selector}")
        if selector != VC_REQUEST_ERROR_CODE_CONTROL:
            raise Refused(ErrorCode.INVALID_CONTROL, f"no interface control {selector}")
        if request == UvcRequest.GET_CUR:
            return bytes([self.request_error])
        if request == UvcRequest.GET_INFO:
            return bytes([INFO_GET])
        raise Refused(ErrorCode.INVALID_REQUEST, f"request 0x{request:02x} on the error code control")

    def _streaming_request(self, selector: int, request: int, data: bytes) -> bytes | None:
        if selector == VsControl.STREAM_ERROR_CODE:
            if request == UvcRequest.GET_CUR:
                return bytes([ErrorCode.NO_ERROR])  # frames are made, never lost, on this side
            if request == UvcRequest.GET_INFO:
                return bytes([INFO_GET])
            raise Refused(ErrorCode.INVALID_REQUEST, f"request 0x{request:02x} on the stream error control")
        if selector not in (VsControl.PROBE, VsControl.COMMIT):
            raise Refused(ErrorCode.INVALID_CONTROL, f"no streaming control {selector}")
        probe = selector == VsControl.PROBE
        if request == UvcRequest.SET_CUR:
            self._set(probe, StreamingControl.from_bytes(data))
            return None
        if request == UvcRequest.GET_CUR:
            current = self.probe if probe else (self.committed or self.probe)
            return current.control.to_bytes()
        if request == UvcRequest.GET_LEN:
            return CONTROL_LENGTH.to_bytes(2, "little")
        if request == UvcRequest.GET_INFO:
            return bytes([INFO_GET | INFO_SET])
        if not probe:
            raise Refused(ErrorCode.INVALID_REQUEST, f"request 0x{request:02x} on the commit control")
        if request == UvcRequest.GET_DEF:
            return self.negotiator.default().control.to_bytes()
        if request in (UvcRequest.GET_MIN, UvcRequest.GET_MAX):
            low, high = self.negotiator.bounds(self.probe)
            return (low if request == UvcRequest.GET_MIN else high).to_bytes()
        if request == UvcRequest.GET_RES:
            # Every field takes discrete values only: no step to report.
            return StreamingControl().to_bytes()
        raise Refused(ErrorCode.INVALID_REQUEST, f"request 0x{request:02x} on the probe control")

    def _set(self, probe: bool, proposal: StreamingControl) -> None:
        if probe:
            self.probe = self.negotiator.settle(proposal)
            return
        try:
            self.committed = self.negotiator.check_commit(proposal)
        except Stall as error:
            raise Refused(ErrorCode.INVALID_VALUE, str(error)) from None
        if self.config.transfer == StreamTransfer.BULK:
            self._start_stream()


def _source(config: WebcamConfig, source: FrameSource | Callable[[FrameRequest], bytes] | None) -> FrameSource:
    if source is None:
        return ImageSource(config.image) if config.image else PatternSource()
    if isinstance(source, FrameSource):
        return source
    return CallbackSource(source)
