"""An emulated USB Audio Class 1.0 headset: a stereo speaker and a stereo microphone.

Full speed, one packet per 1 ms frame, 16-bit PCM at 48 kHz (44.1 kHz too when the source can
play it). Each direction has a feature unit with mute and volume, applied to the sound as a
real device would: the microphone's level is scaled before it leaves, the speaker's before
it is written. The host picks the sample rate with the endpoint's sampling frequency control.

    speaker:    USB streaming (1) -> feature unit (2) -> speaker (3)        interface 1, EP 0x01 OUT
    microphone: microphone (4)    -> feature unit (5) -> USB streaming (6)  interface 2, EP 0x82 IN
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from usbwire.devices.base import Device
from usbwire.devices.descriptors import Configuration, DeviceDescriptor, Endpoint, Interface
from usbwire.devices.requests import Recipient, RequestType, Setup
from usbwire.devices.uac import descriptors as uac
from usbwire.devices.uac.descriptors import FeatureControl, Request, Subclass, TerminalType
from usbwire.devices.uac.streams import CHANNELS, FRAME_BYTES, NullSink, Sink, Source, ToneSource, apply_gain
from usbwire.errors import Stall
from usbwire.protocol.constants import Direction, Speed, TransferType

SPEAKER_INTERFACE = 1
MIC_INTERFACE = 2
SPEAKER_ENDPOINT = 0x01
MIC_ENDPOINT = 0x82
SPEAKER_UNIT = 2
MIC_UNIT = 5
DEFAULT_RATE = 48000
SPEAKER_RATES = (48000, 44100)
# Full speed: a packet per 1 ms frame.
PACKETS_PER_SECOND = 1000
# Volume in 1/256 dB, as UAC1 counts it.
VOLUME_MIN = -60 * 256
VOLUME_MAX = 0
VOLUME_RESOLUTION = 256

# Adaptive OUT and synchronous IN: the host's clock paces both, no feedback endpoint needed.
_ADAPTIVE = 0x08
_SYNCHRONOUS = 0x0C


def _max_packet(rates: Sequence[int], slack_frames: int) -> int:
    return (max(rates) // PACKETS_PER_SECOND + 1 + slack_frames) * FRAME_BYTES


def _streaming_interface(number: int, terminal: int, endpoint: Endpoint, rates: Sequence[int]) -> tuple[Interface, ...]:
    """Alternate 0 takes no bandwidth; alternate 1 streams."""
    general = uac.as_general(terminal) + uac.format_type_i(CHANNELS, 2, rates)
    return (
        Interface(number, uac.AUDIO_CLASS, Subclass.AUDIOSTREAMING, alternate=0),
        Interface(number, uac.AUDIO_CLASS, Subclass.AUDIOSTREAMING, alternate=1, extra=general, endpoints=(endpoint,)),
    )


def headset_descriptor(mic_rates: Sequence[int], serial: str = "AUD0001") -> DeviceDescriptor:
    master = (FeatureControl.MUTE, FeatureControl.VOLUME)
    units = (
        uac.input_terminal(1, TerminalType.USB_STREAMING, CHANNELS)
        + uac.feature_unit(SPEAKER_UNIT, 1, CHANNELS, master)
        + uac.output_terminal(3, TerminalType.SPEAKER, SPEAKER_UNIT)
        + uac.input_terminal(4, TerminalType.MICROPHONE, CHANNELS)
        + uac.feature_unit(MIC_UNIT, 4, CHANNELS, master)
        + uac.output_terminal(6, TerminalType.USB_STREAMING, MIC_UNIT)
    )
    control = Interface(0, uac.AUDIO_CLASS, Subclass.AUDIOCONTROL, extra=uac.ac_header(units, (1, 2)))
    speaker_endpoint = Endpoint(
        SPEAKER_ENDPOINT, Direction.OUT, TransferType.ISOCHRONOUS, _max_packet(SPEAKER_RATES, 1), interval=1,
        sync_attributes=_ADAPTIVE, audio=True, extra=uac.iso_endpoint_general(len(SPEAKER_RATES) > 1),
    )  # fmt: skip
    mic_endpoint = Endpoint(
        MIC_ENDPOINT & 0x0F, Direction.IN, TransferType.ISOCHRONOUS, _max_packet(mic_rates, 0), interval=1,
        sync_attributes=_SYNCHRONOUS, audio=True, extra=uac.iso_endpoint_general(len(mic_rates) > 1),
    )  # fmt: skip
    return DeviceDescriptor(
        vendor_id=0x1209,
        product_id=0x0007,
        manufacturer="usbwire",
        product="Emulated headset",
        serial=serial,
        configurations=(
            Configuration(
                value=1,
                max_power_ma=100,
                interfaces=(
                    control,
                    *_streaming_interface(SPEAKER_INTERFACE, 1, speaker_endpoint, SPEAKER_RATES),
                    *_streaming_interface(MIC_INTERFACE, 6, mic_endpoint, mic_rates),
                ),
            ),
        ),
    )


@dataclass(slots=True)
class StreamState:
    """One direction's controls as the host set them."""

    rates: tuple[int, ...]
    rate: int
    muted: bool = False
    volume: int = VOLUME_MAX  # 1/256 dB
    # Frames owed to the next packet when the rate is not a whole number of frames per ms.
    remainder: int = 0

    @property
    def gain(self) -> float:
        return 0.0 if self.muted else 10 ** (self.volume / 256 / 20)

    def frames_for(self, packets: int) -> list[int]:
        """How many frames each of the next packets carries (44.1 kHz: 44, 44, ..., 45)."""
        counts = []
        for _ in range(packets):
            self.remainder += self.rate
            counts.append(self.remainder // PACKETS_PER_SECOND)
            self.remainder %= PACKETS_PER_SECOND
        return counts


class Headset(Device):
    """Speaker and microphone; sound comes from ``mic`` and goes to ``speaker``."""

    def __init__(self, mic: Source | None = None, speaker: Sink | None = None) -> None:
        self.mic_source: Source = mic if mic is not None else ToneSource(1000)
        self.speaker_sink: Sink = speaker if speaker is not None else NullSink()
        mic_rates = self.mic_source.rates
        super().__init__(headset_descriptor(mic_rates), Speed.FULL)
        default_mic = DEFAULT_RATE if DEFAULT_RATE in mic_rates else mic_rates[0]
        self.mic = StreamState(tuple(mic_rates), default_mic)
        self.speaker = StreamState(SPEAKER_RATES, DEFAULT_RATE)
        self.speaker_frames = 0

    # -- streams -----------------------------------------------------------------------------

    async def iso_in(self, endpoint: Endpoint, lengths: Sequence[int]) -> Sequence[bytes | int]:
        if endpoint.address != MIC_ENDPOINT:
            raise Stall(f"endpoint 0x{endpoint.address:02x} streams nothing")
        counts = [min(frames, length // FRAME_BYTES) for frames, length in zip(
            self.mic.frames_for(len(lengths)), lengths, strict=True)]  # fmt: skip
        pcm = apply_gain(self.mic_source.read(sum(counts), self.mic.rate), self.mic.gain)
        packets = []
        position = 0
        for frames in counts:
            packets.append(pcm[position : position + frames * FRAME_BYTES])
            position += frames * FRAME_BYTES
        return packets

    async def iso_out(self, endpoint: Endpoint, packets: Sequence[bytes]) -> None:
        pcm = b"".join(packet[: len(packet) - len(packet) % FRAME_BYTES] for packet in packets)
        if pcm:
            self.speaker_frames += len(pcm) // FRAME_BYTES
            self.speaker_sink.write(apply_gain(pcm, self.speaker.gain), self.speaker.rate)

    def on_interface(self, number: int, alternate: int) -> None:
        if number == SPEAKER_INTERFACE and alternate == 0:
            self.speaker_sink.flush()
        elif number == MIC_INTERFACE:
            self.mic.remainder = 0

    async def close(self) -> None:
        self.speaker_sink.flush()

    # -- controls ----------------------------------------------------------------------------

    async def class_request(self, setup: Setup, data: bytes) -> bytes | None:
        if setup.type != RequestType.CLASS:
            raise Stall(f"unsupported request {setup}")
        if setup.recipient == Recipient.ENDPOINT:
            return self._sampling_frequency(setup, data)
        if setup.recipient == Recipient.INTERFACE:
            unit = setup.index >> 8
            if unit == SPEAKER_UNIT:
                return self._feature_unit(self.speaker, setup, data)
            if unit == MIC_UNIT:
                return self._feature_unit(self.mic, setup, data)
        raise Stall(f"no audio control answers {setup}")

    def _sampling_frequency(self, setup: Setup, data: bytes) -> bytes | None:
        address = setup.index & 0xFF
        stream = {SPEAKER_ENDPOINT: self.speaker, MIC_ENDPOINT: self.mic}.get(address)
        if stream is None or setup.value >> 8 != uac.SAMPLING_FREQ_CONTROL:
            raise Stall(f"no sampling frequency control for {setup}")
        if setup.request == Request.SET_CUR:
            rate = int.from_bytes(data[:3], "little")
            if len(data) < 3 or rate not in stream.rates:
                raise Stall(f"endpoint 0x{address:02x} cannot play {rate} Hz")
            stream.rate = rate
            stream.remainder = 0
            return None
        if setup.request == Request.GET_CUR:
            return stream.rate.to_bytes(3, "little")
        raise Stall(f"unsupported sampling frequency request {setup}")

    def _feature_unit(self, stream: StreamState, setup: Setup, data: bytes) -> bytes | None:
        control, channel = setup.value >> 8, setup.value & 0xFF
        if channel != 0:
            raise Stall(f"feature unit controls only the master channel, not {channel}")
        if control == FeatureControl.MUTE:
            if setup.request == Request.SET_CUR and data:
                stream.muted = bool(data[0])
                return None
            if setup.request == Request.GET_CUR:
                return bytes([stream.muted])
        elif control == FeatureControl.VOLUME:
            if setup.request == Request.SET_CUR and len(data) >= 2:
                (volume,) = struct.unpack("<h", data[:2])
                stream.volume = max(VOLUME_MIN, min(VOLUME_MAX, volume))
                return None
            answers: dict[int, int] = {
                Request.GET_CUR: stream.volume,
                Request.GET_MIN: VOLUME_MIN,
                Request.GET_MAX: VOLUME_MAX,
                Request.GET_RES: VOLUME_RESOLUTION,
            }
            value = answers.get(setup.request)
            if value is not None:
                return struct.pack("<h", value)
        raise Stall(f"unsupported feature unit request {setup}")
