"""The OP phase over a blocking socket, for imports whose URB stream the kernel will carry.

Every read takes exactly the bytes of the expected reply: whatever follows OP_REP_IMPORT
belongs to the kernel (or to the relay feeding it), never to userspace buffers.
"""

from __future__ import annotations

import socket
import ssl

from usbwire import auth
from usbwire.client.remote import NO_CLIENT_CERTIFICATE, ServerUnreachable, unreachable
from usbwire.errors import AuthenticationFailed, ImportRefused, RemoteProtocolError
from usbwire.keepalive import keepalive
from usbwire.protocol.connection import ClientConnection
from usbwire.protocol.constants import AUTH_NONCE_SIZE, DEFAULT_PORT, DEVICE_RECORD_SIZE, OP_HEADER_SIZE, OpStatus
from usbwire.protocol.pdu import (
    NEED_DATA,
    DeviceInfo,
    OpRepAuth,
    OpRepChallenge,
    OpRepImport,
    OpReqAuth,
    OpReqChallenge,
    OpReqImport,
)
from usbwire.tls import describe as describe_tls_error


def connect(
    host: str, tcp_port: int, timeout: float, tls: ssl.SSLContext | None, token: str | None
) -> tuple[socket.socket, ClientConnection]:
    """A blocking connection (TLS with ``tls``, authenticated with ``token``) ready for an OP request.

    The socket keeps ``timeout`` for every later call until the caller changes it.
    """
    try:
        sock = socket.create_connection((host, tcp_port), timeout=timeout)
    except OSError as error:
        raise unreachable(error, host, tcp_port, timeout) from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        keepalive(sock)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=host)
            except ssl.SSLError as error:
                raise unreachable(error, host, tcp_port, timeout) from None
        conn = ClientConnection()
        if token is not None:
            _authenticate(sock, conn, token)
    except TimeoutError as error:  # it took the connection and said nothing (not a USB/IP server?)
        sock.close()
        raise unreachable(error, host, tcp_port, timeout) from None
    except BaseException:
        sock.close()
        raise
    return sock, conn


def import_socket(
    host: str,
    busid: str,
    tcp_port: int = DEFAULT_PORT,
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
    token: str | None = None,
) -> tuple[socket.socket, DeviceInfo]:
    """OP_REQ_IMPORT over a blocking socket (TLS with ``tls``); the socket is left in the URB
    phase, blocking without a timeout, for the kernel or a relay to carry on."""
    sock, conn = connect(host, tcp_port, timeout, tls, token)
    try:
        device = request_import(sock, conn, busid, f"{host}:{tcp_port}", tls is not None)
        sock.settimeout(None)
    except TimeoutError as error:
        sock.close()
        raise unreachable(error, host, tcp_port, timeout) from None
    except BaseException:
        sock.close()
        raise
    return sock, device


def request_import(sock: socket.socket, conn: ClientConnection, busid: str, where: str, tls: bool) -> DeviceInfo:
    """OP_REQ_IMPORT of ``busid``; the device record, or ImportRefused."""
    sock.sendall(conn.send(OpReqImport(busid=busid)))
    try:
        conn.receive_data(read_exactly(sock, OP_HEADER_SIZE))
    except ssl.SSLError as error:
        raise ServerUnreachable(f"{where}: {describe_tls_error(error)}") from None
    except (RemoteProtocolError, ConnectionResetError):
        # A TLS server refusing our certificate closes, or resets if our request crossed that.
        if not tls:
            raise
        raise ServerUnreachable(f"{where}: {NO_CLIENT_CERTIFICATE}") from None
    reply = conn.next_event()
    if reply is NEED_DATA:
        conn.receive_data(read_exactly(sock, DEVICE_RECORD_SIZE))
        reply = conn.next_event()
    assert isinstance(reply, OpRepImport)
    if reply.status != OpStatus.OK or reply.device is None:
        raise ImportRefused(busid, reply.status, _refusal(reply.status, busid))
    if reply.device.busid != busid:
        raise RemoteProtocolError(
            f"server answered for busid {reply.device.busid!r}", field="busid", value=reply.device.busid
        )
    return reply.device


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise RemoteProtocolError(
                "the server closed the connection during the import", field="length", value=len(data)
            )
        data += chunk
    return data


def _authenticate(sock: socket.socket, conn: ClientConnection, token: str) -> None:
    sock.sendall(conn.send(OpReqChallenge()))
    try:
        conn.receive_data(read_exactly(sock, OP_HEADER_SIZE + AUTH_NONCE_SIZE))
    except RemoteProtocolError:
        raise AuthenticationFailed("the server does not speak usbwire's token authentication") from None
    challenge = conn.next_event()
    assert isinstance(challenge, OpRepChallenge)
    mine = auth.nonce()
    sock.sendall(conn.send(OpReqAuth(nonce=mine, proof=auth.proof(token, challenge.nonce, mine))))
    conn.receive_data(read_exactly(sock, OP_HEADER_SIZE))
    verdict = conn.next_event()
    assert isinstance(verdict, OpRepAuth)
    if verdict.status != OpStatus.OK:
        raise AuthenticationFailed("the server refused the token")


def _refusal(status: OpStatus, busid: str) -> str:
    if status == OpStatus.NODEV:
        return f"busid {busid} is not exported by the server"
    if status == OpStatus.DEV_BUSY:
        return f"device {busid} is busy (imported by another client)"
    return status.text
