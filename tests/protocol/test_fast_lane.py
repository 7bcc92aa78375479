"""The server's fast lane answers plain CMD_SUBMITs exactly as the full event path would.

``ServerConnection.fast_lane`` reads commands straight from the bytes and packs each answer
without an event. It must never disagree with ``next_event`` + ``answer``: same reply bytes,
same order, the same PDUs refused with the same errors, nothing lost between the two.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.protocol.pairs import DEVICE, chunks, imported_pair, next_received
from tests.protocol.strategies import bulk_submits, control_submits, interrupt_submits
from tests.raw import setup_packet, urb_header
from usbwire.errors import LocalProtocolError, RemoteProtocolError
from usbwire.protocol import CmdSubmit, CmdUnlink, Direction, Errno, ServerConnection, codec
from usbwire.protocol.connection import MAX_BATCH

DEVID = DEVICE.devid
GET_DEVICE_DESCRIPTOR = setup_packet(0x80, 6, 0x0100, 0, 18)
DESCRIPTOR = bytes(range(18))
MAX_TRANSFER = 4096
# Flag bits the tests' device looks at (any value: flags are carried, not judged, by the lane).
DECLINE, FAIL = 0x1000_0000, 0x2000_0000

Answer = tuple[int, int, bytes]


def device_answer(ep: int, direction: int, flags: int, length: int, setup: bytes, data: bytes) -> Answer | None:
    """A device whose answer depends on the request alone, so both paths can be asked."""
    if flags & DECLINE:
        return None
    if flags & FAIL:
        return -Errno.EPIPE, 0, b""
    short = flags & 3  # some transfers come back short
    actual = max(0, length - short)
    if direction == Direction.IN:
        return 0, actual, bytes((ep + i) & 0xFF for i in range(actual))
    return 0, actual, b""


def full_path_answer(server: ServerConnection, cmd: CmdSubmit) -> bytes:
    answer = device_answer(
        cmd.ep, cmd.direction, cmd.transfer_flags & ~DECLINE, cmd.transfer_buffer_length, cmd.setup, cmd.data
    )
    assert answer is not None
    header, data = server.answer(cmd, *answer)
    return header + data


def imported_server() -> ServerConnection:
    return imported_pair(DEVICE, max_transfer=MAX_TRANSFER).server


def through_the_lane(pieces: list[bytes], most: int = MAX_BATCH) -> bytes:
    """Feed ``pieces`` to a server's fast lane as the server does: in groups of ``most`` while
    it answers; what it hands over goes the full way at once, what it holds waits."""
    server = imported_server()
    lane = server.fast_lane(device_answer)
    out: list[bytes] = []
    for piece in pieces:
        if lane(piece, out, most):
            while lane(b"", out, most):
                pass
        assert server.drained == (server.buffered == 0)  # the server's cheap "anything left?"
        while server.buffered > server.held and (event := next_received(server)) is not None:
            assert isinstance(event, CmdSubmit)  # only a declined command is handed over
            out.append(full_path_answer(server, event))
            while lane(b"", out, most):
                pass
    assert server.outstanding == 0
    assert server.buffered == 0
    return b"".join(out)


def through_events(stream: bytes) -> bytes:
    server = imported_server()
    if stream:  # (b"" would be the end of the stream)
        server.receive_data(stream)
    replies = []
    while (event := next_received(server)) is not None:
        assert isinstance(event, CmdSubmit)
        replies.append(full_path_answer(server, event))
    return b"".join(replies)


plain_submits = st.one_of(
    control_submits(devid=st.just(DEVID)),
    bulk_submits(devid=st.just(DEVID)),
    interrupt_submits(devid=st.just(DEVID)),
)


@st.composite
def command_streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Plain commands with distinct seqnums, some declined or failed, and where to cut them."""
    commands = draw(st.lists(plain_submits, max_size=12))
    flags = draw(st.lists(st.sampled_from([0, 1, 2, DECLINE, FAIL]), min_size=len(commands), max_size=len(commands)))
    stream = b"".join(
        codec.encode_cmd_submit(dataclasses.replace(cmd, seqnum=seqnum, transfer_flags=cmd.transfer_flags & 3 | flag))
        for seqnum, (cmd, flag) in enumerate(zip(commands, flags, strict=True), start=1)
    )
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=6))
    return stream, cuts


@given(command_streams(), st.sampled_from([1, 2, 12, MAX_BATCH]))
def test_the_lane_answers_byte_for_byte_as_the_event_path_however_the_stream_is_cut(
    case: tuple[bytes, list[int]], most: int
) -> None:
    stream, cuts = case
    assert through_the_lane(chunks(stream, cuts), most) == through_events(stream)


