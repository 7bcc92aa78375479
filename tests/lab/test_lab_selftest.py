"""Self-test of the kernel lab: it boots, runs commands, exposes the kernel's USB/IP
client and server, runs the host's Python on the guest kernel, and drives usbfs.

These tests prove the harness before usbwire's own lab tests rely on it.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from .errors import BootTimeout, CommandFailed, CommandTimeout, LabWarning, VMDied
from .initramfs import InitramfsSpec
from .scenarios import KernelClient, KernelExport, host_usbip, run_usbfs
from .session import REPO, Lab
from .usbdevices import QEMU_HID_ID, QEMU_STORAGE_ID, keyboard, storage
from .vm import VM, GuestCommand

KBD = "kbd"


@pytest.fixture(scope="module")
def guest(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    """One guest shared by the quick checks: a keyboard and an 8 MiB disk on its xHCI."""
    image = tmp_path_factory.mktemp("lab") / "disk.img"
    with image.open("wb") as disk:
        disk.truncate(8 * 1024 * 1024)
    with lab.vm(usb=[keyboard(id=KBD), storage(image, id="disk")]) as vm:
        yield vm


def test_guest_command_returns_output_and_exit_status(guest: VM) -> None:
    result = guest.run("echo out; echo err >&2; exit 7")

    assert (result.out, result.err, result.code) == ("out\n", "err\n", 7)


def test_guest_command_past_timeout_is_killed_and_guest_stays_usable(guest: VM) -> None:
    with pytest.raises(CommandTimeout, match="timed out after 1 s") as timeout:
        guest.run("echo started; sleep 60", timeout_s=1.0)
    # The report of tasks stuck in the kernel comes with it (sleep's is an ordinary sleep).
    assert "Show Blocked State" in str(timeout.value)

    assert guest.run("echo still here").out == "still here\n"


def test_background_command_can_be_watched_and_killed(guest: VM) -> None:
    command = guest.start_command("echo ready; sleep 60; echo never")
    command.wait_for_output("ready\n", timeout_s=10)

    command.kill()

    assert guest.run("ps | grep '[s]leep 60'").code == 1  # nothing left of it
    assert "never" not in command.output_so_far()


def test_a_request_arriving_in_pieces_around_a_command_ending_is_not_lost(guest: VM) -> None:
    # The serial line may deliver a request in pieces. A command ending meanwhile must not make
    # the agent drop the piece it has read (busybox ash's read starts over after a SIGCHLD):
    # the guest would sit idle, the command never started, until the wait for it timed out.
    ending = guest.start_command("sleep 1")
    # What VM.start_command does, but with the request sent in two pieces.
    command = GuestCommand(guest, next(guest._ids), "echo whole")
    (guest.paths.commands / f"{command.id}.sh").write_text(command.command + "\n")
    serial = guest._control()._io.sock
    serial.sendall(b"ru")
    assert ending.wait(10).ok
    # No request can be sent to tell when lab-run has exited after saying "done": wait it out.
    time.sleep(0.5)
    serial.sendall(f"n {command.id}\n".encode())

    result = command.wait(10)
    assert (result.code, result.out) == (0, "whole\n")


def test_failed_check_reports_output_and_guest_dmesg(guest: VM) -> None:
    with pytest.raises(CommandFailed) as failure:
        guest.run("echo why >&2; exit 3", check=True)

    message = str(failure.value)
    assert "[exit 3]" in message
    assert "why" in message
    assert "--- guest dmesg" in message


def test_guest_has_usbip_client_and_server_modules(guest: VM) -> None:
    nports = guest.run("cat /sys/devices/platform/vhci_hcd.0/nports", check=True)
    server = guest.run("ls /sys/bus/usb/drivers/usbip-host", check=True)

    assert int(nports.out) > 0
    assert "match_busid" in server.out.split()


def test_guest_reports_the_debian_kernel_release(guest: VM) -> None:
    assert guest.run("uname -r").out.strip() == guest.release == guest.artifacts.release


def test_chroot_runs_host_python_on_guest_kernel(guest: VM) -> None:
    result = guest.chroot_run(
        "python3 -c 'import os, sys; print(sys.executable); print(os.uname().release); print(os.getcwd())'",
        check=True,
    )

    executable, release, cwd = result.out.split()
    assert executable == guest.python  # the repo's .venv if it has one
    assert release == guest.release
    assert cwd == str(REPO)


def test_chroot_python_imports_usbwire_from_this_checkout(guest: VM) -> None:
    if not (REPO / "src" / "usbwire" / "__init__.py").exists():
        pytest.skip("no src/usbwire in this checkout")

    result = guest.chroot_run("python3 -c 'import usbwire; print(usbwire.__file__)'", check=True)

    assert result.out.strip().startswith(str(REPO / "src" / "usbwire"))


def test_chroot_sees_scratch_share_writable(guest: VM) -> None:
    guest.chroot_run(f"echo from-guest > {guest.paths.scratch}/probe.txt", check=True)

    assert (guest.paths.scratch / "probe.txt").read_text() == "from-guest\n"


def test_usbfs_reads_keyboard_descriptors_over_control_endpoint(guest: VM) -> None:
    vid, pid = QEMU_HID_ID

    result = run_usbfs(guest, "describe", "--vid", f"{vid:04x}", "--pid", f"{pid:04x}")

    assert result["ok"], result
    assert (result["vid"], result["pid"]) == ("0627", "0001")
    assert result["interfaces"][0]["class"] == "03/01/01"  # HID, boot, keyboard


def test_usbfs_bulk_scsi_inquiry_on_qemu_storage(guest: VM) -> None:
    vid, pid = QEMU_STORAGE_ID
    cbw = struct.pack(
        "<4sIIBBB16s",
        b"USBC",  # dCBWSignature (USB MSC BOT §5.1)
        0x1234,  # dCBWTag
        36,  # dCBWDataTransferLength
        0x80,  # bmCBWFlags: data IN
        0,  # bCBWLUN
        6,  # bCBWCBLength
        bytes([0x12, 0, 0, 0, 36, 0]),  # SCSI INQUIRY, allocation length 36
    )
    ids = ["--vid", f"{vid:04x}", "--pid", f"{pid:04x}"]

    result = run_usbfs(guest, "bulk", *ids, "--write", f"0x02:{cbw.hex()}", "--read", "0x81:36", "--read", "0x81:13")

    assert result["ok"], result
    inquiry, csw = (bytes.fromhex(data) for data in result["reads"])
    assert inquiry[8:16] == b"QEMU    "  # T10 vendor identification
    assert csw[:8] == b"USBS" + struct.pack("<I", 0x1234)  # CSW echoes the tag
    assert csw[12] == 0  # bCSWStatus: command passed
    # The interface went back to usb-storage when usbfs released it.
    assert guest.run(f"ls /sys/bus/usb/drivers/usb-storage/ | grep -c '^{result['busid']}:'").out.strip() == "1"


def test_qmp_unplug_and_replug_reach_the_guest_kernel(guest: VM) -> None:
    vid, pid = QEMU_HID_ID
    guest.wait_for_usb(vid, pid)

    guest.unplug(KBD)
    guest.wait_for_usb(vid, pid, present=False)
    guest.plug(KBD)

    assert guest.wait_for_usb(vid, pid)


def test_extra_debian_binaries_run_in_the_guest_with_their_libraries(lab: Lab) -> None:
    spec = InitramfsSpec().with_binaries("mkfs.ext4")

    with lab.vm(spec=spec, hostroot=False) as vm:
        made = vm.run("dd if=/dev/zero of=/tmp/fs.img bs=1M count=8 2>/dev/null && mkfs.ext4 -q -F /tmp/fs.img")

    assert made.ok, made.describe()


def test_hard_timeout_kills_qemu_and_says_so(lab: Lab) -> None:
    with lab.vm(hostroot=False) as vm:
        vm.set_hard_timeout(0.5)

        with pytest.raises(VMDied, match="hard timeout"):
            vm.run("sleep 30", timeout_s=20)


def test_a_guest_that_hangs_while_booting_is_booted_once_more_then_reported(lab: Lab) -> None:
    # -S: QEMU starts with its CPU stopped, a guest that never comes up.
    stopped = lab.vm(hostroot=False, boot_timeout_s=2, extra_qemu_args=["-S"])

    with pytest.warns(LabWarning, match="hung while booting"), pytest.raises(BootTimeout, match="within 2 s"):
        stopped.start()

    assert not stopped.alive


def test_kernel_export_is_listed_by_host_usbip(kernel_export: KernelExport) -> None:
    listing = host_usbip("--tcp-port", str(kernel_export.host_port), "list", "-r", "127.0.0.1")

    assert listing.returncode == 0, listing.stderr
    assert f"{kernel_export.busid}:" in listing.stdout
    assert "(46f4:0001)" in listing.stdout
    assert "(08/06/50)" in listing.stdout  # mass storage / SCSI / bulk-only


def test_guest_vhci_imports_its_own_kernel_export(kernel_export: KernelExport) -> None:
    vm = kernel_export.vm
    vm.run(f"usbip attach -r 127.0.0.1 -b {kernel_export.busid}", check=True)
    vm.run("for i in $(seq 100); do [ -b /dev/sda ] && exit 0; usleep 100000; done; exit 1", check=True)

    written = vm.run(
        "dd if=/dev/urandom of=/tmp/blob bs=64k count=8 2>/dev/null && "
        "dd if=/tmp/blob of=/dev/sda bs=64k conv=fsync 2>/dev/null && "
        "echo 3 > /proc/sys/vm/drop_caches && "
        "dd if=/dev/sda bs=64k count=8 2>/dev/null | sha256sum && sha256sum < /tmp/blob",
        check=True,
    )

    read_back, original = written.out.split("\n")[:2]
    assert read_back.split()[0] == original.split()[0]
    assert "Port in Use" in vm.run("usbip port", check=True).out


def test_guest_client_reaches_host_loopback_server_as_10_0_2_2(guest_client: KernelClient) -> None:
    with _empty_devlist_server() as (port, requests):
        listing = guest_client.list_remote(port)

    assert listing.ok, listing.describe()
    assert "no exportable devices found on 10.0.2.2" in listing.err
    assert requests == [struct.pack(">HHI", 0x0111, 0x8005, 0)]  # OP_REQ_DEVLIST


@contextmanager
def _empty_devlist_server() -> Iterator[tuple[int, list[bytes]]]:
    """A one-shot USB/IP server on 127.0.0.1 answering OP_REQ_DEVLIST with no devices."""
    requests: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the test failed before connecting; it reports that itself
            with conn:
                requests.append(conn.recv(8))
                conn.sendall(struct.pack(">HHII", 0x0111, 0x0005, 0, 0))  # OP_REP_DEVLIST, 0 devices

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        yield listener.getsockname()[1], requests
        thread.join(5)
