"""Host and port as people read and write them: ``host:port``, an IPv6 host in brackets."""

from __future__ import annotations

from usbwire.errors import UsbwireError


def host_port(host: str, port: int) -> str:
    """``host:port``, or ``[host]:port`` for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str, default_host: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (HOST in brackets if IPv6) as (host, port), ``default_host`` when HOST
    is left out.

    Raises:
        UsbwireError: Not that shape, or a port outside 0-65535.
    """
    host, separator, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if separator else default_host
    try:
        port = int(port_text)
    except ValueError:
        raise UsbwireError(f"bad address {text!r}: expected [HOST:]PORT") from None
    if not 0 <= port <= 65535 or not host:
        raise UsbwireError(f"bad address {text!r}: expected [HOST:]PORT, PORT 0-65535")
    return host, port
