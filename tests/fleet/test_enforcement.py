"""The servers' side of the fleet: tokens at IMPORT, max-hold and idle limits, etcd going away."""

from __future__ import annotations

import asyncio
import time

import pytest

import usbwire
from tests.fleet.conftest import TTL_S, EtcdProcess, FleetServer, closed_within, eventually
from usbwire.client.remote import import_device
from usbwire.errors import DeviceGone, ImportRefused
from usbwire.fleet import Claimed, FleetClient, Match
from usbwire.fleet.keys import token_hash
from usbwire.protocol.constants import OpStatus

S1_LOOPBACK = Match(("1209:0001", "server=s1"))


async def refusal(claimed: Claimed, busid: str) -> int:
    with pytest.raises(ImportRefused) as refused:
        await import_device(claimed.device.host, busid, claimed.device.port)
    return refused.value.status


def test_import_needs_the_token_of_the_claim(etcd: EtcdProcess, servers: list[FleetServer]) -> None:
    async def imports() -> None:
        async with FleetClient(etcd.url) as client:
            (claimed,) = await client.claim(S1_LOOPBACK)
            assert claimed.busid.startswith("1-1#") and len(claimed.busid) <= 31
            assert await refusal(claimed, "1-1") == OpStatus.NA
            assert await refusal(claimed, "1-1#" + "x" * 16) == OpStatus.NA
            # Another device of the same server, claimed by nobody: no import without a claim.
            assert await refusal(claimed, "1-2#" + claimed.token) == OpStatus.NA
            # The right token imports, and the reply names the device as the request did.
            async with usbwire.connect(claimed.device.host, claimed.busid, port=claimed.device.port) as device:
                assert device.info.busid == claimed.busid
                assert device.device_descriptor is not None
                assert (device.device_descriptor.idVendor, device.device_descriptor.idProduct) == (0x1209, 0x0001)
            # Released, the token is worth nothing.
            await client.release([claimed])
            await eventually(etcd.url, lambda s: not s.claims, "the claim to go")
            assert await refusal(claimed, claimed.busid) == OpStatus.NA

    asyncio.run(imports())


def test_max_hold_ends_the_session_on_time(etcd: EtcdProcess, servers: list[FleetServer]) -> None:
    async def hold() -> None:
        async with FleetClient(etcd.url, ttl_s=5) as client:
            (claimed,) = await client.claim(S1_LOOPBACK, max_hold_s=1)
            start = time.monotonic()
            imported = await import_device(claimed.device.host, claimed.busid, claimed.device.port)
            try:
                await closed_within(imported.reader.read(1), 3)
            finally:
                imported.writer.close()
            assert 0.9 <= time.monotonic() - start <= 1.5
            # The server ended the claim in etcd too, so the client learns of it.
            assert await asyncio.wait_for(client.wait_ended([claimed]), 2) == [claimed]
            # A late release by the old holder leaves the device's next holder alone.
            async with FleetClient(etcd.url, holder="next") as other:
                await other.claim(S1_LOOPBACK)
                await client.release([claimed])
                assert (await other.snapshot()).claims["s1/1-1"].holder == "next"

    asyncio.run(hold())


def test_idle_ends_the_session_after_that_long_without_a_urb(etcd: EtcdProcess, servers: list[FleetServer]) -> None:
    async def idle() -> None:
        async with FleetClient(etcd.url, ttl_s=5) as client:
            (claimed,) = await client.claim(S1_LOOPBACK, idle_s=1)
            async with usbwire.connect(claimed.device.host, claimed.busid, port=claimed.device.port) as device:
                await device.set_configuration(1)
                # Busy for longer than the idle limit: the session goes on.
                for _ in range(8):
                    await device.control_transfer(0x80, 6, 0x0100, 0, 18)
                    await asyncio.sleep(0.25)
                # Then one URB that never completes (the loopback has nothing to return), and silence.
                last_urb = time.monotonic()
                with pytest.raises(DeviceGone):
                    await asyncio.wait_for(device.bulk_transfer(0x81, 64), 3)
                assert 1.0 <= time.monotonic() - last_urb <= 1.5
            await asyncio.wait_for(client.wait_ended([claimed]), 2)

    asyncio.run(idle())


def test_an_etcd_restart_loses_no_claims(etcd: EtcdProcess, servers: list[FleetServer]) -> None:
    async def restart() -> None:
        async with FleetClient(etcd.url, holder="survivor", ttl_s=2) as client:
            (claimed,) = await client.claim(S1_LOOPBACK)
            await asyncio.to_thread(etcd.stop)
            await asyncio.to_thread(etcd.start)
            # Several TTLs after the restart, the claim is still there: the client's lease survived.
            await asyncio.sleep(2 * client.ttl_s)
            snapshot, _ = await eventually(etcd.url, lambda s: len(s.devices) == 15, "the servers to be back")
            assert snapshot.claims["s1/1-1"].holder == "survivor"
            assert snapshot.claims["s1/1-1"].token_sha256 == token_hash(claimed.token)
            assert not client.lost.is_set()
            async with usbwire.connect(claimed.device.host, claimed.busid, port=claimed.device.port) as device:
                assert device.info.busid == claimed.busid

    asyncio.run(restart())


def test_a_server_cut_off_from_etcd_for_longer_than_the_ttl_refuses_imports(
    etcd: EtcdProcess, servers: list[FleetServer]
) -> None:
    async def cut_off() -> None:
        async with FleetClient(etcd.url, ttl_s=10) as client:
            (claimed,) = await client.claim(S1_LOOPBACK)
            await asyncio.to_thread(etcd.stop)
            await asyncio.sleep(TTL_S + 0.5)  # the time the server must go without etcd
            assert await refusal(claimed, claimed.busid) == OpStatus.NA
            await asyncio.to_thread(etcd.start)
            deadline = time.monotonic() + 5
            while True:  # polling the server: it tells nobody when it has etcd back
                try:
                    imported = await import_device(claimed.device.host, claimed.busid, claimed.device.port)
                except ImportRefused:
                    assert time.monotonic() < deadline, "the server never took imports again"
                    await asyncio.sleep(0.05)
                    continue
                imported.writer.close()
                break

    asyncio.run(cut_off())
