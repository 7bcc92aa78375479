"""Ready-made lab scenarios: the kernel as USB/IP server or client, and usbfs in the guest.

Kernel server (the guest exports, the host imports or lists):

    with exported_kernel_storage(lab) as export:
        subprocess.run(["usbwire", "list", "-r", "127.0.0.1", "--port", str(export.host_port)])
        # export.busid is the busid to import, export.vid_pid its ids (QEMU: 46f4:0001)

Kernel client (the host serves, the guest imports; the guest reaches the host's
127.0.0.1 as 10.0.2.2, so a server bound to 127.0.0.1 on the host needs no forward):

    with kernel_client(lab) as client:
        client.list_remote(port)                   # usbip --tcp-port PORT list -r 10.0.2.2
        busid = client.attach(port, "1-1", wait_for=(0x1209, 0x0001))
        run_usbfs(client.vm, "loopback", "--vid", "1209", "--pid", "0001")
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import debian
from .errors import GuestError
from .session import Lab
from .usbdevices import QEMU_STORAGE_ID, storage
from .vm import HOST_FROM_GUEST, VM, Result

USBIP_PORT = 3240  # usbipd's default port in the guest
USBFS_SCRIPT = Path(__file__).with_name("usbfs.py")


@dataclass(frozen=True, slots=True)
class KernelExport:
    """A guest device exported by the kernel's usbip-host and Debian's usbipd."""

    vm: VM
    host_port: int  # on 127.0.0.1, forwarded to the guest's usbipd
    busid: str  # the exported device's busid, as usbipd lists it
    vid_pid: tuple[int, int]


@contextmanager
def exported_kernel_storage(lab: Lab, image: Path | None = None, size_mb: int = 16) -> Iterator[KernelExport]:
    """Boot a guest whose QEMU usb-storage is bound to usbip-host and served by usbipd.

    Args:
        lab: the session's lab.
        image: a raw disk image to back the device; a blank sparse one by default.
        size_mb: size of the default image.

    Yields:
        The export; the host reaches the guest's usbipd on ``127.0.0.1:host_port``.

    Raises:
        GuestError: binding or starting usbipd failed in the guest.
    """
    with _disk_image(image, size_mb) as disk, lab.vm(usb=[storage(disk)], forwards=[USBIP_PORT]) as vm:
        busid = vm.wait_for_usb(*QEMU_STORAGE_ID)
        bind_to_usbip_host(vm, busid)
        start_usbipd(vm)
        yield KernelExport(vm, vm.host_port(USBIP_PORT), busid, QEMU_STORAGE_ID)


def bind_to_usbip_host(vm: VM, busid: str, configuration: int = 1) -> None:
    """``usbip bind`` a guest device, then select its configuration again.

    Unbinding the generic ``usb`` driver (part of ``usbip bind``) deconfigures the device,
    so usbipd would list it with no interfaces. usbip-host claims the hub port, so no
    interface driver binds when we configure it again; a client's SET_CONFIGURATION on
    import then finds the same configuration.

    Raises:
        CommandFailed: the bind or the configuration failed.
    """
    vm.run(f"usbip bind -b {busid}", check=True)
    vm.run(f"echo {configuration} > /sys/bus/usb/devices/{busid}/bConfigurationValue", check=True)


def start_usbipd(vm: VM, port: int = USBIP_PORT, timeout_s: float = 10.0) -> None:
    """Start Debian's usbipd as a daemon in the guest and wait until it listens.

    ``usbipd -D`` forks before it binds its sockets, so its return says nothing yet.

    Raises:
        GuestError: usbipd did not listen within ``timeout_s``.
    """
    vm.run(f"usbipd -D --tcp-port {port}", check=True)
    waited = vm.run(
        f"for i in $(seq {int(timeout_s * 10)}); do "
        f"netstat -ltn | grep -q ':{port} ' && exit 0; usleep 100000; done; exit 1",
        timeout_s + 5,
    )
    if not waited.ok:
        raise GuestError(f"usbipd is not listening on port {port}", vm.dmesg())


class KernelClient:
    """The guest as a USB/IP client: Debian's ``usbip`` over the kernel's vhci-hcd."""

    server_address = HOST_FROM_GUEST

    def __init__(self, vm: VM) -> None:
        self.vm = vm

    def list_remote(self, port: int, timeout_s: float = 30.0) -> Result:
        """``usbip --tcp-port PORT list -r 10.0.2.2`` in the guest."""
        return self.vm.run(f"usbip --tcp-port {port} list -r {self.server_address}", timeout_s)

    def attach(self, port: int, busid: str, *, wait_for: tuple[int, int] | None = None, timeout_s: float = 30.0) -> str:
        """Import ``busid`` from the host's server at 127.0.0.1:``port``.

        Args:
            port: the server's TCP port on the host.
            busid: the remote busid to import.
            wait_for: (vid, pid) to wait for on the guest's USB buses after the attach.
            timeout_s: for the attach and for the device to enumerate.

        Returns:
            The guest-local busid of the imported device when ``wait_for`` is given, else "".

        Raises:
            CommandFailed: ``usbip attach`` exited non-zero.
            GuestError: the device did not show up in time.
        """
        self.vm.run(f"usbip --tcp-port {port} attach -r {self.server_address} -b {busid}", timeout_s, check=True)
        if wait_for is None:
            return ""
        return self.vm.wait_for_usb(*wait_for, timeout_s=timeout_s)

    def detach(self, vhci_port: int) -> Result:
        """``usbip detach -p PORT`` (a vhci port number as ``usbip port`` shows it)."""
        return self.vm.run(f"usbip detach -p {vhci_port}")

    def imported(self, timeout_s: float = 30.0) -> Result:
        """``usbip port``: the devices this guest has imported.

        Raises:
            CommandFailed: ``usbip port`` kept failing for ``timeout_s``.
        """
        return self.vm.run(_usbip_port_script(timeout_s), timeout_s + 10, check=True)

    def vhci_status(self) -> str:
        """The raw vhci ``status`` table of controller 0 (see usbip-protocol.md §5.1)."""
        return self.vm.run("cat /sys/devices/platform/vhci_hcd.0/status", check=True).out


@contextmanager
def kernel_client(lab: Lab, **vm_options: Any) -> Iterator[KernelClient]:
    """Boot a guest to act as USB/IP client of a server on the host's 127.0.0.1.

    ``vm_options`` go to :meth:`Lab.vm` (e.g. ``usb=``, ``cpus=2``).
    """
    with lab.vm(**vm_options) as vm:
        yield KernelClient(vm)


def run_usbfs(vm: VM, *args: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Run ``usbfs.py`` with the host's Python in the guest's chroot; return its JSON line.

    The result holds ``"ok"`` and, when the script exited non-zero, ``"exit"`` and its
    stderr as ``"stderr"`` so assertion messages show why.
    """
    result = vm.chroot_run(f"python3 {USBFS_SCRIPT} {' '.join(args)}", timeout_s)
    lines = result.out.strip().splitlines()
    try:
        parsed: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        parsed = {"ok": False, "stdout": result.out}
    if not result.ok:
        parsed.update({"ok": False, "exit": result.code, "stderr": result.err})
    return parsed


