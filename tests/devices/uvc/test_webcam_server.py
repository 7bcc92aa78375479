"""The webcam through a real usbwire server on loopback, driven as uvcvideo drives it."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import pytest
from PIL import Image

import usbwire
from tests.conftest import RunningServer, running_server
from tests.devices.uvc.frames import Reassembler
from usbwire.backends.emulated import EmulatedExport
from usbwire.client.device import RemoteDevice
from usbwire.devices.uvc import StreamTransfer, VideoFormat, Webcam, WebcamConfig
from usbwire.devices.uvc.pattern import jpeg_comment_counter, yuyv_counter
from usbwire.devices.uvc.probe import StreamingControl

BUSID = "1-6"
SET_CUR, GET_CUR, GET_DEF = 0x01, 0x81, 0x87
PROBE, COMMIT = 0x01, 0x02
CONFIG = WebcamConfig(sizes=((160, 120), (640, 480)), rates=(30, 15))


@pytest.fixture
def iso_server() -> Iterator[RunningServer]:
    with running_server(extra_exports=[EmulatedExport(Webcam(CONFIG), BUSID, devnum=7)], demo=False) as server:
        yield server


@pytest.fixture
def bulk_server() -> Iterator[RunningServer]:
    config = WebcamConfig(sizes=((160, 120),), rates=(30,), transfer=StreamTransfer.BULK)
    with running_server(extra_exports=[EmulatedExport(Webcam(config), BUSID, devnum=7)], demo=False) as server:
        yield server


async def probe_in(device: RemoteDevice, request: int) -> StreamingControl:
    raw = await device.control_transfer(0xA1, request, PROBE << 8, 1, 34)
    assert isinstance(raw, bytes)
    return StreamingControl.from_bytes(raw)


async def negotiate(device: RemoteDevice, fmt: int, frame: int, interval: int) -> StreamingControl:
    """What uvcvideo does: GET_DEF, SET_CUR probe, GET_CUR probe, SET_CUR commit."""
    await device.set_configuration(1)
    default = await probe_in(device, GET_DEF)
    proposal = StreamingControl(
        bmHint=1, bFormatIndex=fmt, bFrameIndex=frame, dwFrameInterval=interval or default.dwFrameInterval
    )
    await device.control_transfer(0x21, SET_CUR, PROBE << 8, 1, proposal.to_bytes())
    settled = await probe_in(device, GET_CUR)
    await device.control_transfer(0x21, SET_CUR, COMMIT << 8, 1, settled.to_bytes())
    return settled


async def stream_iso(port: int, fmt: int, frame: int, interval: int, count: int) -> tuple[Reassembler, int]:
    """Commit, pick the smallest alternate setting that carries the payload size, collect ``count`` frames."""
    async with usbwire.connect("127.0.0.1", BUSID, port=port) as device:
        control = await negotiate(device, fmt, frame, interval)
        config = await device.configuration_descriptor(0)
        alternates = [a for a in config.alternates(1) if a.endpoints]
        chosen = min(
            (a for a in alternates if a.endpoints[0].max_packet_size * a.endpoints[0].transactions
             >= control.dwMaxPayloadTransferSize),
            key=lambda a: a.endpoints[0].max_packet_size * a.endpoints[0].transactions,
        )  # fmt: skip
        endpoint = chosen.endpoints[0]
        packet = endpoint.max_packet_size * endpoint.transactions
        await device.set_interface(1, chosen.bAlternateSetting)
        host = Reassembler()
        loop = asyncio.get_running_loop()
        urbs = [asyncio.ensure_future(device.iso_transfer(0x81, [packet] * 32)) for _ in range(3)]
        while len(host.frames) < count:
            result = await urbs.pop(0)
            urbs.append(asyncio.ensure_future(device.iso_transfer(0x81, [packet] * 32)))
            assert result.error_count == 0
            for iso in result.packets:
                host.feed(result.data[iso.offset : iso.offset + iso.actual_length], loop.time())
        for urb in urbs:
            urb.cancel()
        await asyncio.gather(*urbs, return_exceptions=True)
        await device.set_interface(1, 0)
        return host, packet


def fps(host: Reassembler, frames: int) -> float:
    return (frames - 1) / (host.starts[frames - 1] - host.starts[0])


def test_yuyv_frames_arrive_numbered_in_order_at_the_negotiated_rate(iso_server: RunningServer) -> None:
    host, packet = asyncio.run(stream_iso(iso_server.port, fmt=1, frame=1, interval=333_333, count=20))
    assert packet == 1024  # 38400 bytes in a quarter of 33 ms (66 microframes): 588-byte payloads
    counters = [yuyv_counter(frame, 160) for frame in host.frames[:20]]
    assert counters == list(range(counters[0], counters[0] + 20))
    assert {len(frame) for frame in host.frames} == {160 * 120 * 2}
    assert abs(fps(host, 20) - 30) < 3


def test_mjpeg_on_the_high_bandwidth_setting(iso_server: RunningServer) -> None:
    host, packet = asyncio.run(stream_iso(iso_server.port, fmt=2, frame=2, interval=666_667, count=8))
    assert packet == 3 * 1024  # 640x480 at 15 fps needs the 3-transaction setting
    counters = [jpeg_comment_counter(frame) for frame in host.frames[:8]]
    assert counters == list(range(8))  # the first stream of a fresh webcam starts at 0
    with Image.open(io.BytesIO(host.frames[0])) as image:
        assert image.size == (640, 480)


def test_bulk_webcam_sends_a_frame_per_payload_at_the_negotiated_rate(bulk_server: RunningServer) -> None:
    async def stream() -> Reassembler:
        async with usbwire.connect("127.0.0.1", BUSID, port=bulk_server.port) as device:
            control = await negotiate(device, fmt=1, frame=1, interval=0)
            host = Reassembler()
            loop = asyncio.get_running_loop()
            while len(host.frames) < 15:
                # A payload ends at a short transfer or at dwMaxPayloadTransferSize (as uvcvideo reads it).
                payload = b""
                while True:
                    chunk = await device.bulk_transfer(0x81, 16384)
                    assert isinstance(chunk, bytes)
                    payload += chunk
                    if len(chunk) < 16384 or len(payload) >= control.dwMaxPayloadTransferSize:
                        break
                host.feed(payload, loop.time())
            await device.clear_halt(0x81)
            return host

    host = asyncio.run(stream())
    counters = [yuyv_counter(frame, 160) for frame in host.frames]
    assert counters == list(range(counters[0], counters[0] + 15))
    assert abs(fps(host, 15) - 30) < 3
    webcam = bulk_server.call(lambda: bulk_server.server.registry.get(BUSID).device)  # type: ignore[union-attr]
    assert isinstance(webcam, Webcam) and webcam.stream is None  # the cleared halt stopped the stream
    assert webcam.config.formats[0] == VideoFormat.YUYV
