"""Host side, transport: read newline-terminated messages from a socket with deadlines.

Both of the lab's channels to QEMU (the guest agent's serial port and QMP) are line
protocols on a unix stream socket. ``socket.makefile`` cannot be used with timeouts
(after one expires the file object is unusable), so this small buffer does it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time


class LineSocket:
    """A connected stream socket read one line at a time."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self.sock = sock
        self._buffer = bytearray()
        self.eof = False

    def readline(self, timeout_s: float | None) -> bytes | None:
        """Return the next line without its newline, or ``None`` on timeout.

        Raises:
            EOFError: the peer closed the socket (QEMU exited).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return line.rstrip(b"\r")
            if self.eof:
                raise EOFError("channel closed")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            # select, not settimeout: the socket stays blocking for the writer thread.
            readable, _, _ = select.select([self.sock], [], [], remaining)
            if not readable:
                return None
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.eof = True
            self._buffer += chunk

    def send_line(self, line: str) -> None:
        """Send one line; the newline is added here.

        Raises:
            OSError: the peer is gone.
        """
        self.sock.sendall(line.encode() + b"\n")

    def close(self) -> None:
        """Close the socket (idempotent); shutdown first wakes a reader blocked in select."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
