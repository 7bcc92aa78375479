"""Guest-side checks of usbwire's emulated devices, run by the host's Python in the chroot.

Standalone (standard library only); prints one JSON line:

    python3 guest_devices.py keys --busid 3-1 --count 10        key events from /dev/input
    python3 guest_devices.py led --busid 3-1 --caps             set the keyboard's LEDs
    python3 guest_devices.py serial --busid 3-1 --size 1048576  bytes through ttyACMn and back
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import select
import struct
import sys
import termios
import threading
import time
import tty

INPUT_EVENT = struct.Struct("llHHi")  # struct input_event on 64-bit Linux
EV_SYN, EV_KEY, EV_LED = 0x00, 0x01, 0x11
LED_NUML, LED_CAPSL = 0x00, 0x01


def _find(pattern: str, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.1)
    raise SystemExit(json.dumps({"ok": False, "error": f"nothing matches {pattern}"}))


def event_node(busid: str) -> str:
    sysfs = _find(f"/sys/bus/usb/devices/{busid}:1.0/*/input/input*/event*")
    node = "/dev/input/" + os.path.basename(sysfs)
    _find(node)
    return node


def keys(args: argparse.Namespace) -> dict[str, object]:
    node = event_node(args.busid)
    fd = os.open(node, os.O_RDONLY)
    print(json.dumps({"ready": node}), flush=True)
    events: list[list[int]] = []
    deadline = time.monotonic() + args.timeout
    while len(events) < args.count and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        data = os.read(fd, INPUT_EVENT.size * 64)
        for offset in range(0, len(data), INPUT_EVENT.size):
            _, _, kind, code, value = INPUT_EVENT.unpack_from(data, offset)
            if kind == EV_KEY and value in (0, 1):
                events.append([code, value])
    os.close(fd)
    return {"ok": len(events) >= args.count, "node": node, "events": events}


def led(args: argparse.Namespace) -> dict[str, object]:
    node = event_node(args.busid)
    fd = os.open(node, os.O_WRONLY)
    os.write(fd, INPUT_EVENT.pack(0, 0, EV_LED, LED_CAPSL, 1 if args.caps else 0))
    os.write(fd, INPUT_EVENT.pack(0, 0, EV_LED, LED_NUML, 1 if args.num else 0))
    os.write(fd, INPUT_EVENT.pack(0, 0, EV_SYN, 0, 0))
    os.close(fd)
    return {"ok": True, "node": node}


def serial(args: argparse.Namespace) -> dict[str, object]:
    tty_name = os.path.basename(_find(f"/sys/bus/usb/devices/{args.busid}:1.0/tty/ttyACM*"))
    node = _find(f"/dev/{tty_name}")
    fd = os.open(node, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    attributes = termios.tcgetattr(fd)
    attributes[2] |= termios.CLOCAL
    termios.tcsetattr(fd, termios.TCSANOW, attributes)
    payload = os.urandom(args.size)
    received = bytearray()

    def writer() -> None:
        view = memoryview(payload)
        while view:
            written = os.write(fd, view[:4096])
            view = view[written:]

    thread = threading.Thread(target=writer)
    start = time.monotonic()
    thread.start()
    deadline = start + args.timeout
    while len(received) < args.size and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            received += os.read(fd, 65536)
    thread.join(timeout=5)
    os.close(fd)
    elapsed = time.monotonic() - start
    return {
        "ok": bytes(received) == payload,
        "node": node,
        "sent": hashlib.sha256(payload).hexdigest(),
        "received": hashlib.sha256(received).hexdigest(),
        "received_bytes": len(received),
        "seconds": round(elapsed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(required=True)
    keys_parser = commands.add_parser("keys")
    keys_parser.add_argument("--busid", required=True)
    keys_parser.add_argument("--count", type=int, required=True)
    keys_parser.add_argument("--timeout", type=float, default=20.0)
    keys_parser.set_defaults(run=keys)
    led_parser = commands.add_parser("led")
    led_parser.add_argument("--busid", required=True)
    led_parser.add_argument("--caps", action="store_true")
    led_parser.add_argument("--num", action="store_true")
    led_parser.set_defaults(run=led)
    serial_parser = commands.add_parser("serial")
    serial_parser.add_argument("--busid", required=True)
    serial_parser.add_argument("--size", type=int, default=1 << 20)
    serial_parser.add_argument("--timeout", type=float, default=60.0)
    serial_parser.set_defaults(run=serial)
    args = parser.parse_args()
    print(json.dumps(args.run(args)), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
