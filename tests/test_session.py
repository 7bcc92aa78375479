"""Resumable sessions end to end on loopback: a real server, the client's relay, a breakable path.

The test plays the kernel on the relay's local end of a socketpair, in plain USB/IP, and
breaks the TCP path between relay and server in the ways networks break: a cut, a silent
black hole, a frozen peer (SIGSTOP). The kernel's end must see only a delay.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.conftest import RunningServer, running_server, wait_released, wait_until
from tests.netcut import CuttablePath
from tests.processes import serve_process
from tests.wire import WireClient
from usbwire import Limits, client_tls_context, server_tls_context
from usbwire.client.handshake import connect, read_exactly
from usbwire.client.session import RESUME_REPLY_SIZE, SessionRelay, Ticket, import_resumable
from usbwire.client.vhci import start_relay
from usbwire.protocol import ClientConnection, Direction, OpStatus, RetSubmit
from usbwire.protocol.pdu import OpRepResume, OpReqResume
from usbwire.server.connection import UsbipProtocol

LOOPBACK = "1-1"
SET_CONFIGURATION = 9
FAST = Limits(resume_window=10.0, liveness_timeout=1.0)


@dataclass
class Session:
    client: WireClient  # the kernel's side
    relay: SessionRelay
    ticket: Ticket
    thread: threading.Thread | None = None
    pid: int | None = None


@contextlib.contextmanager
def resumable(
    port: int, *, dead_after: float = 1.0, forked: bool = False, tls: ssl.SSLContext | None = None
) -> Iterator[Session]:
    """Import the loopback device in a session through 127.0.0.1:``port``, relayed to a socketpair."""
    sock, device, ticket = import_resumable("127.0.0.1", LOOPBACK, port, tls=tls)
    assert ticket is not None
    kernel_end, relay_end = socket.socketpair()
    reconnect = functools.partial(connect, "127.0.0.1", port, tls=tls, token=None)
    relay = SessionRelay(sock, relay_end, ticket, reconnect, dead_after=dead_after)
    session = Session(WireClient.over(kernel_end, device), relay, ticket)
    if forked:
        session.pid = start_relay(relay.run, sock, relay_end)
    else:
        session.thread = threading.Thread(target=relay.run, name="session-relay", daemon=True)
        session.thread.start()
    configure(session.client)
    try:
        yield session
    finally:
        kernel_end.close()
        if session.thread is not None:
            session.thread.join(10)
        if session.pid is not None:
            os.kill(session.pid, signal.SIGKILL)
            os.waitpid(session.pid, 0)


@contextlib.contextmanager
def held(running: RunningServer) -> Iterator[None]:
    """The server's loop stands still inside the block (10 s at most): what reaches the server
    meanwhile waits in its sockets."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(10)

    running.loop.call_soon_threadsafe(hold)
    assert holding.wait(10)
    try:
        yield
    finally:
        release.set()


def holder(running: RunningServer, busid: str = LOOPBACK) -> UsbipProtocol | None:
    return running.call(lambda: running.server.registry.holder(busid))  # type: ignore[return-value]


def suspended(running: RunningServer) -> bool:
    def check() -> bool:
        owner = running.server.registry.holder(LOOPBACK)
        return isinstance(owner, UsbipProtocol) and owner.session is not None and owner.session.suspended

    return running.call(check)


def configure(client: WireClient) -> None:
    seqnum = client.control_out(0x00, SET_CONFIGURATION, 1, 0)
    assert answers(client, 1)[seqnum].status == 0


def round_trip(client: WireClient, payload: bytes) -> None:
    """Bulk OUT then IN on the loopback device: the bytes come back."""
    out = client.submit(ep=1, direction=Direction.OUT, data=payload)
    into = client.submit(ep=1, direction=Direction.IN, length=len(payload))
    replies = answers(client, 2)
    assert replies[out].status == 0 and replies[into].data == payload


