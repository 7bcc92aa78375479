"""The asyncio and blocking client APIs against a real usbwire server."""

from __future__ import annotations

import asyncio
import asyncio.streams
import gc
import os
import socket
import struct
import threading

import pytest

from tests.conftest import RunningServer, silent_server
from usbwire.client import ServerUnreachable, SyncDevice, connect, list_devices, open_device
from usbwire.client.handshake import import_socket
from usbwire.errors import DeviceGone, ImportRefused, RemoteProtocolError, TransferError
from usbwire.protocol import Direction, OpStatus, TransferType

LOOPBACK, KEYBOARD = "1-1", "1-2"


def test_connect_reads_the_descriptors(server: RunningServer) -> None:
    async def main() -> None:
        async with connect("127.0.0.1", LOOPBACK, port=server.port) as device:
            assert device.device_descriptor is not None
            assert (device.device_descriptor.idVendor, device.device_descriptor.idProduct) == (0x1209, 0x0001)
            assert await device.string(device.device_descriptor.iProduct) == "Bulk loopback"
            assert device.endpoints.transfer_type(1, Direction.OUT) is None  # unconfigured
            await device.set_configuration(1)
            assert device.endpoints.transfer_type(1, Direction.IN) == TransferType.BULK

    asyncio.run(main())


def test_bulk_loopback_with_many_transfers_in_flight(server: RunningServer) -> None:
    payloads = [os.urandom(100 + i) for i in range(64)]

    async def main() -> list[bytes | int]:
        async with connect("127.0.0.1", LOOPBACK, port=server.port) as device:
            await device.set_configuration(1)
            reads = [asyncio.ensure_future(device.bulk_transfer(0x81, len(p))) for p in payloads]
            writes = await asyncio.gather(*(device.bulk_transfer(0x01, p) for p in payloads))
            assert writes == [len(p) for p in payloads]
            return list(await asyncio.gather(*reads))

    assert asyncio.run(main()) == payloads


def test_timeout_unlinks_the_transfer_and_the_device_stays_usable(server: RunningServer) -> None:
    async def main() -> None:
        async with connect("127.0.0.1", LOOPBACK, port=server.port) as device:
            await device.set_configuration(1)
            with pytest.raises(TimeoutError):
                await device.bulk_transfer(0x81, 64, timeout=0.2)
            await device.bulk_transfer(0x01, b"after the timeout")
            assert await device.bulk_transfer(0x81, 64, timeout=5) == b"after the timeout"

    asyncio.run(main())


def test_cancelling_a_task_unlinks_its_transfer(server: RunningServer) -> None:
    async def main() -> None:
        async with connect("127.0.0.1", LOOPBACK, port=server.port) as device:
            await device.set_configuration(1)
            read = asyncio.ensure_future(device.bulk_transfer(0x81, 64))
            await asyncio.sleep(0.05)
            read.cancel()
            with pytest.raises(asyncio.CancelledError):
                await read
            await device.bulk_transfer(0x01, b"x")
            assert await device.bulk_transfer(0x81, 64, timeout=5) == b"x"

    asyncio.run(main())


def test_a_stall_raises_transfer_error(server: RunningServer) -> None:
    async def main() -> None:
        async with connect("127.0.0.1", LOOPBACK, port=server.port) as device:
            with pytest.raises(TransferError) as caught:
                await device.control_transfer(0x80, 6, 0x0700, 0, 9)  # other-speed configuration
            assert caught.value.stalled

    asyncio.run(main())


def test_import_refused_for_unknown_busid(server: RunningServer) -> None:
    async def main() -> None:
        async with connect("127.0.0.1", "7-7", port=server.port):
            pass

    with pytest.raises(ImportRefused) as caught:
        asyncio.run(main())
    assert caught.value.status == OpStatus.NODEV


def test_a_server_that_takes_the_connection_and_says_nothing_is_named_unreachable() -> None:
    with silent_server() as port:
        where = f"127.0.0.1:{port}: no answer within 0.2 s"
        with pytest.raises(ServerUnreachable, match=where):
            asyncio.run(list_devices("127.0.0.1", port, timeout=0.2))
        with pytest.raises(ServerUnreachable, match=where):
            asyncio.run(open_device("127.0.0.1", "1-1", port=port, timeout=0.2))
        with pytest.raises(ServerUnreachable, match=where):
            import_socket("127.0.0.1", "1-1", port, timeout=0.2)  # as `usbwire attach` imports


def test_transfers_in_flight_fail_with_device_gone_when_the_device_is_unexported(
    server: RunningServer,
) -> None:
    async def main() -> None:
        async with connect("127.0.0.1", LOOPBACK, port=server.port) as device:
            await device.set_configuration(1)
            read = asyncio.ensure_future(device.bulk_transfer(0x81, 64))
            await asyncio.sleep(0.05)
            server.call(lambda: server.server.registry.remove(LOOPBACK))
            with pytest.raises(DeviceGone):
                await asyncio.wait_for(read, 5)

    asyncio.run(main())


def test_blocking_wrapper(server: RunningServer) -> None:
    with SyncDevice.connect("127.0.0.1", KEYBOARD, port=server.port) as device:
        assert device.device_descriptor.idProduct == 0x0003
        device.set_configuration(1)
        report_descriptor = device.control_transfer(0x81, 6, 0x2200, 0, 255)
        assert isinstance(report_descriptor, bytes) and report_descriptor[:2] == b"\x05\x01"


def test_a_server_resetting_the_connection_is_one_error_and_leaves_nothing_unread(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reset is reported once, as the call's error. asyncio also keeps it for whoever waits
    for the stream to close; if nobody does, only a finalizer forgets it, and at interpreter exit
    the finalizers may run in any order: then it is logged as "never retrieved". The test takes
    that finalizer away, as an unlucky exit does."""
    monkeypatch.delattr(asyncio.streams.StreamReaderProtocol, "__del__")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def reset_after_the_request() -> None:
            for _ in range(2):
                sock, _ = listener.accept()
                sock.recv(64)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

        resetter = threading.Thread(target=reset_after_the_request)
        resetter.start()
        with pytest.raises(RemoteProtocolError, match="reset the connection"):
            asyncio.run(list_devices("127.0.0.1", port))
        with pytest.raises(RemoteProtocolError, match="reset the connection"):
            asyncio.run(open_device("127.0.0.1", "1-1", port=port))
        resetter.join()
    gc.collect()
    assert "never retrieved" not in caplog.text
