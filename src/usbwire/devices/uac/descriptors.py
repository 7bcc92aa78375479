"""USB Audio Class 1.0 class-specific descriptors, built from what a function declares.

Only what a PCM speaker and microphone need: the AudioControl header, input and output
terminals, feature units (mute and volume), and the AudioStreaming general, Type I format and
isochronous endpoint descriptors. Every length is derived, never written down.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence

from usbwire.devices.descriptors import DescriptorType

AUDIO_CLASS = 0x01


class Subclass(enum.IntEnum):
    AUDIOCONTROL = 0x01
    AUDIOSTREAMING = 0x02


class AcSubtype(enum.IntEnum):
    HEADER = 0x01
    INPUT_TERMINAL = 0x02
    OUTPUT_TERMINAL = 0x03
    FEATURE_UNIT = 0x06


class AsSubtype(enum.IntEnum):
    GENERAL = 0x01
    FORMAT_TYPE = 0x02


class TerminalType(enum.IntEnum):
    USB_STREAMING = 0x0101
    MICROPHONE = 0x0201
    SPEAKER = 0x0301


class Request(enum.IntEnum):
    SET_CUR = 0x01
    GET_CUR = 0x81
    GET_MIN = 0x82
    GET_MAX = 0x83
    GET_RES = 0x84


class FeatureControl(enum.IntEnum):
    MUTE = 0x01
    VOLUME = 0x02


# The one endpoint control of UAC1 streaming endpoints.
SAMPLING_FREQ_CONTROL = 0x01
FORMAT_PCM = 0x0001
# Front left and right.
STEREO = 0x0003


def _cs_interface(subtype: int, body: bytes) -> bytes:
    return struct.pack("<BBB", 3 + len(body), DescriptorType.CS_INTERFACE, subtype) + body


def ac_header(units: bytes, streaming_interfaces: Sequence[int]) -> bytes:
    """The AudioControl header, followed by the terminals and units it totals."""
    size = 8 + len(streaming_interfaces)
    body = struct.pack("<HHB", 0x0100, size + len(units), len(streaming_interfaces)) + bytes(streaming_interfaces)
    return _cs_interface(AcSubtype.HEADER, body) + units


def input_terminal(terminal_id: int, terminal_type: TerminalType, channels: int) -> bytes:
    body = struct.pack("<BHBBHBB", terminal_id, terminal_type, 0, channels, STEREO if channels == 2 else 0, 0, 0)
    return _cs_interface(AcSubtype.INPUT_TERMINAL, body)


def output_terminal(terminal_id: int, terminal_type: TerminalType, source_id: int) -> bytes:
    return _cs_interface(AcSubtype.OUTPUT_TERMINAL, struct.pack("<BHBBB", terminal_id, terminal_type, 0, source_id, 0))


def feature_unit(unit_id: int, source_id: int, channels: int, master: Sequence[FeatureControl]) -> bytes:
    """Master-channel controls only: the channels follow the master (bmaControls of 0)."""
    controls = sum(1 << (control - 1) for control in master)
    body = struct.pack("<BBB", unit_id, source_id, 1) + bytes([controls] + [0] * channels) + b"\x00"
    return _cs_interface(AcSubtype.FEATURE_UNIT, body)


def as_general(terminal_link: int) -> bytes:
    return _cs_interface(AsSubtype.GENERAL, struct.pack("<BBH", terminal_link, 1, FORMAT_PCM))


def format_type_i(channels: int, sample_bytes: int, rates: Sequence[int]) -> bytes:
    body = struct.pack("<BBBBB", 1, channels, sample_bytes, sample_bytes * 8, len(rates))
    body += b"".join(rate.to_bytes(3, "little") for rate in rates)
    return _cs_interface(AsSubtype.FORMAT_TYPE, body)


def iso_endpoint_general(sampling_freq_control: bool) -> bytes:
    return struct.pack("<BBBBBH", 7, DescriptorType.CS_ENDPOINT, 0x01, 1 if sampling_freq_control else 0, 0, 0)
