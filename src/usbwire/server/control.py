"""The control interface of a running server: JSON over a Unix domain socket.

One request per connection, one JSON object per line each way::

    -> {"command": "status"}
    <- {"ok": true, "result": {...}}
    -> {"command": "unexport", "busid": "1-1"}
    <- {"ok": false, "error": "busid 1-1 is not exported"}

The socket is created mode 0600 (root only, by default), since whoever can reach it can
unexport devices or type on an emulated keyboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from usbwire.errors import ControlError
from usbwire.server.server import Server
from usbwire.streams import close_stream

log = logging.getLogger("usbwire.control")

DEFAULT_CONTROL_PATH = "/run/usbwire/control.sock"
MAX_REQUEST = 64 * 1024

Params = dict[str, Any]
Handler = Callable[[Params], Awaitable[Any]]


class ControlServer:
    """Answers control requests for ``server``; more commands can be added by name."""

    def __init__(self, server: Server, path: str | os.PathLike[str] = DEFAULT_CONTROL_PATH) -> None:
        self.server = server
        self.path = Path(path)
        self.commands: dict[str, Handler] = {
            "status": self._status,
            "unexport": self._unexport,
        }
        self._listener: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()
        old = os.umask(0o177)
        try:
            self._listener = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        finally:
            os.umask(old)
        log.info("control socket %s", self.path)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            reply = await self.handle(line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, ValueError) as error:
            log.warning("control connection failed: %s", error)
        finally:
            await close_stream(writer)

    async def handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                raise ControlError('a request is a JSON object with a "command" string')
            handler = self.commands.get(request["command"])
            if handler is None:
                raise ControlError(
                    f"unknown command {request['command']!r} (known: {', '.join(sorted(self.commands))})"
                )
            return {"ok": True, "result": await handler(request)}
        except json.JSONDecodeError as error:
            return {"ok": False, "error": f"request is not JSON: {error}"}
        except (ControlError, KeyError, ValueError, TypeError) as error:
            return {"ok": False, "error": str(error)}

    async def _status(self, params: Params) -> Any:
        return self.server.status()

    async def _unexport(self, params: Params) -> Any:
        busid = str(params["busid"])
        if busid not in self.server.registry:
            raise ControlError(f"busid {busid} is not exported")
        device = self.server.registry.remove(busid)
        await device.close()
        return {"busid": busid}


def request(path: str | os.PathLike[str], command: str, **params: Any) -> Any:
    """Send one control request to a running server and return its result."""
    message = json.dumps({"command": command, **params}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        try:
            sock.connect(os.fspath(path))
        except FileNotFoundError:
            raise ControlError(f"no server is running (no control socket at {path})") from None
        except PermissionError:
            raise ControlError(f"permission denied on control socket {path} (run as root?)") from None
        except ConnectionRefusedError:
            raise ControlError(f"no server is listening on control socket {path}") from None
        sock.sendall(message)
        with sock.makefile("rb") as stream:
            line = stream.readline(16 * 1024 * 1024)
    if not line:
        raise ControlError("the server closed the control connection without answering")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "request failed")))
    return reply.get("result")
