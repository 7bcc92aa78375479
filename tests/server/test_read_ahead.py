"""After answering, a connection reads the client's next command itself, a few times at most.

A reply wakes the client; on a shared core it runs at once and has its next command sent
before the server runs again, so the server reads on at once instead of going back through
its event loop first (``UsbipProtocol._read_ahead``). These tests make that timing certain:
the device below has the client send its next command while the server is still answering
the current one (loopback delivers a send before it returns), and it counts the turns the
server's loop has had.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import uvloop

from tests.conftest import running_server, wait_released, wait_until
from tests.wire import TIMEOUT, WireClient, read_until_closed
from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.loopback import Loopback
from usbwire.protocol import Direction, RetSubmit
from usbwire.server.connection import READ_AHEAD_MOST, UsbipProtocol

BUSID = "7-1"
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class Prompting(Loopback):
    """A loopback device that calls ``prompt`` with the request's number (from 1) before it
    answers each control request, and notes how many turns the loop had had by then."""

    def __init__(self) -> None:
        super().__init__()
        self.prompt: Callable[[int], None] = lambda number: None
        self.turns_before: list[int] = []  # per request
        self.turns = 0
        self._turn_due = False

    def control_now(self, setup: bytes, data: bytes) -> bytes | None:
        self.turns_before.append(self.turns)
        if not self._turn_due:
            self._turn_due = True
            asyncio.get_running_loop().call_soon(self._turn)
        self.prompt(len(self.turns_before))
        return super().control_now(setup, data)

    def _turn(self) -> None:
        self.turns += 1
        self._turn_due = False


@dataclass
class Served:
    device: Prompting
    client: WireClient
    server_socket: int  # the descriptor of the server's end of the client's connection


@pytest.fixture(params=list(LOOPS))
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    device = Prompting()
    with running_server(extra_exports=[EmulatedExport(device, BUSID)], new_loop=LOOPS[request.param]) as running:
        with WireClient(running.port) as client:
            client.import_(BUSID)
            holder = running.call(lambda: running.server.registry.holder(BUSID))
            assert isinstance(holder, UsbipProtocol) and holder.transport is not None
            yield Served(device, client, holder.transport.get_extra_info("socket").fileno())
        wait_released(running, BUSID)


def get_descriptors(client: WireClient, count: int) -> list[bytes]:
    """``count`` GET_DESCRIPTOR(device) commands, encoded and not sent."""
    setup = bytes((0x80, 6, 0, 1, 0, 0, 18, 0))
    return [client.submit_bytes(ep=0, direction=Direction.IN, length=18, setup=setup)[1] for _ in range(count)]


def sending_the_next(served: Served, commands: list[bytes]) -> Callable[[int], None]:
    """A prompt that has the client send the command after request ``number``, if any, and
    returns once it can be read at the server's end (loopback nearly always delivers it
    within the send; a busy machine may leave that to its softirq thread)."""

    def prompt(number: int) -> None:
        if number < len(commands):
            served.client.sock.sendall(commands[number])
            readable, _, _ = select.select([served.server_socket], [], [], TIMEOUT)
            assert readable

    return prompt


def answers(client: WireClient, count: int) -> list[tuple[int, int]]:
    """(seqnum, status) of the next ``count`` replies."""
    replies = []
    for _ in range(count):
        reply = client.read_event()
        assert isinstance(reply, RetSubmit)
        assert len(reply.data) == reply.actual_length == 18
        replies.append((reply.seqnum, reply.status))
    return replies


def test_a_client_with_its_next_command_sent_is_read_on_without_a_turn_of_the_loop(served: Served) -> None:
    device, client = served.device, served.client
    total = 3 * (1 + READ_AHEAD_MOST)
    commands = get_descriptors(client, total)
    device.prompt = sending_the_next(served, commands)
    client.sock.sendall(commands[0])
    assert answers(client, total) == [(seqnum, 0) for seqnum in range(1, total + 1)]
    # One command read by the loop, then as many read ahead; then the loop has its turn.
    per_callback = [turn for turn in range(3) for _ in range(1 + READ_AHEAD_MOST)]
    assert device.turns_before == per_callback


def test_a_client_not_ready_is_not_read_ahead_on_the_next_callback(served: Served) -> None:
    device, client = served.device, served.client
    commands = get_descriptors(client, 4)
    client.sock.sendall(commands[0])
    assert answers(client, 1) == [(1, 0)]  # read ahead after it: nothing there yet
    wait_until(lambda: device.turns == 1, "the server's loop to have its turn")
    device.prompt = sending_the_next(served, commands)
    client.sock.sendall(commands[1])
    assert answers(client, 3) == [(2, 0), (3, 0), (4, 0)]
    # Command 3 waited for the loop (no read ahead right after a miss); 4 was read ahead again.
    assert device.turns_before == [0, 1, 2, 2]


def test_a_client_closing_its_end_is_ended_as_usual_when_a_read_ahead_finds_it(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    device, client = served.device, served.client
    device.prompt = lambda number: client.sock.shutdown(socket.SHUT_WR)
    caplog.set_level(logging.INFO, logger="usbwire.server")
    client.sock.sendall(get_descriptors(client, 1)[0])
    assert answers(client, 1) == [(1, 0)]
    assert read_until_closed(client.sock) == b""
    wait_until(lambda: f"released {BUSID}" in caplog.text, "the server to release the device")
    assert [r.levelname for r in caplog.records if BUSID in r.getMessage() and "released" in r.getMessage()] == ["INFO"]