def submit(seqnum: int, *, ep: int = 0, direction: int = Direction.IN, length: int = 18, **fields: int) -> bytes:
    setup = GET_DEVICE_DESCRIPTOR if ep == 0 else bytes(8)
    header = urb_header(
        devid=DEVID, ep=ep, seqnum=seqnum, direction=direction, transfer_buffer_length=length, setup=setup, **fields
    )
    return header + (bytes(length) if direction == Direction.OUT else b"")


def descriptor(ep: int, direction: int, flags: int, length: int, setup: bytes, data: bytes) -> Answer:
    return 0, len(DESCRIPTOR), DESCRIPTOR


def test_a_command_the_device_declines_waits_whole_for_next_event() -> None:
    server = imported_server()
    lane = server.fast_lane(lambda *request: None)
    out: list[bytes] = []
    assert lane(submit(7, ep=1, direction=Direction.OUT, length=5), out) == 0
    assert out == []
    event = next_received(server)
    assert isinstance(event, CmdSubmit)
    assert (event.seqnum, event.ep, event.data) == (7, 1, bytes(5))
    assert server.outstanding == 1


def test_a_command_behind_an_unanswered_one_of_its_endpoint_waits_for_it() -> None:
    # Each endpoint completes in submission order: while the full path holds a command, the
    # lane hands over the next ones for that endpoint and answers the other endpoints'.
    server = imported_server()
    server.receive_data(submit(5, ep=1, length=8))  # a bulk IN the device answers later
    assert isinstance(next_received(server), CmdSubmit)
    lane = server.fast_lane(device_answer)
    out: list[bytes] = []
    assert lane(submit(6, ep=1, direction=Direction.OUT, length=4) + submit(7), out) == 2
    assert lane(submit(8, ep=1, length=8), out) == 0
    behind = next_received(server)
    assert isinstance(behind, CmdSubmit)
    assert behind.seqnum == 8
    assert [struct.unpack_from(">I", reply, 4)[0] for reply in out if len(reply) == 48] == [6, 7]


def test_the_control_pipe_is_one_queue_for_both_directions() -> None:
    server = imported_server()
    server.receive_data(submit(1, transfer_flags=DECLINE))
    assert isinstance(next_received(server), CmdSubmit)
    lane = server.fast_lane(device_answer)
    set_configuration = urb_header(devid=DEVID, ep=0, seqnum=2, direction=0, setup=setup_packet(0, 9, 1, 0, 0))
    assert lane(set_configuration, []) == 0
    behind = next_received(server)
    assert isinstance(behind, CmdSubmit)
    assert (behind.seqnum, behind.direction) == (2, Direction.OUT)


def test_the_lane_stops_at_an_unlink_and_goes_on_after_it() -> None:
    server = imported_server()
    lane = server.fast_lane(descriptor)
    unlink = urb_header(2, devid=DEVID, ep=0, seqnum=2, direction=0)
    out: list[bytes] = []
    assert lane(submit(1) + unlink + submit(3), out) == 1
    assert isinstance(next_received(server), CmdUnlink)
    assert lane(b"", out) == 1
    seqnums = [struct.unpack_from(">I", reply, 4)[0] for reply in out if len(reply) == 48]
    assert seqnums == [1, 3]


def test_a_command_in_flight_on_the_full_path_keeps_its_seqnum_from_the_lane() -> None:
    server = imported_server()
    server.receive_data(submit(5, ep=1))
    assert isinstance(next_received(server), CmdSubmit)  # waiting: a bulk IN with no data yet
    lane = server.fast_lane(descriptor)
    assert lane(submit(5), []) == 0
    with pytest.raises(RemoteProtocolError) as refused:
        server.next_event()
    assert refused.value.field == "seqnum"


@pytest.mark.parametrize(
    ("pdu", "field"),
    [
        (
            urb_header(devid=DEVID + 1, ep=0, direction=1, transfer_buffer_length=18, setup=GET_DEVICE_DESCRIPTOR),
            "devid",
        ),
        (urb_header(devid=DEVID, ep=1, direction=2), "direction"),
        (urb_header(devid=DEVID, ep=16, direction=1), "ep"),
        (urb_header(devid=DEVID, ep=1, direction=1, transfer_buffer_length=MAX_TRANSFER + 1), "transfer_buffer_length"),
        (
            urb_header(devid=DEVID, ep=0, direction=1, transfer_buffer_length=64, setup=GET_DEVICE_DESCRIPTOR),
            "transfer_buffer_length",
        ),
        (
            urb_header(devid=DEVID, ep=0, direction=0, transfer_buffer_length=18, setup=GET_DEVICE_DESCRIPTOR)
            + bytes(18),
            "direction",
        ),
        (urb_header(9, devid=DEVID, ep=0), "command"),
    ],
    ids=["devid", "direction", "endpoint", "oversized", "wlength", "setup-direction", "unknown-command"],
)
def test_a_malformed_command_is_left_for_next_event_to_name(pdu: bytes, field: str) -> None:
    server = imported_server()
    lane = server.fast_lane(descriptor)
    out: list[bytes] = []
    assert lane(submit(1) + pdu + submit(2), out) == 1
    with pytest.raises(RemoteProtocolError) as refused:
        server.next_event()
    assert refused.value.field == field
    assert lane(b"", out) == 0  # the connection is broken: nothing more is answered