def answers(client: WireClient, count: int) -> dict[int, RetSubmit]:
    replies: dict[int, RetSubmit] = {}
    while len(replies) < count:
        event = client.read_event()
        assert isinstance(event, RetSubmit), event
        replies[event.seqnum] = event
    return replies


def test_a_cut_path_is_resumed_and_a_pending_urb_completes_after_it() -> None:
    with running_server(FAST) as running, CuttablePath(running.port) as path, resumable(path.port) as session:
        client = session.client
        round_trip(client, b"before the cut")
        pending = client.submit(ep=1, direction=Direction.IN, length=64)  # waits on the device
        owner = holder(running)

        path.cut(refuse_for=1.0)
        # Queued by the "kernel" while the path is down: it waits in the socketpair.
        out = client.submit(ep=1, direction=Direction.OUT, data=b"during the outage")
        replies = answers(client, 2)

        assert replies[pending].data == b"during the outage" and replies[out].status == 0
        assert session.relay.resumptions == 1 and path.connections == 2
        assert holder(running) is owner  # the same import, never released
        round_trip(client, b"after")


def test_replies_lost_in_a_black_hole_are_sent_again() -> None:
    with running_server(FAST) as running, CuttablePath(running.port) as path, resumable(path.port) as session:
        client = session.client
        round_trip(client, b"warm up")
        path.swallow(True, replies_only=True)
        out = client.submit(ep=1, direction=Direction.OUT, data=b"x" * 1000)
        into = client.submit(ep=1, direction=Direction.IN, length=1000)
        wait_until(lambda: holder(running).status()["urbs"] == 5, "the server to answer into the hole")  # type: ignore[union-attr]
        received = session.relay.stream.received

        path.swallow(False)  # the old connection lost replies: it stays a black hole until the cut
        path.cut()
        replies = answers(client, 2)

        assert replies[out].status == 0 and replies[into].data == b"x" * 1000
        assert session.relay.stream.received > received  # they came again, on the new connection
        assert session.relay.resumptions == 1


def test_a_silent_path_is_noticed_by_both_sides_within_the_liveness_timeout() -> None:
    with running_server(FAST) as running, CuttablePath(running.port) as path, resumable(path.port) as session:
        round_trip(session.client, b"alive")
        path.swallow(True)  # half-open both ways: no FIN, no RST, just silence
        began = time.monotonic()
        wait_until(lambda: suspended(running), "the server to notice the silence", timeout_s=5)
        server_noticed = time.monotonic() - began
        wait_until(lambda: path.connections > 1, "the relay to reconnect", timeout_s=5)
        relay_noticed = time.monotonic() - began

        assert server_noticed < FAST.liveness_timeout + 1.5
        assert relay_noticed < 1.0 + 1.5
        path.swallow(False)
        wait_until(lambda: session.relay.resumptions == 1, "the resumption", timeout_s=10)
        round_trip(session.client, b"again")


def test_a_frozen_client_is_released_once_the_window_has_passed() -> None:
    limits = Limits(resume_window=2.0, liveness_timeout=1.0)
    with running_server(limits) as running, resumable(running.port, forked=True) as session:
        round_trip(session.client, b"alive")
        assert session.pid is not None
        os.kill(session.pid, signal.SIGSTOP)
        began = time.monotonic()
        wait_until(lambda: suspended(running), "the server to notice the frozen client", timeout_s=5)
        noticed = time.monotonic() - began
        wait_released(running, LOOPBACK, timeout_s=10)
        released = time.monotonic() - began

        assert noticed < limits.liveness_timeout + 1.5
        assert limits.resume_window <= released < limits.liveness_timeout + limits.resume_window + 1.5
        with WireClient(running.port) as other:
            assert other.import_(LOOPBACK).status == OpStatus.OK


