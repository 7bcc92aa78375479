"""Fleet mode with the real kernel: Debian's ``usbip attach -b BUSID#TOKEN`` over vhci-hcd."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.conftest import USBWIRE, EtcdProcess, FleetServer, eventually, start_fleet_server
from usbwire.client import connect
from usbwire.errors import DeviceGone

from .scenarios import USBIP_PORT, kernel_client, run_usbfs
from .session import Lab
from .usbdevices import QEMU_HID_ID, keyboard
from .vm import free_tcp_port

pytestmark = pytest.mark.lab


@pytest.fixture
def fleet_server(tmp_path: Path) -> Iterator[tuple[EtcdProcess, FleetServer]]:
    """etcd and one ``usbwire serve --fleet`` on the host's 127.0.0.1 (the guest's 10.0.2.2)."""
    etcd = EtcdProcess(tmp_path / "etcd-data", tmp_path / "etcd.log")
    etcd.start()
    try:
        server = start_fleet_server(etcd, "lab", tmp_path)
        try:
            asyncio.run(eventually(etcd.url, lambda s: "lab/1-1" in s.devices, "the server to register"))
            yield etcd, server
        finally:
            server.stop()
    finally:
        etcd.stop()


def test_stock_usbip_attach_imports_a_claimed_device_with_its_token_only(
    lab: Lab, fleet_server: tuple[EtcdProcess, FleetServer]
) -> None:
    etcd, server = fleet_server
    holder = subprocess.Popen(
        [*USBWIRE, "fleet", "claim", "--fleet", etcd.url, "--match", "1209:0001", "--ttl", "5", "--json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        (claimed,) = json.loads(holder.stdout.readline())
        busid, token = claimed["busid"].split("#")
        assert busid == "1-1"
        with kernel_client(lab) as client:
            vm = client.vm
            for wrong in ("1-1", "1-1#" + token[::-1], "1-1#"):
                refused = vm.run(f"usbip --tcp-port {server.port} attach -r 10.0.2.2 -b '{wrong}'")
                assert not refused.ok, refused.describe()
                assert "failed" in refused.err.lower(), refused.describe()

            local = client.attach(server.port, claimed["busid"], wait_for=(0x1209, 0x0001))
            assert vm.run(f"cat /sys/bus/usb/devices/{local}/product").out.strip() == "Bulk loopback"
            result = run_usbfs(
                vm, "loopback", "--vid", "1209", "--pid", "0001", "--out-ep", "0x01", "--in-ep", "0x81",
                "--size", "4096", "--count", "8",
            )  # fmt: skip
            assert result["ok"], result
            assert claimed["busid"] in client.imported().out

            # The holder lets go: the server closes the import and the device leaves the guest.
            holder.terminate()
            assert holder.wait(timeout=10) == 0
            vm.wait_for_usb(0x1209, 0x0001, present=False)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)


def test_fleet_run_in_the_guest_attaches_the_claimed_device_for_the_command_and_releases_it(
    lab: Lab, tmp_path: Path
) -> None:
    etcd = EtcdProcess(tmp_path / "etcd-data", tmp_path / "etcd.log")
    etcd.start()
    port = free_tcp_port()
    # Registered as the guest reaches it: the host's loopback is 10.0.2.2 there.
    server = start_fleet_server(etcd, "lab", tmp_path, port=port, address=f"10.0.2.2:{port}")
    try:
        asyncio.run(eventually(etcd.url, lambda s: "lab/1-1" in s.devices, "the server to register"))
        with kernel_client(lab) as client:
            vm = client.vm
            command = "cat /sys/bus/usb/devices/*/product; usbip port"
            result = vm.chroot_run(
                f"{vm.python} -m usbwire fleet run --fleet etcd://10.0.2.2:{etcd.client_port} --match 1209:0001"
                f" --attach -- sh -c '{command}'",
                120,
            )
            assert result.ok, result.describe()
            assert "Bulk loopback" in result.out, result.describe()
            # The claim's token travels in the IMPORT only: `usbip port` shows the bus id.
            assert f"usbip://10.0.2.2:{port}/1-1\n" in result.out, result.describe()
            # Afterwards: detached in the guest, released in the fleet.
            vm.wait_for_usb(0x1209, 0x0001, present=False)
            snapshot, _ = asyncio.run(eventually(etcd.url, lambda s: True, "a snapshot"))
            assert not snapshot.claims
    finally:
        server.stop()
        etcd.stop()


def test_an_idle_claim_takes_a_device_back_from_the_guest_kernels_usbip_host(lab: Lab, tmp_path: Path) -> None:
    """The kernel serves the import of a usbip-host export, so the server cannot close its
    connection: it tells the stub to end it. Nor does it see the URBs: usbcore's count of the
    device's URBs tells an idle import from a busy one."""
    idle_s = 1.5
    etcd = EtcdProcess(tmp_path / "etcd-data", tmp_path / "etcd.log")
    etcd.start()
    holder: subprocess.Popen[str] | None = None
    try:
        with lab.vm(usb=[keyboard(id="kbd")], forwards=[USBIP_PORT]) as vm:
            busid = vm.wait_for_usb(*QEMU_HID_ID)
            bound = vm.chroot_run(f"{vm.python} -m usbwire bind -b {busid}")
            assert bound.ok, bound.describe()
            host_port = vm.host_port(USBIP_PORT)
            server = vm.start_chroot_command(
                f"exec {vm.python} -m usbwire serve -v --host 0.0.0.0 --port {USBIP_PORT} --control none"
                f" --backend usbip-host --export 0627:0001 --fleet etcd://10.0.2.2:{etcd.client_port}"
                f" --fleet-name guest --fleet-address 127.0.0.1:{host_port}"
            )
            asyncio.run(eventually(etcd.url, lambda s: f"guest/{busid}" in s.devices, "the guest to register", 30))
            claim = [*USBWIRE, "fleet", "claim", "--fleet", etcd.url, "--match", "0627:0001", "--idle", str(idle_s)]
            holder = subprocess.Popen([*claim, "--json"], stdout=subprocess.PIPE, text=True)
            assert holder.stdout is not None
            (claimed,) = json.loads(holder.stdout.readline())

            async def busy_then_idle() -> float:
                async with connect("127.0.0.1", claimed["busid"], port=host_port) as device:
                    await device.set_configuration(1)
                    busy_until = time.monotonic() + 2 * idle_s
                    while time.monotonic() < busy_until:  # URBs keep the claim
                        await device.control_transfer(0x80, 6, 0x0100, 0, 18)
                        await asyncio.sleep(idle_s / 8)
                    quiet = time.monotonic()
                    with pytest.raises(DeviceGone):  # a key that never comes: idle
                        await asyncio.wait_for(device.interrupt_transfer(0x81, 8), 10 * idle_s)
                    return time.monotonic() - quiet

            taken_after = asyncio.run(busy_then_idle())
            assert idle_s <= taken_after < 5 * idle_s, taken_after
            # The stub resets the device after its connection ends: then it is available again.
            status = f"/sys/bus/usb/devices/{busid}/usbip_status"
            assert vm.run(f"for i in $(seq 100); do [ $(cat {status}) = 1 ] && exit; sleep 0.1; done; exit 1").ok
            log = server.errors_so_far()
            assert log.count("the kernel's import ended") == 1, log
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        etcd.stop()
