"""Finding USB/IP servers on the local network: DNS-SD over multicast DNS (zeroconf).

A server started with ``--advertise`` announces the service instance ``NAME._usbip._tcp.local.``
on the addresses it listens on, with TXT keys ``txtvers=1``, ``tls=0|1`` and ``impl=usbwire
VERSION``; it sends goodbyes when it stops. :func:`discover` browses for that service type for
a while and resolves what answered; :func:`survey` (``usbwire discover``) then asks each server
for its devices with OP_REQ_DEVLIST (:func:`devices_of`: at each of its addresses until one
answers), as ``usbwire list -r`` does: they are not announced, as
they change and access rules decide what each client may see. A :class:`Browser` follows
servers as they come and go.

Needs the ``zeroconf`` package: ``pip install 'usbwire[discovery]'``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from types import ModuleType
from typing import Any

from usbwire.addresses import host_port
from usbwire.client.remote import list_devices
from usbwire.errors import UsbwireError
from usbwire.protocol.pdu import DeviceInfo
from usbwire.tls import client_context

log = logging.getLogger("usbwire.discovery")

SERVICE_TYPE = "_usbip._tcp.local."
INSTALL_HINT = "discovery needs zeroconf: pip install 'usbwire[discovery]'"
MAX_NAME_BYTES = 63  # one DNS label (RFC 6763 4.1.1)
# How long one server may take to answer the questions that resolve it (ms, as zeroconf counts).
RESOLVE_TIMEOUT_MS = 1500


@dataclass(frozen=True, slots=True)
class Advertisement:
    """A USB/IP server that answered on the local network."""

    name: str  # the instance name, unique on the link
    addresses: tuple[str, ...]
    port: int
    tls: bool
    implementation: str | None  # e.g. "usbwire 0.1.0"; None from servers that do not say


def check_name(name: str) -> None:
    """Raise UsbwireError unless ``name`` can be advertised (and zeroconf is installed)."""
    _modules()
    if not 0 < len(name.encode()) <= MAX_NAME_BYTES:
        raise UsbwireError(f"cannot advertise as {name!r}: a service instance name is 1 to {MAX_NAME_BYTES} bytes")


def _modules() -> tuple[ModuleType, ModuleType]:
    try:
        import zeroconf
        import zeroconf.asyncio
    except ImportError:
        raise UsbwireError(INSTALL_HINT) from None
    return zeroconf, zeroconf.asyncio


def _interfaces(addresses: Sequence[str] | None) -> Any:
    """zeroconf's interface choice for ``addresses`` (None or wildcards: every interface)."""
    zeroconf, _ = _modules()
    if not addresses or any(ipaddress.ip_address(a).is_unspecified for a in addresses):
        return zeroconf.InterfaceChoice.All
    return list(addresses)


