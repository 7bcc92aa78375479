"""Kernel-lab benchmark: the guest kernel's own ``dd`` through vhci, one VM, every server.

In one VM run, a 64 MiB O_DIRECT write and read of a disk the guest imported through its
own vhci-hcd from:

- ``kernel``: the guest kernel's usbip-host exporting QEMU's usb-storage over 127.0.0.1
  (Debian's usbipd) -- the reference;
- ``usbwire-emulated``: ``usbwire serve --disk`` on the host (10.0.2.2), a process of its own;
- ``usbip-emulated``: the PyPI ``usbip`` package's mass-storage class over an image file, served
  from the host the same way (when the ``usbip`` server is among those compared);
- ``usbwire-libusb``: usbwire in the guest passing QEMU's usb-storage through libusb;
- ``usbwire-usbip-host``: usbwire in the guest handing imports to usbip-host.

TCG makes absolute figures small; the ratios to the kernel in the same VM are the point.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench._disk import blank_image, peer_disk, usbwire_disk
from bench._model import Row, Sample, SectionResult
from bench._registry import Context, section

SIZE_MB = 64
KERNEL = "kernel"
SERVERS = (KERNEL, "usbwire-emulated", "usbip-emulated", "usbwire-libusb", "usbwire-usbip-host")


def _dd_rate(output: str) -> float:
    """MB/s from busybox or coreutils dd's summary line."""
    match = re.search(r"([\d.]+) (?:s|seconds),? ([\d.]+) ([kMG])B/s", output)
    if match:
        return float(match[2]) * {"k": 1e-3, "M": 1.0, "G": 1e3}[match[3]]
    match = re.search(r"(\d+) bytes .* ([\d.]+) s", output)
    if match:
        return int(match[1]) / float(match[2]) / 1e6
    raise ValueError(f"no rate in dd output: {output!r}")


@section("kernel-lab", "Kernel lab: guest dd through vhci (64 MiB, O_DIRECT, TCG VM)", quick=False, order=40)
def kernel_lab(ctx: Context) -> SectionResult:
    from tests.lab.scenarios import USBIP_PORT, bind_to_usbip_host, block_device, start_usbipd
    from tests.lab.session import Lab
    from tests.lab.usbdevices import QEMU_STORAGE_ID, storage

    result = SectionResult("kernel-lab", "Kernel lab: guest dd through vhci")
    write = Row("lab-dd-write", f"guest dd write {SIZE_MB} MiB", "MB/s", "VM: 2 vCPUs, unpinned", compare=False)
    read = Row("lab-dd-read", f"guest dd read {SIZE_MB} MiB", "MB/s", "VM: 2 vCPUs, unpinned", compare=False)
    result.rows += [write, read]
    try:
        lab = Lab.create()
    except Exception as error:
        result.notes.append(f"kernel lab unavailable: {error}")
        return result

    with tempfile.TemporaryDirectory() as scratch:
        image = _blank_image(Path(scratch) / "qemu-disk.img")
        with (
            usbwire_disk(_blank_image(Path(scratch) / "usbwire-disk.img")) as host_port,
            _peer_disk(Path(scratch) / "usbip-disk.img", ctx.server("usbip") is not None) as peer_port,
            lab.vm(usb=[storage(image, id="disk")], cpus=2, memory_mb=1024, hard_timeout_s=1800) as vm,
        ):
            busid = vm.wait_for_usb(*QEMU_STORAGE_ID)

            def measure(server: str, attach: Callable[[], str]) -> None:
                local = attach()
                dev = block_device(vm, local)
                # coreutils dd from the host's root (busybox's prints no rate)
                w = vm.chroot_run(f"dd if=/dev/zero of={dev} bs=1M count={SIZE_MB} oflag=direct 2>&1", 600)
                r = vm.chroot_run(f"dd if={dev} of=/dev/null bs=1M count={SIZE_MB} iflag=direct 2>&1", 600)
                write.add(server, Sample(_dd_rate(w.out + w.err)) if w.ok else None)
                read.add(server, Sample(_dd_rate(r.out + r.err)) if r.ok else None)
                _detach_all(vm)

            for rep in range(max(1, ctx.options.reps)):
                ctx.log(f"kernel-lab repetition {rep + 1}")
                # Kernel stub exporting QEMU's disk to its own vhci.
                bind_to_usbip_host(vm, busid)
                start_usbipd(vm)
                measure(KERNEL, lambda: _attach(vm, "127.0.0.1", USBIP_PORT, busid))
                vm.run("killall usbipd; sleep 0.2")
                # usbwire's emulated disk, from the host.
                measure("usbwire-emulated", lambda: _attach(vm, "10.0.2.2", host_port, "1-1"))
                if peer_port:
                    measure("usbip-emulated", lambda: _attach(vm, "10.0.2.2", peer_port, "1-1"))
                # usbwire in the guest with the usbip-host backend (device still bound).
                with _guest_usbwire(vm, "usbip-host", QEMU_STORAGE_ID):
                    measure("usbwire-usbip-host", lambda: _attach(vm, "127.0.0.1", 3250, busid))
                vm.chroot_run(f"{vm.python} -m usbwire unbind -b {busid}", 60)
                vm.wait_for_usb(*QEMU_STORAGE_ID)
                # usbwire in the guest passing the device through libusb.
                with _guest_usbwire(vm, "libusb", QEMU_STORAGE_ID):
                    measure("usbwire-libusb", lambda: _attach(vm, "127.0.0.1", 3250, busid))

    for row in (write, read):
        medians = {server: row.median(server) for server in SERVERS}
        result.notes.append(
            f"{row.key} MB/s: " + ", ".join(f"{k} {v:.1f}" for k, v in medians.items() if v is not None)
        )
        for server in SERVERS[1:]:
            ratio = row.ratio(server, KERNEL)
            if ratio is not None:
                result.notes.append(f"{row.key}: {server} / kernel = {ratio:.2f}x")
        ratio = row.ratio("usbwire-emulated", "usbip-emulated")
        if ratio is not None:
            result.notes.append(
                f"{row.key}: usbwire-emulated / usbip-emulated = {ratio:.2f}x"
                " (both disks behind QEMU's user-mode network, which bounds them alike)"
            )
    return result


