"""Payload headers, frames cut into payloads, and frames paced to their interval."""

from __future__ import annotations

import asyncio
import statistics

import pytest

from tests.devices.uvc.frames import Reassembler
from usbwire.devices.uvc import VideoFormat, Webcam, WebcamConfig
from usbwire.devices.uvc.pattern import yuyv_counter
from usbwire.devices.uvc.payload import FramePacer, HeaderBit, PayloadStream, header
from usbwire.protocol.constants import Direction
from usbwire.protocol.pdu import IsoPacket

FID, EOF, PTS, EOH = HeaderBit.FID, HeaderBit.EOF, HeaderBit.PTS, HeaderBit.EOH


def test_header_layout() -> None:
    assert header(1, eof=True, pts=0x01020304) == bytes([
        6,                       # bHeaderLength
        EOH | PTS | EOF | FID,   # bmHeaderInfo
        0x04, 0x03, 0x02, 0x01,  # dwPresentationTime
    ])  # fmt: skip
    assert header(0) == bytes([2, EOH])  # between frames: no data, so no time either


def numbered_frames(size: int) -> PayloadStream:
    count = iter(range(1000))
    return PayloadStream(lambda now: bytes([next(count)]) * size, interval_s=0.1)


def test_frame_is_cut_into_payloads_with_eof_on_the_last() -> None:
    stream = numbered_frames(25)
    payloads = [stream.packet(0.0, 16) for _ in range(3)]
    assert [p[1] for p in payloads] == [EOH | PTS | FID, EOH | PTS | FID, EOH | PTS | EOF | FID]
    assert b"".join(p[6:] for p in payloads) == bytes(25)
    assert len({p[2:6] for p in payloads}) == 1  # one presentation time for the whole frame


def test_between_frames_payloads_carry_only_the_header_and_keep_the_fid() -> None:
    stream = numbered_frames(10)
    assert stream.packet(0.0, 64)[1] & (FID | EOF) == FID | EOF
    assert stream.packet(0.05, 64) == bytes([2, EOH | FID])
    assert stream.packet(0.099, 64) == bytes([2, EOH | FID])


def test_fid_toggles_at_each_frame_start() -> None:
    stream = numbered_frames(10)
    starts = [stream.packet(t / 10, 64) for t in range(4)]
    assert [p[1] & FID for p in starts] == [1, 0, 1, 0]
    assert [p[6] for p in starts] == [0, 1, 2, 3]


def test_frame_starts_only_when_due() -> None:
    stream = numbered_frames(10)
    stream.packet(0.0, 64)
    assert len(stream.packet(0.0999, 64)) == 2
    assert len(stream.packet(0.1, 64)) == 16
    assert stream.frames == 2


def test_late_frames_go_at_once_and_keep_the_schedule() -> None:
    pacer = FramePacer(0.1)
    pacer.started(0.0)
    pacer.started(0.35)  # the host was busy: frame 1 goes late, frames 2 and 3 are due already
    assert pacer.next_due == pytest.approx(0.2) and pacer.due(0.35)
    pacer.started(0.35)
    pacer.started(0.36)
    assert pacer.next_due == pytest.approx(0.4) and not pacer.due(0.37)


def test_a_long_pause_restarts_the_schedule_instead_of_a_burst() -> None:
    pacer = FramePacer(0.1)
    pacer.started(0.0)
    pacer.started(2.0)
    assert pacer.next_due == pytest.approx(2.1)


def test_webcam_frames_are_one_interval_apart_in_real_time() -> None:
    """Iso URBs of 8 microframes, two in flight, for half a second at 30 fps."""
    webcam = Webcam(WebcamConfig(formats=(VideoFormat.YUYV,), sizes=((160, 120),), rates=(30,)))
    webcam.set_configuration(1)
    webcam.set_interface(1, 4)  # 1024-byte packets
    endpoint = webcam.endpoint(1, Direction.IN)
    assert endpoint is not None
    packets = tuple(IsoPacket(i * 1024, 1024) for i in range(8))
    host = Reassembler()

    async def stream() -> None:
        loop = asyncio.get_running_loop()
        begin = loop.time()
        pending = [asyncio.ensure_future(webcam.isochronous(endpoint, b"", packets)) for _ in range(2)]
        while loop.time() - begin < 0.5:
            done = await pending.pop(0)
            pending.append(asyncio.ensure_future(webcam.isochronous(endpoint, b"", packets)))
            offset = 0
            for packet in done.packets:
                host.feed(done.data[offset : offset + packet.actual_length], loop.time())
                offset += packet.actual_length
        for task in pending:
            task.cancel()

    asyncio.run(stream())
    gaps = [b - a for a, b in zip(host.starts, host.starts[1:], strict=False)]
    assert 14 <= len(host.starts) <= 17, host.starts
    # Frames about an interval apart (URBs complete every millisecond). Only the typical gap is
    # held tight: a loaded machine may delay one frame, and the next then catches up.
    assert abs(statistics.median(gaps) - 1 / 30) < 1 / 120, gaps
    assert abs((len(gaps)) / (host.starts[-1] - host.starts[0]) - 30) < 3
    counters = [yuyv_counter(frame, 160) for frame in host.frames]
    assert counters == list(range(len(counters))) and len(counters) >= len(host.starts) - 1
    assert {len(frame) for frame in host.frames} == {160 * 120 * 2}
