"""A client that reads slower than the server answers still gets every reply whole, in order.

Its replies back up: the socket takes part of a write, the transport keeps the rest and the
connection stops reading until that has drained. On asyncio's loop under Python 3.11 the
server writes a reply's pieces to the socket itself (``BufferedUsbipProtocol``), handing the
transport only what the socket did not take, so these tests check that path on both loops.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading

import pytest
import uvloop

from tests.conftest import RunningServer, running_server, wait_released, wait_until
from tests.wire import TIMEOUT, WireClient
from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.loopback import Loopback
from usbwire.protocol import Direction, RetSubmit
from usbwire.server.connection import UsbipProtocol

BUSID = "7-2"
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
TRANSFER = 64 * 1024
# 8 MiB of IN data: more than the client's small receive buffer and the server's send buffer
# (at most 4 MiB on Linux by default) hold together.
PAIRS = 128


def held_by_transport(running: RunningServer) -> int:
    """How many bytes of replies the server's transport keeps because the socket is full."""
    holder = running.server.registry.holder(BUSID)
    assert isinstance(holder, UsbipProtocol) and holder.transport is not None
    return holder.transport.get_write_buffer_size()


@pytest.mark.parametrize("loop", list(LOOPS))
def test_big_in_replies_backed_up_behind_a_client_not_reading_arrive_whole_and_in_order(loop: str) -> None:
    payloads = [random.Random(index).randbytes(TRANSFER) for index in range(PAIRS)]
    with running_server(extra_exports=[EmulatedExport(Loopback(), BUSID)], new_loop=LOOPS[loop]) as running:
        with WireClient(running.port) as client:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            client.import_(BUSID)
            configured = client.control_out(0x00, 9, 1, 0)  # SET_CONFIGURATION 1
            reply = client.read_event()
            assert isinstance(reply, RetSubmit) and (reply.seqnum, reply.status) == (configured, 0)
            commands = []
            for payload in payloads:
                commands.append(client.submit_bytes(ep=1, direction=Direction.OUT, data=payload)[1])
                commands.append(client.submit_bytes(ep=1, direction=Direction.IN, length=TRANSFER)[1])
            # Sent from a thread: the server stops reading once its replies back up, and the
            # rest of the commands go only as the replies are read below.
            sender = threading.Thread(target=client.sock.sendall, args=(b"".join(commands),), daemon=True)
            sender.start()
            wait_until(
                lambda: running.call(lambda: held_by_transport(running)) > 0,
                "the server's transport to keep replies the socket did not take",
            )
            first = configured + 1
            for index, payload in enumerate(payloads):
                written = client.read_event()
                assert isinstance(written, RetSubmit)
                assert (written.seqnum, written.status, written.actual_length) == (first + 2 * index, 0, TRANSFER)
                back = client.read_event()
                assert isinstance(back, RetSubmit)
                assert (back.seqnum, back.status) == (first + 2 * index + 1, 0)
                assert back.data == payload, f"IN transfer {index} differs from what its OUT sent"
            sender.join(TIMEOUT)
            assert not sender.is_alive()
        wait_released(running, BUSID)
