"""A TCP path a test can break: a forwarder on 127.0.0.1 that cuts, refuses, or swallows.

with CuttablePath(server_port) as path:     # clients connect to path.port
    path.cut(5.0)        # every connection ends now; new ones are reset for 5 s
    path.swallow(True)   # bytes vanish both ways while the connections look alive
    path.swallow(False)  # new bytes cross again, except on a connection that lost some (see swallow)
    path.latency = 0.4   # every forwarded chunk arrives this many seconds late (a far or slow link)
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class CuttablePath:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0  # accepted and forwarded, ever
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._refuse_until = 0.0
        self._swallowed: tuple[bool, ...] = ()  # the directions dropped now (True: the server's)
        self.latency = 0.0
        threading.Thread(target=self._accept, name="cuttable-path", daemon=True).start()

    def __enter__(self) -> CuttablePath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cut(self, refuse_for: float = 0.0) -> None:
        """End every forwarded connection at once; reset new ones for ``refuse_for`` seconds."""
        with self._lock:
            self._refuse_until = time.monotonic() + refuse_for
            doomed, self._open = self._open, []
        for sock in doomed:
            _reset(sock)

    def swallow(self, on: bool, *, replies_only: bool = False) -> None:
        """While on, forwarded bytes are dropped (only the server's with ``replies_only``): each
        side's peer looks alive and silent.

        A direction of a connection that lost bytes keeps losing them after ``swallow(False)``:
        TCP would retransmit them, we cannot, and a stream with a hole must never reach a peer.
        Such a connection stays a black hole until it is cut or a peer gives up on it."""
        # One assignment: a pump never sees half a change (swallowing, but both ways).
        self._swallowed = ((True,) if replies_only else (False, True)) if on else ()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._open += [client, server]
                self.connections += 1
            for source, sink, replies in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(source, sink, replies), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        holed = False
        try:
            while data := source.recv(65536):
                # Swallowing may end between two chunks, a moment the test cannot choose: what
                # comes after a dropped chunk is dropped too, so it never arrives out of place.
                holed = holed or replies in self._swallowed
                if not holed:
                    if self.latency:
                        time.sleep(self.latency)  # the link's delay, not a wait for anything
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _reset(sock: socket.socket) -> None:
    """Close with RST, as a dropped NAT entry or a crashed middlebox would answer."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
