"""TCP keepalive tight enough to notice a dead peer in seconds, for both roles."""

from __future__ import annotations

import socket


def keepalive(sock: socket.socket, idle: int = 5, interval: int = 2, count: int = 3) -> None:
    """Probe after ``idle`` s of silence, every ``interval`` s, give up after ``count``: about 11 s.

    The kernel keeps the options userspace set, so a socket handed to vhci or to usbip-host
    notices a peer that vanished without a FIN (power loss, a cut cable) instead of waiting
    for hours. A peer that is merely frozen still answers probes from its kernel: only the
    session extension's pings (protocol/session.py) notice that.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