def test_a_command_cut_anywhere_is_answered_once_it_is_whole() -> None:
    stream = submit(1, ep=2, direction=Direction.OUT, length=100)
    for cut in (1, 47, 48, 147):
        server = imported_server()
        lane = server.fast_lane(lambda ep, direction, flags, length, setup, data: (0, len(data), b""))
        out: list[bytes] = []
        assert lane(stream[:cut], out) == 0
        assert lane(stream[cut:], out) == 1
        assert server.buffered == 0
        assert struct.unpack_from(">I", out[0], 24)[0] == 100  # actual_length


def echo_length(ep: int, direction: int, flags: int, length: int, setup: bytes, data: bytes) -> Answer:
    return 0, len(data), b""


def test_out_data_arriving_over_several_reads_is_held_by_the_lane_not_handed_over() -> None:
    stream = submit(1, ep=2, direction=Direction.OUT, length=100) + submit(2)
    server = imported_server()
    lane = server.fast_lane(lambda *request: echo_length(*request) if request[0] else descriptor(*request))
    out: list[bytes] = []
    for cut in ((0, 30), (30, 80), (80, 120)):  # the header, then the data, in three reads
        assert lane(stream[slice(*cut)], out) == 0
        assert server.buffered == server.held == cut[1]  # nothing for next_event to read
    assert lane(stream[120:], out) == 2
    assert (server.buffered, server.held) == (0, 0)
    assert [struct.unpack_from(">I", reply, 24)[0] for reply in out if len(reply) == 48] == [100, 18]


def test_commands_left_by_a_group_are_held_and_answered_by_the_next_call() -> None:
    server = imported_server()
    lane = server.fast_lane(descriptor)
    out: list[bytes] = []
    assert lane(submit(1) + submit(2) + submit(3), out, 1) == 1
    assert server.held == 96
    assert not server.drained
    assert lane(b"", out, 12) == 2
    assert server.buffered == 0
    assert server.drained


def test_a_stream_ending_inside_a_held_command_is_named_by_next_event() -> None:
    server = imported_server()
    lane = server.fast_lane(echo_length)
    assert lane(submit(1, ep=2, direction=Direction.OUT, length=100)[:90], []) == 0
    server.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="inside a PDU"):
        server.next_event()


def test_an_isochronous_command_still_arriving_is_handed_over_whole() -> None:
    iso = urb_header(devid=DEVID, ep=3, direction=Direction.OUT, transfer_buffer_length=20, number_of_packets=2)
    server = imported_server()
    lane = server.fast_lane(lambda *request: None if request[0] else descriptor(*request))
    assert lane(submit(1) + iso + bytes(10), []) == 1
    assert server.held == 0  # its size is not the lane's to know: next_event reads it
    assert server.buffered == 48 + 10


@pytest.mark.parametrize(
    "answer",
    [(0, 19, bytes(19)), (0, 18, bytes(17)), (0, 4, b"")],
    ids=["past-the-buffer", "length-disagrees", "no-in-data"],
)
def test_an_answer_that_does_not_fit_its_request_is_the_servers_own_error(answer: Answer) -> None:
    server = imported_server()
    replies = iter([(0, 18, DESCRIPTOR), answer])
    lane = server.fast_lane(lambda *request: next(replies))
    out: list[bytes] = []
    with pytest.raises(LocalProtocolError):
        lane(submit(1) + submit(2), out)
    assert len(out) == 2  # the first answer stands
    assert server.buffered == 48  # the second command was not taken


def test_an_out_transfer_is_answered_without_data() -> None:
    server = imported_server()
    lane = server.fast_lane(lambda *request: (0, 4, b"oops"))
    with pytest.raises(LocalProtocolError):
        lane(submit(1, ep=1, direction=Direction.OUT, length=4), [])


def test_the_lane_opens_only_once_a_device_is_imported() -> None:
    with pytest.raises(LocalProtocolError):
        ServerConnection().fast_lane(descriptor)
