"""The asyncio USB/IP server: connections, export registry, URB dispatch, control socket."""

from usbwire.server.control import DEFAULT_CONTROL_PATH, ControlServer, request
from usbwire.server.registry import Registry
from usbwire.server.server import Limits, Server, Stats

__all__ = [
    "DEFAULT_CONTROL_PATH",
    "ControlServer",
    "Limits",
    "Registry",
    "Server",
    "Stats",
    "request",
]
