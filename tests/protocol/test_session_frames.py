"""The session extension's framing and replay (protocol/session.py), and its OP PDUs on the wire."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usbwire.errors import RemoteProtocolError
from usbwire.protocol import ClientConnection, OpStatus, ServerConnection, State
from usbwire.protocol.pdu import OpRepResume, OpRepSession, OpReqResume, OpReqSession
from usbwire.protocol.session import (
    FRAME_HEADER,
    MAX_FRAME,
    Ack,
    Data,
    Decoder,
    End,
    Frame,
    FrameType,
    Ping,
    Pong,
    Stream,
    encode,
)

counts = st.integers(0, 2**64 - 1)
frames = st.one_of(
    st.binary(max_size=300).map(Data),
    counts.map(Ack),
    counts.map(Ping),
    counts.map(Pong),
    st.just(End()),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(st.lists(frames, max_size=20), st.lists(st.integers(0, 10_000), max_size=10))
def test_frames_survive_any_cutting_of_the_byte_stream(sent: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(encode(frame) for frame in sent)
    decoder = Decoder()
    received = [frame for piece in split(wire, cuts) for frame in decoder.feed(piece)]
    assert received == sent


@given(
    st.lists(st.binary(min_size=1, max_size=500), min_size=1, max_size=15),
    st.integers(0, 100_000),
    st.integers(0, 100_000),
)
def test_a_resumption_gives_exactly_the_bytes_the_peer_lacks(chunks: list[bytes], lost_at: int, acked_at: int) -> None:
    """However much of the stream crossed before the break, and however much of it was
    acknowledged, the receiver ends with the sender's stream exactly once."""
    sender, receiver = Stream(), Stream()
    wire = b"".join(sender.send(chunk) for chunk in chunks)
    stream = b"".join(chunks)

    # The connection breaks after ``lost_at`` bytes: the rest, and any partial frame, is lost.
    got = b"".join(f.payload for f in receiver.receive(wire[: lost_at % (len(wire) + 1)]) if isinstance(f, Data))
    assert got == stream[: receiver.received]
    # Some of what arrived was acknowledged before the break.
    sender.receive(encode(Ack(acked_at % (receiver.received + 1))))

    receiver.resume(sender.received)  # a new connection for the receiver too
    again = b"".join(f.payload for f in receiver.receive(sender.resume(receiver.received)) if isinstance(f, Data))

    assert got + again == stream
    assert sender.backlog == len(again)  # what the peer had counts as acknowledged


def test_acknowledged_bytes_are_forgotten_and_the_backlog_shrinks() -> None:
    sender = Stream()
    sender.send(b"a" * 100)
    sender.send(b"b" * 100)
    assert sender.backlog == 200
    sender.receive(encode(Ack(150)))
    assert sender.backlog == 50
    assert sender.resume(150) == FRAME_HEADER.pack(FrameType.DATA, 50) + b"b" * 50


@pytest.mark.parametrize("count", [201, 99], ids=["more than was sent", "less than already acknowledged"])
def test_an_impossible_acknowledgement_is_a_protocol_error(count: int) -> None:
    sender = Stream()
    sender.send(b"x" * 200)
    sender.receive(encode(Ack(100)))
    with pytest.raises(RemoteProtocolError):
        sender.receive(encode(Ack(count)))
    with pytest.raises(RemoteProtocolError):
        sender.resume(count)


def test_a_big_send_is_split_into_frames_a_peer_accepts() -> None:
    sender, receiver = Stream(), Stream()
    payload = bytes(range(256)) * (3 * MAX_FRAME // 256 + 7)
    received = receiver.receive(sender.send(payload))
    assert [len(f.payload) for f in received if isinstance(f, Data)] == [MAX_FRAME] * 3 + [7 * 256]
    assert b"".join(f.payload for f in received if isinstance(f, Data)) == payload


@pytest.mark.parametrize(
    "header",
    [
        FRAME_HEADER.pack(FrameType.DATA, MAX_FRAME + 1),
        FRAME_HEADER.pack(FrameType.ACK, 4),
        FRAME_HEADER.pack(FrameType.END, 1),
        FRAME_HEADER.pack(9, 0),
    ],
    ids=["oversized DATA", "short ACK", "END with payload", "unknown type"],
)
def test_a_bad_frame_header_is_refused_before_its_payload_arrives(header: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        Decoder().feed(header)


SESSION_ID = bytes(range(16))
SECRET = bytes(range(100, 132))


def test_the_session_ops_on_the_wire() -> None:
    client, server = ClientConnection(), ServerConnection()
    request = client.send(OpReqSession(busid="1-1"))
    assert request == bytes.fromhex("0111 80a3 00000000") + b"1-1".ljust(32, b"\0")
    server.receive_data(request)
    assert server.next_event() == OpReqSession(busid="1-1")

    grant = OpRepSession(status=OpStatus.OK, session_id=SESSION_ID, secret=SECRET, window_ms=30_000)
    reply = server.send(grant)
    assert reply == bytes.fromhex("0111 00a3 00000000") + SESSION_ID + SECRET + (30_000).to_bytes(4, "big")
    client.receive_data(reply)
    assert client.next_event() == grant
    assert client.state is server.state is State.OP_REQUEST  # the import comes next, as usual


def test_the_resume_ops_on_the_wire() -> None:
    client, server = ClientConnection(), ServerConnection()
    request = client.send(OpReqResume(session_id=SESSION_ID, secret=SECRET, received=2**40))
    assert request == bytes.fromhex("0111 80a4 00000000") + SESSION_ID + SECRET + (2**40).to_bytes(8, "big")
    server.receive_data(request)
    assert server.next_event() == OpReqResume(session_id=SESSION_ID, secret=SECRET, received=2**40)
    client.receive_data(server.send(OpRepResume(status=OpStatus.NODEV)))
    assert client.next_event() == OpRepResume(status=OpStatus.NODEV)
    assert client.state is server.state is State.DONE
