#!/usr/bin/env python3
"""Guest side: talk to a USB device through Linux usbfs ioctls, in pure Python.

Runs inside the lab's chroot (the host's Python on the guest kernel), where it reaches
QEMU's emulated devices and devices imported over USB/IP through vhci-hcd alike. It
needs no libusb, so it also works where no binding is installed. Each subcommand prints
exactly one JSON line (``"ok": true|false``) and exits 0 on success, 1 on failure:

    python3 tests/lab/usbfs.py describe --vid 0627 --pid 0001
    python3 tests/lab/usbfs.py control --vid 0627 --pid 0001 --request-type 0x80 \\
        --request 6 --value 0x0100 --length 18
    python3 tests/lab/usbfs.py bulk --vid 46f4 --pid 0001 --interface 0 \\
        --write 0x02:55534243... --read 0x81:36 --read 0x81:13
    python3 tests/lab/usbfs.py loopback --vid 1209 --pid 0001 --out-ep 0x01 \\
        --in-ep 0x81 --size 4096 --count 16

The ioctl layouts are those of <linux/usbdevice_fs.h> on 64-bit Linux.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYSFS_USB = Path("/sys/bus/usb/devices")

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, number: int, size: int) -> int:
    """Linux _IOC() with type 'U', the usbfs ioctl namespace."""
    return (direction << 30) | (size << 16) | (ord("U") << 8) | number


class CtrlTransfer(ctypes.Structure):
    """struct usbdevfs_ctrltransfer."""

    _fields_ = (
        ("bRequestType", ctypes.c_uint8),
        ("bRequest", ctypes.c_uint8),
        ("wValue", ctypes.c_uint16),
        ("wIndex", ctypes.c_uint16),
        ("wLength", ctypes.c_uint16),
        ("timeout", ctypes.c_uint32),  # ms
        ("data", ctypes.c_void_p),
    )


class BulkTransfer(ctypes.Structure):
    """struct usbdevfs_bulktransfer."""

    _fields_ = (
        ("ep", ctypes.c_uint),
        ("len", ctypes.c_uint),
        ("timeout", ctypes.c_uint),  # ms
        ("data", ctypes.c_void_p),
    )


class IoctlRequest(ctypes.Structure):
    """struct usbdevfs_ioctl: an ioctl addressed to the driver of one interface."""

    _fields_ = (
        ("ifno", ctypes.c_int),
        ("ioctl_code", ctypes.c_int),
        ("data", ctypes.c_void_p),
    )


USBDEVFS_CONTROL = _ioc(_IOC_READ | _IOC_WRITE, 0, ctypes.sizeof(CtrlTransfer))
USBDEVFS_BULK = _ioc(_IOC_READ | _IOC_WRITE, 2, ctypes.sizeof(BulkTransfer))
USBDEVFS_SETCONFIGURATION = _ioc(_IOC_READ, 5, ctypes.sizeof(ctypes.c_uint))
USBDEVFS_CLAIMINTERFACE = _ioc(_IOC_READ, 15, ctypes.sizeof(ctypes.c_uint))
USBDEVFS_RELEASEINTERFACE = _ioc(_IOC_READ, 16, ctypes.sizeof(ctypes.c_uint))
USBDEVFS_IOCTL = _ioc(_IOC_READ | _IOC_WRITE, 18, ctypes.sizeof(IoctlRequest))
USBDEVFS_CLEAR_HALT = _ioc(_IOC_READ, 21, ctypes.sizeof(ctypes.c_uint))
USBDEVFS_DISCONNECT = _ioc(_IOC_NONE, 22, 0)
USBDEVFS_CONNECT = _ioc(_IOC_NONE, 23, 0)

USB_DIR_IN = 0x80
GET_DESCRIPTOR = 6
DESCRIPTOR_DEVICE = 1
DESCRIPTOR_CONFIGURATION = 2
DESCRIPTOR_INTERFACE = 4
DESCRIPTOR_ENDPOINT = 5


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """A USB device as sysfs names it, with its usbfs node."""

    busid: str
    vid: int
    pid: int
    node: Path


def find_devices(vid: int | None = None, pid: int | None = None, busid: str | None = None) -> list[DeviceNode]:
    """Devices matching the filters, in busid order (interfaces and hubs' ports excluded)."""
    found = []
    for entry in sorted(SYSFS_USB.iterdir()) if SYSFS_USB.exists() else []:
        if not (entry / "idVendor").exists():
            continue
        node = DeviceNode(
            entry.name,
            int(_read(entry / "idVendor"), 16),
            int(_read(entry / "idProduct"), 16),
            Path(f"/dev/bus/usb/{int(_read(entry / 'busnum')):03d}/{int(_read(entry / 'devnum')):03d}"),
        )
        wanted = (vid is None or node.vid == vid) and (pid is None or node.pid == pid)
        if wanted and (busid is None or node.busid == busid):
            found.append(node)
    return found


class UsbDevice:
    """An open usbfs node. Claimed interfaces are released (and handed back to their
    kernel driver) on :meth:`close`, so a test leaves the device as it found it."""

    def __init__(self, node: DeviceNode, timeout_ms: int = 5000) -> None:
        self.node = node
        self.timeout_ms = timeout_ms
        self.fd = os.open(node.node, os.O_RDWR)
        self._claimed: list[tuple[int, bool]] = []

    def __enter__(self) -> UsbDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def control(self, request_type: int, request: int, value: int, index: int, data_or_length: bytes | int) -> bytes:
        """One control transfer on endpoint 0; IN returns the data read, OUT returns b"".

        Raises:
            OSError: the transfer failed (EPIPE: stall, ETIMEDOUT...).
        """
        is_in = bool(request_type & USB_DIR_IN)
        length = data_or_length if isinstance(data_or_length, int) else len(data_or_length)
        buffer = ctypes.create_string_buffer(length or 1)
        if not is_in and isinstance(data_or_length, bytes):
            ctypes.memmove(buffer, data_or_length, length)
        transfer = CtrlTransfer(request_type, request, value, index, length, self.timeout_ms, ctypes.addressof(buffer))
        done = fcntl.ioctl(self.fd, USBDEVFS_CONTROL, transfer)
        return buffer.raw[:done] if is_in else b""

    def bulk_write(self, endpoint: int, data: bytes) -> int:
        """Write to a bulk OUT endpoint; returns the bytes accepted.

        Raises:
            OSError: the transfer failed.
        """
        buffer = ctypes.create_string_buffer(data, len(data) or 1)
        transfer = BulkTransfer(endpoint, len(data), self.timeout_ms, ctypes.addressof(buffer))
        return int(fcntl.ioctl(self.fd, USBDEVFS_BULK, transfer))

    def bulk_read(self, endpoint: int, length: int) -> bytes:
        """Read up to ``length`` bytes from a bulk IN endpoint (one transfer).

        Raises:
            OSError: the transfer failed.
        """
        buffer = ctypes.create_string_buffer(length or 1)
        transfer = BulkTransfer(endpoint | USB_DIR_IN, length, self.timeout_ms, ctypes.addressof(buffer))
        done = fcntl.ioctl(self.fd, USBDEVFS_BULK, transfer)
        return buffer.raw[:done]

    def claim(self, interface: int) -> None:
        """Claim an interface for usbfs, unbinding its kernel driver (if any) first.

        Raises:
            OSError: the interface does not exist or is claimed by another usbfs user.
        """
        had_driver = self._driver_ioctl(interface, USBDEVFS_DISCONNECT)
        fcntl.ioctl(self.fd, USBDEVFS_CLAIMINTERFACE, struct.pack("I", interface))
        self._claimed.append((interface, had_driver))

    def set_configuration(self, value: int) -> None:
        """Select configuration ``value`` unless it is already active.

        The kernel refuses while any interface has a driver, so drivers are unbound first.

        Raises:
            OSError: the kernel refused the configuration.
        """
        sysfs = SYSFS_USB / self.node.busid
        current = _read(sysfs / "bConfigurationValue")
        if current and int(current) == value:
            return
        for interface in sorted(sysfs.glob(f"{self.node.busid}:*")):
            self._driver_ioctl(int(_read(interface / "bInterfaceNumber"), 16), USBDEVFS_DISCONNECT)
        fcntl.ioctl(self.fd, USBDEVFS_SETCONFIGURATION, struct.pack("I", value))

    def clear_halt(self, endpoint: int) -> None:
        """CLEAR_FEATURE(ENDPOINT_HALT) through the kernel, which resets its toggle too.

        Raises:
            OSError: the request failed.
        """
        fcntl.ioctl(self.fd, USBDEVFS_CLEAR_HALT, struct.pack("I", endpoint))

    def close(self) -> None:
        """Release claimed interfaces, give them back to their drivers, close the node."""
        for interface, had_driver in reversed(self._claimed):
            try:
                fcntl.ioctl(self.fd, USBDEVFS_RELEASEINTERFACE, struct.pack("I", interface))
                if had_driver:
                    self._driver_ioctl(interface, USBDEVFS_CONNECT)
            except OSError:
                pass  # the device may be gone (unplugged, detached): nothing to restore
        self._claimed.clear()
        os.close(self.fd)

    def _driver_ioctl(self, interface: int, code: int) -> bool:
        """USBDEVFS_IOCTL to one interface; False when it had no driver (ENODATA)."""
        request = IoctlRequest(interface, code, None)
        try:
            fcntl.ioctl(self.fd, USBDEVFS_IOCTL, request)
        except OSError as error:
            if error.errno == errno.ENODATA:
                return False
            raise
        return True


def describe(device: UsbDevice) -> dict[str, Any]:
    """Device and active-configuration descriptors, read with GET_DESCRIPTOR on ep0.

    Raises:
        OSError: a control transfer failed.
    """
    raw = device.control(USB_DIR_IN, GET_DESCRIPTOR, DESCRIPTOR_DEVICE << 8, 0, 18)
    (_, _, bcd_usb, dev_class, dev_sub, dev_proto, mps0, vid, pid, bcd_device) = struct.unpack_from("<BBHBBBBHHH", raw)
    header = device.control(USB_DIR_IN, GET_DESCRIPTOR, DESCRIPTOR_CONFIGURATION << 8, 0, 9)
    total = struct.unpack_from("<H", header, 2)[0]
    config = device.control(USB_DIR_IN, GET_DESCRIPTOR, DESCRIPTOR_CONFIGURATION << 8, 0, total)
    return {
        "device_descriptor": raw.hex(),
        "bcdUSB": f"{bcd_usb:04x}",
        "class": f"{dev_class:02x}/{dev_sub:02x}/{dev_proto:02x}",
        "bMaxPacketSize0": mps0,
        "vid": f"{vid:04x}",
        "pid": f"{pid:04x}",
        "bcdDevice": f"{bcd_device:04x}",
        "bNumConfigurations": raw[17],
        "interfaces": _interfaces(config),
    }


def _interfaces(config: bytes) -> list[dict[str, Any]]:
    interfaces: list[dict[str, Any]] = []
    offset = 0
    while offset + 2 <= len(config) and config[offset] >= 2:
        length, kind = config[offset], config[offset + 1]
        body = config[offset : offset + length]
        if kind == DESCRIPTOR_INTERFACE and length >= 9:
            interfaces.append(
                {
                    "number": body[2],
                    "alt": body[3],
                    "class": f"{body[5]:02x}/{body[6]:02x}/{body[7]:02x}",
                    "endpoints": [],
                }
            )
        elif kind == DESCRIPTOR_ENDPOINT and length >= 7 and interfaces:
            max_packet = struct.unpack_from("<H", body, 4)[0]
            interfaces[-1]["endpoints"].append(
                {"address": f"0x{body[2]:02x}", "attributes": body[3] & 3, "max_packet": max_packet}
            )
        offset += length
    return interfaces


def loopback(device: UsbDevice, out_ep: int, in_ep: int, size: int, count: int) -> dict[str, Any]:
    """Write ``count`` blocks of ``size`` bytes to ``out_ep`` and read them back on ``in_ep``.

    Reads run in a thread of their own while the writes go on, so a device whose echo
    buffer is smaller than what we write cannot deadlock us (its OUT NAKs until we read).

    Raises:
        OSError: a transfer failed.
    """
    total = size * count
    sent = bytes((i * 7 + i // 251) & 0xFF for i in range(total))  # no period dividing 512
    received = bytearray()
    failure: list[BaseException] = []

    def reader() -> None:
        try:
            while len(received) < total:
                chunk = device.bulk_read(in_ep, min(size, total - len(received)))
                received.extend(chunk)
        except OSError as error:
            failure.append(error)

    began = time.perf_counter()
    thread = threading.Thread(target=reader, name="usbfs-loopback-in")
    thread.start()
    try:
        for block in range(count):
            device.bulk_write(out_ep, sent[block * size : (block + 1) * size])
    finally:
        thread.join()
    elapsed = time.perf_counter() - began
    if failure:
        raise failure[0]
    mismatch = next((i for i, (a, b) in enumerate(zip(sent, received, strict=False)) if a != b), None)
    return {
        "ok": mismatch is None and len(received) == total,
        "bytes_out": total,
        "bytes_in": len(received),
        "first_mismatch": mismatch,
        "seconds": round(elapsed, 6),
        "mb_per_s": round(total / elapsed / 1e6, 3) if elapsed > 0 else None,
    }


def _parse_ops(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    return [(kind, int(ep, 0), arg) for kind, ep, arg in (getattr(args, "ops", None) or [])]


class _OpAction(argparse.Action):
    """Collects --write EP:HEX / --read EP:LEN in command-line order."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        ep, _, arg = str(values).partition(":")
        ops = list(getattr(namespace, "ops", None) or [])
        ops.append((self.dest, ep, arg))
        namespace.ops = ops


def _bulk_ops(device: UsbDevice, ops: list[tuple[str, int, str]]) -> dict[str, Any]:
    reads: list[str] = []
    written = 0
    for kind, endpoint, arg in ops:
        if kind == "write":
            written += device.bulk_write(endpoint, bytes.fromhex(arg))
        else:
            reads.append(device.bulk_read(endpoint, int(arg, 0)).hex())
    return {"ok": True, "written": written, "reads": reads}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="op", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--vid", type=lambda s: int(s, 16), help="idVendor, hex")
        sub.add_argument("--pid", type=lambda s: int(s, 16), help="idProduct, hex")
        sub.add_argument("--busid", help="sysfs name such as 1-1 (instead of or with ids)")
        sub.add_argument("--timeout-ms", type=int, default=5000, help="per transfer")
        sub.add_argument("--config", type=int, help="select this configuration first")
        return sub

    add("describe", "device and configuration descriptors")
    control = add("control", "one control transfer on endpoint 0")
    control.add_argument("--request-type", type=lambda s: int(s, 0), required=True)
    control.add_argument("--request", type=lambda s: int(s, 0), required=True)
    control.add_argument("--value", type=lambda s: int(s, 0), default=0)
    control.add_argument("--index", type=lambda s: int(s, 0), default=0)
    control.add_argument("--length", type=lambda s: int(s, 0), default=0, help="IN: bytes to read")
    control.add_argument("--data", default="", help="OUT: hex bytes to send")
    bulk = add("bulk", "bulk transfers in command-line order on a claimed interface")
    bulk.add_argument("--interface", type=int, default=0)
    bulk.add_argument("--write", dest="write", action=_OpAction, metavar="EP:HEX")
    bulk.add_argument("--read", dest="read", action=_OpAction, metavar="EP:LEN")
    loop = add("loopback", "write blocks to a bulk OUT endpoint and check they come back on IN")
    loop.add_argument("--interface", type=int, default=0)
    loop.add_argument("--out-ep", type=lambda s: int(s, 0), default=0x01)
    loop.add_argument("--in-ep", type=lambda s: int(s, 0), default=0x81)
    loop.add_argument("--size", type=int, default=4096)
    loop.add_argument("--count", type=int, default=16)
    return parser


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Execute one subcommand and return its JSON-ready result (never raises OSError)."""
    args = build_parser().parse_args(argv)
    result: dict[str, Any] = {"op": args.op}
    matches = find_devices(args.vid, args.pid, args.busid)
    if not matches:
        return {**result, "ok": False, "error": "no such USB device"}
    result["busid"] = matches[0].busid
    try:
        with UsbDevice(matches[0], args.timeout_ms) as device:
            if args.config is not None:
                device.set_configuration(args.config)
            result.update(_dispatch(device, args))
    except OSError as error:
        code = errno.errorcode.get(error.errno or 0, str(error.errno))
        return {**result, "ok": False, "error": f"{code}: {error.strerror}"}
    return result


def _dispatch(device: UsbDevice, args: argparse.Namespace) -> dict[str, Any]:
    if args.op == "describe":
        return {"ok": True, **describe(device)}
    if args.op == "control":
        payload: bytes | int = args.length if args.request_type & USB_DIR_IN else bytes.fromhex(args.data)
        data = device.control(args.request_type, args.request, args.value, args.index, payload)
        return {"ok": True, "data": data.hex()}
    device.claim(args.interface)
    if args.op == "bulk":
        return _bulk_ops(device, _parse_ops(args))
    return loopback(device, args.out_ep, args.in_ep, args.size, args.count)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON result line; exit status 0 when ``ok``."""
    result = run(argv)
    print(json.dumps(result, sort_keys=True))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
