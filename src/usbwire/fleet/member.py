"""A usbwire server as a member of a fleet: registration and enforcement, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field

from usbwire.addresses import host_port
from usbwire.config import port_number
from usbwire.errors import UsbwireError
from usbwire.fleet import keys
from usbwire.fleet.enforcement import Enforcement
from usbwire.fleet.etcd import Etcd
from usbwire.fleet.registration import Registration
from usbwire.server.server import Server

log = logging.getLogger("usbwire.fleet")

DEFAULT_TTL_S = 10


@dataclass(frozen=True, slots=True)
class FleetOptions:
    """``usbwire serve --fleet URL``: where etcd is and how this server appears in the fleet."""

    url: str
    # Unique in the fleet; default HOSTNAME:PORT.
    name: str | None = None
    # Where clients reach this server (HOST:PORT); default the listening address, or the host name.
    address: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    ttl_s: int = DEFAULT_TTL_S

    @staticmethod
    def parse_labels(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
        """``k=v`` strings to a dict.

        Raises:
            FleetError: a pair has no ``=`` or an empty key.
        """
        labels = {}
        for pair in pairs:
            key, separator, value = pair.partition("=")
            if not separator or not key:
                raise keys.FleetError(f"bad label {pair!r} (KEY=VALUE)")
            labels[key] = value
        return labels


class FleetMember:
    """Joins ``server`` to the fleet: its records in etcd, and the fleet's say over its IMPORTs."""

    def __init__(self, server: Server, options: FleetOptions) -> None:
        self.server = server
        self.options = options
        self.etcd: Etcd | None = None
        self.registration: Registration | None = None
        self.enforcement: Enforcement | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Begin registering and enforcing; etcd need not be up yet (imports wait for it).

        Raises:
            FleetError: a bad URL, name or label, or the etcd client is not installed.
        """
        options = self.options
        if options.ttl_s < 1:
            raise keys.FleetError("the fleet TTL is at least 1 s")
        address = options.address or _address(self.server)
        host, _, port = address.rpartition(":")
        if not host:
            raise keys.FleetError(f"bad fleet address {address!r} (HOST:PORT)")
        try:
            port_number(port, listening=False)
        except UsbwireError as error:
            raise keys.FleetError(f"bad fleet address {address!r}: {error}") from None
        name = keys.check_name("server name", options.name or f"{socket.gethostname()}:{self.server.port}")
        # Requests must finish well within a TTL, or a slow etcd would let our lease lapse.
        self.etcd = Etcd(options.url, timeout_s=max(options.ttl_s / 3, 0.3))
        self.registration = Registration(self.etcd, self.server.registry, name, address, options.labels, options.ttl_s)
        self.enforcement = Enforcement(self.etcd, self.server.registry, self.registration)
        self.server.gate = self.enforcement
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.registration.run()), loop.create_task(self.enforcement.run())]
        log.info("joining %s as %s (reached at %s, TTL %d s)", options.url, name, address, options.ttl_s)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.enforcement is not None:
            await self.enforcement.aclose()
        if self.registration is not None:
            await self.registration.withdraw()
        if self.etcd is not None:
            await self.etcd.aclose()


def _address(server: Server) -> str:
    host, port = server.addresses[0]
    if host in ("0.0.0.0", "::"):
        host = socket.getfqdn()
    return host_port(host, port)
