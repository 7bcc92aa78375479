"""Emulated USB Audio Class 1.0 devices."""

from usbwire.devices.uac.device import Headset
from usbwire.devices.uac.streams import NullSink, RawSink, Sink, Source, ToneSource, WavSink, WavSource, open_sink

__all__ = ["Headset", "NullSink", "RawSink", "Sink", "Source", "ToneSource", "WavSink", "WavSource", "open_sink"]
