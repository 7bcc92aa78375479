"""Host side, command path: talk to ``guest/agent.sh`` over the guest's second serial port.

Only short notices cross the serial line (``run ID``, ``done ID RC``...); command text
and output go through files on the scratch share (see ``guest/agent.sh``). A reader
thread collects notices so that commands can overlap and so that QEMU's death (EOF on
the socket) wakes every waiter at once instead of after its timeout.
"""

from __future__ import annotations

import socket
import threading
import time

from .lines import LineSocket


class ControlChannel:
    """The host end of the agent protocol."""

    def __init__(self, sock: socket.socket) -> None:
        self._io = LineSocket(sock)
        self._cond = threading.Condition()
        self._done: dict[int, int] = {}
        self._killed: set[int] = set()
        self._release: str | None = None
        self.ready_uptime_s = 0.0  # guest clock when the agent came up
        self.closed = False
        self._reader = threading.Thread(target=self._read_loop, name="lab-control", daemon=True)
        self._reader.start()

    def wait_ready(self, timeout_s: float) -> str | None:
        """Block until the agent says ready; return the guest's kernel release.

        Returns ``None`` on timeout or when the channel closed first.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._release is not None or self.closed, timeout_s)
            return self._release

    def send(self, verb: str, command_id: int | None = None) -> bool:
        """Send one request line; return False if the guest is gone."""
        line = verb if command_id is None else f"{verb} {command_id}"
        try:
            self._io.send_line(line)
        except OSError:
            return False
        return True

    def wait_done(self, command_id: int, timeout_s: float) -> int | None:
        """Return the exit status of a command, or ``None`` on timeout or a closed channel."""
        with self._cond:
            self._cond.wait_for(lambda: command_id in self._done or self.closed, timeout_s)
            return self._done.pop(command_id, None)

    def finished(self, command_id: int) -> bool:
        """Whether the agent said the command exited (its status stays for :meth:`wait_done`)."""
        with self._cond:
            return command_id in self._done

    def wait_killed(self, command_id: int, timeout_s: float) -> None:
        """Wait (best effort) until the agent confirms a ``kill``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._cond.wait_for(lambda: command_id in self._killed or self.closed, deadline - time.monotonic())

    def close(self) -> None:
        """Close the socket; the reader thread ends on the resulting EOF."""
        self._io.close()

    def _read_loop(self) -> None:
        try:
            while True:
                line = self._io.readline(None)
                if line is not None:
                    self._handle(line.decode(errors="replace").split())
        except (EOFError, OSError):
            pass
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def _handle(self, words: list[str]) -> None:
        with self._cond:
            if len(words) >= 2 and words[0] == "ready":
                self._release = words[1]
                self.ready_uptime_s = float(words[2]) if len(words) > 2 else 0.0
            elif len(words) == 3 and words[0] == "done":
                self._done[int(words[1])] = int(words[2])
            elif len(words) == 2 and words[0] == "killed":
                self._killed.add(int(words[1]))
            self._cond.notify_all()
