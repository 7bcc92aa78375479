"""The emulated USB Audio headset: what it declares, what its microphone sends, what its
speaker writes, and how mute, volume and the sample rate change them."""

from __future__ import annotations

import asyncio
import io
import wave
from pathlib import Path

import pytest

from tests.audio import measure
from tests.conftest import running_server
from usbwire.backends.emulated import EmulatedExport
from usbwire.client import RemoteDevice, connect
from usbwire.devices.uac import Headset, RawSink, ToneSource, WavSink, WavSource, open_sink
from usbwire.devices.uac.device import MIC_ENDPOINT, MIC_INTERFACE, MIC_UNIT, SPEAKER_ENDPOINT, SPEAKER_INTERFACE
from usbwire.errors import TransferError, UsbwireError
from usbwire.protocol import Direction, TransferType
from usbwire.protocol.descriptors import ConfigurationDescriptor

BUSID = "4-1"
SET_CUR, GET_CUR, GET_MIN, GET_MAX = 0x01, 0x81, 0x82, 0x83
MUTE, VOLUME, SAMPLING_FREQ = 0x01, 0x02, 0x01


def test_the_configuration_declares_a_speaker_and_a_microphone_on_iso_alternate_settings() -> None:
    config = ConfigurationDescriptor.parse(Headset().descriptors.configuration(0))
    assert [(i.bInterfaceNumber, i.bAlternateSetting, i.bInterfaceSubClass) for i in config.interfaces] == [
        (0, 0, 1), (1, 0, 2), (1, 1, 2), (2, 0, 2), (2, 1, 2),
    ]  # fmt: skip
    assert config.bNumInterfaces == 3
    speaker, mic = config.alternates(1)[1].endpoints[0], config.alternates(2)[1].endpoints[0]
    for endpoint in speaker, mic:
        assert endpoint.bLength == 9 and endpoint.transfer_type == TransferType.ISOCHRONOUS
        assert endpoint.bInterval == 1
    assert (speaker.direction, mic.direction) == (Direction.OUT, Direction.IN)
    assert mic.max_packet_size >= 48 * 4  # one millisecond of 48 kHz stereo 16-bit
    header = config.alternates(0)[0].extra
    assert header[2] == 0x01 and int.from_bytes(header[5:7], "little") == len(header)  # wTotalLength adds up


def test_the_default_tone_plays_at_48_and_44_1_khz() -> None:
    assert Headset().mic.rates == (48000, 44100)


async def _streaming(device: RemoteDevice, interface: int) -> None:
    await device.set_configuration(1)
    await device.set_interface(interface, 1)


async def _record(device: RemoteDevice, milliseconds: int, in_flight: int = 3) -> bytes:
    """Keep ``in_flight`` URBs of 8 packets queued, as snd-usb-audio does."""
    urbs = milliseconds // 8
    pending = [asyncio.ensure_future(device.iso_transfer(MIC_ENDPOINT, [196] * 8)) for _ in range(in_flight)]
    out = bytearray()
    for n in range(urbs):
        result = await pending.pop(0)
        assert result.error_count == 0
        out += b"".join(result.data[p.offset : p.offset + p.actual_length] for p in result.packets)
        if n + in_flight < urbs:
            pending.append(asyncio.ensure_future(device.iso_transfer(MIC_ENDPOINT, [196] * 8)))
    return bytes(out)


def _serve(headset: Headset, body: object) -> None:
    with running_server(extra_exports=[EmulatedExport(headset, BUSID, busnum=4, devnum=2)], demo=False) as server:
        asyncio.run(body(server.port))  # type: ignore[operator]


def test_the_microphone_sends_the_tone_unbroken_at_48_khz() -> None:
    async def body(port: int) -> None:
        async with connect("127.0.0.1", BUSID, port=port) as device:
            await _streaming(device, MIC_INTERFACE)
            pcm = await _record(device, 400)
        assert len(pcm) == 400 * 48 * 4  # exactly 48 frames per 1 ms packet
        tone = measure(pcm, 48000)
        assert tone.frequency == pytest.approx(1250, rel=0.002)
        assert tone.peak == pytest.approx(0.5 * 32767, rel=0.01)
        assert tone.continuous(48000)

    _serve(Headset(mic=ToneSource(1250)), body)


