"""Properties of the codec, checked through a client and a server connection wired in memory.

Every PDU survives encode -> decode unchanged, however the byte stream is cut into pieces, and
bytes that break the protocol only ever raise RemoteProtocolError, which then sticks.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocol.pairs import (
    DEVICE,
    Pair,
    Received,
    chunks,
    feed_client,
    feed_server,
    imported_pair,
    new_server,
    play,
    pump,
    requesting_client,
)
from tests.protocol.strategies import (
    Conversation,
    bulk_submits,
    cmd_submits,
    cmd_unlinks,
    control_submits,
    conversations,
    device_infos,
    devlist_conversations,
    interrupt_submits,
    iso_in_ret_submits,
    iso_submits,
    op_rep_devlists,
    op_rep_imports,
    op_rep_imports_ok,
    op_rep_imports_refused,
    op_req_imports,
    ret_submit_for,
    ret_submits,
    ret_unlinks,
    s32,
    seqnums,
    u16,
    u32,
    urb_conversations,
)
from usbwire.errors import RemoteProtocolError
from usbwire.protocol import (
    USBIP_VERSION,
    ClientConnection,
    CmdSubmit,
    CmdUnlink,
    Connection,
    ConnectionClosed,
    DeviceInfo,
    Direction,
    Errno,
    Event,
    OpRepDevlist,
    OpRepImport,
    OpReqDevlist,
    OpReqImport,
    OpStatus,
    RetUnlink,
    ServerConnection,
    codec,
    pack_iso_data,
    unpack_iso_data,
)

# Bounded so the whole file runs in a few seconds; raise them for a deeper local run.
ROUND_TRIP = settings(max_examples=60, deadline=None)
PROPERTY = settings(max_examples=100, deadline=None)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

import_devices = device_infos(with_interfaces=False)


# ---------------------------------------------------------------------------------------------
# The strategies themselves


@pytest.mark.parametrize(
    ("pdus", "encode", "size"),
    [
        pytest.param(op_rep_devlists, codec.encode_op_rep_devlist, None, id="OpRepDevlist"),
        pytest.param(op_req_imports, codec.encode_op_req_import, 40, id="OpReqImport"),
        pytest.param(op_rep_imports_ok, codec.encode_op_rep_import, 320, id="OpRepImport ok"),
        pytest.param(op_rep_imports_refused, codec.encode_op_rep_import, 8, id="OpRepImport error"),
        pytest.param(cmd_submits(), codec.encode_cmd_submit, None, id="CmdSubmit"),
        pytest.param(ret_submits, codec.encode_ret_submit, None, id="RetSubmit"),
        pytest.param(iso_in_ret_submits(), codec.encode_ret_submit, None, id="RetSubmit iso IN"),
        pytest.param(cmd_unlinks, codec.encode_cmd_unlink, 48, id="CmdUnlink"),
        pytest.param(ret_unlinks, codec.encode_ret_unlink, 48, id="RetUnlink"),
    ],
)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_strategies_draw_pdus_that_encode(
    pdus: st.SearchStrategy[Event], encode: Callable[[Any], bytes], size: int | None, data: st.DataObject
) -> None:
    encoded = encode(data.draw(pdus))
    assert len(encoded) == size if size is not None else len(encoded) >= 8


# ---------------------------------------------------------------------------------------------
# Round trips, one PDU at a time


def test_op_req_devlist_round_trips() -> None:
    pair = Pair()
    assert pair.to_server(OpReqDevlist()) == [OpReqDevlist()]


@ROUND_TRIP
@given(op_rep_devlists)
def test_op_rep_devlist_round_trips(reply: OpRepDevlist) -> None:
    pair = Pair()
    pair.to_server(OpReqDevlist())
    assert pair.to_client(reply) == [reply]


@ROUND_TRIP
@given(op_req_imports)
def test_op_req_import_round_trips(import_request: OpReqImport) -> None:
    assert Pair().to_server(import_request) == [import_request]


@ROUND_TRIP
@given(op_req_imports, op_rep_imports)
def test_op_rep_import_round_trips(import_request: OpReqImport, reply: OpRepImport) -> None:
    pair = Pair()
    pair.to_server(import_request)
    assert pair.to_client(reply) == [reply]


@pytest.mark.parametrize(
    "transfers",
    [control_submits, bulk_submits, interrupt_submits, iso_submits],
    ids=["control", "bulk", "interrupt", "iso"],
)
@ROUND_TRIP
@given(data=st.data())
def test_cmd_submit_round_trips(transfers: Callable[..., st.SearchStrategy[CmdSubmit]], data: st.DataObject) -> None:
    device = data.draw(import_devices)
    cmd = data.draw(transfers(devid=st.just(device.devid)))
    assert imported_pair(device).to_server(cmd) == [cmd]


@ROUND_TRIP
@given(data=st.data())
def test_ret_submit_round_trips(data: st.DataObject) -> None:
    device = data.draw(import_devices)
    cmd = data.draw(cmd_submits(devid=st.just(device.devid)))
    ret = data.draw(ret_submit_for(cmd))
    pair = imported_pair(device)
    pair.to_server(cmd)
    assert pair.to_client(ret) == [ret]
    assert pair.client.outstanding == pair.server.outstanding == 0


@ROUND_TRIP
@given(data=st.data())
def test_iso_in_ret_submit_round_trips_with_packed_data(data: st.DataObject) -> None:
    device = data.draw(import_devices)
    cmd = data.draw(iso_submits(devid=st.just(device.devid), min_packets=1, direction=Direction.IN))
    ret = data.draw(ret_submit_for(cmd))
    pair = imported_pair(device)
    pair.to_server(cmd)
    assert pair.to_client(ret) == [ret]
    assert len(ret.data) == ret.actual_length == sum(p.actual_length for p in ret.iso_packets)


@ROUND_TRIP
@given(data=st.data())
def test_iso_in_data_spread_to_offsets_packs_back_to_the_same_bytes(data: st.DataObject) -> None:
    cmd = data.draw(iso_submits(min_packets=1, direction=Direction.IN))
    ret = data.draw(ret_submit_for(cmd))
    spread = unpack_iso_data(ret.data, ret.iso_packets, cmd.transfer_buffer_length)
    assert len(spread) == cmd.transfer_buffer_length
    assert pack_iso_data(spread, ret.iso_packets) == ret.data


@ROUND_TRIP
@given(import_devices, seqnums, seqnums)
def test_cmd_unlink_round_trips(device: DeviceInfo, seqnum: int, target: int) -> None:
    unlink = CmdUnlink(seqnum=seqnum, devid=device.devid, unlink_seqnum=target)
    assert imported_pair(device).to_server(unlink) == [unlink]


@ROUND_TRIP
@given(data=st.data())
def test_ret_unlink_of_a_pending_submit_round_trips_and_ends_it(data: st.DataObject) -> None:
    device = data.draw(import_devices)
    cmd = data.draw(cmd_submits(devid=st.just(device.devid)))
    unlink_seqnum = data.draw(seqnums.filter(lambda s: s != cmd.seqnum))
    pair = imported_pair(device)
    pair.to_server(cmd)
    pair.to_server(CmdUnlink(seqnum=unlink_seqnum, devid=device.devid, unlink_seqnum=cmd.seqnum))
    reply = RetUnlink(seqnum=unlink_seqnum, status=-Errno.ECONNRESET)
    assert pair.to_client(reply) == [reply]
    assert pair.client.outstanding == pair.server.outstanding == 0


@ROUND_TRIP
@given(import_devices, seqnums, seqnums)
def test_ret_unlink_of_an_unknown_submit_round_trips_with_status_zero(
    device: DeviceInfo, seqnum: int, target: int
) -> None:
    pair = imported_pair(device)
    pair.to_server(CmdUnlink(seqnum=seqnum, devid=device.devid, unlink_seqnum=target))
    assert pair.to_client(RetUnlink(seqnum=seqnum)) == [RetUnlink(seqnum=seqnum)]


# ---------------------------------------------------------------------------------------------
# Whole conversations, and the same bytes cut anywhere


@PROPERTY
@given(conversations)
def test_conversation_round_trips(conversation: Conversation) -> None:
    played = play(conversation)
    assert played.server_received == list(conversation.client_sends)
    assert played.client_received == list(conversation.server_sends)


@PROPERTY
@given(conversations, st.data())
def test_client_stream_cut_anywhere_yields_the_same_events(conversation: Conversation, data: st.DataObject) -> None:
    stream = play(conversation).client_bytes
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    received = feed_server(conversation, chunks(stream, cuts))
    assert received == [*conversation.client_sends, ConnectionClosed()]


@PROPERTY
@given(conversations, st.data())
def test_server_stream_cut_anywhere_yields_the_same_events(conversation: Conversation, data: st.DataObject) -> None:
    stream = play(conversation).server_bytes
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    received = feed_client(conversation, chunks(stream, cuts))
    assert received == [*conversation.server_sends, ConnectionClosed()]


@settings(max_examples=25, deadline=None)
@given(st.one_of(devlist_conversations(), urb_conversations(max_submits=3)))
def test_streams_fed_one_byte_at_a_time_yield_the_same_events(
    conversation: Conversation,
) -> None:
    played = play(conversation)
    one_by_one = range(len(played.client_bytes))
    assert feed_server(conversation, chunks(played.client_bytes, one_by_one)) == [
        *conversation.client_sends,
        ConnectionClosed(),
    ]
    one_by_one = range(len(played.server_bytes))
    assert feed_client(conversation, chunks(played.server_bytes, one_by_one)) == [
        *conversation.server_sends,
        ConnectionClosed(),
    ]


# ---------------------------------------------------------------------------------------------
# Hostile bytes: only RemoteProtocolError, and it sticks

# The first bytes decide how far a reader gets, so most frames start with plausible values.
CLIENT_COMMANDS = (1, 2)
SERVER_COMMANDS = (3, 4)
OP_CODES = (0x8005, 0x8003, 0x0005, 0x0003)


def _mostly(draw: st.DrawFn, plausible: st.SearchStrategy[int], anything: st.SearchStrategy[int]) -> int:
    """A plausible value nine times in ten, so readers get past the first checks."""
    return draw(anything if draw(st.integers(0, 9)) == 0 else plausible)


@st.composite
def op_frames(draw: st.DrawFn) -> bytes:
    """An OP message: a plausible header, then a body sized like a real one, of random bytes."""
    header = struct.pack(
        ">HHI",
        _mostly(draw, st.just(USBIP_VERSION), u16),
        _mostly(draw, st.sampled_from(OP_CODES), u16),
        _mostly(draw, st.sampled_from([0, 1, 4]), u32),
    )
    count = struct.pack(">I", draw(st.one_of(st.integers(0, 3), u32)))
    body_size = draw(st.sampled_from([0, 4, 32, 312, 316, 628]) | st.integers(0, 700))
    body = draw(st.binary(min_size=body_size, max_size=body_size))
    return header + draw(st.sampled_from([b"", count])) + body


@st.composite
def urb_frames(draw: st.DrawFn, commands: Sequence[int], devid: int, seqnums: Sequence[int]) -> bytes:
    """A 48-byte URB header of plausible fields, then about as many bytes as it announces."""
    basic = struct.pack(
        ">IIIII",
        _mostly(draw, st.sampled_from(commands), u32),
        _mostly(draw, st.sampled_from(seqnums), u32) if seqnums else draw(u32),
        _mostly(draw, st.just(devid), u32),
        _mostly(draw, st.integers(0, 1), u32),
        _mostly(draw, st.integers(0, 15), u32),
    )
    # CMD_SUBMIT: flags, length, start_frame, packets, interval; RET_SUBMIT: status, actual_length,
    # start_frame, packets, error_count. Both then have 8 bytes (setup or padding).
    first, length, start_frame, packets, last = (_mostly(draw, st.integers(-2, 100), s32) for _ in range(5))
    command = struct.pack(">iiiii", first, length, start_frame, packets, last)
    setup = draw(st.binary(min_size=8, max_size=8))
    announced = max(0, length) + 16 * max(0, packets)
    size = min(draw(st.sampled_from([0, max(0, length), announced]) | st.integers(0, 300)), 2000)
    return basic + command + setup + draw(st.binary(min_size=size, max_size=size))


@st.composite
def mutated(draw: st.DrawFn, stream: bytes, *, keep: int = 0) -> bytes:
    """``stream`` with a few bytes flipped, inserted or deleted, or cut short after ``keep``."""
    out = bytearray(stream)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(min(keep, len(out)), len(out)))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if kind in ("flip", "set") and position < len(out):
            value = draw(st.integers(1, 255) if kind == "flip" else st.integers(0, 255))
            out[position] = out[position] ^ value if kind == "flip" else value
        elif kind == "insert":
            out[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del out[position : position + draw(st.integers(1, 8))]
        else:
            del out[position:]
    return bytes(out)


def _ignore(event: Received) -> None:
    pass


def _survives(conn: Connection, pieces: Iterable[bytes], on_event: Callable[[Received], object] = _ignore) -> None:
    """Feed ``pieces``; any error must be a RemoteProtocolError that every later call repeats."""
    try:
        pump(conn, pieces, on_event)
    except RemoteProtocolError as error:
        hypothesis.event(f"rejected: {error.field}")  # shown by --hypothesis-show-statistics
        with pytest.raises(RemoteProtocolError) as again:
            conn.next_event()
        assert again.value is error
        with pytest.raises(RemoteProtocolError):
            conn.next_event()


def _answering_server(
    device: DeviceInfo,
) -> tuple[ServerConnection, Callable[[Received], None]]:
    """A server that answers whichever OP request arrives, as usbipd would."""
    server = new_server()

    def reply(event: Received) -> None:
        if isinstance(event, OpReqDevlist):
            server.send(OpRepDevlist(devices=()))
        elif isinstance(event, OpReqImport):
            server.send(OpRepImport(status=OpStatus.OK, device=device))

    return server, reply


@FUZZ
@given(import_devices, st.binary(max_size=64) | op_frames(), st.data())
def test_hostile_bytes_to_a_server_raise_only_remote_protocol_error(
    device: DeviceInfo, stream: bytes, data: st.DataObject
) -> None:
    server, reply = _answering_server(device)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=4))
    _survives(server, chunks(stream, cuts), reply)


@FUZZ
@given(st.sampled_from([OpReqDevlist(), OpReqImport(busid="1-1")]), st.binary(max_size=64) | op_frames())
def test_hostile_bytes_to_a_client_awaiting_a_reply_raise_only_remote_protocol_error(
    op_request: OpReqDevlist | OpReqImport, stream: bytes
) -> None:
    client = ClientConnection()
    client.send(op_request)
    _survives(client, [stream])


@FUZZ
@given(import_devices, st.data())
def test_hostile_urb_frames_to_a_server_raise_only_remote_protocol_error(
    device: DeviceInfo, data: st.DataObject
) -> None:
    pair = imported_pair(device)
    frames = data.draw(st.lists(urb_frames(CLIENT_COMMANDS, device.devid, []), min_size=1, max_size=4))
    _survives(pair.server, [b"".join(frames)])


@FUZZ
@given(st.lists(cmd_submits(devid=st.just(DEVICE.devid)), max_size=3, unique_by=lambda c: c.seqnum), st.data())
def test_hostile_urb_frames_to_a_client_raise_only_remote_protocol_error(
    commands: list[CmdSubmit], data: st.DataObject
) -> None:
    pair = imported_pair(DEVICE)
    for command in commands:
        pair.to_server(command)
    seqnums = [c.seqnum for c in commands]
    frames = data.draw(st.lists(urb_frames(SERVER_COMMANDS, 0, seqnums), min_size=1, max_size=4))
    _survives(pair.client, [b"".join(frames)])


@FUZZ
@given(conversations, st.data())
def test_mutated_client_stream_raises_only_remote_protocol_error(
    conversation: Conversation, data: st.DataObject
) -> None:
    played = play(conversation)
    keep = data.draw(st.sampled_from([0, played.client_op_size]))
    stream = data.draw(mutated(played.client_bytes, keep=keep))
    device = data.draw(import_devices)
    if conversation.imported:
        reply = conversation.server_sends[0]
        assert isinstance(reply, OpRepImport) and reply.device is not None
        device = reply.device
    server, answer = _answering_server(device)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=4))
    _survives(server, chunks(stream, cuts), answer)


@FUZZ
@given(conversations, st.data())
def test_mutated_server_stream_raises_only_remote_protocol_error(
    conversation: Conversation, data: st.DataObject
) -> None:
    played = play(conversation)
    keep = data.draw(st.sampled_from([0, played.server_op_size]))
    stream = data.draw(mutated(played.server_bytes, keep=keep))
    client, send_commands = requesting_client(conversation)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=4))
    _survives(client, chunks(stream, cuts), send_commands)
