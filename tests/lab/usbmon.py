#!/usr/bin/env python3
"""Guest side: the URBs the guest kernel submits to one device, as usbmon sees them.

Runs inside the lab's chroot. It reads usbmon's binary interface, whose extended header
carries each URB's transfer flags (the text interface leaves them out), so a test can
check what a userspace driver such as libusb really asked the host controller for:

    python3 tests/lab/usbmon.py --busid 1-1 --count 2

prints ``ready`` once it listens, then one JSON line per submission of a bulk OUT URB
to that device (``{"ep": 2, "length": 64, "flags": 64}``), and exits after ``--count``.
The layouts are those of drivers/usb/mon/mon_bin.c on 64-bit Linux.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

# struct mon_bin_hdr, with its fields' names
HEADER = struct.Struct("<QBBBBHbbqiiII8siiII")
FIELDS = (
    "id", "type", "xfer_type", "epnum", "devnum", "busnum", "flag_setup", "flag_data", "ts_sec", "ts_usec",
    "status", "len_urb", "len_cap", "setup", "interval", "start_frame", "xfer_flags", "ndesc",
)  # fmt: skip
# _IOW(MON_IOC_MAGIC 0x92, 10, struct mon_bin_get): wait for the next event, extended header.
MON_IOCX_GETX = (1 << 30) | (24 << 16) | (0x92 << 8) | 10
SUBMISSION = ord("S")
PIPE_BULK = 3
DIRECTION_IN = 0x80


class _Get(ctypes.Structure):
    _fields_ = [("hdr", ctypes.c_void_p), ("data", ctypes.c_void_p), ("alloc", ctypes.c_size_t)]


def bulk_out_submissions(busid: str, count: int) -> None:
    device = Path("/sys/bus/usb/devices") / busid
    busnum = int((device / "busnum").read_text())
    devnum = int((device / "devnum").read_text())
    fd = os.open(f"/dev/usbmon{busnum}", os.O_RDONLY)
    header = ctypes.create_string_buffer(HEADER.size)
    request = _Get(ctypes.addressof(header), None, 0)  # the header is enough: no payload copied
    print("ready", flush=True)
    seen = 0
    while seen < count:
        fcntl.ioctl(fd, MON_IOCX_GETX, request)
        event = dict(zip(FIELDS, HEADER.unpack(header.raw), strict=True))
        if (
            event["type"] == SUBMISSION
            and event["xfer_type"] == PIPE_BULK
            and not event["epnum"] & DIRECTION_IN
            and event["devnum"] == devnum
        ):
            submitted = {"ep": event["epnum"], "length": event["len_urb"], "flags": event["xfer_flags"]}
            print(json.dumps(submitted), flush=True)
            seen += 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busid", required=True, help="the guest-local busid of the device to watch")
    parser.add_argument("--count", type=int, default=1, help="exit after this many bulk OUT submissions")
    args = parser.parse_args(argv)
    bulk_out_submissions(args.busid, args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
