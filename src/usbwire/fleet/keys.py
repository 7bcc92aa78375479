"""The fleet's key schema in etcd, its records, match expressions and claim tokens.

Everything lives under one versioned prefix, so a later schema can run beside this one::

    /usbwire/v1/servers/<server>          ServerRecord   on the server's lease
    /usbwire/v1/devices/<server>/<busid>  DeviceRecord   on the server's lease
    /usbwire/v1/claims/<server>/<busid>   ClaimRecord    on the claiming client's lease
    /usbwire/v1/queue/<waiter>            WaitRecord     on the waiting client's lease

Values are JSON objects. A key on a lease vanishes with the lease: a dead server takes its
devices along, a dead client its claims and its place in the queue. The queue is ordered by
each key's etcd ``create_revision``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from usbwire.errors import UsbwireError
from usbwire.protocol.constants import BUSID_SIZE
from usbwire.server.access import VID_PID

PREFIX = "/usbwire/v1/"
SERVERS = PREFIX + "servers/"
DEVICES = PREFIX + "devices/"
CLAIMS = PREFIX + "claims/"
QUEUE = PREFIX + "queue/"

# The token rides in the IMPORT's busid field as BUSID#TOKEN, NUL-terminated in 32 bytes.
TOKEN_CHARS = 16  # base64url: 96 random bits
TOKEN_SEPARATOR = "#"
MAX_BUSID = BUSID_SIZE - 1 - len(TOKEN_SEPARATOR) - TOKEN_CHARS

_NAME = re.compile(r"^[A-Za-z0-9._:@\[\]-]+$")


class FleetError(UsbwireError):
    """A fleet operation failed: etcd unreachable, bad match expression, claim lost."""


def check_name(what: str, name: str) -> str:
    """Server names and busids become key segments: no slashes, no spaces."""
    if not _NAME.match(name):
        raise FleetError(f"bad {what} {name!r} (letters, digits and . _ : @ [ ] - only)")
    return name


def server_key(server: str) -> str:
    return SERVERS + server


def device_key(server: str, busid: str) -> str:
    return f"{DEVICES}{server}/{busid}"


def claim_key(server: str, busid: str) -> str:
    return f"{CLAIMS}{server}/{busid}"


def device_id(key: str) -> str:
    """``server/busid`` of a device or claim key."""
    for prefix in (DEVICES, CLAIMS):
        if key.startswith(prefix):
            return key[len(prefix) :]
    raise ValueError(f"not a device or claim key: {key}")


def encode(record: Any) -> bytes:
    return json.dumps(asdict(record), sort_keys=True, separators=(",", ":")).encode()


def _decode(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class ServerRecord:
    name: str
    address: str  # host:port where clients reach the server
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def decode(cls, data: bytes) -> ServerRecord:
        value = _decode(data)
        return cls(str(value["name"]), str(value["address"]), dict(value.get("labels", {})))


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    server: str
    address: str
    busid: str
    vid_pid: str  # "1209:0001"
    product: str = ""
    serial: str = ""
    path: str = ""  # where the device sits on the server (sysfs path)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.server}/{self.busid}"

    @property
    def host(self) -> str:
        host = self.address.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") else host

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @classmethod
    def decode(cls, data: bytes) -> DeviceRecord:
        value = _decode(data)
        return cls(
            server=str(value["server"]),
            address=str(value["address"]),
            busid=str(value["busid"]),
            vid_pid=str(value["vid_pid"]),
            product=str(value.get("product", "")),
            serial=str(value.get("serial", "")),
            path=str(value.get("path", "")),
            labels={str(k): str(v) for k, v in dict(value.get("labels", {})).items()},
        )


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    holder: str
    token_sha256: str
    # Enforced by the device's server: seconds from the claim, and seconds without a URB.
    max_hold_s: float | None = None
    idle_s: float | None = None

    @classmethod
    def decode(cls, data: bytes) -> ClaimRecord:
        value = _decode(data)
        max_hold, idle = value.get("max_hold_s"), value.get("idle_s")
        return cls(
            holder=str(value["holder"]),
            token_sha256=str(value["token_sha256"]),
            max_hold_s=float(max_hold) if max_hold is not None else None,
            idle_s=float(idle) if idle is not None else None,
        )


@dataclass(frozen=True, slots=True)
class WaitRecord:
    holder: str
    match: list[str]
    count: int

    @classmethod
    def decode(cls, data: bytes) -> WaitRecord:
        value = _decode(data)
        return cls(str(value["holder"]), [str(m) for m in value["match"]], int(value["count"]))


@dataclass(frozen=True, slots=True)
class Match:
    """Which devices a claim wants: every term must hold (``VID:PID``, ``serial=S``, ``label=K=V``, ...)."""

    terms: tuple[str, ...]

    @classmethod
    def parse(cls, terms: Sequence[str]) -> Match:
        """Check the terms.

        Raises:
            FleetError: a term is none of ``VID:PID``, ``serial=``, ``product=``, ``busid=``,
                ``server=``, ``label=KEY=VALUE``.
        """
        if not terms:
            raise FleetError("a claim needs at least one --match")
        for term in terms:
            kind, _, value = term.partition("=")
            if VID_PID.match(term):
                continue
            if kind in ("serial", "product", "busid", "server") and value:
                continue
            if kind == "label" and "=" in value and value.partition("=")[0]:
                continue
            raise FleetError(f"bad match {term!r} (VID:PID, serial=S, product=P, busid=B, server=N or label=K=V)")
        return cls(tuple(terms))

    def matches(self, device: DeviceRecord) -> bool:
        return all(_term_matches(term, device) for term in self.terms)


def _term_matches(term: str, device: DeviceRecord) -> bool:
    if VID_PID.match(term):
        return term.lower() == device.vid_pid
    kind, _, value = term.partition("=")
    if kind == "label":
        key, _, wanted = value.partition("=")
        return device.labels.get(key) == wanted
    fields: Mapping[str, str] = {
        "serial": device.serial,
        "product": device.product,
        "busid": device.busid,
        "server": device.server,
    }
    return fields.get(kind) == value


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_CHARS * 3 // 4)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(token_hash(token), stored_hash)


def split_busid(field_value: str) -> tuple[str, str | None]:
    """``BUSID#TOKEN`` from an IMPORT's busid field: the busid and the token (None without one)."""
    busid, separator, token = field_value.partition(TOKEN_SEPARATOR)
    return busid, token if separator else None


def import_busid(busid: str, token: str) -> str:
    """What a claim's holder puts in the IMPORT's busid field."""
    return f"{busid}{TOKEN_SEPARATOR}{token}"