def test_a_client_frozen_for_less_than_the_window_goes_on_where_it_stopped() -> None:
    with running_server(FAST) as running, resumable(running.port, forked=True) as session:
        round_trip(session.client, b"alive")
        owner = holder(running)
        pending = session.client.submit(ep=1, direction=Direction.IN, length=16)
        assert session.pid is not None
        os.kill(session.pid, signal.SIGSTOP)
        wait_until(lambda: suspended(running), "the server to notice the frozen client", timeout_s=5)
        os.kill(session.pid, signal.SIGCONT)

        out = session.client.submit(ep=1, direction=Direction.OUT, data=b"thawed")
        replies = answers(session.client, 2)
        assert replies[pending].data == b"thawed" and replies[out].status == 0
        assert holder(running) is owner


def test_a_detach_ends_the_session_without_waiting_for_the_window() -> None:
    with running_server(FAST) as running, resumable(running.port) as session:
        round_trip(session.client, b"bye")
        session.client.close()  # what vhci does on detach
        began = time.monotonic()
        wait_released(running, LOOPBACK, timeout_s=5)
        assert time.monotonic() - began < 1.0


def test_a_frozen_server_is_noticed_and_the_kernel_end_closed_after_the_window(tmp_path: Path) -> None:
    flags = ("--resume-window", "2", "--liveness-timeout", "1")
    with serve_process(tmp_path / "serve.log", *flags) as server, resumable(server.port) as session:
        assert session.ticket.window == 2.0
        round_trip(session.client, b"alive")
        server.freeze()
        began = time.monotonic()
        session.client.sock.settimeout(15)
        assert session.client.sock.recv(1) == b""  # the relay let go of the kernel's end
        elapsed = time.monotonic() - began
        # Noticed after about a second of silence, then the window of resumption attempts.
        assert 2.0 <= elapsed < 1.0 + 2.0 + 2.0


def test_a_server_without_sessions_gets_a_plain_import() -> None:
    with running_server(Limits(resume_window=0)) as running:
        sock, device, ticket = import_resumable("127.0.0.1", LOOPBACK, running.port)
        assert ticket is None
        with WireClient.over(sock, device) as client:
            configure(client)
            round_trip(client, b"plain USB/IP")


@pytest.mark.parametrize("wrong", ["id", "secret"])
def test_a_resumption_with_a_wrong_ticket_is_refused(wrong: str) -> None:
    with running_server(FAST) as running, resumable(running.port) as session:
        ticket = session.ticket
        session_id = bytes(16) if wrong == "id" else ticket.session_id
        secret = bytes(32) if wrong == "secret" else ticket.secret
        sock, conn = connect("127.0.0.1", running.port, 5.0, None, None)
        with sock:
            sock.sendall(conn.send(OpReqResume(session_id=session_id, secret=secret, received=0)))
            conn.receive_data(read_exactly(sock, RESUME_REPLY_SIZE))
            reply = conn.next_event()
            assert isinstance(reply, OpRepResume) and reply.status == OpStatus.NODEV
            assert sock.recv(1) == b""
        round_trip(session.client, b"the real session is untouched")


def test_a_client_connection_is_typed_through_the_session_ops() -> None:
    # The resume exchange ends the USB/IP state machine on that connection: the stream goes on
    # in the session's frames, which a ClientConnection must not try to parse.
    conn = ClientConnection()
    conn.send(OpReqResume(session_id=bytes(16), secret=bytes(32), received=5))
    conn.receive_data(bytes.fromhex("0111 00a4 00000000") + (7).to_bytes(8, "big"))
    assert conn.next_event() == OpRepResume(status=OpStatus.OK, received=7)
    assert conn.state.name == "DONE"


def test_an_idle_session_lives_on_its_pings() -> None:
    with running_server(FAST) as running, CuttablePath(running.port) as path, resumable(path.port) as session:
        owner = holder(running)
        # Several ping periods with no URB: only pings, pongs and acknowledgements cross.
        wait_until(lambda: session.relay.pings >= 3, "three pings from the relay", timeout_s=10)
        round_trip(session.client, b"still here")
        assert path.connections == 1 and session.relay.resumptions == 0
        assert holder(running) is owner


