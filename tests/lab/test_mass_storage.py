"""usbwire's emulated disk as the real kernel's usb-storage sees it: mkfs, files, fsck, cuts."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, start_server, wait_until
from tests.processes import serve_process
from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.msc import PRODUCT_ID as DISK_PRODUCT_ID
from usbwire.devices.msc import VENDOR_ID, MassStorage

from .scenarios import KernelClient, block_device, kernel_client
from .session import Lab

pytestmark = pytest.mark.lab

DISK = "5-1"
IDS = (VENDOR_ID, DISK_PRODUCT_ID)
MOUNT = "/tmp/disk"


@pytest.fixture
def disk_server(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    image = tmp_path / "disk.img"
    for running in start_server():
        running.export(EmulatedExport(MassStorage(image, size=192 << 20), busid=DISK, busnum=5, devnum=2))
        yield running, image


def attach(client: KernelClient, server: RunningServer) -> str:
    busid = client.attach(server.port, DISK, wait_for=IDS)
    return block_device(client.vm, busid)


def vhci_port(client: KernelClient) -> int:
    return int(client.imported().out.split("Port ")[1].split(":")[0])


def sh(client: KernelClient, command: str, timeout_s: float = 120.0) -> str:
    return client.vm.chroot_run(command, timeout_s, check=True).out


def _size(client: KernelClient, path: str) -> int:
    return int(sh(client, f"stat -c %s {path} 2>/dev/null || echo 0"))


def test_ext4_file_survives_detach_and_reattach_and_fsck_is_clean(
    lab: Lab, disk_server: tuple[RunningServer, Path]
) -> None:
    server, image = disk_server
    with kernel_client(lab, cpus=2) as client:
        dev = attach(client, server)
        sh(client, f"mkfs.ext4 -q -F {dev} && mkdir -p {MOUNT} && mount {dev} {MOUNT}")
        written = sh(
            client,
            f"dd if=/dev/urandom of={MOUNT}/random bs=1M count=64 status=none && sync"
            f" && sha256sum {MOUNT}/random && umount {MOUNT}",
            240,
        ).split()[0]
        assert client.detach(vhci_port(client)).ok
        client.vm.wait_for_usb(*IDS, present=False)

        dev = attach(client, server)
        read_back = sh(client, f"mount {dev} {MOUNT} && sha256sum {MOUNT}/random && umount {MOUNT}", 240)
        assert read_back.split()[0] == written
        fsck = client.vm.chroot_run(f"e2fsck -f -n {dev}", 120)
        assert fsck.ok, fsck.describe()
    # The image on the server is the same file system, flushed on detach.
    if shutil.which("e2fsck"):
        assert subprocess.run(["e2fsck", "-f", "-n", str(image)], capture_output=True, check=False).returncode == 0


def test_a_cut_connection_mid_write_loses_nothing_that_was_synced(
    lab: Lab, disk_server: tuple[RunningServer, Path]
) -> None:
    server, _ = disk_server
    # The VM outlives every wait below (120 s each), so that a stuck guest is reported by the
    # wait, with its blocked tasks, rather than killed by the hard timeout without a word.
    with kernel_client(lab, cpus=2, hard_timeout_s=420) as client:
        dev = attach(client, server)
        sh(client, f"mkfs.ext4 -q -F {dev} && mkdir -p {MOUNT} && mount {dev} {MOUNT}")
        synced = sh(
            client,
            f"dd if=/dev/urandom of={MOUNT}/synced bs=1M count=8 status=none && sync && sha256sum {MOUNT}/synced",
        ).split()[0]
        writer = client.vm.start_chroot_command(f"dd if=/dev/zero of={MOUNT}/big bs=1M count=128 conv=fsync")
        # Let the write get going, then cut the client's TCP connection from the server side.
        wait_until(
            lambda: writer.finished or _size(client, f"{MOUNT}/big") > 0,
            "the writer to begin",
            timeout_s=120,
            explain=client.vm.blocked_tasks,
        )
        assert not writer.finished, writer.wait(1).describe()
        time.sleep(1.0)

        def cut() -> None:
            for connection in list(server.server._connections):
                if connection.busid == DISK and connection.transport is not None:
                    connection.transport.abort()

        server.call(cut)
        assert not writer.wait(120).ok  # the guest sees the disk vanish under the write
        client.vm.wait_for_usb(*IDS, present=False)
        client.vm.chroot_run(f"umount -l {MOUNT}")

        # usbwire keeps serving: the disk is imported again, the journal replays, data is there.
        dev = attach(client, server)
        fsck = client.vm.chroot_run(f"e2fsck -f -y {dev}", 120)
        assert fsck.code in (0, 1), fsck.describe()  # 1: errors corrected (journal replay)
        again = sh(client, f"mount {dev} {MOUNT} && sha256sum {MOUNT}/synced && umount {MOUNT}")
        assert again.split()[0] == synced
        assert client.vm.chroot_run(f"e2fsck -f -n {dev}", 120).ok


def test_serve_disk_hands_the_guest_an_image_file_and_disk_ro_a_write_protected_one(lab: Lab, tmp_path: Path) -> None:
    original = os.urandom(4 << 20)
    image, protected = tmp_path / "stick.img", tmp_path / "protected.img"
    image.write_bytes(original)
    protected.write_bytes(original)
    log = tmp_path / "serve.log"
    # After the demo set (1-1 .. 1-5), in the order given.
    with (
        serve_process(log, "--disk", str(image), "--disk-ro", str(protected)) as served,
        kernel_client(lab, cpus=2) as client,
    ):
        dev = block_device(client.vm, client.attach(served.port, "1-6", wait_for=IDS))
        read = sh(client, f"dd if={dev} bs=1M count=4 iflag=direct status=none | sha256sum")
        assert read.split()[0] == hashlib.sha256(original).hexdigest()
        sh(client, f"dd if=/dev/zero of={dev} bs=64K count=1 seek=2 oflag=direct status=none")
        assert client.detach(vhci_port(client)).ok
        client.vm.wait_for_usb(*IDS, present=False)
        wait_until(lambda: "released 1-6" in log.read_text(), "the server to release the disk")
        assert image.read_bytes() == original[: 128 << 10] + bytes(64 << 10) + original[192 << 10 :]

        dev = block_device(client.vm, client.attach(served.port, "1-7", wait_for=IDS))
        assert sh(client, f"blockdev --getro {dev}").strip() == "1"
        refused = client.vm.chroot_run(f"dd if=/dev/zero of={dev} bs=4K count=1 oflag=direct", 60)
        assert not refused.ok, refused.describe()
        read = sh(client, f"dd if={dev} bs=1M count=4 iflag=direct status=none | sha256sum")
        assert read.split()[0] == hashlib.sha256(original).hexdigest()
    assert protected.read_bytes() == original
