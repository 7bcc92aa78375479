"""Fixtures shared by the whole suite: a real usbwire server on loopback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from usbwire import Limits, Server
from usbwire.backends.emulated import EmulatedExport
from usbwire.demo import demo_exports

T = TypeVar("T")


@dataclass
class RunningServer:
    """A server on 127.0.0.1 whose event loop runs in a thread of its own."""

    server: Server
    loop: asyncio.AbstractEventLoop

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the server's loop (the server is not thread-safe)."""
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(function())
            except BaseException as error:  # noqa: BLE001
                future.set_exception(error)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def export(self, device: EmulatedExport) -> None:
        self.call(lambda: self.server.registry.add(device))


def start_server(limits: Limits | None = None) -> Iterator[RunningServer]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="usbwire-server", daemon=True)
    thread.start()
    server = Server(limits=limits or Limits())

    async def begin() -> None:
        for export in demo_exports():
            server.registry.add(export)
        await server.start("127.0.0.1", 0)

    asyncio.run_coroutine_threadsafe(begin(), loop).result(timeout=10)
    try:
        yield RunningServer(server, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def server() -> Iterator[RunningServer]:
    """A fresh server exporting the demo devices (the loopback device is busid 1-1)."""
    yield from start_server()
