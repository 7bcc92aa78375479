"""TLS for USB/IP connections: TLS 1.3 only, server certificates, optional client certificates.

Plain USB/IP has neither encryption nor authentication, so anyone who reaches port 3240 can
import any exported device. With TLS the server proves who it is, and with ``client_ca``
it only talks to clients holding a certificate that CA signed (mutual TLS).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable

from usbwire.errors import UsbwireError

PathLike = str | os.PathLike[str]


class TlsConfigError(UsbwireError):
    """A certificate, key or CA file cannot be used."""


def _load(action: str, path: PathLike | None, load: Callable[[], None]) -> None:
    try:
        load()
    except FileNotFoundError:
        raise TlsConfigError(f"{action}: {path}: no such file") from None
    except (ssl.SSLError, OSError, ValueError) as error:
        raise TlsConfigError(f"{action}: {path}: {error}") from None


def server_context(cert: PathLike, key: PathLike, client_ca: PathLike | None = None) -> ssl.SSLContext:
    """What ``usbwire serve --tls-cert --tls-key [--client-ca]`` listens with."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    _load("server certificate", cert, lambda: context.load_cert_chain(cert, key))
    if client_ca is not None:
        _load("client CA", client_ca, lambda: context.load_verify_locations(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: PathLike | None = None, cert: PathLike | None = None, key: PathLike | None = None
) -> ssl.SSLContext:
    """What ``--tls [--ca] [--cert --key]`` connects with: the server's name is checked."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca is not None:
        _load("CA", ca, lambda: context.load_verify_locations(ca))
    if cert is not None:
        _load("client certificate", cert, lambda: context.load_cert_chain(cert, key))
    return context


def describe(error: ssl.SSLError) -> str:
    """One line for a failed handshake, naming the usual causes."""
    reason = getattr(error, "verify_message", None) or getattr(error, "reason", None) or str(error)
    return f"TLS handshake failed: {reason}"
