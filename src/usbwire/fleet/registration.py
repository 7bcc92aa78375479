"""Server side, outbound: keep this server and its exports registered in etcd on a lease.

The lease is refreshed every TTL/3, so two refreshes may be lost before it lapses. While etcd
cannot be reached the loop keeps trying; when the lease did lapse (etcd saw nothing from us
for a whole TTL) a new one is granted and everything is registered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from usbwire.backends.base import ExportedDevice
from usbwire.backends.emulated import EmulatedExport
from usbwire.fleet import keys
from usbwire.fleet.etcd import Compare, Etcd, EtcdUnavailable, Put
from usbwire.fleet.keys import DeviceRecord, ServerRecord
from usbwire.server.registry import Registry

log = logging.getLogger("usbwire.fleet")

# Pause between attempts while etcd does not answer (bounded by TTL/3).
RETRY_S = 0.2


def describe(export: ExportedDevice, server: str, address: str, labels: dict[str, str]) -> DeviceRecord:
    """The registry record of one export: ids and strings clients match claims against."""
    info = export.info
    product = serial = ""
    if isinstance(export, EmulatedExport):
        product = export.device.descriptor.product or ""
        serial = export.device.descriptor.serial or ""
    else:
        # Real devices: the strings the kernel read at enumeration, beside the device in sysfs.
        product, serial = _sysfs_text(info.path, "product"), _sysfs_text(info.path, "serial")
    return DeviceRecord(
        server=server,
        address=address,
        busid=info.busid,
        vid_pid=f"{info.idVendor:04x}:{info.idProduct:04x}",
        product=product,
        serial=serial,
        path=info.path,
        labels=dict(labels),
    )


def _sysfs_text(path: str, name: str) -> str:
    try:
        return (Path(path) / name).read_text().strip()
    except OSError:
        return ""


class Registration:
    """This server's record and one record per export, on a lease of ``ttl_s`` seconds."""

    def __init__(
        self, etcd: Etcd, registry: Registry, name: str, address: str, labels: dict[str, str], ttl_s: int
    ) -> None:
        self.etcd = etcd
        self.registry = registry
        self.name = name
        self.address = address
        self.labels = labels
        self.ttl_s = ttl_s
        self.lease = 0
        self._registered: dict[str, bytes] = {}  # key -> value as etcd has it
        self._changed = asyncio.Event()
        self._last_contact = -float("inf")
        self._skipped: set[str] = set()
        self._name_taken = False
        registry.listen(lambda _device, _added: self._changed.set())

    @property
    def in_contact(self) -> bool:
        """Whether we are registered and etcd confirmed our lease within the last TTL.

        If not, the fleet may have moved on: claims may have ended that we did not see end, or
        the claims we follow may be another server's of the same name.
        """
        return time.monotonic() - self._last_contact <= self.ttl_s and not self._name_taken

    async def run(self) -> None:
        """Register, then refresh and follow the exports, until cancelled."""
        outage = False
        while True:
            try:
                if not self.lease:
                    self.lease = await self.etcd.grant(self.ttl_s)
                    self._registered = {}
                    self._changed.set()
                    self._last_contact = time.monotonic()
                if self._changed.is_set() or self._name_taken:
                    self._changed.clear()
                    await self._sync()
                if await self.etcd.keep_alive(self.lease) <= 0:
                    log.warning("our lease expired (etcd unreachable for %d s); registering again", self.ttl_s)
                    self.lease = 0
                    continue
                self._last_contact = time.monotonic()
                if outage:
                    log.warning("etcd reachable again")
                    outage = False
            except EtcdUnavailable as error:
                if not outage:
                    log.warning("%s; retrying", error)
                    outage = True
                self._changed.set()  # a sync may have stopped half-way
                await asyncio.sleep(min(RETRY_S, self.ttl_s / 3))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.ttl_s / 3)

    async def _take_name(self, key: str, value: bytes) -> bool:
        """Register the server record unless another live server has this name; whether we have it."""
        if await self.etcd.transaction([Compare(key, "version", "==", 0)], [Put(key, value, self.lease)]):
            return True
        _, found = await self.etcd.get_prefix(key)
        return any(kv.key == key and kv.lease == self.lease for kv in found)

    async def _sync(self) -> None:
        """Make etcd's records match the registry: put what changed, delete what went."""
        server_key = keys.server_key(self.name)
        record = keys.encode(ServerRecord(self.name, self.address, self.labels))
        if server_key not in self._registered:
            if not await self._take_name(server_key, record):
                # Two servers under one name would overwrite each other's devices. A server
                # restarted after a crash waits here until its old lease has lapsed.
                if not self._name_taken:
                    log.warning("another server is registered as %s; waiting for it to leave", self.name)
                    self._name_taken = True
                return
            self._name_taken = False
            self._registered[server_key] = record
        wanted = {server_key: record}
        for export in self.registry:
            busid = export.info.busid
            if len(busid) > keys.MAX_BUSID:
                if busid not in self._skipped:
                    log.warning("busid %s is too long to carry a claim token; not registered", busid)
                    self._skipped.add(busid)
                continue
            device = describe(export, self.name, self.address, self.labels)
            wanted[keys.device_key(self.name, busid)] = keys.encode(device)
        for key, value in wanted.items():
            if self._registered.get(key) != value:
                await self.etcd.put(key, value, self.lease)
                self._registered[key] = value
        for key in [k for k in self._registered if k not in wanted]:
            await self.etcd.delete(key)
            del self._registered[key]

    async def withdraw(self) -> None:
        """Leave the fleet at once (revoking the lease deletes every record on it)."""
        if self.lease:
            with contextlib.suppress(EtcdUnavailable):
                await self.etcd.revoke(self.lease)
            self.lease = 0
