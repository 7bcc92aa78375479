"""The lean Python server: the least a Python asyncio server can do per URB, for comparison.

It answers what the C echo server answers (see ``c/echo_server.c``: OP_REQ_IMPORT of any busid
``B-D``, GET_DESCRIPTOR(device), other control transfers, a per-connection bulk FIFO), the way
a Python server can do it at the least cost: one uvloop Protocol, each read's commands unpacked
with one precompiled struct and answered in one write, nothing checked that the load generator
does not need. No device model, no flow control, no error handling: it is not a server to
use, only the measure of what the interpreter and the event loop cost before usbwire adds
anything. Where usbwire misses a goal that this server misses too, CPython is the limit.

Usage: python -m bench._lean_server [--host ADDR] [--port N]   (says "listening on ADDR:PORT")
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys

OP_REQ_IMPORT = 0x8003
OP_REP_IMPORT = 0x0003
RET_SUBMIT, CMD_UNLINK, RET_UNLINK = 3, 2, 4  # any other command is taken for a CMD_SUBMIT
HEADER = 48
COMMAND = struct.Struct(">IIIII IiiiI 8s")  # command .. ep, flags, length, start, packets, interval, setup
REPLY = struct.Struct(">IIIII iiiii 8x")  # command .. ep, status, actual, start, packets, errors
DEVICE_RECORD = struct.Struct(">256s32sIIIHHHBBBBBB")
DEVICE_DESCRIPTOR = bytes.fromhex("1201000200000040 6b1d0401 0001 010203 01".replace(" ", ""))


def import_reply(busid: bytes) -> bytes:
    bus, _, dev = busid.partition(b"-")
    busnum, devnum = (int(bus), int(dev) + 1) if bus.isdigit() and dev.isdigit() else (1, 2)
    record = DEVICE_RECORD.pack(b"/lean/" + busid, busid, busnum, devnum, 3, 0x1D6B, 0x0104, 1, 0xFF, 0, 0, 1, 1, 1)
    return struct.pack(">HHI", 0x0111, OP_REP_IMPORT, 0) + record


class LeanProtocol(asyncio.Protocol):
    """One client: its OP_REQ_IMPORT, then its URBs, answered from each read's bytes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.imported = False
        self.pending = b""
        self.fifo = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.pending:
            data = self.pending + data
        if not self.imported:
            if len(data) < 40:
                self.pending = data
                return
            if struct.unpack_from(">H", data, 2)[0] != OP_REQ_IMPORT:
                self.transport.close()
                return
            self.imported = True
            self.transport.write(import_reply(data[8:40].rstrip(b"\0")))
            data = data[40:]
        out: list[bytes] = []
        position, end = 0, len(data)
        while end - position >= HEADER:
            command, seqnum, _, direction, ep, _, length, start, packets, _, setup = COMMAND.unpack_from(data, position)
            if command == CMD_UNLINK:
                out.append(REPLY.pack(RET_UNLINK, seqnum, 0, 0, 0, 0, 0, 0, 0, 0))
                position += HEADER
                continue
            if direction == 0:  # OUT: the data follows the header
                if end - position < HEADER + length:
                    break
                if ep:
                    self.fifo += data[position + HEADER : position + HEADER + length]
                out.append(REPLY.pack(RET_SUBMIT, seqnum, 0, 0, 0, 0, length, start, packets, 0))
                position += HEADER + length
                continue
            if ep == 0:
                wanted = min(length, setup[6] | setup[7] << 8)
                is_device_descriptor = setup[0] == 0x80 and setup[1] == 6 and setup[3] == 1
                answer = DEVICE_DESCRIPTOR[:wanted] if is_device_descriptor else bytes(wanted)
            elif self.fifo:
                answer = bytes(self.fifo[:length])
                del self.fifo[:length]
            else:
                answer = bytes(length)
            out.append(REPLY.pack(RET_SUBMIT, seqnum, 0, 0, 0, 0, len(answer), start, packets, 0) + answer)
            position += HEADER
        self.pending = data[position:]
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(LeanProtocol, host, port)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._lean_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
