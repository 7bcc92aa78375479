"""Client side: find fleet devices, claim them (queueing fairly), hold the claims, release them.

A client's claims and its place in the queue are keys on one lease of its own, refreshed every
TTL/3: a client that dies (``kill -9``, a lost network) loses them within the TTL. A claim of
several devices is one etcd transaction, so it takes all of them or none, whichever servers
they are on.

Fairness: waiters queue by the etcd revision that created their queue key, and free devices go
to them in that order (see :meth:`Snapshot.choose`): a waiter is held up only by waiters ahead of it
that want the same devices, and a large group claim is not starved by a stream of small ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import itertools
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from usbwire.fleet import keys
from usbwire.fleet.etcd import Compare, Delete, Etcd, EtcdUnavailable, KeyValue, Put
from usbwire.fleet.keys import ClaimRecord, DeviceRecord, FleetError, Match, WaitRecord

log = logging.getLogger("usbwire.fleet")

DEFAULT_TTL_S = 10
RETRY_S = 0.2


def default_holder() -> str:
    """Who a claim names when the caller names nobody: user@host:pid."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Claimed:
    """A device this client holds, and the token its server wants in the IMPORT."""

    device: DeviceRecord
    token: str
    record: ClaimRecord  # as stored in etcd: only a claim with this very value is ours

    @property
    def busid(self) -> str:
        """The IMPORT's busid field: ``BUSID#TOKEN`` (as ``usbip attach -b`` takes it)."""
        return keys.import_busid(self.device.busid, self.token)

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device.id,
            "server": self.device.server,
            "host": self.device.host,
            "port": self.device.port,
            "busid": self.busid,
            "vid_pid": self.device.vid_pid,
            "product": self.device.product,
            "serial": self.device.serial,
            "labels": self.device.labels,
        }


