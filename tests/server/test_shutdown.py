"""Stopping the server while clients are attached: their devices are closed, not abandoned."""

from __future__ import annotations

import asyncio

from tests.conftest import start_server
from tests.wire import WireClient
from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.loopback import Loopback
from usbwire.protocol import OpStatus

FLUSHING = "5-1"


class FlushesOnClose(Loopback):
    """A loopback whose close() must wait for something, as a disk image flush does."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed = False

    async def close(self) -> None:
        await asyncio.sleep(0.01)
        self.flushed = True


def test_server_close_waits_for_the_close_of_devices_still_imported() -> None:
    device = FlushesOnClose()
    servers = start_server(extra_exports=[EmulatedExport(device, busid=FLUSHING, busnum=5, devnum=2)])
    server = next(servers)
    try:
        with WireClient(server.port) as client:
            assert client.import_(FLUSHING).status == OpStatus.OK
            servers.close()  # Server.close() with the client still attached
    finally:
        servers.close()
    assert device.flushed