def _blank_image(path: Path) -> Path:
    """A sparse disk image at ``path``, big enough for the dd runs."""
    return blank_image(path, (SIZE_MB + 16) << 20)


def _attach(vm: object, host: str, port: int, busid: str) -> str:
    """``usbip attach`` in the guest; returns the local busid ``usbip port`` gives it."""
    from tests.lab.vm import VM

    assert isinstance(vm, VM)
    vm.run(f"usbip --tcp-port {port} attach -r {host} -b {busid}", 60, check=True)
    wanted = re.compile(r"(\S+) -> usbip://" + re.escape(f"{host}:{port}/{busid}"))
    # usbip port fails now and then while vhci is still settling a detach: ask again.
    listing = vm.run(
        f"for i in $(seq 50); do usbip port 2>&1 | grep -q '{busid}' && break; sleep 0.1; done; usbip port"
    )
    match = wanted.search(listing.out)
    if match is None:
        raise RuntimeError(f"attached device not in usbip port:\n{listing.describe()}")
    return match[1]


def _detach_all(vm: object) -> None:
    from tests.lab.vm import VM

    assert isinstance(vm, VM)
    ports = re.findall(r"Port (\d+):", vm.run("usbip port").out)
    for port in ports:
        vm.run(f"usbip detach -p {int(port)}", 30)
    vm.run("while usbip port | grep -q '^Port'; do sleep 0.1; done", 30)


@contextmanager
def _guest_usbwire(vm: object, backend: str, ids: tuple[int, int]) -> Iterator[None]:
    from tests.lab.vm import VM

    assert isinstance(vm, VM)
    command = vm.start_chroot_command(
        f"exec {vm.python} -m usbwire serve --host 127.0.0.1 --port 3250 --control none"
        f" --backend {backend} --export {ids[0]:04x}:{ids[1]:04x} 2>&1"
    )
    command.wait_for_output("listening on", timeout_s=60)
    try:
        yield
    finally:
        command.kill()


@contextmanager
def _peer_disk(image: Path, wanted: bool) -> Iterator[int]:
    """PyPI usbip's disk over ``image`` (its port), or 0 when it is not compared."""
    if not wanted:
        yield 0
        return
    with peer_disk(_blank_image(image)) as port:
        yield port
