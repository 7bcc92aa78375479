"""The control socket with clients that misbehave."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from usbwire.server.control import ControlServer
from usbwire.server.server import Server


def test_a_client_leaving_before_its_answer_costs_one_log_line_and_the_next_is_answered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "control.sock"

    async def main() -> bytes:
        control = ControlServer(Server(), path)
        await control.start()
        try:
            for _ in range(3):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.connect(str(path))
                    client.sendall(b'{"command": "status"}\n')
                await asyncio.sleep(0.05)  # the answer meets a closed socket
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(path))
                client.sendall(b'{"command": "status"}\n')
                await asyncio.sleep(0.05)
                return client.recv(65536)
        finally:
            await control.close()

    answer = asyncio.run(main())

    assert answer.startswith(b'{"ok": true')
    failed = [r for r in caplog.records if r.name == "usbwire.control" and "control connection failed" in r.message]
    assert len(failed) == 3
