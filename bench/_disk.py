"""Disk benchmark: SCSI commands through each emulated disk over loopback, one at a time.

``usbwire serve --disk`` (its default loop, as a user runs it) and the PyPI ``usbip``
package's mass-storage class (``bench._peer_usbip --disk``), each over a sparse image of its
own and pinned to the server core. One client, the same for both (usbwire's asyncio client,
on the client core), sends READ(10) or WRITE(10) commands of 4 KiB and of 120 KiB (what
Linux's usb-storage moves per command at high speed), each command's three stages (CBW, data,
CSW) one after the other, as usb-storage does. The figure is commands per second; since the
client is a Python program, the ratio between the two disks is the point, not the figures.
The kernel lab measures the same disks behind a real kernel's usb-storage.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench._model import Row, Sample, SectionResult
from bench._proc import listening_process
from bench._registry import Context, rotated, section

USBWIRE, PEER = "usbwire-emulated", "usbip-emulated"
BUSID = "1-1"  # both servers export their disk there
IMAGE_BYTES = 64 << 20
COMMAND_SIZES = {"4k": 8, "120k": 240}  # in 512-byte blocks
DURATION_S = 2.0
BLOCK = 512
_CBW = struct.Struct("<IIIBBB16s")
_CBW_SIGNATURE, _CSW_SIGNATURE = 0x43425355, 0x53425355
READ_10, WRITE_10 = 0x28, 0x2A


@section("disk", "Disk: SCSI commands over loopback, one at a time", quick=False, order=35)
def disk(ctx: Context) -> SectionResult:
    result = SectionResult("disk", "Disk: SCSI commands over loopback, one at a time")
    where = f"servers cpu{ctx.options.server_cpu}, Python client cpu{ctx.options.client_cpu}"
    rows = {
        (write, name): Row(
            f"disk-{'write' if write else 'read'}-{name}",
            f"{'WRITE' if write else 'READ'}(10) of {name.replace('k', ' KiB')}, one at a time",
            "cmds/s",
            where,
            compare=False,
        )
        for name in COMMAND_SIZES
        for write in (True, False)  # writes first: the reads then find the blocks in the page cache
    }
    result.rows += rows.values()
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as servers:
        cpu = ctx.options.server_cpu
        ports = {
            USBWIRE: servers.enter_context(usbwire_disk(blank_image(Path(scratch) / "usbwire.img", IMAGE_BYTES), cpu))
        }
        if ctx.server("usbip") is not None:
            ports[PEER] = servers.enter_context(peer_disk(blank_image(Path(scratch) / "usbip.img", IMAGE_BYTES), cpu))
        for rep in range(max(1, ctx.options.reps)):
            ctx.log(f"disk: repetition {rep + 1}/{ctx.options.reps}")
            for server in rotated(list(ports), rep):
                with _pinned(ctx.options.client_cpu):
                    rates = commands_per_second(ports[server], [(write, COMMAND_SIZES[name]) for write, name in rows])
                for row, rate in zip(rows.values(), rates, strict=True):
                    row.add(server, Sample(rate))
    for row in rows.values():
        medians = ", ".join(f"{server} {row.median(server):.0f}" for server in ports if row.median(server) is not None)
        result.notes.append(f"{row.key} cmds/s: {medians}")
        ratio = row.ratio(USBWIRE, PEER)
        if ratio is not None:
            result.notes.append(f"{row.key}: {USBWIRE} / {PEER} = {ratio:.2f}x")
    return result


def commands_per_second(port: int, commands: Sequence[tuple[bool, int]], duration_s: float = DURATION_S) -> list[float]:
    """For each (write, blocks) in turn, the commands of that many blocks a second, one at a
    time for ``duration_s``, over one import of the disk at ``port``."""
    from usbwire.client import RemoteDevice, connect
    from usbwire.protocol import Direction, TransferType

    async def rate(device: RemoteDevice, bulk: dict[Direction, int], write: bool, blocks: int) -> float:
        size = blocks * BLOCK
        data = os.urandom(size)
        span = IMAGE_BYTES // BLOCK - blocks
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < duration_s:
            lba = done * blocks % span
            cdb = struct.pack(">BBIBHB", WRITE_10 if write else READ_10, 0, lba, 0, blocks, 0)
            cbw = _CBW.pack(_CBW_SIGNATURE, done, size, 0 if write else 0x80, 0, len(cdb), cdb)
            await device.bulk_transfer(bulk[Direction.OUT], cbw)
            if write:
                await device.bulk_transfer(bulk[Direction.OUT], data)
            else:
                await device.bulk_transfer(bulk[Direction.IN], size)
            csw = await device.bulk_transfer(bulk[Direction.IN], 13)
            assert isinstance(csw, bytes)
            signature, tag, _residue, status = struct.unpack("<IIIB", csw)
            if (signature, tag, status) != (_CSW_SIGNATURE, done, 0):
                raise RuntimeError(f"command {done} failed: CSW {csw.hex()}")
            done += 1
        return done / (time.perf_counter() - start)

    async def run() -> list[float]:
        async with connect("127.0.0.1", BUSID, port=port) as device:
            configuration = await device.configuration_descriptor(0)
            await device.set_configuration(configuration.bConfigurationValue)
            bulk = {
                endpoint.direction: endpoint.bEndpointAddress
                for interface in configuration.interfaces
                for endpoint in interface.endpoints
                if endpoint.transfer_type == TransferType.BULK
            }
            return [await rate(device, bulk, write, blocks) for write, blocks in commands]

    return asyncio.run(run())


@contextmanager
def _pinned(cpu: int) -> Iterator[None]:
    """This process on ``cpu`` for the block, as the load generators are."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def blank_image(path: Path, size: int) -> Path:
    """A sparse disk image of ``size`` bytes at ``path``."""
    with path.open("wb") as image:
        image.truncate(size)
    return path


@contextmanager
def usbwire_disk(image: Path, cpu: int | None = None) -> Iterator[int]:
    """``usbwire serve --disk image`` on 127.0.0.1 (on ``cpu``), on its default loop as a user
    runs it; yields its port (the disk is 1-1)."""
    argv = [*_on(cpu), sys.executable, "-m", "usbwire", "serve", "--host", "127.0.0.1", "--port", "0"]
    with listening_process([*argv, "--control", "none", "--disk", str(image)], "usbwire's disk") as port:
        yield port


@contextmanager
def peer_disk(image: Path, cpu: int | None = None) -> Iterator[int]:
    """The PyPI usbip package's disk over ``image`` on 127.0.0.1 (on ``cpu``); yields its port
    (the disk is 1-1)."""
    argv = [*_on(cpu), sys.executable, "-m", "bench._peer_usbip", "--host", "127.0.0.1", "--disk", str(image)]
    with listening_process(argv, "PyPI usbip's disk") as port:
        yield port


def _on(cpu: int | None) -> list[str]:
    return [] if cpu is None else ["taskset", "-c", str(cpu)]
