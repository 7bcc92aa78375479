"""Server side, inbound: only a claim's holder imports a fleet device, and only while it lasts.

The server follows the claims on its own devices (one etcd watch). An IMPORT must name the
device as ``BUSID#TOKEN`` with the token of its current claim; anything else is answered
``ST_NA``, as the access policy refuses. When a claim ends -- released, its lease lapsed,
revoked -- the connection importing the device is closed (for a device exported through the
kernel's usbip-host, the kernel is told to end its import), which frees the device. The server
also ends claims itself: after ``max_hold_s``, and after ``idle_s`` without a URB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from usbwire.backends.base import KernelExport
from usbwire.fleet import keys
from usbwire.fleet.etcd import Compare, Delete, Etcd, EtcdUnavailable, Event, KeyValue
from usbwire.fleet.keys import ClaimRecord
from usbwire.fleet.registration import RETRY_S, Registration
from usbwire.protocol.constants import OpStatus
from usbwire.server.access import Client
from usbwire.server.registry import Registry

log = logging.getLogger("usbwire.fleet")

# How often an idle limit is checked, as a fraction of it: a session ends within 1.2x idle.
IDLE_CHECKS = 5


@dataclass
class _Claim:
    record: ClaimRecord
    revision: int  # etcd mod_revision: a new claim on the same key is another claim
    ended: bool = False  # the server ended it and could not yet delete it from etcd
    urbs: tuple[int, int] | None = None
    last_activity: float = field(default_factory=time.monotonic)
    max_hold_timer: asyncio.TimerHandle | None = None
    idle_timer: asyncio.TimerHandle | None = None

    def cancel_timers(self) -> None:
        for timer in (self.max_hold_timer, self.idle_timer):
            if timer is not None:
                timer.cancel()


class Enforcement:
    """The :class:`~usbwire.server.access.ImportGate` of a server in a fleet."""

    def __init__(self, etcd: Etcd, registry: Registry, registration: Registration) -> None:
        self.etcd = etcd
        self.registry = registry
        self.registration = registration
        self.prefix = keys.CLAIMS + registration.name + "/"
        self.claims: dict[str, _Claim] = {}
        self.synced = asyncio.Event()  # the claims were read at least once
        self._applied: dict[str, int] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- the gate ------------------------------------------------------------------------------

    async def admit(self, requested: str, client: Client) -> str | OpStatus:
        busid, token = keys.split_busid(requested)
        if busid not in self.registry:
            return busid  # the registry answers "no such device" as usual
        if not self.registration.in_contact or not self.synced.is_set():
            log.info("%s: import of %s refused: not in touch with the fleet", client.address, busid)
            return OpStatus.NA
        claim = self.claims.get(busid)
        if token and (claim is None or not keys.token_matches(token, claim.record.token_sha256)):
            # A client may import the moment its claim is made, before our watch brings it.
            await self._read_claim(busid)
            claim = self.claims.get(busid)
        if claim is None or claim.ended:
            log.info("%s: import of %s refused: the device is not claimed", client.address, busid)
            return OpStatus.NA
        if not token or not keys.token_matches(token, claim.record.token_sha256):
            log.info("%s: import of %s refused: %s token", client.address, busid, "wrong" if token else "no")
            return OpStatus.NA
        claim.last_activity = time.monotonic()
        return busid

    # -- following the claims ------------------------------------------------------------------
    #
    # Each device's claim is set from whichever news is newest: the watch's events, a full read
    # after an outage, or admit()'s read of one key. ``_applied`` keeps the etcd revision each
    # device's state is from, so older news (a watch event behind a direct read) changes nothing.

    async def run(self) -> None:
        """Read the claims, then follow them, until cancelled; read again after every outage."""
        while True:
            try:
                revision, current = await self.etcd.get_prefix(self.prefix)
                self._reconcile(revision, current)
                self.synced.set()
                async for event in self.etcd.watch_prefix(self.prefix, revision + 1):
                    self._apply(event)
            except EtcdUnavailable as error:
                log.debug("claims watch: %s", error)
                await asyncio.sleep(min(RETRY_S, self.registration.ttl_s / 3))

    def _reconcile(self, revision: int, current: list[KeyValue]) -> None:
        seen = {kv.key[len(self.prefix) :]: kv for kv in current}
        for busid in set(self.claims) | set(seen):
            if self._applied.get(busid, 0) <= revision:
                self._applied[busid] = revision
                kv = seen.get(busid)
                self._set(busid, kv.value if kv else None, kv.mod_revision if kv else 0)

    def _apply(self, event: Event) -> None:
        busid = event.key[len(self.prefix) :]
        if event.revision > self._applied.get(busid, 0):
            self._applied[busid] = event.revision
            self._set(busid, event.value, event.revision)

    async def _read_claim(self, busid: str) -> None:
        key = self.prefix + busid
        try:
            revision, found = await self.etcd.get_prefix(key)
        except EtcdUnavailable:
            return
        if revision > self._applied.get(busid, 0):
            self._applied[busid] = revision
            kv = next((kv for kv in found if kv.key == key), None)
            self._set(busid, kv.value if kv else None, kv.mod_revision if kv else 0)

    def _set(self, busid: str, value: bytes | None, revision: int) -> None:
        """Make ``busid``'s claim the one stored at ``revision`` (None: no claim)."""
        current = self.claims.get(busid)
        if current is not None and value is not None and current.revision == revision:
            return
        if current is not None:
            self._end(busid, "its fleet claim ended")
        if value is not None:
            self._start(busid, value, revision)

    def _start(self, busid: str, value: bytes, revision: int) -> None:
        try:
            record = ClaimRecord.decode(value)
        except (ValueError, KeyError, TypeError) as error:
            log.warning("ignoring a malformed claim on %s: %s", busid, error)
            return
        claim = _Claim(record, revision)
        self.claims[busid] = claim
        log.info("%s claimed by %s", busid, record.holder)
        loop = asyncio.get_running_loop()
        if record.max_hold_s is not None:
            reason = f"held for max-hold {record.max_hold_s:g} s"
            claim.max_hold_timer = loop.call_later(record.max_hold_s, self._expire, busid, revision, reason)
        if record.idle_s is not None:
            claim.idle_timer = loop.call_later(record.idle_s / IDLE_CHECKS, self._check_idle, busid, revision)

    def _end(self, busid: str, reason: str) -> None:
        claim = self.claims.pop(busid)
        claim.cancel_timers()
        # A claim this server ended itself had its import ended then; a second eviction could
        # only hit the stub of a kernel export again while it is still resetting.
        if not claim.ended and self.registry.evict(busid, reason):
            log.info("closed the import of %s: %s", busid, reason)

    def _check_idle(self, busid: str, revision: int) -> None:
        claim = self.claims.get(busid)
        if claim is None or claim.revision != revision or claim.record.idle_s is None:
            return
        # A URB submitted or answered since the last look changes one of the connection's two
        # counters (answered, in flight); a connection that went away is no activity. An import
        # the kernel serves has no connection here: usbcore's count of the device's URBs stands in.
        holder = self.registry.holder(busid)
        status = getattr(holder, "status", None)
        device = self.registry.get(busid)
        if callable(status):
            counters: tuple[int, int] | None = (int(status()["urbs"]), int(status()["in_flight"]))
        elif isinstance(device, KernelExport) and not device.available:
            counters = (device.urbs_submitted, 0)
        else:
            counters = None
        now = time.monotonic()
        if counters != claim.urbs:
            if counters is not None and claim.urbs is not None:
                claim.last_activity = now
            claim.urbs = counters
        if now - claim.last_activity >= claim.record.idle_s:
            self._expire(busid, revision, f"no URB for idle {claim.record.idle_s:g} s")
            return
        delay = claim.record.idle_s / IDLE_CHECKS
        claim.idle_timer = asyncio.get_running_loop().call_later(delay, self._check_idle, busid, revision)

    def _expire(self, busid: str, revision: int, reason: str) -> None:
        """The server's own end of a claim: close the import now, delete the claim from etcd."""
        claim = self.claims.get(busid)
        if claim is None or claim.revision != revision or claim.ended:
            return
        claim.ended = True
        claim.cancel_timers()
        log.info("ending the claim of %s on %s: %s", claim.record.holder, busid, reason)
        self.registry.evict(busid, reason)
        task = asyncio.get_running_loop().create_task(self._delete(busid, revision))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _delete(self, busid: str, revision: int) -> None:
        key = keys.claim_key(self.registration.name, busid)
        # Only this claim: a newer one on the same device is not ours to end. While etcd is away
        # the claim stays marked ended here, so its token imports nothing meanwhile.
        while True:
            try:
                await self.etcd.transaction([Compare(key, "mod", "==", revision)], [Delete(key)])
                return
            except EtcdUnavailable:
                await asyncio.sleep(RETRY_S)

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for claim in self.claims.values():
            claim.cancel_timers()
