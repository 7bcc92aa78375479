"""Host side, monitor path: a minimal synchronous QMP client for hot-unplug and replug.

QMP interleaves asynchronous events with command replies on one socket; replies are
matched by the ``id`` we attach and events are queued for :meth:`Qmp.wait_event`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import LabError
from .lines import LineSocket

Event = dict[str, Any]


class QmpError(LabError):
    """QEMU answered a command with an error."""


class Qmp:
    """One QMP session; safe to call from several threads (calls are serialised)."""

    def __init__(self, sock: socket.socket, timeout_s: float = 10.0) -> None:
        self._io = LineSocket(sock)
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._next_id = 0
        self._timeout_s = timeout_s
        greeting = self._read(timeout_s)
        if "QMP" not in greeting:
            raise QmpError(f"not a QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command and return its ``return`` value.

        Raises:
            QmpError: QEMU refused the command, or did not answer in time.
        """
        with self._lock:
            self._next_id += 1
            request_id = f"lab-{self._next_id}"
            message: dict[str, Any] = {"execute": command, "id": request_id}
            if arguments:
                message["arguments"] = arguments
            self._io.send_line(json.dumps(message))
            deadline = time.monotonic() + self._timeout_s
            while True:
                reply = self._read(deadline - time.monotonic())
                if "event" in reply:
                    self._events.append(reply)
                elif reply.get("id") == request_id:
                    if "error" in reply:
                        raise QmpError(f"{command}: {reply['error'].get('desc', reply['error'])}")
                    return reply.get("return")

    def hmp(self, command_line: str) -> str:
        """Run a human monitor command (e.g. ``info usb``) and return its text output.

        Raises:
            QmpError: QEMU refused the command.
        """
        output = self.execute("human-monitor-command", **{"command-line": command_line})
        return str(output)

    def wait_event(self, name: str, timeout_s: float, match: Callable[[Event], bool] = lambda _: True) -> Event:
        """Return (and consume) the first event ``name`` for which ``match`` is true.

        Raises:
            QmpError: no such event arrived within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                for event in self._events:
                    if event.get("event") == name and match(event):
                        self._events.remove(event)
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QmpError(f"no {name} event within {timeout_s:.0f} s")
                self._events.append(self._read(remaining))

    def close(self) -> None:
        """Close the QMP socket."""
        self._io.close()

    def _read(self, timeout_s: float) -> Event:
        try:
            line = self._io.readline(max(timeout_s, 0.0))
        except EOFError as exc:
            raise QmpError("QEMU closed the QMP socket") from exc
        if line is None:
            raise QmpError("QMP timed out")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise QmpError(f"unexpected QMP message: {line!r}")
        return message
