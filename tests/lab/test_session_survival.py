"""Resumable sessions under the real vhci: network drops the guest's file system never sees.

The guest imports usbwire's emulated disk with ``usbwire attach --persist --resume`` through a
TCP path on the host that the test breaks (every connection reset, new ones refused for 5 s),
while a loop in the guest writes and fsyncs a file.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, running_server, start_server, wait_until
from tests.netcut import CuttablePath
from tests.processes import serve_process
from tests.wire import WireClient
from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.msc import PRODUCT_ID as DISK_PRODUCT_ID
from usbwire.devices.msc import VENDOR_ID, MassStorage
from usbwire.protocol import OpStatus

from .scenarios import block_device, imported_listing
from .session import Lab
from .vm import VM

pytestmark = pytest.mark.lab

DISK = "5-1"
DISK_IDS = (VENDOR_ID, DISK_PRODUCT_ID)
LOOPBACK_IDS = (0x1209, 0x0001)
MOUNT = "/tmp/disk"
CHUNK = 128 * 1024
CHUNKS = 32
OUTAGE = 5.0


@pytest.fixture
def disk_server(tmp_path: Path) -> Iterator[RunningServer]:
    for running in start_server():
        running.export(
            EmulatedExport(MassStorage(tmp_path / "disk.img", size=64 << 20), busid=DISK, busnum=5, devnum=2)
        )
        yield running


def writer_loop(source: Path, stop: Path) -> str:
    """Shell: rewrite the whole file, chunk after chunk straight to the disk (O_DIRECT), again and
    again until ``stop`` exists; any error ends it. One dd per pass keeps a write in flight nearly
    all the time (a dd per chunk left gaps of process start-up in a slow guest)."""
    return (
        "set -e; n=0; "
        f"while [ ! -e {stop} ] || [ $n -lt 1 ]; do "
        f"  dd if={source} of={MOUNT}/data bs={CHUNK} count={CHUNKS} conv=notrunc,fsync oflag=direct status=none; "
        "  n=$((n + 1)); "
        f"done; echo writes $((n * {CHUNKS}))"
    )


def test_two_five_second_outages_are_hidden_from_a_writing_file_system(lab: Lab, disk_server: RunningServer) -> None:
    data = os.urandom(CHUNK * CHUNKS)
    with CuttablePath(disk_server.port) as path, lab.vm(cpus=2, hard_timeout_s=300) as vm:
        share = Path(vm.paths.scratch)
        (share / "source").write_bytes(data)
        keeper = vm.start_chroot_command(
            f"exec {vm.python} -m usbwire attach --persist --resume -r 10.0.2.2 -p {path.port} -b {DISK}"
        )
        busid = vm.wait_for_usb(*DISK_IDS, timeout_s=30)
        dev = block_device(vm, busid)
        vm.chroot_run(f"mkfs.ext4 -q -F {dev} && mkdir -p {MOUNT} && mount {dev} {MOUNT}", 120, check=True)
        writer = vm.start_chroot_command(writer_loop(share / "source", share / "stop"))

        for outage in (1, 2):
            start = _written(vm)
            wait_until(lambda: _written(vm) > start, "the write loop to be writing", timeout_s=60)  # noqa: B023
            path.cut(refuse_for=OUTAGE)
            cut = time.monotonic()
            # A write (or the cache flush of an fsync) is caught in the outage: issued, and
            # waiting for the device.
            wait_until(
                lambda: _in_flight(vm) > 0,
                "a write waiting through the outage",
                timeout_s=OUTAGE - 0.5,
                explain=lambda: (
                    f"the writer {'has ended' if writer.finished else 'is running'},"
                    f" stderr: {writer.errors_so_far()!r}\n{vm.dmesg()[-3000:]}"
                ),
            )
            # The relay resumes on its own once the path is back, and the writes go on.
            wait_until(lambda: path.connections > outage, "the relay to resume", timeout_s=OUTAGE + 10)  # noqa: B023
            resumed = time.monotonic() - cut
            assert OUTAGE <= resumed < OUTAGE + 2.0
            before = _written(vm)
            wait_until(lambda: _written(vm) > before, "writes after the outage", timeout_s=30)  # noqa: B023

        (share / "stop").touch()
        result = writer.wait(120)
        assert result.ok, result.describe()  # no write ever failed
        assert int(result.out.split()[-1]) >= CHUNKS
        # Read back from the disk itself, not from the page cache.
        digest = vm.chroot_run(f"umount {MOUNT} && mount {dev} {MOUNT} && sha256sum {MOUNT}/data", 60, check=True)
        assert digest.out.split()[0] == hashlib.sha256(data).hexdigest()
        assert vm.find_usb(*DISK_IDS) == [busid]  # the same device all along, never re-enumerated
        dmesg = vm.dmesg()
        assert "I/O error" not in dmesg and "USB disconnect" not in dmesg, dmesg[-3000:]
        assert path.connections == 3  # the first import and two resumptions, no re-attach
        assert "attached (session resumed (2x))" in vm.chroot_run(f"{vm.python} -m usbwire port", check=True).out
        said = keeper.output_so_far()  # what `attach --persist` reported along the way
        assert said.count(": resuming: ") == 2 and "attached: session resumed (2x)" in said, said
        vm.chroot_run(f"umount {MOUNT}")
        keeper.kill()


def _in_flight(vm: VM) -> int:
    """Commands the guest's SCSI layer has given the disk and not had back. The block layer's
    own count (``inflight``) leaves out cache flushes, which an fsync ends with."""
    return sum(int(n) for n in vm.run("cat /sys/block/sd*/device/device_busy 2>/dev/null").out.split())


def _written(vm: VM) -> int:
    """Bytes the guest has written to the disk so far (its sectors-written counter)."""
    stat = vm.run("cat /sys/block/sd*/stat 2>/dev/null | head -1").out.split()
    return int(stat[6]) if len(stat) > 6 else 0


def test_without_sessions_the_persistent_client_attaches_again_soon_after_the_path_is_back(lab: Lab) -> None:
    with running_server() as running, CuttablePath(running.port) as path, lab.vm() as vm:
        keeper = vm.start_chroot_command(
            f"exec {vm.python} -m usbwire attach --persist -r 10.0.2.2 -p {path.port} -b 1-1"
        )
        vm.wait_for_usb(*LOOPBACK_IDS, timeout_s=30)
        for _ in range(2):
            path.cut(refuse_for=OUTAGE)
            back = time.monotonic() + OUTAGE
            vm.wait_for_usb(*LOOPBACK_IDS, present=False, timeout_s=OUTAGE)
            vm.wait_for_usb(*LOOPBACK_IDS, timeout_s=OUTAGE + 10)
            assert time.monotonic() - back < 5.0
        assert "usbip://" in imported_listing(vm)
        keeper.kill()


def test_a_frozen_guest_relay_is_released_and_a_frozen_server_is_noticed(lab: Lab, tmp_path: Path) -> None:
    window, liveness = 3.0, 2.0
    flags = ("--resume-window", str(window), "--liveness-timeout", str(liveness))
    with serve_process(tmp_path / "serve.log", *flags) as server, lab.vm() as vm:
        port = server.port
        attached = vm.chroot_run(f"{vm.python} -m usbwire attach --resume -r 10.0.2.2 -p {port} -b 1-1")
        assert attached.ok, attached.describe()
        vm.wait_for_usb(*LOOPBACK_IDS, timeout_s=30)
        relay = vm.chroot_run("pgrep -f 'usbwire attach --resume'", check=True).out.split()
        assert len(relay) == 1  # the relay outlives `usbwire attach`

        # The guest's relay freezes: the server notices the silence, holds the device for
        # the window, then lets another client import it.
        vm.chroot_run(f"kill -STOP {relay[0]}", check=True)
        frozen = time.monotonic()
        wait_until(lambda: _importable(port), "the server to release the frozen client's device", timeout_s=15)
        assert time.monotonic() - frozen < liveness + window + 2.0
        vm.chroot_run(f"kill -KILL {relay[0]}")
        vm.wait_for_usb(*LOOPBACK_IDS, present=False, timeout_s=10)

        # The other way round: the server freezes; the persistent client notices and says so.
        keeper = vm.start_chroot_command(
            f"exec {vm.python} -m usbwire attach --persist --resume -r 10.0.2.2 -p {port} -b 1-1"
        )
        vm.wait_for_usb(*LOOPBACK_IDS, timeout_s=30)
        server.freeze()
        frozen = time.monotonic()
        vm.wait_for_usb(*LOOPBACK_IDS, present=False, timeout_s=20)
        # The relay's own liveness timeout (5 s), then the session's window of resumption attempts.
        assert time.monotonic() - frozen < 5.0 + window + 3.0
        wait_until(
            lambda: "reconnecting" in vm.chroot_run(f"{vm.python} -m usbwire port").out,
            "usbwire port to say reconnecting",
            timeout_s=10,
        )
        server.thaw()
        vm.wait_for_usb(*LOOPBACK_IDS, timeout_s=30)  # and it comes back by itself

        # Killed and started again, the server knows no session: the relay gives up (refused,
        # or its window passed first), and the persistent client imports afresh.
        server.process.kill()
        server.process.wait(10)
        vm.wait_for_usb(*LOOPBACK_IDS, present=False, timeout_s=15)
        with serve_process(tmp_path / "again.log", *flags, port=port):
            vm.wait_for_usb(*LOOPBACK_IDS, timeout_s=30)
            assert "usbip://" in imported_listing(vm)
        keeper.kill()


def _importable(port: int) -> bool:
    with WireClient(port) as client:
        if client.import_("1-1").status == OpStatus.OK:
            return True
    time.sleep(0.1)  # one import attempt per 100 ms is probe enough
    return False
