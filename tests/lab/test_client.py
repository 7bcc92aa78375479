"""usbwire as the client: the userspace API and pyusb against the kernel's usbipd, and
``usbwire attach`` into the guest kernel's vhci from both a kernel and a usbwire server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import usb.core
import usb.util

from tests.conftest import RunningServer, closed_port, start_server
from usbwire.backends.emulated import EmulatedExport
from usbwire.client import RemoteDevice, connect
from usbwire.client.pyusb import get_backend
from usbwire.devices.msc import PRODUCT_ID as DISK_PRODUCT_ID
from usbwire.devices.msc import VENDOR_ID, MassStorage

from .scenarios import USBIP_PORT, bind_to_usbip_host, block_device, imported_listing, start_usbipd
from .session import Lab
from .usbdevices import QEMU_HID_ID, QEMU_STORAGE_ID, keyboard, storage
from .vm import VM

pytestmark = pytest.mark.lab

SECTORS = 64
CBW_SIGNATURE, CSW_SIGNATURE = 0x43425355, 0x53425355


@dataclass
class GuestExports:
    vm: VM
    port: int
    storage_busid: str
    keyboard_busid: str
    known: bytes  # what the test wrote at the start of the disk


@pytest.fixture(scope="module")
def guest_exports(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestExports]:
    """The guest kernel exports a QEMU usb-storage (with known data) and a usb-kbd."""
    image = tmp_path_factory.mktemp("disk") / "disk.img"
    known = os.urandom(SECTORS * 512)
    with image.open("wb") as disk:
        disk.write(known)
        disk.truncate(16 << 20)
    with lab.vm(usb=[storage(image), keyboard()], forwards=[USBIP_PORT], cpus=2) as vm:
        storage_busid = vm.wait_for_usb(*QEMU_STORAGE_ID)
        keyboard_busid = vm.wait_for_usb(*QEMU_HID_ID)
        bind_to_usbip_host(vm, storage_busid)
        bind_to_usbip_host(vm, keyboard_busid)
        start_usbipd(vm)
        yield GuestExports(vm, vm.host_port(USBIP_PORT), storage_busid, keyboard_busid, known)


def cbw(tag: int, length: int, data_in: bool, command: bytes) -> bytes:
    return struct.pack("<IIIBBB16s", CBW_SIGNATURE, tag, length, 0x80 if data_in else 0, 0, len(command), command)


async def scsi_in(device: RemoteDevice, tag: int, command: bytes, length: int) -> bytes:
    await device.bulk_transfer(0x02, cbw(tag, length, True, command), timeout=10)
    data = await device.bulk_transfer(0x81, length, timeout=10)
    csw = await device.bulk_transfer(0x81, 13, timeout=10)
    assert isinstance(data, bytes) and isinstance(csw, bytes)
    signature, csw_tag, _, status = struct.unpack("<IIIB", csw)
    assert (signature, csw_tag, status) == (CSW_SIGNATURE, tag, 0)
    return data


def test_userspace_api_reads_descriptors_and_sectors_from_the_kernel_server(
    guest_exports: GuestExports,
) -> None:
    async def main() -> None:
        async with connect("127.0.0.1", guest_exports.storage_busid, port=guest_exports.port) as disk:
            descriptor = disk.device_descriptor
            assert descriptor is not None
            assert (descriptor.idVendor, descriptor.idProduct) == QEMU_STORAGE_ID
            assert await disk.string(descriptor.iManufacturer) == "QEMU"
            await disk.set_configuration(1)
            inquiry = await scsi_in(disk, 1, bytes([0x12, 0, 0, 0, 36, 0]), 36)
            assert inquiry[0] == 0x00 and inquiry[8:12] == b"QEMU"
            read10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, SECTORS, 0])
            assert await scsi_in(disk, 2, read10, SECTORS * 512) == guest_exports.known
        async with connect("127.0.0.1", guest_exports.keyboard_busid, port=guest_exports.port) as kbd:
            assert kbd.device_descriptor is not None
            assert (kbd.device_descriptor.idVendor, kbd.device_descriptor.idProduct) == QEMU_HID_ID

    asyncio.run(main())


def test_pyusb_reads_the_same_through_usbwires_backend(guest_exports: GuestExports) -> None:
    backend = get_backend("127.0.0.1", guest_exports.port, busid=guest_exports.storage_busid)
    try:
        disk = usb.core.find(idVendor=QEMU_STORAGE_ID[0], idProduct=QEMU_STORAGE_ID[1], backend=backend)
        assert disk is not None
        assert usb.util.get_string(disk, disk.iManufacturer) == "QEMU"
        disk.set_configuration(1)
        disk.write(0x02, cbw(7, SECTORS * 512, True, bytes([0x28, 0, 0, 0, 0, 0, 0, 0, SECTORS, 0])))
        data = bytes(disk.read(0x81, SECTORS * 512, timeout=10000))
        csw = bytes(disk.read(0x81, 13, timeout=10000))
        assert data == guest_exports.known
        assert struct.unpack("<IIIB", csw)[3] == 0
    finally:
        backend.close()


def usbwire_in_guest(vm: VM, args: str, timeout_s: float = 60.0) -> tuple[int, str, str]:
    result = vm.chroot_run(f"{vm.python} -m usbwire {args}", timeout_s)
    return result.code, result.out, result.err


def head_digest(vm: VM, dev: str) -> str:
    """sha256 of the first SECTORS sectors of a guest block device, bypassing the page cache."""
    command = f"dd if={dev} bs=512 count={SECTORS} iflag=direct 2>/dev/null | sha256sum"
    return vm.run(command, 60, check=True).out.split()[0]


def test_usbwire_attach_imports_the_guests_own_kernel_export(guest_exports: GuestExports) -> None:
    vm = guest_exports.vm
    code, out, err = usbwire_in_guest(vm, f"attach -r 127.0.0.1 -b {guest_exports.storage_busid}")
    assert code == 0, err
    port = int(out.rsplit("port ", 1)[1])
    try:
        # The chroot is the root these tools share (its /var/run holds the port state files).
        imported = imported_listing(vm)
        assert f"usbip://127.0.0.1:3240/{guest_exports.storage_busid}" in imported
        code, ours, _ = usbwire_in_guest(vm, "port")
        assert code == 0 and f"usbip://127.0.0.1:3240/{guest_exports.storage_busid}" in ours
        (row,) = json.loads(usbwire_in_guest(vm, "port --json")[1])
        local = row["local_busid"]
        dev = block_device(vm, local)
        head = vm.run(f"dd if={dev} bs=512 count={SECTORS} iflag=direct 2>/dev/null | sha256sum", 60, check=True)
        import hashlib

        assert head.out.split()[0] == hashlib.sha256(guest_exports.known).hexdigest()
    finally:
        code, out, err = usbwire_in_guest(vm, f"detach -p {port}")
    assert code == 0, err
    assert f"Port {port:02d}" not in imported_listing(vm)


def test_attach_resume_against_the_kernels_usbipd_falls_back_to_a_plain_import(guest_exports: GuestExports) -> None:
    # usbipd drops a connection that sends an op code it does not know (the session request)
    # before touching any device; the import is then made plainly on a new connection.
    vm = guest_exports.vm
    code, out, err = usbwire_in_guest(vm, f"attach -v --resume -r 127.0.0.1 -b {guest_exports.storage_busid}")
    assert code == 0, err
    assert "does not offer resumable sessions" in err
    port = int(out.rsplit("port ", 1)[1])
    try:
        # Plain: the kernel holds the TCP socket itself, no relay process was left behind.
        assert vm.chroot_run("pgrep -f 'usbwire attach'").code == 1
        (row,) = json.loads(usbwire_in_guest(vm, "port --json")[1])
        assert head_digest(vm, block_device(vm, row["local_busid"])) == hashlib.sha256(guest_exports.known).hexdigest()
    finally:
        code, out, err = usbwire_in_guest(vm, f"detach -p {port}")
    assert code == 0, err


@pytest.fixture
def disk_server(tmp_path: Path) -> Iterator[tuple[RunningServer, bytes]]:
    image = tmp_path / "disk.img"
    known = os.urandom(SECTORS * 512)
    with image.open("wb") as disk:
        disk.write(known)
        disk.truncate(32 << 20)
    for running in start_server():
        running.export(EmulatedExport(MassStorage(image), busid="5-1", busnum=5, devnum=2))
        yield running, known


def test_usbwire_attach_imports_usbwires_emulated_disk(lab: Lab, disk_server: tuple[RunningServer, bytes]) -> None:
    server, known = disk_server
    with lab.vm() as vm:
        code, out, err = usbwire_in_guest(vm, f"attach -r 10.0.2.2 -p {server.port} -b 5-1")
        assert code == 0, err
        port = int(out.rsplit("port ", 1)[1])
        busid = vm.wait_for_usb(VENDOR_ID, DISK_PRODUCT_ID)
        dev = block_device(vm, busid)
        head = vm.run(f"dd if={dev} bs=512 count={SECTORS} iflag=direct 2>/dev/null | sha256sum", 60, check=True)
        import hashlib

        assert head.out.split()[0] == hashlib.sha256(known).hexdigest()
        assert f"usbip://10.0.2.2:{server.port}/5-1" in imported_listing(vm)
        assert usbwire_in_guest(vm, f"detach -p {port}")[0] == 0
        vm.wait_for_usb(VENDOR_ID, DISK_PRODUCT_ID, present=False)
        assert "Port" not in imported_listing(vm).split("====\n", 1)[-1]

        # The error cases, each with its message and exit status 1.
        with closed_port() as refusing:  # on the host, which the guest reaches as 10.0.2.2
            cases = {
                f"attach -r 10.0.2.2 -p {server.port} -b 9-9": "not exported",
                f"attach -r 10.0.2.2 -p {refusing} -b 5-1": "connection refused",
                "attach -r no-such-host.invalid -b 5-1": "cannot resolve",
                "detach -p 999": "invalid port",
            }
            for args, message in cases.items():
                code, _, err = usbwire_in_guest(vm, args)
                assert (code, message in err, err.count("\n")) == (1, True, 1), (args, err)
        # Busy: another client holds the disk.
        with asyncio.Runner() as runner:
            holder = runner.run(connect_holder(server.port))
            code, _, err = usbwire_in_guest(vm, f"attach -r 10.0.2.2 -p {server.port} -b 5-1")
            runner.run(holder.close())
        assert code == 1 and "busy" in err
        # Not root.
        nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups"
        result = vm.chroot_run(f"{nobody} {vm.python} -m usbwire attach -r 10.0.2.2 -b 5-1")
        assert result.code == 1 and "root" in result.err, result.describe()


async def connect_holder(port: int) -> RemoteDevice:
    from usbwire.client import open_device

    return await open_device("127.0.0.1", "5-1", port=port)


def test_attach_without_vhci_says_so_on_the_host() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "usbwire", "attach", "-r", "127.0.0.1", "-b", "1-1"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if Path("/sys/devices/platform/vhci_hcd.0").exists():
        pytest.skip("this machine has vhci-hcd loaded")
    assert result.returncode == 1
    assert result.stderr == "usbwire: error: vhci_hcd is not loaded (modprobe vhci-hcd)\n"