def _machine_addresses(versions: set[int]) -> list[str]:
    """This machine's addresses of IP ``versions`` that a client elsewhere can reach: not
    loopback (a client would reach itself), not link-local (useless without its scope)."""
    try:
        import ifaddr  # zeroconf's own dependency
    except ImportError:
        raise UsbwireError(INSTALL_HINT) from None
    found = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ipaddress.ip_address(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
            if address.version in versions and not (address.is_loopback or address.is_link_local):
                found.add(str(address))
    return sorted(found)


def _ip_version(addresses: Sequence[str] | None) -> Any:
    """zeroconf's IP version choice for ``addresses`` (None or none at all: both)."""
    zeroconf, _ = _modules()
    versions = {ipaddress.ip_address(address).version for address in addresses or ()}
    if versions == {4}:
        return zeroconf.IPVersion.V4Only
    if versions == {6}:
        return zeroconf.IPVersion.V6Only
    return zeroconf.IPVersion.All


class Advertiser:
    """Announces one server on the addresses it listens on, until :meth:`close`.

    Args:
        name: The instance name users see (zeroconf appends " (2)" and so on if another
            server on the link already has it).
        listening: The server's (host, port) sockets; wildcard hosts mean every address
            this machine has.
        tls: Whether clients must speak TLS to it.
        version: usbwire's version, for the ``impl`` key.
    """

    def __init__(self, name: str, listening: Sequence[tuple[str, int]], tls: bool, version: str) -> None:
        if not listening:
            raise ValueError("nothing to advertise: the server listens nowhere")
        check_name(name)
        zeroconf, _ = _modules()
        hosts = sorted({host for host, _ in listening})
        self.port = listening[0][1]
        if any(ipaddress.ip_address(host).is_unspecified for host in hosts):
            # A wildcard socket accepts on every address of the machine.
            hosts = _machine_addresses({ipaddress.ip_address(host).version for host in hosts})
        self.addresses = hosts
        self._interfaces = _interfaces(hosts)
        self._ip_version = _ip_version(hosts)
        self._info = zeroconf.asyncio.AsyncServiceInfo(
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            port=self.port,
            parsed_addresses=hosts,
            properties={"txtvers": "1", "tls": "1" if tls else "0", "impl": f"usbwire {version}"},
            server=f"{socket.gethostname()}.local.",
        )
        self._zeroconf: Any = None

    @property
    def name(self) -> str:
        """The instance name announced (after any renaming for a conflict)."""
        return str(self._info.name).removesuffix(f".{SERVICE_TYPE}")

    async def start(self) -> None:
        zeroconf, zeroconf_asyncio = _modules()
        self._zeroconf = zeroconf_asyncio.AsyncZeroconf(interfaces=self._interfaces, ip_version=self._ip_version)
        try:
            # The first await schedules, the second waits for the probing (and any renaming) to end.
            await (await self._zeroconf.async_register_service(self._info, allow_name_change=True))
        except BaseException as error:
            await self._zeroconf.async_close()
            self._zeroconf = None
            if isinstance(error, zeroconf.Error):
                raise UsbwireError(f"cannot advertise as {self.name!r}: {error}") from None
            raise
        log.info("advertised as %r on %s", self.name, ", ".join(self.addresses))

    async def close(self) -> None:
        """Withdraw the announcement (goodbye packets) and stop answering."""
        if self._zeroconf is None:
            return
        zc, self._zeroconf = self._zeroconf, None
        try:
            await (await zc.async_unregister_service(self._info))  # until the goodbyes are out
        finally:
            await zc.async_close()


class Browser:
    """Watches the local network for USB/IP servers coming and going (``async with``).

    Args:
        interfaces: Addresses of this machine's interfaces to ask on (default: all).
    """

    def __init__(self, interfaces: Sequence[str] | None = None) -> None:
        self._interfaces = list(interfaces) if interfaces else None
        self._names: set[str] = set()  # full service names
        self._changed = asyncio.Event()
        self._zeroconf: Any = None
        self._browser: Any = None

    async def __aenter__(self) -> Browser:
        zeroconf, zeroconf_asyncio = _modules()
        ip_version = _ip_version(self._interfaces)
        removed = zeroconf.ServiceStateChange.Removed

        # zeroconf calls handlers with these keyword arguments, on the running loop.
        def changed(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            if state_change is removed:
                self._names.discard(name)
            else:
                self._names.add(name)
            self._changed.set()

        self._zeroconf = zeroconf_asyncio.AsyncZeroconf(interfaces=_interfaces(self._interfaces), ip_version=ip_version)
        self._browser = zeroconf_asyncio.AsyncServiceBrowser(self._zeroconf.zeroconf, SERVICE_TYPE, handlers=[changed])
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._browser.async_cancel()
        finally:
            await self._zeroconf.async_close()

    @property
    def names(self) -> frozenset[str]:
        """The instance names of the servers seen and not gone since."""
        return frozenset(name.removesuffix(f".{SERVICE_TYPE}") for name in self._names)

    async def wait_until(self, condition: Callable[[frozenset[str]], bool]) -> None:
        """Return once ``condition(names)`` holds (wrap in asyncio.timeout to bound it)."""
        while not condition(self.names):
            self._changed.clear()
            await self._changed.wait()

    async def resolve(self) -> list[Advertisement]:
        """Where each server seen listens, asked of the servers now (those that do not answer
        in time are left out), by name."""
        _, zeroconf_asyncio = _modules()
        infos = [zeroconf_asyncio.AsyncServiceInfo(SERVICE_TYPE, name) for name in sorted(self._names)]
        answered = await asyncio.gather(
            *(info.async_request(self._zeroconf.zeroconf, RESOLVE_TIMEOUT_MS) for info in infos)
        )
        return [_advertisement(info) for info, ok in zip(infos, answered, strict=True) if ok]


@dataclass(frozen=True, slots=True)
class Found:
    """A server that answered, and what it exports (None, with why, if it could not be asked)."""

    server: Advertisement
    devices: list[DeviceInfo] | None
    error: str | None = None
    address: str | None = None  # the one of the server's addresses that answered


async def devices_of(server: Advertisement, ssl: SSLContext | None = None, token: str | None = None) -> Found:
    """What ``server`` exports (OP_REQ_DEVLIST), asked at each of its addresses in turn until
    one answers: a machine also announces addresses other hosts may not reach (a container
    bridge's, say).

    Args:
        server: As :func:`discover` found it.
        ssl: For a server that says it speaks TLS (default: the system's CAs).
        token: Proved to a server that asks for one.
    """
    context = (ssl or client_context()) if server.tls else None
    errors = []
    for address in server.addresses:
        try:
            devices = await list_devices(address, server.port, ssl=context, token=token)
        except (UsbwireError, OSError) as error:
            where = host_port(address, server.port)
            errors.append(str(error) if where in str(error) else f"{where}: {error}")
            continue
        return Found(server, devices, address=address)
    return Found(server, None, "; ".join(errors) or "no address")


async def survey(
    timeout: float = 2.0,
    interfaces: Sequence[str] | None = None,
    ssl: SSLContext | None = None,
    token: str | None = None,
) -> list[Found]:
    """:func:`discover`, then every server's devices (OP_REQ_DEVLIST), all asked at once.

    Args:
        timeout: How long to listen for servers.
        interfaces: Addresses of this machine's interfaces to ask on (default: all).
        ssl: For the servers that say they speak TLS (default: the system's CAs); the
            others are asked in the clear.
        token: Proved to every server that asks for one.
    """
    servers = [server for server in await discover(timeout, interfaces) if server.addresses]
    return list(await asyncio.gather(*(devices_of(server, ssl, token) for server in servers)))


async def discover(timeout: float = 2.0, interfaces: Sequence[str] | None = None) -> list[Advertisement]:
    """The USB/IP servers that answer within ``timeout`` seconds, by name.

    Args:
        timeout: How long to listen for answers (servers answer after a second or so).
        interfaces: Addresses of this machine's interfaces to ask on (default: all).
    """
    async with Browser(interfaces) as browser:
        await asyncio.sleep(timeout)
        return await browser.resolve()


def _advertisement(info: Any) -> Advertisement:
    properties = {
        key.decode(errors="replace"): (value or b"").decode(errors="replace")
        for key, value in (info.properties or {}).items()
    }
    return Advertisement(
        name=str(info.name).removesuffix(f".{SERVICE_TYPE}"),
        addresses=tuple(info.parsed_scoped_addresses()),
        port=int(info.port),
        tls=properties.get("tls") == "1",
        implementation=properties.get("impl"),
    )
