"""Servers in the fleet's registry: what they register, and when their records change."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from tests.conftest import wait_until
from tests.fleet.conftest import USBWIRE, EtcdProcess, FleetServer, eventually, start_fleet_server
from usbwire.client.remote import import_device
from usbwire.errors import ImportRefused
from usbwire.fleet import FleetClient, Match


def test_each_device_is_registered_with_its_ids_strings_server_and_labels(
    etcd: EtcdProcess, servers: list[FleetServer]
) -> None:
    snapshot, _ = asyncio.run(eventually(etcd.url, lambda s: True, "a snapshot"))
    disk = snapshot.devices["s3/1-5"]
    assert (disk.vid_pid, disk.product, disk.busid) == ("1209:0002", "Mass Storage", "1-5")
    assert disk.address == f"127.0.0.1:{servers[2].port}"
    assert disk.labels == {"rack": "b"}
    assert disk.serial  # the disk's serial is made per server start
    assert snapshot.devices["s1/1-1"].serial == "LOOP0001"


def test_devices_exported_and_unexported_at_run_time_follow_in_the_fleet(
    etcd: EtcdProcess, servers: list[FleetServer]
) -> None:
    control = ["--control", str(servers[0].control)]
    subprocess.run([*USBWIRE, "export", "keyboard", "-b", "3-1", *control], check=True, capture_output=True)
    snapshot, _ = asyncio.run(eventually(etcd.url, lambda s: "s1/3-1" in s.devices, "s1/3-1 to appear"))
    assert snapshot.devices["s1/3-1"].vid_pid == "1209:0003"
    subprocess.run([*USBWIRE, "unexport", "-b", "3-1", *control], check=True, capture_output=True)
    asyncio.run(eventually(etcd.url, lambda s: "s1/3-1" not in s.devices, "s1/3-1 to go"))


def test_a_second_server_under_a_taken_name_registers_nothing_and_imports_nothing(
    etcd: EtcdProcess, servers: list[FleetServer], tmp_path: Path
) -> None:
    (tmp_path / "impostor").mkdir()
    impostor = start_fleet_server(etcd, "s1", tmp_path / "impostor")
    try:
        wait_until(lambda: "another server is registered as s1" in impostor.log(), "the impostor to notice")
        snapshot, _ = asyncio.run(eventually(etcd.url, lambda s: True, "a snapshot"))
        assert {d.address for i, d in snapshot.devices.items() if i.startswith("s1/")} == {
            f"127.0.0.1:{servers[0].port}"
        }

        async def claim_and_try() -> None:
            async with FleetClient(etcd.url) as client:
                (claimed,) = await client.claim(Match(("1209:0001", "server=s1")))
                # The token is for the real s1: the impostor, following s1's claims too, must not honour it.
                try:
                    imported = await import_device("127.0.0.1", claimed.busid, impostor.port)
                except ImportRefused:
                    return
                imported.writer.close()
                raise AssertionError("the impostor imported a device of the real s1's claim")

        asyncio.run(claim_and_try())
    finally:
        impostor.stop()
