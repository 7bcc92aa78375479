"""usbwire in the guest sharing QEMU's USB devices: libusb passthrough and usbip-host hand-over."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from usbwire.client import connect, list_devices
from usbwire.errors import TransferError
from usbwire.protocol import Errno, UrbFlag

from .scenarios import USBIP_PORT, block_device, imported_listing
from .session import Lab
from .usbdevices import QEMU_HID_ID, QEMU_SERIAL_ID, QEMU_STORAGE_ID, keyboard, serial, storage
from .vm import VM, GuestCommand

pytestmark = pytest.mark.lab

SECTORS = 64
USBMON_TOOL = "tests/lab/usbmon.py"


@dataclass
class Sharing:
    vm: VM
    server: GuestCommand
    host_port: int
    storage_busid: str
    keyboard_busid: str
    known: bytes


def start_usbwire(vm: VM, backend: str, *devices: tuple[int, int]) -> GuestCommand:
    """``usbwire serve`` in the guest sharing QEMU's ``devices`` (its disk and keyboard by default)."""
    exports = " ".join(f"--export {vid:04x}:{pid:04x}" for vid, pid in devices or (QEMU_STORAGE_ID, QEMU_HID_ID))
    # Looking for devices this often overlaps every enumeration of an import by the guest's
    # vhci: the server must keep answering while it lists devices (the guest kernel holds the
    # vhci hub's lock until the new device has answered, and listing reads that hub's sysfs).
    command = vm.start_chroot_command(
        f"exec {vm.python} -m usbwire serve -v --host 0.0.0.0 --port {USBIP_PORT} --control none"
        f" --backend {backend} --rescan-interval 0.1 {exports}"
    )
    deadline = time.monotonic() + 30
    err = vm.paths.commands / f"{command.id}.err"
    while time.monotonic() < deadline:
        if err.exists() and "listening on" in err.read_text(errors="replace"):
            return command
        time.sleep(0.1)
    raise AssertionError(f"usbwire serve did not start: {command.wait(1).describe()}")


@pytest.fixture(params=["libusb", "usbip-host"])
def sharing(request: pytest.FixtureRequest, lab: Lab, tmp_path: Path) -> Iterator[Sharing]:
    backend: str = request.param
    image = tmp_path / "disk.img"
    known = os.urandom(SECTORS * 512)
    with image.open("wb") as disk:
        disk.write(known)
        disk.truncate(16 << 20)
    usb = [storage(image, id="disk"), keyboard(id="kbd")]
    with lab.vm(usb=usb, forwards=[USBIP_PORT], cpus=2) as vm:
        storage_busid = vm.wait_for_usb(*QEMU_STORAGE_ID)
        keyboard_busid = vm.wait_for_usb(*QEMU_HID_ID)
        if backend == "usbip-host":
            for busid in (storage_busid, keyboard_busid):
                result = vm.chroot_run(f"{vm.python} -m usbwire bind -b {busid}")
                assert result.ok, result.describe()
        server = start_usbwire(vm, backend)
        yield Sharing(vm, server, vm.host_port(USBIP_PORT), storage_busid, keyboard_busid, known)
        log = vm.paths.commands / f"{server.id}.err"
        print(f"--- usbwire serve ({backend}) in the guest ---\n{log.read_text(errors='replace')}")


