"""Prometheus metrics of a running server: ``serve --metrics [HOST:]PORT`` serves ``/metrics``.

The HTTP endpoint is prometheus_client's own (a thread). Each scrape asks the server's event
loop for a snapshot, so nothing the loop owns is read from another thread; the figures are
the server's counters (Stats) and its exports and connections as they are at that moment.
Only counters and gauges whose label sets stay small: one series per export, none per client
(addresses come and go; ``usbwire status`` names them).

Needs the ``prometheus_client`` package: ``pip install 'usbwire[metrics]'``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from usbwire.addresses import host_port, parse_host_port
from usbwire.errors import UsbwireError
from usbwire.protocol.constants import OpStatus

if TYPE_CHECKING:
    from usbwire.server.server import Server

log = logging.getLogger("usbwire.server")

INSTALL_HINT = "metrics need prometheus_client: pip install 'usbwire[metrics]'"
SNAPSHOT_TIMEOUT_S = 5.0  # a loop that cannot answer in this long fails the scrape, not the server


def ensure_installed() -> None:
    """Raise UsbwireError with the install hint unless prometheus_client can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise UsbwireError(INSTALL_HINT) from None


@dataclass(frozen=True, slots=True)
class _Export:
    busid: str
    vid_pid: str
    imported: bool
    in_flight: int


@dataclass(frozen=True, slots=True)
class _Snapshot:
    connections_total: int
    connections_open: int
    imports_total: int
    refused_imports_total: dict[str, int]
    replies_total: int
    protocol_errors_total: int
    exports: tuple[_Export, ...]


def _snapshot(server: Server) -> _Snapshot:
    """What a scrape reports, read on the server's loop."""
    in_flight: dict[str, int] = {}
    for connection in server.connections:
        if connection.busid is not None and connection.dispatcher is not None:
            in_flight[connection.busid] = connection.dispatcher.in_flight
    exports = []
    for device in server.registry:
        info = device.info
        exports.append(
            _Export(
                busid=info.busid,
                vid_pid=f"{info.idVendor:04x}:{info.idProduct:04x}",
                imported=server.registry.holder(info.busid) is not None,
                in_flight=in_flight.get(info.busid, 0),
            )
        )
    stats = server.stats
    return _Snapshot(
        connections_total=stats.connections,
        connections_open=len(server.connections),
        imports_total=stats.imports,
        refused_imports_total=dict(stats.refused_imports),
        replies_total=stats.replies,
        protocol_errors_total=stats.protocol_errors,
        exports=tuple(exports),
    )


class _Collector:
    """prometheus_client's view of one server, made at each scrape (in the HTTP thread)."""

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop, version: str) -> None:
        self.server = server
        self.loop = loop
        self.version = version

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        async def take() -> _Snapshot:
            return _snapshot(self.server)

        snapshot = asyncio.run_coroutine_threadsafe(take(), self.loop).result(SNAPSHOT_TIMEOUT_S)
        yield InfoMetricFamily("usbwire", "usbwire's version", value={"version": self.version})
        yield CounterMetricFamily("usbwire_connections", "TCP connections accepted", value=snapshot.connections_total)
        yield GaugeMetricFamily("usbwire_open_connections", "TCP connections open now", value=snapshot.connections_open)
        yield CounterMetricFamily(
            "usbwire_imports", "devices imported (OP_REP_IMPORT OK)", value=snapshot.imports_total
        )
        refused = CounterMetricFamily(
            "usbwire_refused_imports", "imports refused, by OP_REP_IMPORT status", labels=["status"]
        )
        for status in OpStatus:
            if status != OpStatus.OK:  # every status from the start, so that rates work from 0
                refused.add_metric([status.name], snapshot.refused_imports_total.get(status.name, 0))
        yield refused
        yield CounterMetricFamily(
            "usbwire_replies", "PDUs answered: RET_SUBMIT, RET_UNLINK and OP replies", value=snapshot.replies_total
        )
        yield CounterMetricFamily(
            "usbwire_protocol_errors", "connections ended by a malformed PDU", value=snapshot.protocol_errors_total
        )
        exported = GaugeMetricFamily("usbwire_exported", "exported devices (1 per busid)", labels=["busid", "vid_pid"])
        imported = GaugeMetricFamily("usbwire_imported", "whether a client holds the device", labels=["busid"])
        in_flight = GaugeMetricFamily("usbwire_urbs_in_flight", "URBs the device has not answered", labels=["busid"])
        for export in snapshot.exports:
            exported.add_metric([export.busid, export.vid_pid], 1)
            imported.add_metric([export.busid], int(export.imported))
            in_flight.add_metric([export.busid], export.in_flight)
        yield exported
        yield imported
        yield in_flight


class MetricsEndpoint:
    """``http://HOST:PORT/metrics`` for one server, from :meth:`start` to :meth:`close`."""

    def __init__(self, server: Server, host: str, port: int, version: str) -> None:
        ensure_installed()
        self.server = server
        self.host = host
        self.port = port
        self.version = version
        self._http: Any = None

    async def start(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.server, asyncio.get_running_loop(), self.version))
        try:
            self._http, _ = start_http_server(self.port, self.host, registry)
        except OSError as error:
            raise UsbwireError(f"cannot serve metrics on {host_port(self.host, self.port)}: {error.strerror}") from None
        self.port = int(self._http.server_port)
        log.info("metrics on http://%s/metrics", host_port(self.host, self.port))

    async def close(self) -> None:
        if self._http is None:
            return
        http, self._http = self._http, None
        # shutdown() waits for the serving thread, which may be waiting for this loop.
        await asyncio.to_thread(http.shutdown)
        http.server_close()


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` as the user gave it. HOST defaults to 127.0.0.1: the figures name the
    exports, which not everyone need see."""
    return parse_host_port(text, "127.0.0.1")
