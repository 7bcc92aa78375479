"""Who may see and import which device: allow lists of principals per device.

A principal is ``any``, ``cidr:NETWORK`` (the client's address), ``cert:NAME`` (the common
name of a verified client certificate) or ``token:NAME`` (a token the client proved it
holds). A device's allow list is the first rule that matches it (by busid or VID:PID), or
the policy's default. DEVLIST shows a client only the devices it may import.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from usbwire.errors import UsbwireError
from usbwire.protocol.constants import OpStatus
from usbwire.protocol.pdu import DeviceInfo

VID_PID = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")


def device_matches(spec: str, device: DeviceInfo) -> bool:
    """Whether ``spec`` -- a busid or a ``VID:PID`` pair -- names ``device``."""
    ids = VID_PID.match(spec)
    if ids:
        return (int(ids[1], 16), int(ids[2], 16)) == (device.idVendor, device.idProduct)
    return spec == device.busid


@dataclass(frozen=True, slots=True)
class Client:
    """What the server knows of a connection's peer."""

    address: str
    certificate_names: frozenset[str] = frozenset()
    tokens: frozenset[str] = frozenset()

    def with_token(self, name: str) -> Client:
        return Client(self.address, self.certificate_names, self.tokens | {name})

    def describe(self) -> str:
        parts = [self.address]
        parts += [f"cert:{name}" for name in sorted(self.certificate_names)]
        parts += [f"token:{name}" for name in sorted(self.tokens)]
        return " ".join(parts)


def _check_principal(principal: str) -> str:
    kind, _, value = principal.partition(":")
    if principal == "any":
        return principal
    if kind == "cidr":
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise UsbwireError(f"bad network in {principal!r}") from None
        return principal
    if kind in ("cert", "token") and value:
        return principal
    raise UsbwireError(f"unknown principal {principal!r} (any, cidr:NET, cert:NAME, token:NAME)")


def _allows(principal: str, client: Client) -> bool:
    kind, _, value = principal.partition(":")
    if principal == "any":
        return True
    if kind == "cidr":
        try:
            address = ipaddress.ip_address(client.address.split("%")[0])
        except ValueError:
            return False
        network = ipaddress.ip_network(value, strict=False)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.version == network.version and address in network
    if kind == "cert":
        return value in client.certificate_names
    return kind == "token" and value in client.tokens


@dataclass(frozen=True, slots=True)
class Rule:
    match: str  # busid or VID:PID
    allow: tuple[str, ...]

    def matches(self, device: DeviceInfo) -> bool:
        return device_matches(self.match, device)


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    rules: tuple[Rule, ...] = ()
    default: tuple[str, ...] = ("any",)
    tokens: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls, rules: Iterable[tuple[str, Sequence[str]]] = (), default: Sequence[str] = ("any",),
        tokens: dict[str, str] | None = None,
    ) -> AccessPolicy:  # fmt: skip
        built = tuple(Rule(match, tuple(_check_principal(p) for p in allow)) for match, allow in rules)
        return cls(built, tuple(_check_principal(p) for p in default), dict(tokens or {}))

    def allow_list(self, device: DeviceInfo) -> tuple[str, ...]:
        for rule in self.rules:
            if rule.matches(device):
                return rule.allow
        return self.default

    def allows(self, device: DeviceInfo, client: Client) -> bool:
        return any(_allows(principal, client) for principal in self.allow_list(device))


class ImportGate(Protocol):
    """A second say over every IMPORT, after the policy (fleet mode: only a claim's holder)."""

    async def admit(self, requested: str, client: Client) -> str | OpStatus:
        """The busid to import for the IMPORT's busid field ``requested``, or the status refusing it.

        The reply echoes ``requested`` whatever busid it maps to: Linux's ``usbip attach``
        refuses a reply naming another busid than the one it asked for.
        """
        ...