@dataclass(frozen=True, slots=True)
class FleetDevice:
    """A row of ``usbwire fleet list``: a registered device and who holds it."""

    device: DeviceRecord
    holder: str | None

    def to_json(self) -> dict[str, Any]:
        d = self.device
        return {
            "device": d.id,
            "server": d.server,
            "address": d.address,
            "busid": d.busid,
            "vid_pid": d.vid_pid,
            "product": d.product,
            "serial": d.serial,
            "path": d.path,
            "labels": d.labels,
            "holder": self.holder,
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole fleet at one etcd revision."""

    revision: int
    devices: dict[str, DeviceRecord]  # by device id
    claims: dict[str, ClaimRecord]  # by device id
    queue: list[tuple[KeyValue, WaitRecord]]  # oldest first

    def choose(self, match: Match, count: int, queued_at: int) -> list[DeviceRecord] | None:
        """The free devices a waiter queued at revision ``queued_at`` may take now; None if too few.

        Free devices go to the waiters ahead of it first, in queue order: each is given those it
        would take, and one that cannot have enough yet keeps every free device it wants, so
        nobody behind it takes them away (a large group claim is not starved by small ones).
        """
        available = [d for device_id, d in sorted(self.devices.items()) if device_id not in self.claims]
        for kv, wait in self.queue:
            if kv.create_revision >= queued_at:
                break
            wanted = Match(tuple(wait.match))
            theirs = [d for d in available if wanted.matches(d)]
            for device in theirs[: wait.count] if len(theirs) >= wait.count else theirs:
                available.remove(device)
        mine = [d for d in available if match.matches(d)]
        return mine[:count] if len(mine) >= count else None

    def listing(self) -> list[FleetDevice]:
        rows = [FleetDevice(d, c.holder if (c := self.claims.get(i)) else None) for i, d in self.devices.items()]
        return sorted(rows, key=lambda row: row.device.id)


async def read_snapshot(etcd: Etcd) -> Snapshot:
    """Everything under the fleet's prefix in one consistent read."""
    revision, items = await etcd.get_prefix(keys.PREFIX)
    devices: dict[str, DeviceRecord] = {}
    claims: dict[str, ClaimRecord] = {}
    queue: list[tuple[KeyValue, WaitRecord]] = []
    for kv in items:
        try:
            if kv.key.startswith(keys.DEVICES):
                devices[keys.device_id(kv.key)] = DeviceRecord.decode(kv.value)
            elif kv.key.startswith(keys.CLAIMS):
                claims[keys.device_id(kv.key)] = ClaimRecord.decode(kv.value)
            elif kv.key.startswith(keys.QUEUE):
                queue.append((kv, WaitRecord.decode(kv.value)))
        except (ValueError, KeyError, TypeError) as error:
            log.warning("ignoring malformed %s: %s", kv.key, error)
    return Snapshot(revision, devices, claims, queue)


class FleetClient:
    """One client of the fleet: ``async with FleetClient(url) as fleet:`` releases everything at the end.

    Args:
        url: ``etcd://HOST:PORT`` of an etcd cluster member.
        holder: the name claims carry (``fleet list`` shows it); default user@host:pid.
        ttl_s: the lease TTL: how long a dead client keeps its claims.
    """

    def __init__(
        self, url: str, *, holder: str | None = None, ttl_s: int = DEFAULT_TTL_S, timeout_s: float = 5.0
    ) -> None:
        if ttl_s < 1:
            raise FleetError("the lease TTL is at least 1 s")
        self.etcd = Etcd(url, timeout_s=min(timeout_s, max(ttl_s / 3, 0.3)))
        self.holder = holder or default_holder()
        self.ttl_s = ttl_s
        self.lease = 0
        self.lost = asyncio.Event()  # the lease expired: every claim of ours is gone
        self._keeper: asyncio.Task[None] | None = None
        self._waiters = itertools.count()

    async def __aenter__(self) -> FleetClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release every claim and leave the queue (revoking the lease deletes its keys)."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self.lease and not self.lost.is_set():
            with contextlib.suppress(EtcdUnavailable):
                await self.etcd.revoke(self.lease)
        self.lease = 0
        await self.etcd.aclose()

    async def snapshot(self) -> Snapshot:
        return await read_snapshot(self.etcd)

    async def _ensure_lease(self) -> int:
        if self.lost.is_set():
            raise FleetError("our lease expired (etcd unreachable for a whole TTL): the claims are gone")
        if not self.lease:
            self.lease = await self.etcd.grant(self.ttl_s)
            self._keeper = asyncio.get_running_loop().create_task(self._keep_alive())
        return self.lease

    async def _keep_alive(self) -> None:
        last = time.monotonic()
        while True:
            try:
                remaining = await self.etcd.keep_alive(self.lease)
            except EtcdUnavailable as error:
                # A restarting etcd extends every lease when it has a leader again: keep trying.
                log.debug("keep-alive: %s", error)
                await asyncio.sleep(min(RETRY_S, self.ttl_s / 3))
                continue
            if remaining <= 0:
                log.warning("lease lost after %.1f s without a refresh", time.monotonic() - last)
                self.lost.set()
                return
            last = time.monotonic()
            await asyncio.sleep(self.ttl_s / 3)

    async def claim(
        self,
        match: Match,
        count: int = 1,
        *,
        max_hold_s: float | None = None,
        idle_s: float | None = None,
        wait: bool = True,
        waiting: Callable[[int], None] | None = None,
    ) -> list[Claimed]:
        """Claim ``count`` devices that ``match``, all or none; queue until they are free.

        Args:
            match: which devices will do.
            count: how many, taken in one transaction (possibly on several servers).
            max_hold_s: the servers end the claim this long after it was made.
            idle_s: the servers end the claim after this long without a URB.
            wait: queue when not enough devices are free (else fail at once).
            waiting: told how many waiters for the same devices are ahead, whenever that changes.

        Raises:
            FleetError: nothing matches at all, none free (``wait=False``), or the lease was lost.
            EtcdUnavailable: etcd did not answer.
        """
        if count < 1:
            raise FleetError("--count is at least 1")
        lease = await self._ensure_lease()
        waiter = f"{keys.QUEUE}{lease:016x}-{next(self._waiters)}"
        await self.etcd.put(waiter, keys.encode(WaitRecord(self.holder, list(match.terms), count)), lease)
        claimed: list[Claimed] | None = None
        ahead_before = -1
        try:
            while True:
                snapshot = await read_snapshot(self.etcd)
                mine = next((kv for kv, _ in snapshot.queue if kv.key == waiter), None)
                if mine is None:
                    raise FleetError("our lease expired while waiting in the queue")
                matching = [d for d in snapshot.devices.values() if match.matches(d)]
                if len(matching) < count:
                    raise FleetError(f"the fleet has {len(matching)} device(s) matching {' '.join(match.terms)}")
                chosen = snapshot.choose(match, count, mine.create_revision)
                if chosen is not None:
                    claimed = await self._take(chosen, max_hold_s, idle_s, waiter)
                    if claimed is not None:
                        return claimed
                    continue  # someone was faster: look again
                if not wait:
                    raise FleetError(f"fewer than {count} matching device(s) are free")
                ahead = _contenders_ahead(snapshot, match, mine.create_revision)
                if waiting is not None and ahead != ahead_before:
                    waiting(ahead)
                    ahead_before = ahead
                await self._next_change(keys.PREFIX, snapshot.revision)
        finally:
            if claimed is None:  # a successful claim left the queue in its transaction
                with contextlib.suppress(EtcdUnavailable):
                    await self.etcd.delete(waiter)

    async def claim_devices(
        self, devices: Sequence[DeviceRecord], *, max_hold_s: float | None = None, idle_s: float | None = None
    ) -> list[Claimed] | None:
        """Claim exactly ``devices`` now, in one transaction: all of them, or (None) none.

        No queueing: None when any of them is claimed already or no longer registered.

        Raises:
            FleetError: the lease was lost.
            EtcdUnavailable: etcd did not answer.
        """
        await self._ensure_lease()
        return await self._take(devices, max_hold_s, idle_s)

    async def _take(
        self, devices: Sequence[DeviceRecord], max_hold_s: float | None, idle_s: float | None, waiter: str = ""
    ) -> list[Claimed] | None:
        compare: list[Compare] = []
        success: list[Put | Delete] = []
        if waiter:
            # Still in the queue, so still alive: and leaving it in the same step.
            compare.append(Compare(waiter, "version", ">", 0))
            success.append(Delete(waiter))
        claimed = []
        for device in devices:
            token = keys.new_token()
            item = Claimed(device, token, ClaimRecord(self.holder, keys.token_hash(token), max_hold_s, idle_s))
            key = keys.claim_key(device.server, device.busid)
            compare.append(Compare(keys.device_key(device.server, device.busid), "version", ">", 0))
            compare.append(Compare(key, "version", "==", 0))
            success.append(Put(key, keys.encode(item.record), self.lease))
            claimed.append(item)
        if not await self.etcd.transaction(compare, success):
            return None
        log.info("claimed %s", ", ".join(d.id for d in devices))
        return claimed

    async def _next_change(self, prefix: str, revision: int) -> None:
        """Wait for a change under ``prefix`` after ``revision``, or for the lease to be lost."""

        async def changed() -> None:
            with contextlib.suppress(EtcdUnavailable):
                async for _ in self.etcd.watch_prefix(prefix, revision + 1):
                    return
            await asyncio.sleep(RETRY_S)  # the watch broke: look again shortly

        await _first(changed(), self.lost.wait())

    async def release(self, claimed: Sequence[Claimed]) -> None:
        """Give devices back now (the servers close their imports)."""
        for item in claimed:
            key = keys.claim_key(item.device.server, item.device.busid)
            # Ours only: once our claim ended, the device may have a new holder.
            await self.etcd.transaction([Compare(key, "value", "==", keys.encode(item.record))], [Delete(key)])

    async def hold(self, claimed: Sequence[Claimed], stop: asyncio.Event) -> AsyncIterator[Claimed]:
        """Keep the claims until ``stop`` is set; yields each claim that ends meanwhile (then release the rest)."""
        remaining = list(claimed)
        while remaining and not stop.is_set():
            watch = asyncio.ensure_future(self.wait_ended(remaining))
            await _first(watch, stop.wait())
            ended = watch.result() if watch.done() and not watch.cancelled() else []
            for item in ended:
                remaining.remove(item)
                yield item

    async def wait_ended(self, claimed: Sequence[Claimed]) -> list[Claimed]:
        """Wait until one or more of ``claimed`` end (released, expired, ended by a server); those."""
        while True:
            if self.lost.is_set():
                return list(claimed)
            try:
                revision, current = await self.etcd.get_prefix(keys.CLAIMS)
            except EtcdUnavailable:
                # etcd restarting: the lease (and so the claims) may well survive it.
                await _first(asyncio.sleep(RETRY_S), self.lost.wait())
                continue
            values = {kv.key: kv.value for kv in current}
            ended = [c for c in claimed if values.get(_claim_key(c)) != keys.encode(c.record)]
            if ended:
                return ended
            await self._next_change(keys.CLAIMS, revision)


def _claim_key(claimed: Claimed) -> str:
    return keys.claim_key(claimed.device.server, claimed.device.busid)


def _contenders_ahead(snapshot: Snapshot, match: Match, my_revision: int) -> int:
    """Waiters ahead of this one that want at least one device it could take."""
    mine = [d for d in snapshot.devices.values() if match.matches(d)]
    return sum(
        1
        for kv, wait in snapshot.queue
        if kv.create_revision < my_revision and any(Match(tuple(wait.match)).matches(d) for d in mine)
    )


async def _first(*coroutines: Any) -> None:
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def release_claims(url: str, devices: Sequence[str] = (), holder: str | None = None) -> list[str]:
    """Delete claims from anywhere: of the devices ``SERVER/BUSID`` named, or all of ``holder``'s.

    Raises:
        FleetError: a named device is not claimed.
        EtcdUnavailable: etcd did not answer.
    """
    etcd = Etcd(url)
    try:
        snapshot = await read_snapshot(etcd)
        chosen = [i for i, c in snapshot.claims.items() if holder is not None and c.holder == holder]
        for device in devices:
            if device not in snapshot.claims:
                raise FleetError(f"{device} is not claimed")
            chosen.append(device)
        for device in chosen:
            await etcd.delete(keys.CLAIMS + device)
        return sorted(set(chosen))
    finally:
        await etcd.aclose()
