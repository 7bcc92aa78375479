"""The exception tree of usbwire. Imports nothing, so every layer can use it.

UsbwireError
├── ProtocolError            a PDU broke the USB/IP wire rules
│   ├── LocalProtocolError   we were asked to send something illegal
│   └── RemoteProtocolError  the peer sent something illegal
├── ImportRefused            the server answered OP_REP_IMPORT with an error status
├── ControlError             the control interface of a running server failed
└── Stall                    a device refuses a request (becomes -EPIPE on the wire)
"""

from __future__ import annotations


class UsbwireError(Exception):
    """Base of every error usbwire raises on purpose."""


class ProtocolError(UsbwireError):
    """A PDU broke the wire rules. ``field`` and ``value`` name what was wrong."""

    def __init__(self, message: str, *, field: str = "", value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class LocalProtocolError(ProtocolError):
    """We were asked to encode something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes the protocol does not allow; the connection cannot continue."""


class ImportRefused(UsbwireError):
    """OP_REP_IMPORT carried a non-zero status."""

    def __init__(self, busid: str, status: int, text: str) -> None:
        super().__init__(f"import of {busid!r} refused: {text}")
        self.busid = busid
        self.status = status


class AuthenticationFailed(UsbwireError):
    """The server refused the token's proof, or does not speak usbwire's authentication."""


class TransferError(UsbwireError):
    """A URB completed with a non-zero status (a negative Linux errno, e.g. -32 for a stall)."""

    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(message or f"transfer failed with status {status} ({_errno_name(-status)})")
        self.status = status

    @property
    def stalled(self) -> bool:
        return self.status == -32


class DeviceGone(TransferError):
    """The imported device's connection ended; every transfer in flight fails with this."""

    def __init__(self, reason: str) -> None:
        super().__init__(-19, f"device is gone: {reason}")


def _errno_name(number: int) -> str:
    import errno

    return errno.errorcode.get(number, "unknown")


class ControlError(UsbwireError):
    """A request to a running server's control socket failed."""


class Stall(UsbwireError):
    """Raised by a device handler to answer a request with a STALL handshake."""
