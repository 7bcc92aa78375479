"""Fleet mode with the real kernel: Debian's ``usbip attach -b BUSID#TOKEN`` over vhci-hcd."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.conftest import USBWIRE, EtcdProcess, FleetServer, eventually, start_fleet_server

from .scenarios import kernel_client, run_usbfs
from .session import Lab
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