async def listed_until(sharing: Sharing, done: Callable[[set[str]], bool], timeout_s: float = 15.0) -> set[str]:
    """What the server lists, polled until ``done`` holds (exports follow devices asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        busids = {d.busid for d in await list_devices("127.0.0.1", sharing.host_port)}
        if done(busids) or time.monotonic() > deadline:
            return busids
        await asyncio.sleep(0.1)


def cbw(tag: int, length: int, command: bytes) -> bytes:
    return struct.pack("<IIIBBB16s", 0x43425355, tag, length, 0x80, 0, len(command), command)


def test_storage_reads_through_the_import_from_the_host_and_the_guest_kernel(sharing: Sharing) -> None:
    async def read_from_host() -> bytes:
        async with connect("127.0.0.1", sharing.storage_busid, port=sharing.host_port) as disk:
            await disk.set_configuration(1)
            out = next(e for e in disk.endpoints.active.interfaces[0].endpoints if e.bEndpointAddress < 0x80)  # type: ignore[union-attr]
            read10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, SECTORS, 0])
            await disk.bulk_transfer(out.bEndpointAddress, cbw(1, SECTORS * 512, read10), timeout=10)
            data = await disk.bulk_transfer(0x81, SECTORS * 512, timeout=10)
            csw = await disk.bulk_transfer(0x81, 13, timeout=10)
            assert isinstance(data, bytes) and isinstance(csw, bytes) and csw[12] == 0
            return data

    assert asyncio.run(read_from_host()) == sharing.known
    assert sharing.storage_busid in asyncio.run(listed_until(sharing, lambda b: sharing.storage_busid in b))

    vm = sharing.vm
    vm.chroot_run(f"usbip attach -r 127.0.0.1 -b {sharing.storage_busid}", 60, check=True)
    imported = imported_listing(vm)
    local = re.search(r"(\S+) -> usbip://127\.0\.0\.1:3240/" + re.escape(sharing.storage_busid), imported)
    assert local, imported
    block = block_device(vm, local[1]).removeprefix("/dev/")
    digest = vm.run(f"dd if=/dev/{block} bs=512 count={SECTORS} iflag=direct 2>/dev/null | sha256sum", 60, check=True)
    assert digest.out.split()[0] == hashlib.sha256(sharing.known).hexdigest()
    # The import matches the same VID:PID, but a device imported here is never exported again.
    assert local[1] not in {d.busid for d in asyncio.run(list_devices("127.0.0.1", sharing.host_port))}

    # A write through the import reads back after detaching and importing again.
    written = vm.run(
        f"dd if=/dev/urandom of=/tmp/chunk bs=512 count={SECTORS} 2>/dev/null"
        f" && dd if=/tmp/chunk of=/dev/{block} bs=512 seek=1000 count={SECTORS} oflag=direct 2>/dev/null"
        " && sync && sha256sum /tmp/chunk",
        60,
        check=True,
    ).out.split()[0]
    port = re.search(r"Port (\d+):", imported_listing(vm))
    assert port
    vm.chroot_run(f"usbip detach -p {int(port[1])}", 60, check=True)
    vm.run(f"while [ -e /dev/{block} ]; do sleep 0.1; done", 30, check=True)
    assert sharing.storage_busid in asyncio.run(listed_until(sharing, lambda b: sharing.storage_busid in b))
    vm.chroot_run(f"usbip attach -r 127.0.0.1 -b {sharing.storage_busid}", 60, check=True)
    imported = imported_listing(vm)
    local = re.search(r"(\S+) -> usbip://127\.0\.0\.1:3240/" + re.escape(sharing.storage_busid), imported)
    assert local, imported
    block = block_device(vm, local[1]).removeprefix("/dev/")
    again = vm.run(
        f"dd if=/dev/{block} bs=512 skip=1000 count={SECTORS} iflag=direct 2>/dev/null | sha256sum",
        60,
        check=True,
    )
    assert again.out.split()[0] == written


def test_keys_sent_through_qemus_monitor_arrive_at_the_importing_side(sharing: Sharing) -> None:
    async def read_key() -> bytes:
        async with connect("127.0.0.1", sharing.keyboard_busid, port=sharing.host_port) as kbd:
            await kbd.set_configuration(1)
            await kbd.control_transfer(0x21, 0x0A, 0, 0)  # SET_IDLE 0: reports on change only
            reading = asyncio.ensure_future(kbd.interrupt_transfer(0x81, 8, timeout=20))
            await asyncio.sleep(0.5)  # let the IN transfer reach the device before the key
            await asyncio.to_thread(sharing.vm.monitor, "sendkey a")
            report = await reading
            assert isinstance(report, bytes)
            return report

    report = asyncio.run(read_key())
    assert 0x04 in report[2:]  # HID usage of "a"


def test_a_device_being_reset_does_not_hold_up_the_other_devices(sharing: Sharing) -> None:
    async def keyboard_answers_during_a_disk_reset() -> int:
        disk_import = connect("127.0.0.1", sharing.storage_busid, port=sharing.host_port)
        kbd_import = connect("127.0.0.1", sharing.keyboard_busid, port=sharing.host_port)
        async with disk_import as disk, kbd_import as kbd:
            await disk.set_configuration(1)
            await kbd.set_configuration(1)
            # SET_FEATURE(PORT_RESET), which the server (or the kernel's stub) turns into a
            # reset of the real device: the guest kernel resets its port and enumerates it again.
            resetting = asyncio.ensure_future(disk.control_transfer(0x23, 0x03, 4, 1, timeout=30))
            await asyncio.sleep(0.01)  # let the reset go out first
            answered = 0
            while not resetting.done():
                await kbd.control_transfer(0x80, 0x06, 0x0100, 0, 18, timeout=10)  # GET_DESCRIPTOR
                answered += 1
            assert await resetting == 0
            return answered

    # A reset takes the guest kernel tens of milliseconds; a server that waited for it on its
    # event loop answered the keyboard only once it was over (1 answer at most).
    assert asyncio.run(keyboard_answers_during_a_disk_reset()) >= 3


def test_libusb_passes_a_bulk_outs_zero_length_packet_flag_to_the_device(lab: Lab) -> None:
    # A transfer that fills its last packet ends, for some devices, only at a zero-length
    # packet. The kernel's stub keeps URB_ZERO_PACKET on bulk OUT (usbip-host hands the
    # URB to the kernel as it came); usbmon shows what libusb asked the host controller for.
    with lab.vm(usb=[serial(id="ftdi")], forwards=[USBIP_PORT]) as vm:
        busid = vm.wait_for_usb(*QEMU_SERIAL_ID)
        server = start_usbwire(vm, "libusb", QEMU_SERIAL_ID)
        capture = vm.start_chroot_command(f"python3 {USBMON_TOOL} --busid {busid} --count 2")
        capture.wait_for_output("ready")
        size = asyncio.run(write_two_full_packets(busid, vm.host_port(USBIP_PORT)))
        submitted = [json.loads(line) for line in capture.wait(30, check=True).out.splitlines()[1:]]
        server.kill()
    assert [(s["length"], bool(s["flags"] & UrbFlag.ZERO_PACKET)) for s in submitted] == [(size, True), (size, False)]


async def write_two_full_packets(busid: str, port: int) -> int:
    """Two bulk OUTs of one full packet each to the FTDI at ``busid``, the first asking for a ZLP."""
    async with connect("127.0.0.1", busid, port=port) as ftdi:
        await ftdi.set_configuration(1)
        endpoints = ftdi.endpoints.active.interfaces[0].endpoints  # type: ignore[union-attr]
        out = next(e for e in endpoints if e.bEndpointAddress < 0x80)
        full = bytes(out.wMaxPacketSize)
        assert await ftdi.bulk_transfer(out.bEndpointAddress, full, timeout=10, zero_packet=True) == len(full)
        assert await ftdi.bulk_transfer(out.bEndpointAddress, full, timeout=10) == len(full)
        return len(full)


def test_unplug_during_import_ends_it_cleanly_and_replug_exports_again(sharing: Sharing) -> None:
    async def scenario() -> None:
        async with connect("127.0.0.1", sharing.keyboard_busid, port=sharing.host_port) as kbd:
            await kbd.set_configuration(1)
            # A keyboard with no key pressed NAKs: this IN waits until the device goes away.
            waiting = asyncio.ensure_future(kbd.interrupt_transfer(0x81, 8, timeout=60))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(sharing.vm.unplug, "kbd")
            # Either the transfer ends with -ENODEV or the connection closes under it.
            with pytest.raises(TransferError) as ended:
                await waiting
            # (-ESHUTDOWN from the kernel's stub, -ENODEV from libusb: both mean unplugged)
            assert ended.value.status in (-Errno.ENODEV, -Errno.ESHUTDOWN)
        # The server notices the device is gone and still serves its other device...
        listed = await listed_until(sharing, lambda busids: sharing.keyboard_busid not in busids)
        assert sharing.storage_busid in listed and sharing.keyboard_busid not in listed

    asyncio.run(scenario())
    # ...and exports the keyboard again once it is back.
    sharing.vm.plug("kbd")
    busid = sharing.vm.wait_for_usb(*QEMU_HID_ID)
    if "usbip-host" in sharing.server.command:
        assert sharing.vm.chroot_run(f"{sharing.vm.python} -m usbwire bind -b {busid}").ok

    assert busid in asyncio.run(listed_until(sharing, lambda busids: busid in busids))
