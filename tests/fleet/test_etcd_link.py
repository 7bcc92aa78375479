"""The fleet's etcd connection over paths that are not a quick loopback."""

from __future__ import annotations

import asyncio

from tests.fleet.conftest import EtcdProcess
from tests.netcut import CuttablePath
from usbwire.fleet import Etcd


def test_etcd_is_reached_over_a_link_with_a_long_round_trip(etcd: EtcdProcess) -> None:
    # 0.3 s each way: HTTP/2's handshake alone takes longer than gRPC's reconnection backoff,
    # which must not cut the first connection short (a far site, a loaded VM).
    with CuttablePath(etcd.client_port) as path:
        path.latency = 0.3

        async def grant() -> int:
            client = Etcd(f"etcd://127.0.0.1:{path.port}")
            try:
                return await client.grant(5)
            finally:
                await client.aclose()

        assert asyncio.run(grant()) > 0