def test_a_device_unexported_while_its_client_is_away_ends_the_session() -> None:
    with running_server(FAST) as running, CuttablePath(running.port) as path, resumable(path.port) as session:
        round_trip(session.client, b"alive")
        path.cut(refuse_for=30)
        wait_until(lambda: suspended(running), "the server to hold the import")
        running.call(lambda: running.server.registry.remove(LOOPBACK))
        assert running.call(lambda: list(running.server.sessions)) == []
        path.cut()  # the path is back; the relay learns that the session is gone
        session.client.sock.settimeout(15)
        assert session.client.sock.recv(1) == b""


def test_a_session_over_tls_survives_a_cut(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server_context = server_tls_context(tmp_path / "server.pem", tmp_path / "server.pem")
    with (
        running_server(FAST, ssl=server_context) as running,
        CuttablePath(running.port) as path,
        resumable(path.port, tls=client_tls_context(tmp_path / "ca.pem")) as session,
    ):
        pending = session.client.submit(ep=1, direction=Direction.IN, length=5)
        path.cut(refuse_for=0.5)
        out = session.client.submit(ep=1, direction=Direction.OUT, data=b"again")
        replies = answers(session.client, 2)
        assert replies[pending].data == b"again" and replies[out].status == 0
        assert session.relay.resumptions == 1


def test_unacknowledged_output_is_bounded_and_all_of_it_arrives_after_a_resumption(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("usbwire.server.session.MAX_BACKLOG", 256 * 1024)
    with (
        running_server(FAST) as running,
        CuttablePath(running.port) as path,
        resumable(path.port, dead_after=30.0) as session,
    ):
        client = session.client
        owner = holder(running)
        assert owner is not None and owner.session is not None
        session_of_owner = owner.session
        path.swallow(True, replies_only=True)  # the client acknowledges nothing from now on
        chunks = [os.urandom(64 * 1024) for _ in range(16)]
        pairs, burst = [], []
        for chunk in chunks:
            out, out_bytes = client.submit_bytes(ep=1, direction=Direction.OUT, data=chunk)
            into, into_bytes = client.submit_bytes(ep=1, direction=Direction.IN, length=len(chunk))
            pairs.append((out, into))
            burst += [out_bytes, into_bytes]
        relayed = session.relay.stream.sent + sum(map(len, burst))
        # The whole burst waits in the server's socket, which then reads it in 256 KiB gulps of
        # several pairs each: the bound must hold within one gulp, not only between gulps.
        with held(running):
            client.sock.sendall(b"".join(burst))
            wait_until(lambda: session.relay.stream.sent == relayed, "the relay to pass the burst on")
        wait_until(lambda: running.call(session_of_owner.busy), "the server to stop taking URBs")
        answered = running.call(lambda: owner.dispatcher.urbs if owner.dispatcher else 0)
        assert running.call(lambda: session_of_owner.stream.backlog) <= 256 * 1024 + 64 * 1024 + 1024
        assert answered < 1 + 2 * 16  # configure, and only some of the pairs: the rest wait unread

        # The server holds the rest unread: after the resumption it takes it, acknowledging it
        # past what the resumption told the relay it holds, never short of it.
        path.swallow(False)
        path.cut()
        replies = answers(client, 2 * 16)
        assert all(replies[out].status == 0 for out, _ in pairs)
        assert [replies[into].data for _, into in pairs] == chunks


def test_every_server_connection_probes_a_silent_peer_within_seconds() -> None:
    # Plain USB/IP has no liveness of its own: TCP keepalive is what notices a client whose
    # host died or whose path was cut without a FIN (about 5 + 3 x 2 s).
    with running_server() as running, WireClient(running.port) as client:
        assert client.import_(LOOPBACK).status == OpStatus.OK

        def options() -> tuple[int, ...]:
            (connection,) = running.server._connections
            assert connection.transport is not None
            sock = connection.transport.get_extra_info("socket")
            return (
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            )

        assert running.call(options) == (1, 5, 2, 3)
