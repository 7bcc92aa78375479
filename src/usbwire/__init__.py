"""usbwire: USB devices shared over TCP/IP, wire-compatible with Linux USB/IP."""

from importlib.metadata import PackageNotFoundError, version

from usbwire.backends.usbip_host import BindError, bind, local_devices, unbind
from usbwire.certs import client as certs_client
from usbwire.certs import init as certs_init
from usbwire.client import ServerUnreachable, SyncDevice, connect, import_device, list_devices
from usbwire.client.persist import Persistent, persistent_states
from usbwire.client.vhci import Vhci, VhciError
from usbwire.client.vhci import attach as vhci_attach
from usbwire.config import load as load_config
from usbwire.devices.uvc import WebcamConfig
from usbwire.errors import (
    AuthenticationFailed,
    ControlError,
    ImportRefused,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Stall,
    TransferError,
    UsbwireError,
)
from usbwire.protocol import DEFAULT_PORT, DeviceInfo, OpStatus, Speed
from usbwire.server import DEFAULT_CONTROL_PATH, ControlServer, Limits, Registry, Server
from usbwire.server import request as control_request
from usbwire.service import AudioOptions, DiskOptions, ServeOptions, run, serve
from usbwire.tls import TlsConfigError
from usbwire.tls import client_context as client_tls_context
from usbwire.tls import server_context as server_tls_context
from usbwire.usbids import load as load_usb_ids

try:
    __version__ = version("usbwire")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"

__all__ = [
    "DEFAULT_CONTROL_PATH",
    "DEFAULT_PORT",
    "AudioOptions",
    "AuthenticationFailed",
    "BindError",
    "ControlError",
    "ControlServer",
    "DeviceInfo",
    "DiskOptions",
    "ImportRefused",
    "Limits",
    "LocalProtocolError",
    "OpStatus",
    "Persistent",
    "ProtocolError",
    "Registry",
    "RemoteProtocolError",
    "ServeOptions",
    "Server",
    "ServerUnreachable",
    "Speed",
    "Stall",
    "SyncDevice",
    "TlsConfigError",
    "TransferError",
    "UsbwireError",
    "Vhci",
    "VhciError",
    "WebcamConfig",
    "__version__",
    "bind",
    "certs_client",
    "certs_init",
    "client_tls_context",
    "connect",
    "control_request",
    "import_device",
    "list_devices",
    "load_config",
    "load_usb_ids",
    "local_devices",
    "persistent_states",
    "run",
    "serve",
    "server_tls_context",
    "unbind",
    "vhci_attach",
]
