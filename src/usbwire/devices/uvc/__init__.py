"""USB Video Class: an emulated webcam streaming YUYV and MJPEG over iso or bulk endpoints."""

from usbwire.devices.uvc.device import ErrorCode, Webcam
from usbwire.devices.uvc.modes import ModeError, StreamTransfer, VideoFormat, WebcamConfig, fits
from usbwire.devices.uvc.pattern import JpegUnavailable, jpeg_available
from usbwire.devices.uvc.sources import CallbackSource, FrameRequest, FrameSource, ImageSource, PatternSource

__all__ = [
    "CallbackSource",
    "ErrorCode",
    "FrameRequest",
    "FrameSource",
    "ImageSource",
    "JpegUnavailable",
    "ModeError",
    "PatternSource",
    "StreamTransfer",
    "VideoFormat",
    "Webcam",
    "WebcamConfig",
    "fits",
    "jpeg_available",
]
