"""A blocking USB/IP test client on real sockets, built on the sans-I/O ClientConnection.

It speaks the protocol as the Linux vhci does (seqnums from 1, TCP_NODELAY, devid from the
import reply) but lets a test decide exactly what is sent and when.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from tests.raw import setup_packet
from usbwire.protocol import (
    NEED_DATA,
    ClientConnection,
    CmdSubmit,
    CmdUnlink,
    ConnectionClosed,
    DeviceInfo,
    Direction,
    Event,
    IsoPacket,
    OpRepDevlist,
    OpRepImport,
    OpReqDevlist,
    OpReqImport,
    OpStatus,
    State,
    UrbFlag,
)

TIMEOUT = 10.0


def connect(port: int, host: str = "127.0.0.1", source: str | None = None) -> socket.socket:
    """A TCP connection to the server, from the loopback address ``source`` if given."""
    sock = socket.create_connection((host, port), timeout=TIMEOUT, source_address=(source, 0) if source else None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (raises on timeout: it must close).

    A reset counts as closed too: a server aborting a connection whose receive queue still
    holds bytes makes the kernel send RST instead of FIN.
    """
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


@dataclass
class WireClient:
    port: int
    host: str = "127.0.0.1"
    sock: socket.socket = field(init=False)
    conn: ClientConnection = field(default_factory=ClientConnection)
    device: DeviceInfo | None = None
    next_seqnum: int = 1
    source: str | None = None

    def __post_init__(self) -> None:
        self.sock = connect(self.port, self.host, self.source)

    @classmethod
    def over(cls, sock: socket.socket, device: DeviceInfo) -> WireClient:
        """A client for a stream already in the URB phase, such as the kernel's end of a relay."""
        client = cls.__new__(cls)
        client.port, client.host, client.source, client.next_seqnum = 0, "", None, 1
        client.sock, client.device, client.conn = sock, device, ClientConnection()
        client.conn.state = State.URB
        sock.settimeout(TIMEOUT)
        return client

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_event(self) -> Event | ConnectionClosed:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                self.conn.receive_data(self.sock.recv(262144))
                continue
            return event  # type: ignore[return-value]

    def devlist(self) -> list[DeviceInfo]:
        self.sock.sendall(self.conn.send(OpReqDevlist()))
        reply = self.read_event()
        assert isinstance(reply, OpRepDevlist)
        return list(reply.devices)

    def import_(self, busid: str) -> OpRepImport:
        self.sock.sendall(self.conn.send(OpReqImport(busid=busid)))
        reply = self.read_event()
        assert isinstance(reply, OpRepImport)
        if reply.status == OpStatus.OK:
            self.device = reply.device
        return reply

    @property
    def devid(self) -> int:
        assert self.device is not None
        return self.device.devid

    def _seqnum(self) -> int:
        seqnum = self.next_seqnum
        self.next_seqnum += 1
        return seqnum

    def submit_bytes(
        self,
        *,
        ep: int,
        direction: Direction,
        length: int = 0,
        data: bytes = b"",
        setup: bytes = bytes(8),
        interval: int = 0,
        flags: int = 0,
        iso_packets: tuple[IsoPacket, ...] = (),
        start_frame: int = 0,
    ) -> tuple[int, bytes]:
        """The encoded CMD_SUBMIT (not sent yet), so tests can batch several in one write."""
        seqnum = self._seqnum()
        cmd = CmdSubmit(
            seqnum=seqnum,
            devid=self.devid,
            direction=direction,
            ep=ep,
            transfer_flags=flags | (UrbFlag.DIR_IN if direction == Direction.IN else 0),
            transfer_buffer_length=len(data) if direction == Direction.OUT else length,
            interval=interval,
            setup=setup,
            data=data,
            number_of_packets=len(iso_packets),
            start_frame=start_frame,
            iso_packets=iso_packets,
        )
        return seqnum, self.conn.send(cmd)

    def submit(self, **kwargs: object) -> int:
        seqnum, raw = self.submit_bytes(**kwargs)  # type: ignore[arg-type]
        self.sock.sendall(raw)
        return seqnum

    def unlink(self, target: int) -> int:
        seqnum = self._seqnum()
        self.sock.sendall(self.conn.send(CmdUnlink(seqnum=seqnum, devid=self.devid, unlink_seqnum=target)))
        return seqnum

    def control_in(self, request_type: int, request: int, value: int, index: int, length: int) -> int:
        return self.submit(
            ep=0,
            direction=Direction.IN,
            length=length,
            setup=setup_packet(request_type, request, value, index, length),
        )

    def control_out(self, request_type: int, request: int, value: int, index: int, data: bytes = b"") -> int:
        return self.submit(
            ep=0,
            direction=Direction.OUT,
            data=data,
            setup=setup_packet(request_type, request, value, index, len(data)),
        )
