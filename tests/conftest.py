"""Fixtures shared by the whole suite: a real usbwire server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, TypeVar

import pytest

from usbwire import Limits, Server
from usbwire.backends.emulated import EmulatedExport
from usbwire.demo import demo_exports
from usbwire.server.access import AccessPolicy

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
            except BaseException as error:
                future.set_exception(error)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def export(self, device: EmulatedExport) -> None:
        self.call(lambda: self.server.registry.add(device))


def start_server(
    limits: Limits | None = None,
    extra_exports: Sequence[EmulatedExport] = (),
    *,
    demo: bool = True,
    policy: AccessPolicy | None = None,
    ssl: SSLContext | None = None,
    port: int = 0,
    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> Generator[RunningServer, None, None]:
    """Run a server on 127.0.0.1 (``port``, 0: any) exporting the demo devices, then
    ``extra_exports``, on a loop ``new_loop`` makes (asyncio's own unless told)."""
    loop = new_loop()
    thread = threading.Thread(target=loop.run_forever, name="usbwire-server", daemon=True)
    thread.start()
    server = Server(limits=limits or Limits(), policy=policy or AccessPolicy())

    async def begin() -> None:
        for export in [*(demo_exports() if demo else ()), *extra_exports]:
            server.registry.add(export)
        await server.start("127.0.0.1", port, ssl=ssl)

    asyncio.run_coroutine_threadsafe(begin(), loop).result(timeout=10)
    try:
        yield RunningServer(server, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


running_server = contextlib.contextmanager(start_server)
"""``with running_server(...) as running:``: start_server as a context manager."""


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections while the block runs: bound, so that nothing
    else takes it, and not listening. (A fixed port such as 1 may have a listener.)"""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port whose listener takes connections and never says a word."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


@pytest.fixture
def server() -> Iterator[RunningServer]:
    """A fresh server exporting the demo devices (the loopback device is busid 1-1)."""
    yield from start_server()


def wait_until(
    condition: Callable[[], bool], what: str, timeout_s: float = 10.0, explain: Callable[[], str] | None = None
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s`` naming ``what``, with what
    ``explain`` then says of the state of things."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            said = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{said}")
        time.sleep(0.001)


def wait_released(server: RunningServer, busid: str, timeout_s: float = 10.0) -> None:
    """Wait until no connection holds ``busid`` (the server saw its importer go)."""
    wait_until(
        lambda: server.call(lambda: server.server.registry.holder(busid)) is None,
        f"{busid} to be released",
        timeout_s,
    )


def wait_connections(server: RunningServer, count: int, timeout_s: float = 10.0) -> None:
    """Wait until the server has exactly ``count`` open connections."""
    wait_until(
        lambda: server.call(lambda: len(server.server.status()["connections"])) == count,
        f"{count} open connection(s)",
        timeout_s,
    )
