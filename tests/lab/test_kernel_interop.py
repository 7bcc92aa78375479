"""usbwire against the real Linux kernel: its vhci-hcd client and its usbip-host server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import RunningServer, start_server

from .scenarios import KernelExport, kernel_client, run_usbfs
from .session import Lab

pytestmark = pytest.mark.lab

LOOPBACK = "1-1"


@pytest.fixture
def host_server() -> Iterator[RunningServer]:
    """usbwire on the host's 127.0.0.1, which the guest reaches as 10.0.2.2."""
    yield from start_server()


def test_kernel_client_lists_attaches_uses_and_detaches_the_demo_device(lab: Lab, host_server: RunningServer) -> None:
    port = host_server.port
    with kernel_client(lab) as client:
        listing = client.list_remote(port)
        assert listing.ok, listing.describe()
        assert f"{LOOPBACK}: " in listing.out and "(1209:0001)" in listing.out
        assert "(1209:0003)" in listing.out  # the keyboard: every demo device is listed

        local_busid = client.attach(port, LOOPBACK, wait_for=(0x1209, 0x0001))
        vm = client.vm
        assert vm.run(f"cat /sys/bus/usb/devices/{local_busid}/idVendor").out.strip() == "1209"
        assert vm.run(f"cat /sys/bus/usb/devices/{local_busid}/product").out.strip() == "Bulk loopback"
        dmesg = vm.dmesg()
        assert "new high-speed USB device" in dmesg
        assert "device descriptor read" not in dmesg and "unable to enumerate" not in dmesg

        result = run_usbfs(
            vm, "loopback", "--vid", "1209", "--pid", "0001", "--out-ep", "0x01", "--in-ep", "0x81",
            "--size", "16384", "--count", "32",
        )  # fmt: skip
        assert result["ok"], result

        imported = client.imported()
        assert f"usbip://10.0.2.2:{port}/{LOOPBACK}" in imported.out, imported.describe()
        vhci_port = int(imported.out.split("Port ")[1].split(":")[0])
        assert client.detach(vhci_port).ok
        vm.wait_for_usb(0x1209, 0x0001, present=False)

    # Released: the device is importable again.
    status = host_server.call(lambda: host_server.server.registry.holder(LOOPBACK))
    assert status is None


def test_usbwire_lists_what_the_kernel_server_exports(kernel_export: KernelExport) -> None:
    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "usbwire",
            "list",
            "-r",
            "127.0.0.1",
            "--port",
            str(kernel_export.host_port),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    (device,) = json.loads(listing.stdout)
    vid, pid = kernel_export.vid_pid
    assert device["busid"] == kernel_export.busid
    assert (device["vendor_id"], device["product_id"]) == (f"{vid:04x}", f"{pid:04x}")
    assert [0x08, 0x06, 0x50] in device["interfaces"]
