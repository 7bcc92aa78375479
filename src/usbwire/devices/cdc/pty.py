"""Connect a :class:`Serial` device to a pseudo-terminal on the server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from pathlib import Path

from usbwire.devices.cdc.acm import Serial


class PtyBridge:
    """Bytes the host writes appear on the pty; bytes written to the pty go to the host.

    The bridge keeps the terminal's other end open itself, so users may open and close
    ``path`` at will without the master side seeing a hang-up.
    """

    def __init__(self, serial: Serial, link: str | os.PathLike[str] | None = None, name: str = "serial") -> None:
        self.serial = serial
        self.serial_name = name
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: a byte pipe
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.link = Path(link) if link else None
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self.path)
        self._pump: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.master, self._readable)
        self._pump = loop.create_task(self._to_pty())

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if data:
            self.serial.write(data)

    async def _to_pty(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = memoryview(await self.serial.read())
            while data:
                try:
                    written = os.write(self.master, data)
                except BlockingIOError:
                    ready = loop.create_future()
                    loop.add_writer(self.master, ready.set_result, None)
                    try:
                        await ready
                    finally:
                        loop.remove_writer(self.master)
                    continue
                data = data[written:]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.master)
        if self._pump is not None:
            self._pump.cancel()
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        os.close(self.master)
        os.close(self._slave)
