"""Runs the PyPI ``usbip`` package's server for the benchmark (a peer we measure, not our code).

Its closest device to usbwire's bulk loopback is the CDC-ACM class: with no receive callback,
its Data interface echoes every bulk OUT (ep 0x01) back on bulk IN (ep 0x81), and ep 0 answers
GET_DESCRIPTOR. Reported at high speed (512-byte bulk packets) like usbwire's demo device.

One ``usbip.USBIP`` listener exports at most 16 devices (``usbip.transport.MAX_DEVICES``), so
device ``1-1`` and the scale devices ``2-1`` .. ``2-N`` are spread over as many listeners (on
consecutive free ports) as needed, all in this one process. Prints ``target HOST:PORT:BUSID``
for each device, then ``listening on HOST:PORT`` (the first listener) on stderr.

With ``--disk PATH``, device ``1-1`` is instead its mass-storage class (Bulk-Only Transport,
SCSI) over the image file PATH, for the kernel lab's guest ``dd`` (bench/_lab.py).

Usage: python -m bench._peer_usbip [--host ADDR] [--devices N] [--disk PATH]
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import sys
import threading
from typing import Any

PER_LISTENER = 16


def _free_port(host: str) -> int:
    # usbip.USBIP keys its listeners by (host, port), so port 0 cannot tell two apart: pick
    # free ports ourselves (a race only with other programs binding ports at this moment).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _device(usbip: Any, cdc: Any, busid: str) -> Any:
    device = usbip.USBDevice(0x1209, 0x0001, product="Bulk loopback (CDC echo)")
    device.set_speed(usbip.SPEED_HIGH)
    device.add(cdc.CDCACM())
    device.set_busid(busid)
    return device


class _FileStore:
    """The block store usbip's MSC class asks its application for (it ships none): 512-byte
    blocks of an image file, read and written in place as a disk image is."""

    block_size = 512

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.num_blocks = os.fstat(self.fd).st_size // self.block_size

    def read(self, lba: int, count: int) -> bytes:
        return os.pread(self.fd, count * self.block_size, lba * self.block_size)

    def write(self, lba: int, count: int, data: bytes) -> None:
        os.pwrite(self.fd, data[: count * self.block_size], lba * self.block_size)


def _disk(usbip: Any, path: str, busid: str) -> Any:
    msc = importlib.import_module("usbip.classes.device.msc")
    device = usbip.USBDevice(0x1209, 0x0002, product="Disk (usbip MSC)")
    device.set_speed(usbip.SPEED_HIGH)
    device.add(msc.MSC(_FileStore(path)))
    device.set_busid(busid)
    return device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--devices", type=int, default=0, help="scale devices 2-1 .. 2-N besides 1-1")
    parser.add_argument("--disk", metavar="PATH", help="device 1-1 is a mass-storage disk over this image file")
    args = parser.parse_args()
    usbip = importlib.import_module("usbip")
    cdc = importlib.import_module("usbip.classes.device.cdc_acm")
    busids = ["1-1"] + [f"2-{n}" for n in range(1, args.devices + 1)]
    plugged = []
    ports = []
    for first in range(0, len(busids), PER_LISTENER):
        port = _free_port(args.host)
        transport = usbip.USBIP(args.host, port)
        ports.append(port)
        for busid in busids[first : first + PER_LISTENER]:
            device = _disk(usbip, args.disk, busid) if busid == "1-1" and args.disk else _device(usbip, cdc, busid)
            plugged.append(device.plug(via=transport))
            print(f"target {args.host}:{port}:{busid}", file=sys.stderr)
    print(f"listening on {args.host}:{ports[0]}", file=sys.stderr, flush=True)
    threading.Event().wait()  # serve until SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())
