"""Claiming fleet devices: races, the fair queue, group claims, and what dead clients and servers leave."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.fleet.conftest import TTL_S, USBWIRE, EtcdProcess, FleetServer, closed_within, eventually
from usbwire.client.remote import import_device
from usbwire.fleet import Claimed, FleetClient, FleetError, Match

LOOPBACK = Match(("1209:0001",))  # one per server: three in the fleet


def test_ten_clients_race_for_three_devices_three_win_and_the_rest_get_them_in_queue_order(
    etcd: EtcdProcess, servers: list[FleetServer]
) -> None:
    async def race() -> None:
        clients = [FleetClient(etcd.url, holder=f"client-{i}", ttl_s=5) for i in range(10)]
        # What each client is told while it waits: how many ahead of it want the same devices.
        ahead: dict[str, list[int]] = {c.holder: [] for c in clients}
        tasks = {asyncio.ensure_future(c.claim(LOOPBACK, waiting=ahead[c.holder].append)): c for c in clients}
        try:
            done: set[asyncio.Task[list[Claimed]]] = set()
            while len(done) < 3:
                finished, _ = await asyncio.wait(set(tasks) - done, timeout=10, return_when=asyncio.FIRST_COMPLETED)
                assert finished, f"only {len(done)} client(s) got a device"
                done |= finished
            snapshot, _ = await eventually(etcd.url, lambda s: len(s.queue) == 7, "7 waiters")
            assert len(snapshot.claims) == 3
            assert {t for t in tasks if t.done()} == done
            winners = {tasks[t].holder for t in done}
            assert winners == {c.holder for c in snapshot.claims.values()}
            # Three devices, three distinct winners: no device was claimed twice.
            assert len({next(iter(t.result())).device.id for t in done}) == 3
            queue_order = [wait.holder for _, wait in snapshot.queue]
            assert not set(queue_order) & winners
            # Release one device at a time: the waiter at the head of the queue gets it, and only it.
            holding = [t for t in tasks if t.done()]
            served = []
            for _ in range(7):
                releasing = holding.pop(0)
                await tasks[releasing].release(releasing.result())
                pending = [t for t in tasks if not t.done()]
                finished, _ = await asyncio.wait(pending, timeout=5, return_when=asyncio.FIRST_COMPLETED)
                assert len(finished) == 1
                winner = finished.pop()
                served.append(tasks[winner].holder)
                holding.append(winner)
            assert served == queue_order
            for holder in queue_order:
                # Counting down towards the head of the queue as devices are handed on.
                assert ahead[holder] == sorted(set(ahead[holder]), reverse=True)
            assert not any(ahead[holder] for holder in winners)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for client in clients:
                await client.aclose()

    asyncio.run(race())


def test_group_claim_across_two_servers_is_all_or_nothing(etcd: EtcdProcess, servers: list[FleetServer]) -> None:
    keyboards_on_rack_a = Match(("1209:0003", "label=rack=a"))  # s1/1-2 and s2/1-2

    async def claim() -> None:
        async with FleetClient(etcd.url, holder="other") as other, FleetClient(etcd.url, holder="group") as group:
            taken = await other.claim(Match(("1209:0003", "server=s2")))
            with pytest.raises(FleetError, match="fewer than 2"):
                await group.claim(keyboards_on_rack_a, count=2, wait=False)
            # The same pair as one transaction, as a client with an outdated view would try it.
            snapshot = await group.snapshot()
            assert await group.claim_devices([snapshot.devices["s1/1-2"], snapshot.devices["s2/1-2"]]) is None
            snapshot, _ = await eventually(etcd.url, lambda s: True, "a snapshot")
            # Nothing half-done: s1's keyboard is still free, only s2's is claimed (by the other client).
            assert {i: c.holder for i, c in snapshot.claims.items()} == {"s2/1-2": "other"}
            assert not snapshot.queue
            # Queued, the group claim gets both at once as soon as the other device is released.
            ahead: list[int] = []
            queued = asyncio.Event()

            def told(count: int) -> None:
                ahead.append(count)
                queued.set()

            waiting = asyncio.ensure_future(group.claim(keyboards_on_rack_a, count=2, waiting=told))
            await asyncio.wait_for(queued.wait(), 5)
            assert len((await group.snapshot()).queue) == 1
            await other.release(taken)
            both = await asyncio.wait_for(waiting, 5)
            assert sorted(c.device.id for c in both) == ["s1/1-2", "s2/1-2"]
            assert ahead == [0]  # nobody ahead: it waited for the device only

    asyncio.run(claim())


def test_claim_of_a_killed_client_vanishes_within_ttl_and_the_server_closes_its_import(
    etcd: EtcdProcess, servers: list[FleetServer]
) -> None:
    holder = subprocess.Popen(
        [*USBWIRE, "fleet", "claim", "--fleet", etcd.url, "--match", "1209:0001", "--match", "server=s1",
         "--ttl", str(TTL_S), "--holder", "doomed", "--json"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None
    (claimed,) = json.loads(holder.stdout.readline())

    async def kill_and_watch() -> None:
        # The claim's token in hand, we import the device; then its holder dies.
        imported = await import_device(claimed["host"], claimed["busid"], claimed["port"])
        try:
            os.kill(holder.pid, signal.SIGKILL)
            killed = time.monotonic()
            _, gone_after = await eventually(etcd.url, lambda s: "s1/1-1" not in s.claims, "the claim to vanish")
            assert gone_after <= TTL_S + 1
            await closed_within(imported.reader.read(1), TTL_S + 1)
            assert time.monotonic() - killed <= TTL_S + 1
        finally:
            imported.writer.close()

    asyncio.run(kill_and_watch())
    holder.wait(timeout=5)


def test_devices_of_a_killed_server_leave_the_fleet_list_within_ttl(
    etcd: EtcdProcess, servers: list[FleetServer]
) -> None:
    servers[2].kill()
    killed = time.monotonic()
    snapshot, _ = asyncio.run(
        eventually(etcd.url, lambda s: not any(i.startswith("s3/") for i in s.devices), "s3's devices to go")
    )
    assert time.monotonic() - killed <= TTL_S + 1
    assert len(snapshot.devices) == 10
    listed = subprocess.run(
        [*USBWIRE, "fleet", "list", "--fleet", etcd.url, "--json"], capture_output=True, text=True, check=True
    )
    assert {row["server"] for row in json.loads(listed.stdout)} == {"s1", "s2"}


def test_release_from_another_process_ends_a_held_claim(etcd: EtcdProcess, servers: list[FleetServer]) -> None:
    holder = subprocess.Popen(
        [*USBWIRE, "fleet", "claim", "--fleet", etcd.url, "--match", "serial=MOUSE0001", "--match", "server=s3",
         "--holder", "ci-7", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    (claimed,) = json.loads(holder.stdout.readline())
    assert (claimed["device"], claimed["vid_pid"], claimed["labels"]) == ("s3/1-3", "1209:0004", {"rack": "b"})
    listed = subprocess.run(
        [*USBWIRE, "fleet", "list", "--fleet", etcd.url], capture_output=True, text=True, check=True
    ).stdout
    assert any(line.startswith("s3/1-3") and "ci-7" in line for line in listed.splitlines())
    released = subprocess.run(
        [*USBWIRE, "fleet", "release", "--fleet", etcd.url, "--holder", "ci-7"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert released.stdout == "released s3/1-3\n"
    # The holding process sees its claim end and exits by itself.
    assert holder.wait(timeout=5) == 0
    assert "the claim on s3/1-3 ended" in holder.stderr.read()  # type: ignore[union-attr]


def test_fleet_run_gives_the_command_its_device_and_always_releases(
    etcd: EtcdProcess, servers: list[FleetServer]
) -> None:
    script = (
        "import asyncio, os, sys, usbwire\n"
        "async def main():\n"
        "    async with usbwire.connect(os.environ['USBWIRE_HOST'], os.environ['USBWIRE_BUSID'],"
        " port=int(os.environ['USBWIRE_PORT'])) as dev:\n"
        "        print(dev.device_descriptor.idProduct)\n"
        "asyncio.run(main())\n"
        "sys.exit(7)\n"
    )
    result = subprocess.run(
        [*USBWIRE, "fleet", "run", "--fleet", etcd.url, "--match", "1209:0002", "--match", "server=s2",
         "--", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (7, "2\n"), result.stderr
    snapshot, _ = asyncio.run(eventually(etcd.url, lambda s: True, "a snapshot"))
    assert not snapshot.claims


def test_claim_of_something_the_fleet_lacks_fails_at_once(etcd: EtcdProcess, servers: list[FleetServer]) -> None:
    result = subprocess.run(
        [*USBWIRE, "fleet", "claim", "--fleet", etcd.url, "--match", "dead:beef"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stderr) == (
        1,
        "usbwire: error: the fleet has 0 device(s) matching dead:beef\n",
    )


def test_fleet_run_cancelled_with_sigterm_ends_the_command_and_releases_at_once(
    etcd: EtcdProcess, servers: list[FleetServer]
) -> None:
    # A TTL of 60 s: the claim must go because it is released, not because the lease lapsed.
    runner = subprocess.Popen(
        [*USBWIRE, "fleet", "run", "--fleet", etcd.url, "--match", "1209:0001", "--match", "server=s3",
         "--ttl", "60", "--", "sleep", "60"],
    )  # fmt: skip
    try:
        asyncio.run(eventually(etcd.url, lambda s: "s3/1-1" in s.claims, "the claim"))
        runner.terminate()
        assert runner.wait(timeout=10) == 128 + signal.SIGTERM
        _, gone_after = asyncio.run(eventually(etcd.url, lambda s: not s.claims, "the release"))
        assert gone_after < 1
    finally:
        if runner.poll() is None:
            runner.kill()