def host_usbip(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run the host's Debian ``usbip`` (e.g. ``host_usbip("--tcp-port", "N", "list", "-r", "127.0.0.1")``).

    Raises:
        FileNotFoundError: usbip is not installed on the host.
        subprocess.TimeoutExpired: it ran past ``timeout_s``.
    """
    tool = debian.which("usbip")
    if tool is None:
        raise FileNotFoundError("usbip (Debian package usbip) is not installed on the host")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout_s, check=False)


@contextmanager
def _disk_image(image: Path | None, size_mb: int) -> Iterator[Path]:
    if image is not None:
        yield image
        return
    handle, name = tempfile.mkstemp(prefix="usbwire-lab-disk-", suffix=".img")
    try:
        os.ftruncate(handle, size_mb * 1024 * 1024)
        os.close(handle)
        yield Path(name)
    finally:
        os.unlink(name)


def imported_listing(vm: VM, timeout_s: float = 30.0) -> str:
    """What Debian's ``usbip port`` prints, run in the host-root chroot, once it can say it."""
    return vm.chroot_run(_usbip_port_script(timeout_s), timeout_s + 10, check=True).out


def _usbip_port_script(timeout_s: float) -> str:
    # Right after an attach, vhci's status already lists the port as used while the guest's
    # USB core is still creating the device; libusbip then fails the whole listing with
    # "open vhci_driver". That is the tool's race, not the server's, so it is waited out.
    tries = max(1, int(timeout_s * 10))
    return (
        f"for i in $(seq {tries}); do usbip port 2>/tmp/usbip-port.err && exit 0; sleep 0.1; done;"
        " cat /tmp/usbip-port.err >&2; exit 1"
    )


def block_device(vm: VM, busid: str, timeout_s: float = 30.0) -> str:
    """``/dev/sdX`` of the USB disk at guest ``busid``, once the kernel has created it."""
    sysfs = f"/sys/bus/usb/devices/{busid}:1.0/host*/target*/*/block"
    tries = max(1, int(timeout_s * 10))
    found = vm.run(
        f"for i in $(seq {tries}); do b=$(ls {sysfs} 2>/dev/null)"
        ' && [ -n "$b" ] && [ -e /dev/$b ] && echo $b && exit 0; sleep 0.1; done; exit 1',
        timeout_s + 10,
        check=True,
    )
    return "/dev/" + found.out.split()[0]