def test_at_44_1_khz_packets_carry_44_frames_and_every_tenth_45() -> None:
    async def body(port: int) -> None:
        async with connect("127.0.0.1", BUSID, port=port) as device:
            await _streaming(device, MIC_INTERFACE)
            rate = (44100).to_bytes(3, "little")
            await device.control_transfer(0x22, SET_CUR, SAMPLING_FREQ << 8, MIC_ENDPOINT, rate)
            assert await device.control_transfer(0xA2, GET_CUR, SAMPLING_FREQ << 8, MIC_ENDPOINT, 3) == rate
            result = await device.iso_transfer(MIC_ENDPOINT, [196] * 10)
            pcm = await _record(device, 200)
        assert [p.actual_length // 4 for p in result.packets] == [44] * 9 + [45]
        assert measure(pcm, 44100).frequency == pytest.approx(1250, rel=0.002)

    _serve(Headset(mic=ToneSource(1250)), body)


def test_an_unsupported_rate_is_refused() -> None:
    async def body(port: int) -> None:
        async with connect("127.0.0.1", BUSID, port=port) as device:
            await _streaming(device, MIC_INTERFACE)
            with pytest.raises(TransferError):
                await device.control_transfer(
                    0x22, SET_CUR, SAMPLING_FREQ << 8, MIC_ENDPOINT, (32000).to_bytes(3, "little")
                )

    _serve(Headset(), body)


def test_volume_scales_the_microphone_and_mute_silences_it() -> None:
    async def body(port: int) -> None:
        async with connect("127.0.0.1", BUSID, port=port) as device:
            await _streaming(device, MIC_INTERFACE)
            unit = MIC_UNIT << 8 | 0
            assert await device.control_transfer(0xA1, GET_MIN, VOLUME << 8, unit, 2) == (-60 * 256).to_bytes(
                2, "little", signed=True
            )
            assert await device.control_transfer(0xA1, GET_MAX, VOLUME << 8, unit, 2) == bytes(2)
            minus_6_db = (-6 * 256).to_bytes(2, "little", signed=True)
            await device.control_transfer(0x21, SET_CUR, VOLUME << 8, unit, minus_6_db)
            quieter = measure(await _record(device, 80), 48000)
            await device.control_transfer(0x21, SET_CUR, MUTE << 8, unit, b"\x01")
            assert await device.control_transfer(0xA1, GET_CUR, MUTE << 8, unit, 1) == b"\x01"
            muted = await _record(device, 40)
        assert quieter.peak == pytest.approx(0.5 * 32767 * 10 ** (-6 / 20), rel=0.01)
        assert muted == bytes(len(muted))

    _serve(Headset(mic=ToneSource(1250)), body)


def _tone_packets(seconds: float, frequency: int = 440) -> list[bytes]:
    pcm = ToneSource(frequency, 0.25).read(int(48000 * seconds), 48000)
    return [pcm[n : n + 192] for n in range(0, len(pcm), 192)]


def test_what_the_host_plays_to_the_speaker_lands_in_the_wav_file(tmp_path: Path) -> None:
    path = tmp_path / "speaker.wav"
    packets = _tone_packets(0.5)

    async def body(port: int) -> None:
        async with connect("127.0.0.1", BUSID, port=port) as device:
            await _streaming(device, SPEAKER_INTERFACE)
            urbs = [packets[n : n + 10] for n in range(0, len(packets), 10)]
            await asyncio.gather(*(device.iso_transfer(SPEAKER_ENDPOINT, urb) for urb in urbs))
            await device.set_interface(SPEAKER_INTERFACE, 0)  # stream stopped: the file is complete now
            with wave.open(str(path), "rb") as wav:
                assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (48000, 2, 2)
                assert wav.readframes(wav.getnframes()) == b"".join(packets)

    _serve(Headset(speaker=WavSink(path)), body)


def test_a_muted_speaker_writes_silence_of_the_same_length() -> None:
    sink = io.BytesIO()
    packets = _tone_packets(0.05)

    async def body(port: int) -> None:
        async with connect("127.0.0.1", BUSID, port=port) as device:
            await _streaming(device, SPEAKER_INTERFACE)
            await device.control_transfer(0x21, SET_CUR, MUTE << 8, 2 << 8, b"\x01")
            await device.iso_transfer(SPEAKER_ENDPOINT, packets)

    _serve(Headset(speaker=RawSink(sink)), body)
    assert sink.getvalue() == bytes(len(b"".join(packets)))


def test_a_wav_file_plays_round_and_round_and_mono_becomes_stereo(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\x01\x00\x02\x00\x03\x00")
    source = WavSource(path)
    assert source.rates == (16000,)
    assert source.read(4, 16000) == b"\x01\x00\x01\x00\x02\x00\x02\x00\x03\x00\x03\x00\x01\x00\x01\x00"
    assert Headset(mic=source).mic.rate == 16000


def test_sources_and_sinks_refuse_what_they_cannot_handle(tmp_path: Path) -> None:
    (tmp_path / "eight-bit.wav").write_bytes(b"")
    with wave.open(str(tmp_path / "eight-bit.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(b"\x80" * 10)
    with pytest.raises(UsbwireError, match="16-bit"):
        WavSource(tmp_path / "eight-bit.wav")
    with pytest.raises(UsbwireError, match="cannot play"):
        WavSource(tmp_path / "missing.wav")
    with pytest.raises(UsbwireError, match="frequency"):
        ToneSource(30000)
    assert isinstance(open_sink(tmp_path / "out.raw"), RawSink)
    assert isinstance(open_sink(tmp_path / "out.wav"), WavSink)


def test_a_tone_read_in_pieces_is_the_tone_read_at_once() -> None:
    whole = ToneSource(997).read(48000, 48000)
    pieces = ToneSource(997)
    assert b"".join(pieces.read(n, 48000) for n in (1, 47, 48, 4904, 43000)) == whole
