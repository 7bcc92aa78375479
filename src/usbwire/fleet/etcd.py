"""The few etcd v3 operations the fleet needs, typed, over the ``aetcd`` client (gRPC).

``aetcd`` is imported only when a connection is made, so the rest of usbwire (and ``usbwire
serve`` without ``--fleet``) runs without it. Every failure to reach etcd becomes
:class:`EtcdUnavailable`, the one error the fleet retries on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from usbwire.fleet.keys import FleetError

INSTALL_HINT = "fleet mode needs the etcd client: pip install 'usbwire[fleet]'"

# gRPC waits up to two minutes between reconnection attempts by default; a restarted etcd
# must be found again well within a lease's TTL, or every lease of the fleet would lapse.
# Despite its name, gRPC's "min_reconnect_backoff" is the least time a connection attempt
# gets to finish (TCP, then HTTP/2's SETTINGS): at 100 ms, etcd over a link slower than that
# (a far site, a loaded VM) could never be reached. 5 s also bounds how long an attempt into
# a dead path delays the next one.
_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 500,
    "grpc.min_reconnect_backoff_ms": 5000,
}


class EtcdUnavailable(FleetError):
    """etcd did not answer (down, unreachable, no leader, timed out)."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch: ``value`` is None for a deletion."""

    key: str
    value: bytes | None
    revision: int


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction: the key's version (0: absent), create or mod revision, or value."""

    key: str
    target: str  # "version" | "create" | "mod" | "value"
    op: str  # "==" | ">" | "<"
    value: int | bytes


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


def parse_url(url: str) -> tuple[str, int]:
    """``etcd://HOST:PORT`` (or ``http://``, etcd's own spelling) to host and port.

    Raises:
        FleetError: the URL has another scheme or no host.
    """
    parts = urlsplit(url)
    try:
        port = parts.port  # raises for a port outside 0-65535
    except ValueError as error:
        raise FleetError(f"bad etcd URL {url!r}: {error}") from None
    if parts.scheme not in ("etcd", "http") or not parts.hostname:
        raise FleetError(f"bad etcd URL {url!r} (etcd://HOST:PORT)")
    return parts.hostname, port or 2379


class Etcd:
    """One connection to an etcd cluster member; ``timeout_s`` bounds every request."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.host, self.port = parse_url(url)
        self.timeout_s = timeout_s
        try:
            import aetcd
        except ImportError:
            raise FleetError(INSTALL_HINT) from None
        self._aetcd = aetcd
        # aetcd takes a timeout in seconds and hands it to gRPC, which accepts fractions.
        self._client: Any = aetcd.Client(
            host=self.host, port=self.port, timeout=timeout_s, options=dict(_CHANNEL_OPTIONS)
        )

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.close()

    @contextlib.asynccontextmanager
    async def _calling(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except self._aetcd.ClientError as error:
            raise EtcdUnavailable(f"etcd at {self.host}:{self.port}: {what}: {error or type(error).__name__}") from None
        except (TimeoutError, ConnectionError) as error:
            raise EtcdUnavailable(f"etcd at {self.host}:{self.port}: {what}: {error}") from None

    async def grant(self, ttl_s: int) -> int:
        """A new lease; its id."""
        async with self._calling("lease grant"):
            lease = await self._client.lease(ttl_s)
        return int(lease.id)

    async def keep_alive(self, lease: int) -> int:
        """Refresh ``lease``; its remaining TTL (0 or less: it has expired, its keys are gone)."""
        async with self._calling("lease keep-alive"):
            reply = await self._client.refresh_lease(lease)
        return int(reply.TTL) if reply is not None else 0

    async def revoke(self, lease: int) -> None:
        async with self._calling("lease revoke"):
            await self._client.revoke_lease(lease)

    async def get_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """Every key under ``prefix``, by create revision, and the store revision they are from."""
        async with self._calling("range"):
            result = await self._client.get_prefix(prefix.encode(), sort_order="ascend", sort_target="create")
        return int(result.header.revision), [_key_value(kv) for kv in result]

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Store ``value``; the revision of the write."""
        async with self._calling("put"):
            reply = await self._client.put(key.encode(), value, lease=lease or None)
        return int(reply.header.revision)

    async def delete(self, key: str) -> bool:
        async with self._calling("delete"):
            reply = await self._client.delete(key.encode())
        return bool(reply.deleted) if reply is not None else False

    async def transaction(self, compare: Sequence[Compare], success: Sequence[Put | Delete]) -> bool:
        """Apply every operation of ``success`` if every comparison holds, atomically; whether it did."""
        txn = self._client.transactions
        checks = []
        for condition in compare:
            target = {"version": txn.version, "create": txn.create, "mod": txn.mod, "value": txn.value}[
                condition.target
            ]
            term = target(condition.key.encode())
            if condition.op == "==":
                checks.append(term == condition.value)
            elif condition.op == ">":
                checks.append(term > condition.value)
            else:
                checks.append(term < condition.value)
        operations = [
            txn.put(op.key.encode(), op.value, lease=op.lease or None)
            if isinstance(op, Put)
            else txn.delete(op.key.encode())
            for op in success
        ]
        async with self._calling("transaction"):
            succeeded, _ = await self._client.transaction(compare=checks, success=operations, failure=[])
        return bool(succeeded)

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        """Changes under ``prefix`` from ``start_revision`` on, in revision order, until cancelled.

        Raises:
            EtcdUnavailable: the watch broke (etcd went away): read again and watch anew.
        """
        async with self._calling("watch"):
            watch = await self._client.watch(
                prefix.encode(), range_end=_prefix_end(prefix), start_revision=start_revision
            )
        try:
            async with self._calling("watch"):
                async for item in watch:
                    kv = item.kv
                    value = None if item.kind == "DELETE" else bytes(kv.value)
                    yield Event(kv.key.decode(), value, int(kv.mod_revision))
            raise EtcdUnavailable(f"etcd at {self.host}:{self.port}: the watch ended")
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()


def _prefix_end(prefix: str) -> bytes:
    # etcd's range end for "every key starting with prefix": the prefix with its last byte + 1.
    end = bytearray(prefix.encode())
    end[-1] += 1
    return bytes(end)


def _key_value(kv: Any) -> KeyValue:
    return KeyValue(
        key=kv.key.decode(),
        value=bytes(kv.value),
        create_revision=int(kv.create_revision),
        mod_revision=int(kv.mod_revision),
        lease=int(kv.lease),
    )
