"""Isochronous timing for emulated devices: a URB completes when its (micro)frames have passed.

A real host controller moves one packet per service interval, so an iso URB of N packets
takes N intervals. An emulated device that answered at once would hand a guest's
``arecord`` ten seconds of sound in a fraction of one, and a webcam would stream as fast as
the network allows. :class:`IsoClock` keeps each iso endpoint on its own schedule: every URB
is given the next free slots, and completes at the end of its last one. A URB that arrives
after its slot has passed starts at once (``URB_ISO_ASAP``); the schedule never runs ahead of
the wall clock by more than the URBs the host has queued.

A URB without ``URB_ISO_ASAP`` is scheduled the same way, as Linux's EHCI and xHCI drivers
schedule one: after the endpoint's previous URB, or at once on an idle stream. The frame its
``start_frame`` names is not used. A USB/IP client cannot know our frame counter (vhci's reads 0),
and Linux's snd-usb-audio sends its URBs without the flag: a fresh URB names frame 0, a
resubmitted one the frame its last completion reported. Taking 0 as a frame up to 1024 frames
ahead delayed the start of a stream by up to a second, at random.

The server starts an endpoint's next URB only when the previous one has completed, so even a
URB the host queued in time reaches the clock a little late. Up to :data:`CATCH_UP` late, it
still takes the slots right after the previous URB's, as on a bus where it had been waiting
in the schedule; otherwise every URB would add that delay and the stream would run slow.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from usbwire.devices.descriptors import Endpoint
from usbwire.protocol.constants import Speed
from usbwire.protocol.pdu import IsoPacket

FRAME = 1e-3
MICROFRAME = 125e-6
# USB frame numbers (SOF) are 11 bits wide.
FRAME_NUMBER_MASK = 0x7FF
CATCH_UP = 0.020


def service_interval(endpoint: Endpoint, speed: Speed) -> float:
    """Seconds between two packets of ``endpoint``: bInterval is 2**(n-1) (micro)frames."""
    exponent = max(1, min(endpoint.interval, 16)) - 1
    unit = MICROFRAME if speed >= Speed.HIGH else FRAME
    return unit * (1 << exponent)


@dataclass(frozen=True, slots=True)
class Slot:
    """Where a URB's packets sit on the bus: the first frame number, and when the last ends."""

    start_frame: int
    deadline: float


class IsoClock:
    """The schedule of one isochronous endpoint."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._next: float | None = None

    def reserve(self, packets: int, now: float) -> Slot:
        """Book ``packets`` service intervals after the ones already booked (or from now)."""
        start = now if self._next is None or self._next < now - CATCH_UP else self._next
        self._next = start + packets * self.period
        # The epsilon keeps a schedule built by adding periods from landing a hair early.
        frame = math.floor(start / FRAME + 1e-6) & FRAME_NUMBER_MASK
        return Slot(frame, self._next)

    def restart(self) -> None:
        """Forget the schedule (stream stopped, URB cancelled): the next URB starts at once."""
        self._next = None


@dataclass(frozen=True, slots=True)
class IsoCompletion:
    """How an iso URB ended: per-packet results, and for IN the packets' bytes back to back."""

    start_frame: int
    packets: tuple[IsoPacket, ...]
    data: bytes = b""

    @property
    def error_count(self) -> int:
        return sum(1 for packet in self.packets if packet.status)


async def wait_until(deadline: float) -> None:
    loop = asyncio.get_running_loop()
    delay = deadline - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
