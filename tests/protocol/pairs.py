"""A ClientConnection and a ServerConnection wired together in memory, as h11's tests do."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeAlias, cast

from tests.protocol.strategies import ClientEvent, Conversation, ServerEvent, endpoint_is_iso
from usbwire.protocol import (
    NEED_DATA,
    ClientConnection,
    Connection,
    ConnectionClosed,
    DeviceInfo,
    Event,
    OpRepImport,
    OpReqDevlist,
    OpReqImport,
    OpStatus,
    ServerConnection,
    Speed,
    State,
)

Received: TypeAlias = Event | ConnectionClosed

# A plain high-speed device on bus 1, address 3: devid 0x00010003.
DEVICE = DeviceInfo(
    path="/sys/devices/pci0000:00/0000:00:14.0/usb1/1-2",
    busid="1-2",
    busnum=1,
    devnum=3,
    speed=Speed.HIGH,
    idVendor=0x1209,
    idProduct=0x0001,
    bcdDevice=0x0100,
)


def new_server(*, max_transfer: int | None = None) -> ServerConnection:
    """A server whose endpoint table is the one the strategies build commands for."""
    if max_transfer is None:
        return ServerConnection(is_iso=endpoint_is_iso)
    return ServerConnection(max_transfer=max_transfer, is_iso=endpoint_is_iso)


def next_received(conn: Connection) -> Received | None:
    """``conn.next_event()``, with ``None`` for NEED_DATA."""
    event = conn.next_event()
    return None if event is NEED_DATA else cast(Received, event)


def drain(conn: Connection) -> list[Received]:
    """Every event ``conn`` can produce from what it has buffered, up to NEED_DATA."""
    events: list[Received] = []
    while (event := next_received(conn)) is not None:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return events


@dataclass
class Pair:
    """Both ends of one connection; each ``to_*`` call moves one PDU across."""

    client: ClientConnection = field(default_factory=ClientConnection)
    server: ServerConnection = field(default_factory=new_server)

    def to_server(self, event: ClientEvent) -> list[Received]:
        self.server.receive_data(self.client.send(event))
        return drain(self.server)

    def to_client(self, event: ServerEvent) -> list[Received]:
        self.client.receive_data(self.server.send(event))
        return drain(self.client)


def imported_pair(device: DeviceInfo, *, max_transfer: int | None = None) -> Pair:
    """A pair in the URB phase after a real OP_REQ_IMPORT / OP_REP_IMPORT exchange."""
    pair = Pair(server=new_server(max_transfer=max_transfer))
    pair.to_server(OpReqImport(busid=device.busid))
    pair.to_client(OpRepImport(status=OpStatus.OK, device=device))
    assert pair.client.state is State.URB
    assert pair.server.state is State.URB
    return pair


@dataclass(frozen=True)
class Played:
    """What went over the wire in each direction, and what each side decoded."""

    client_bytes: bytes
    server_bytes: bytes
    server_received: list[Received]
    client_received: list[Received]
    # Size of the OP request / reply at the start of each stream; URB PDUs follow it.
    client_op_size: int
    server_op_size: int


def play(conversation: Conversation) -> Played:
    """Run ``conversation`` through a fresh pair, each side sending all it has in turn."""
    client, server = ClientConnection(), new_server()
    request, *commands = conversation.client_sends
    reply, *answers = conversation.server_sends
    client_bytes = [client.send(request)]
    server.receive_data(client_bytes[-1])
    server_received = drain(server)
    server_bytes = [server.send(reply)]
    client.receive_data(server_bytes[-1])
    client_received = drain(client)
    if commands:
        client_bytes += [client.send(event) for event in commands]
        server.receive_data(b"".join(client_bytes[1:]))
        server_received += drain(server)
    if answers:
        server_bytes += [server.send(event) for event in answers]
        client.receive_data(b"".join(server_bytes[1:]))
        client_received += drain(client)
    return Played(
        b"".join(client_bytes),
        b"".join(server_bytes),
        server_received,
        client_received,
        client_op_size=len(client_bytes[0]),
        server_op_size=len(server_bytes[0]),
    )


def chunks(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``stream`` split at every position in ``cuts`` (empty pieces dropped: b"" means EOF)."""
    bounds = [0, *sorted(set(cuts)), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def pump(conn: Connection, pieces: Iterable[bytes], on_event: Callable[[Received], object]) -> list[Received]:
    """Feed ``pieces`` then EOF to ``conn``, calling ``on_event`` as each event comes out.

    ``on_event`` may send (an OP reply, the URB commands), which can make bytes that are
    already buffered readable, so events are drained again after each one.
    """
    received: list[Received] = []
    for piece in [*pieces, b""]:
        conn.receive_data(piece)
        while (event := next_received(conn)) is not None:
            received.append(event)
            on_event(event)
            if isinstance(event, ConnectionClosed):
                return received
    return received


def feed_server(conversation: Conversation, pieces: Iterable[bytes]) -> list[Received]:
    """A fresh server reads the client's stream piece by piece, replying to the OP request."""
    server = new_server()

    def reply(event: Received) -> None:
        if isinstance(event, OpReqDevlist | OpReqImport):
            server.send(conversation.server_sends[0])

    return pump(server, pieces, reply)


def requesting_client(conversation: Conversation) -> tuple[ClientConnection, Callable[[Received], None]]:
    """A fresh client that has sent its OP request, and the event hook that sends its URB
    commands once the import is granted (for :func:`pump`)."""
    client = ClientConnection()
    request, *commands = conversation.client_sends
    client.send(request)

    def send_commands(event: Received) -> None:
        if isinstance(event, OpRepImport) and client.state is State.URB:
            for command in commands:
                client.send(command)

    return client, send_commands


def feed_client(conversation: Conversation, pieces: Iterable[bytes]) -> list[Received]:
    """A fresh client sends its request, then reads the server's stream piece by piece."""
    client, send_commands = requesting_client(conversation)
    return pump(client, pieces, send_commands)
