"""What the codec refuses: one test per rule, each naming the offending field.

Bytes from the peer that break a rule raise RemoteProtocolError (reference §2.1, §3.13); a PDU
we are asked to send at the wrong time raises LocalProtocolError and changes nothing.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import replace

import pytest

from tests.protocol.pairs import DEVICE, Pair, imported_pair
from tests.raw import op_header, setup_packet, urb_header
from usbwire.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from usbwire.protocol import (
    NEED_DATA,
    ClientConnection,
    CmdSubmit,
    CmdUnlink,
    Connection,
    ConnectionClosed,
    Direction,
    Errno,
    IsoPacket,
    OpRepDevlist,
    OpRepImport,
    OpReqDevlist,
    OpReqImport,
    OpStatus,
    RetSubmit,
    RetUnlink,
    ServerConnection,
    State,
)

DEVID = DEVICE.devid  # 0x00010003
BULK_EP = 1
cmd_submit = functools.partial(urb_header, devid=DEVID, ep=BULK_EP)
ISO_EP = 8  # isochronous in the endpoint table of tests.protocol.strategies


# ---------------------------------------------------------------------------------------------
# Builders for raw PDUs, so a test can break exactly one field


def ret_submit(
    *,
    seqnum: int = 1,
    status: int = 0,
    actual_length: int = 0,
    start_frame: int = 0,
    number_of_packets: int = 0,
    error_count: int = 0,
) -> bytes:
    """The 48-byte RET_SUBMIT header (no payload)."""
    return struct.pack(
        ">IIIIIiiiii8x",
        3,  # RET_SUBMIT
        seqnum,
        0,  # devid: 0 in replies
        0,  # direction
        0,  # ep
        status,
        actual_length,
        start_frame,
        number_of_packets,
        error_count,
    )


def iso_descriptor(offset: int, length: int, actual_length: int = 0, status: int = 0) -> bytes:
    return struct.pack(">IIIi", offset, length, actual_length, status)


def rejected(conn: Connection) -> RemoteProtocolError:
    """The RemoteProtocolError ``conn`` raises on its next event."""
    with pytest.raises(RemoteProtocolError) as error:
        conn.next_event()
    return error.value


def urb_server(*, max_transfer: int | None = None) -> ServerConnection:
    return imported_pair(DEVICE, max_transfer=max_transfer).server


def submitted(*commands: CmdSubmit | CmdUnlink) -> Pair:
    """An imported pair whose server has received ``commands``."""
    pair = imported_pair(DEVICE)
    for command in commands:
        pair.to_server(command)
    return pair


def bulk_in(seqnum: int = 1, length: int = 64) -> CmdSubmit:
    return CmdSubmit(seqnum=seqnum, devid=DEVID, direction=Direction.IN, ep=BULK_EP, transfer_buffer_length=length)


def bulk_out(seqnum: int = 1, data: bytes = b"abcd") -> CmdSubmit:
    return CmdSubmit(
        seqnum=seqnum,
        devid=DEVID,
        direction=Direction.OUT,
        ep=BULK_EP,
        transfer_buffer_length=len(data),
        data=data,
    )


def iso_in(seqnum: int = 1, packets: int = 2) -> CmdSubmit:
    return CmdSubmit(
        seqnum=seqnum,
        devid=DEVID,
        direction=Direction.IN,
        ep=ISO_EP,
        transfer_buffer_length=8 * packets,
        number_of_packets=packets,
        interval=1,
        iso_packets=tuple(IsoPacket(offset=8 * i, length=8) for i in range(packets)),
    )


# ---------------------------------------------------------------------------------------------
# Management phase, as read by the server


def test_request_with_wrong_version_is_rejected() -> None:
    server = ServerConnection()
    server.receive_data(op_header(version=0x0110))
    error = rejected(server)
    assert (error.field, error.value) == ("version", 0x0110)


def test_request_with_unknown_op_code_is_rejected() -> None:
    server = ServerConnection()
    server.receive_data(op_header(code=0x8002))  # OP_REQ_DEVINFO: defined, never implemented
    error = rejected(server)
    assert (error.field, error.value) == ("code", 0x8002)


def test_reply_code_sent_to_a_server_is_rejected() -> None:
    server = ServerConnection()
    server.receive_data(op_header(code=0x0005))  # OP_REP_DEVLIST, a reply
    assert rejected(server).field == "code"


def test_request_with_non_zero_status_is_rejected() -> None:
    # usbipd closes the connection without replying to such a request.
    server = ServerConnection()
    server.receive_data(op_header(status=1))
    error = rejected(server)
    assert (error.field, error.value) == ("status", 1)


def test_import_request_whose_busid_fills_all_32_bytes_is_rejected() -> None:
    server = ServerConnection()
    server.receive_data(op_header(code=0x8003) + b"1" * 32)  # no room for the NUL terminator
    assert rejected(server).field == "busid"


def test_import_request_whose_busid_is_not_utf8_is_rejected() -> None:
    server = ServerConnection()
    server.receive_data(op_header(code=0x8003) + b"\xff\xfe".ljust(32, b"\0"))
    assert rejected(server).field == "busid"


def test_op_header_cut_by_eof_is_rejected() -> None:
    server = ServerConnection()
    server.receive_data(op_header()[:5])
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    error = rejected(server)
    assert (error.field, error.value) == ("length", 5)


def test_import_request_cut_by_eof_inside_the_busid_is_rejected() -> None:
    server = ServerConnection()
    server.receive_data(op_header(code=0x8003) + b"1-2\0" + bytes(16))
    server.receive_data(b"")
    error = rejected(server)
    assert (error.field, error.value) == ("length", 28)


def test_bytes_after_the_devlist_exchange_are_rejected_by_the_server() -> None:
    pair = Pair()
    pair.to_server(OpReqDevlist())
    pair.server.send(OpRepDevlist())
    pair.server.receive_data(op_header())  # a second request on the same connection
    assert rejected(pair.server).field == "state"


# ---------------------------------------------------------------------------------------------
# Management phase, as read by the client


def test_reply_with_wrong_version_is_rejected() -> None:
    client = ClientConnection()
    client.send(OpReqDevlist())
    client.receive_data(op_header(version=0x0106, code=0x0005) + bytes(4))
    error = rejected(client)
    assert (error.field, error.value) == ("version", 0x0106)


def test_reply_to_another_operation_is_rejected() -> None:
    client = ClientConnection()
    client.send(OpReqImport(busid="1-2"))
    client.receive_data(op_header(code=0x0005) + bytes(4))  # a DEVLIST reply to an import
    error = rejected(client)
    assert (error.field, error.value) == ("code", 0x0005)


def test_import_reply_with_unknown_status_is_rejected() -> None:
    client = ClientConnection()
    client.send(OpReqImport(busid="1-2"))
    client.receive_data(op_header(code=0x0003, status=9))
    error = rejected(client)
    assert (error.field, error.value) == ("status", 9)


def test_device_record_with_unknown_speed_is_rejected() -> None:
    pair = Pair()
    pair.to_server(OpReqImport(busid="1-2"))
    record = bytearray(pair.server.send(OpRepImport(status=OpStatus.OK, device=DEVICE)))
    record[0x130:0x134] = struct.pack(">I", 7)  # speed (0x128 in the record): beyond SUPER_PLUS
    pair.client.receive_data(bytes(record))
    error = rejected(pair.client)
    assert (error.field, error.value) == ("speed", 7)


def test_devlist_reply_with_too_many_devices_is_rejected_before_they_arrive() -> None:
    client = ClientConnection()
    client.send(OpReqDevlist())
    client.receive_data(op_header(code=0x0005) + struct.pack(">I", 4097))  # ndev, no records
    error = rejected(client)
    assert (error.field, error.value) == ("ndev", 4097)


def test_data_after_the_devlist_reply_is_rejected() -> None:
    pair = Pair()
    pair.to_server(OpReqDevlist())
    pair.client.receive_data(pair.server.send(OpRepDevlist()) + b"\0")
    assert pair.client.next_event() == OpRepDevlist()
    error = rejected(pair.client)
    assert (error.field, error.value) == ("state", "DONE")


def test_devlist_reply_cut_by_eof_inside_a_record_is_rejected() -> None:
    pair = Pair()
    pair.to_server(OpReqDevlist())
    reply = pair.server.send(OpRepDevlist(devices=(DEVICE,)))
    pair.client.receive_data(reply[:100])
    pair.client.receive_data(b"")
    error = rejected(pair.client)
    assert (error.field, error.value) == ("length", 100)


# ---------------------------------------------------------------------------------------------
# URB phase, as read by the server


def test_unknown_urb_command_is_rejected() -> None:
    server = urb_server()
    server.receive_data(cmd_submit(command=9))
    error = rejected(server)
    assert (error.field, error.value) == ("command", 9)


def test_reply_command_sent_to_a_server_is_rejected() -> None:
    server = urb_server()
    server.receive_data(ret_submit())
    error = rejected(server)
    assert (error.field, error.value) == ("command", 3)


def test_urb_header_cut_by_eof_is_rejected() -> None:
    server = urb_server()
    server.receive_data(cmd_submit()[:30])
    server.receive_data(b"")
    error = rejected(server)
    assert (error.field, error.value) == ("length", 30)


def test_out_data_cut_by_eof_is_rejected() -> None:
    server = urb_server()
    server.receive_data(cmd_submit(transfer_buffer_length=10) + b"abcd")
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    error = rejected(server)
    assert (error.field, error.value) == ("length", 52)


def test_transfer_buffer_length_over_the_limit_is_rejected_from_the_header_alone() -> None:
    server = urb_server(max_transfer=1024)
    # Only the header: the 1025 OUT bytes it announces are neither awaited nor buffered.
    server.receive_data(cmd_submit(direction=Direction.OUT, transfer_buffer_length=1025))
    error = rejected(server)
    assert (error.field, error.value) == ("transfer_buffer_length", 1025)
    assert server.buffered == 48


def test_transfer_buffer_length_at_the_limit_is_accepted() -> None:
    server = urb_server(max_transfer=1024)
    server.receive_data(cmd_submit(direction=Direction.IN, transfer_buffer_length=1024))
    event = server.next_event()
    assert isinstance(event, CmdSubmit)
    assert event.transfer_buffer_length == 1024


def test_negative_transfer_buffer_length_is_rejected() -> None:
    server = urb_server()
    server.receive_data(cmd_submit(transfer_buffer_length=-1))
    error = rejected(server)
    assert (error.field, error.value) == ("transfer_buffer_length", -1)


def test_more_than_1024_iso_packets_are_rejected_from_the_header_alone() -> None:
    server = urb_server()
    server.receive_data(
        cmd_submit(ep=ISO_EP, direction=Direction.IN, transfer_buffer_length=1025, number_of_packets=1025)
    )
    error = rejected(server)
    assert (error.field, error.value) == ("number_of_packets", 1025)


def test_negative_iso_packet_count_is_rejected() -> None:
    server = urb_server()
    server.receive_data(cmd_submit(ep=ISO_EP, direction=Direction.IN, number_of_packets=-1))
    error = rejected(server)
    assert (error.field, error.value) == ("number_of_packets", -1)


def test_non_iso_endpoint_accepts_any_number_of_packets() -> None:
    # Linux clients send 0 or echo a previous RET_SUBMIT; 0xFFFFFFFF is seen in the wild (§3.6).
    server = urb_server()
    server.receive_data(cmd_submit(direction=Direction.IN, number_of_packets=-1))
    event = server.next_event()
    assert isinstance(event, CmdSubmit)
    assert (event.number_of_packets, event.iso_packets) == (-1, ())


def test_submitted_iso_packet_with_non_zero_actual_length_is_rejected() -> None:
    server = urb_server()
    server.receive_data(
        cmd_submit(ep=ISO_EP, direction=Direction.IN, transfer_buffer_length=16, number_of_packets=2)
        + iso_descriptor(0, 8, actual_length=0)
        + iso_descriptor(8, 8, actual_length=3)  # the sum over the packets must be 0 (§3.5)
    )
    error = rejected(server)
    assert (error.field, error.value) == ("iso actual_length", 3)


def test_iso_packet_past_the_end_of_the_buffer_is_rejected() -> None:
    server = urb_server()
    server.receive_data(
        cmd_submit(ep=ISO_EP, direction=Direction.IN, transfer_buffer_length=16, number_of_packets=2)
        + iso_descriptor(0, 8)
        + iso_descriptor(12, 8)  # ends at 20, the buffer at 16
    )
    error = rejected(server)
    assert (error.field, error.value) == ("iso offset", 12)


def test_control_transfer_whose_length_differs_from_wlength_is_rejected() -> None:
    server = urb_server()
    server.receive_data(
        cmd_submit(
            ep=0,
            direction=Direction.IN,
            transfer_buffer_length=64,
            setup=setup_packet(0x80, 6, 0x0100, 0, 18),  # GET_DESCRIPTOR, wLength 18
        )
    )
    error = rejected(server)
    assert (error.field, error.value) == ("transfer_buffer_length", 64)


def test_control_transfer_whose_direction_disagrees_with_bmrequesttype_is_rejected() -> None:
    server = urb_server()
    server.receive_data(
        cmd_submit(
            ep=0,
            direction=Direction.OUT,
            transfer_buffer_length=18,
            setup=setup_packet(0x80, 6, 0x0100, 0, 18),  # bit 7 set: device-to-host
        )
        + bytes(18)
    )
    error = rejected(server)
    assert (error.field, error.value) == ("direction", Direction.OUT)


def test_direction_2_is_rejected() -> None:
    server = urb_server()
    server.receive_data(cmd_submit(direction=2))
    error = rejected(server)
    assert (error.field, error.value) == ("direction", 2)


def test_endpoint_16_is_rejected() -> None:
    server = urb_server()
    server.receive_data(cmd_submit(ep=16))
    error = rejected(server)
    assert (error.field, error.value) == ("ep", 16)


def test_cmd_submit_for_another_device_is_rejected() -> None:
    server = urb_server()
    server.receive_data(cmd_submit(devid=0x0001_0004))
    error = rejected(server)
    assert (error.field, error.value) == ("devid", 0x0001_0004)


def test_cmd_unlink_for_another_device_is_rejected() -> None:
    server = urb_server()
    server.receive_data(struct.pack(">IIIIII24x", 2, 5, 0x0002_0003, 0, 0, 1))
    error = rejected(server)
    assert (error.field, error.value) == ("devid", 0x0002_0003)


def test_duplicate_in_flight_seqnum_is_rejected() -> None:
    server = urb_server()
    server.receive_data(cmd_submit(seqnum=5, direction=Direction.IN) * 2)
    assert isinstance(server.next_event(), CmdSubmit)
    error = rejected(server)
    assert (error.field, error.value) == ("seqnum", 5)


def test_seqnum_may_be_reused_once_answered() -> None:
    pair = submitted(bulk_in(seqnum=5))
    pair.to_client(RetSubmit(seqnum=5))
    assert pair.to_server(bulk_in(seqnum=5)) == [bulk_in(seqnum=5)]


# ---------------------------------------------------------------------------------------------
# URB phase, as read by the client


def test_ret_submit_for_an_unknown_seqnum_is_rejected() -> None:
    pair = submitted(bulk_in(seqnum=1))
    pair.client.receive_data(ret_submit(seqnum=2))
    error = rejected(pair.client)
    assert (error.field, error.value) == ("seqnum", 2)


def test_ret_submit_with_more_data_than_the_buffer_is_rejected() -> None:
    pair = submitted(bulk_in(length=64))
    pair.client.receive_data(ret_submit(actual_length=65) + bytes(65))
    error = rejected(pair.client)
    assert (error.field, error.value) == ("actual_length", 65)


def test_ret_submit_with_negative_actual_length_is_rejected() -> None:
    pair = submitted(bulk_in())
    pair.client.receive_data(ret_submit(actual_length=-1))
    error = rejected(pair.client)
    assert (error.field, error.value) == ("actual_length", -1)


def test_iso_ret_submit_with_more_packets_than_submitted_is_rejected() -> None:
    pair = submitted(iso_in(packets=2))
    pair.client.receive_data(ret_submit(number_of_packets=3) + iso_descriptor(0, 8) * 3)
    error = rejected(pair.client)
    assert (error.field, error.value) == ("number_of_packets", 3)


def test_iso_ret_submit_whose_packets_do_not_sum_to_actual_length_is_rejected() -> None:
    pair = submitted(iso_in(packets=2))
    pair.client.receive_data(
        ret_submit(actual_length=4, number_of_packets=2)
        + bytes(4)
        + iso_descriptor(0, 8, actual_length=3)
        + iso_descriptor(8, 8, actual_length=2)  # 3 + 2 != 4
    )
    error = rejected(pair.client)
    assert (error.field, error.value) == ("actual_length", 4)


def test_iso_ret_submit_packet_past_the_end_of_the_buffer_is_rejected() -> None:
    # Spreading the packed data back to offset 100 would write past the 16-byte buffer.
    pair = submitted(iso_in(packets=2))
    pair.client.receive_data(
        ret_submit(actual_length=4, number_of_packets=2)
        + bytes(4)
        + iso_descriptor(0, 8, actual_length=2)
        + iso_descriptor(100, 8, actual_length=2)
    )
    error = rejected(pair.client)
    assert (error.field, error.value) == ("iso offset", 100)


def test_ret_unlink_with_positive_status_is_rejected() -> None:
    pair = submitted(bulk_in())
    pair.client.receive_data(struct.pack(">IIIIIi24x", 4, 9, 0, 0, 0, 104))
    error = rejected(pair.client)
    assert (error.field, error.value) == ("status", 104)


def test_command_sent_to_a_client_is_rejected() -> None:
    pair = submitted(bulk_in())
    pair.client.receive_data(cmd_submit())
    error = rejected(pair.client)
    assert (error.field, error.value) == ("command", 1)


def test_ret_unlink_for_an_unknown_unlink_is_ignored() -> None:
    # vhci logs it and carries on (§3.10).
    pair = submitted(bulk_in())
    pair.client.receive_data(struct.pack(">IIIIIi24x", 4, 9, 0, 0, 0, 0))
    assert pair.client.next_event() == RetUnlink(seqnum=9, status=0)
    assert pair.client.outstanding == 1


# ---------------------------------------------------------------------------------------------
# After a remote error


def test_error_is_raised_again_on_every_later_call() -> None:
    server = urb_server()
    server.receive_data(cmd_submit(ep=16))
    error = rejected(server)
    server.receive_data(cmd_submit())  # a valid command after the bad one changes nothing
    assert rejected(server) is error
    assert rejected(server) is error


def test_remote_errors_are_protocol_errors() -> None:
    server = ServerConnection()
    server.receive_data(op_header(version=0))
    with pytest.raises(ProtocolError):
        server.next_event()


# ---------------------------------------------------------------------------------------------
# What we may not send


def test_server_may_not_answer_an_unknown_seqnum() -> None:
    pair = submitted(bulk_in(seqnum=1))
    with pytest.raises(LocalProtocolError) as error:
        pair.server.send(RetSubmit(seqnum=2))
    assert (error.value.field, error.value.value) == ("seqnum", 2)


def test_server_may_not_send_data_for_an_out_transfer() -> None:
    pair = submitted(bulk_out(seqnum=1, data=b"abcd"))
    with pytest.raises(LocalProtocolError) as error:
        pair.server.send(RetSubmit(seqnum=1, actual_length=4, data=b"abcd"))
    assert (error.value.field, error.value.value) == ("data", 4)


def test_server_may_not_answer_an_in_transfer_without_its_data() -> None:
    pair = submitted(bulk_in(seqnum=1))
    with pytest.raises(LocalProtocolError) as error:
        pair.server.send(RetSubmit(seqnum=1, actual_length=4))
    assert (error.value.field, error.value.value) == ("data", 0)


def test_server_may_not_return_more_than_the_buffer() -> None:
    pair = submitted(bulk_in(seqnum=1, length=2))
    with pytest.raises(LocalProtocolError) as error:
        pair.server.send(RetSubmit(seqnum=1, actual_length=3, data=b"abc"))
    assert (error.value.field, error.value.value) == ("actual_length", 3)


def test_server_may_not_return_more_iso_packets_than_submitted() -> None:
    pair = submitted(iso_in(seqnum=1, packets=1))
    reply = RetSubmit(seqnum=1, number_of_packets=2, iso_packets=(IsoPacket(0, 8), IsoPacket(0, 8)))
    with pytest.raises(LocalProtocolError) as error:
        pair.server.send(reply)
    assert (error.value.field, error.value.value) == ("number_of_packets", 2)


@pytest.mark.parametrize("number_of_packets", [0, -1])
def test_server_may_not_send_iso_descriptors_for_a_non_iso_request(number_of_packets: int) -> None:
    # The client reads no descriptors for a non-iso request: they would be parsed as a header.
    pair = submitted(replace(bulk_in(seqnum=1), number_of_packets=number_of_packets))
    reply = RetSubmit(seqnum=1, number_of_packets=1, iso_packets=(IsoPacket(0, 0),))
    with pytest.raises(LocalProtocolError) as error:
        pair.server.send(reply)
    assert (error.value.field, error.value.value) == ("iso_packets", 1)


def test_server_may_not_send_an_iso_packet_past_the_end_of_the_buffer() -> None:
    pair = submitted(iso_in(seqnum=1, packets=1))
    reply = RetSubmit(seqnum=1, number_of_packets=1, iso_packets=(IsoPacket(4, 8),))
    with pytest.raises(LocalProtocolError) as error:
        pair.server.send(reply)
    assert (error.value.field, error.value.value) == ("iso offset", 4)


def test_server_may_not_send_ret_unlink_status_0_while_the_target_is_unanswered() -> None:
    # The client would complete the URB as a success with no data.
    pair = submitted(bulk_in(seqnum=1), CmdUnlink(seqnum=2, devid=DEVID, unlink_seqnum=1))
    with pytest.raises(LocalProtocolError) as error:
        pair.server.send(RetUnlink(seqnum=2, status=0))
    assert (error.value.field, error.value.value) == ("status", 0)


def test_server_may_not_send_econnreset_for_an_already_answered_target() -> None:
    pair = submitted(bulk_in(seqnum=1), CmdUnlink(seqnum=2, devid=DEVID, unlink_seqnum=1))
    pair.to_client(RetSubmit(seqnum=1))
    with pytest.raises(LocalProtocolError) as error:
        pair.server.send(RetUnlink(seqnum=2, status=-Errno.ECONNRESET))
    assert (error.value.field, error.value.value) == ("status", -Errno.ECONNRESET)


def test_server_may_not_send_ret_submit_after_cancelling_it() -> None:
    # vhci tears the connection down on a RET_SUBMIT for a URB it no longer knows (§3.10).
    pair = submitted(bulk_in(seqnum=1), CmdUnlink(seqnum=2, devid=DEVID, unlink_seqnum=1))
    pair.to_client(RetUnlink(seqnum=2, status=-Errno.ECONNRESET))
    with pytest.raises(LocalProtocolError) as error:
        pair.server.send(RetSubmit(seqnum=1))
    assert error.value.field == "seqnum"


def test_server_may_not_answer_an_unlink_it_never_received() -> None:
    pair = submitted(bulk_in(seqnum=1))
    with pytest.raises(LocalProtocolError) as error:
        pair.server.send(RetUnlink(seqnum=2, status=-Errno.ECONNRESET))
    assert (error.value.field, error.value.value) == ("seqnum", 2)


def test_client_may_not_submit_before_importing() -> None:
    client = ClientConnection()
    with pytest.raises(LocalProtocolError) as error:
        client.send(bulk_in())
    assert (error.value.field, error.value.value) == ("state", "OP_REQUEST")


def test_client_may_not_submit_while_the_import_is_unanswered() -> None:
    client = ClientConnection()
    client.send(OpReqImport(busid="1-2"))
    with pytest.raises(LocalProtocolError) as error:
        client.send(bulk_in())
    assert (error.value.field, error.value.value) == ("state", "IMPORT_REPLY")


def test_client_may_not_reuse_an_outstanding_seqnum() -> None:
    pair = submitted(bulk_in(seqnum=1))
    with pytest.raises(LocalProtocolError) as error:
        pair.client.send(bulk_in(seqnum=1))
    assert (error.value.field, error.value.value) == ("seqnum", 1)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(OpRepDevlist(), id="OpRepDevlist"),
        pytest.param(OpRepImport(status=OpStatus.NODEV), id="OpRepImport"),
        pytest.param(RetSubmit(seqnum=1), id="RetSubmit"),
        pytest.param(RetUnlink(seqnum=1), id="RetUnlink"),
    ],
)
def test_client_may_not_send_a_server_pdu(event: OpRepDevlist | OpRepImport | RetSubmit | RetUnlink) -> None:
    with pytest.raises(LocalProtocolError) as error:
        ClientConnection().send(event)
    assert (error.value.field, error.value.value) == ("role", "client")


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(OpReqDevlist(), id="OpReqDevlist"),
        pytest.param(OpReqImport(busid="1-2"), id="OpReqImport"),
        pytest.param(bulk_in(), id="CmdSubmit"),
        pytest.param(CmdUnlink(seqnum=2, devid=DEVID, unlink_seqnum=1), id="CmdUnlink"),
    ],
)
def test_server_may_not_send_a_client_pdu(
    event: OpReqDevlist | OpReqImport | CmdSubmit | CmdUnlink,
) -> None:
    with pytest.raises(LocalProtocolError) as error:
        urb_server().send(event)
    assert (error.value.field, error.value.value) == ("role", "server")


def test_server_may_not_answer_devlist_with_an_import_reply() -> None:
    pair = Pair()
    pair.to_server(OpReqDevlist())
    with pytest.raises(LocalProtocolError) as error:
        pair.server.send(OpRepImport(status=OpStatus.NODEV))
    assert error.value.field == "state"


def test_refused_send_changes_nothing() -> None:
    pair = submitted(bulk_in(seqnum=1))
    with pytest.raises(LocalProtocolError):
        pair.server.send(RetSubmit(seqnum=1, actual_length=4))  # IN reply without its data
    assert (pair.server.state, pair.server.outstanding) == (State.URB, 1)
    assert pair.to_client(RetSubmit(seqnum=1, actual_length=2, data=b"ok")) == [
        RetSubmit(seqnum=1, actual_length=2, data=b"ok")
    ]


# ---------------------------------------------------------------------------------------------
# PDUs that could never go on the wire cannot be built


def test_busid_without_room_for_its_terminator_cannot_be_built() -> None:
    with pytest.raises(LocalProtocolError) as error:
        OpReqImport(busid="x" * 32)
    assert error.value.field == "busid"


def test_import_reply_ok_without_a_device_cannot_be_built() -> None:
    with pytest.raises(LocalProtocolError) as error:
        OpRepImport(status=OpStatus.OK)
    assert error.value.field == "status"


def test_in_request_with_data_cannot_be_built() -> None:
    with pytest.raises(LocalProtocolError) as error:
        CmdSubmit(seqnum=1, devid=DEVID, direction=Direction.IN, ep=1, transfer_buffer_length=1, data=b"x")
    assert error.value.field == "direction"


def test_control_transfer_with_iso_packets_cannot_be_built() -> None:
    # ep 0 is never isochronous, so a server would not read the descriptors.
    with pytest.raises(LocalProtocolError) as error:
        CmdSubmit(
            seqnum=1,
            devid=DEVID,
            direction=Direction.IN,
            ep=0,
            transfer_buffer_length=8,
            number_of_packets=1,
            setup=setup_packet(0x80, 6, 0x0100, 0, 8),
            iso_packets=(IsoPacket(0, 8),),
        )
    assert (error.value.field, error.value.value) == ("iso_packets", 1)


def test_iso_packet_with_more_bytes_than_its_length_cannot_be_built() -> None:
    with pytest.raises(LocalProtocolError) as error:
        IsoPacket(offset=0, length=8, actual_length=9)
    assert (error.value.field, error.value.value) == ("iso actual_length", 9)


def test_ret_submit_whose_data_disagrees_with_actual_length_cannot_be_built() -> None:
    with pytest.raises(LocalProtocolError) as error:
        RetSubmit(seqnum=1, actual_length=3, data=b"ab")
    assert (error.value.field, error.value.value) == ("actual_length", 3)


# ---------------------------------------------------------------------------------------------
# The state machine


def test_devlist_exchange_ends_in_done_on_both_sides() -> None:
    pair = Pair()
    pair.to_server(OpReqDevlist())
    assert (pair.client.state, pair.server.state) == (State.DEVLIST_REPLY, State.DEVLIST_REPLY)
    pair.to_client(OpRepDevlist())
    assert (pair.client.state, pair.server.state) == (State.DONE, State.DONE)


def test_refused_import_ends_in_done_on_both_sides() -> None:
    pair = Pair()
    pair.to_server(OpReqImport(busid="9-9"))
    assert (pair.client.state, pair.server.state) == (State.IMPORT_REPLY, State.IMPORT_REPLY)
    pair.to_client(OpRepImport(status=OpStatus.NODEV))
    assert (pair.client.state, pair.server.state) == (State.DONE, State.DONE)


def test_accepted_import_enters_the_urb_phase_with_the_devices_devid() -> None:
    pair = Pair()
    pair.to_server(OpReqImport(busid="1-2"))
    pair.to_client(OpRepImport(status=OpStatus.OK, device=DEVICE))
    assert (pair.client.state, pair.server.state) == (State.URB, State.URB)
    assert pair.server.devid == DEVID


def test_nothing_may_be_sent_after_done() -> None:
    pair = Pair()
    pair.to_server(OpReqDevlist())
    pair.to_client(OpRepDevlist())
    with pytest.raises(LocalProtocolError) as error:
        pair.client.send(OpReqDevlist())
    assert (error.value.field, error.value.value) == ("state", "DONE")


def test_clean_eof_at_a_pdu_boundary_is_connection_closed() -> None:
    pair = Pair()
    pair.to_server(OpReqDevlist())
    pair.to_client(OpRepDevlist())
    pair.client.receive_data(b"")
    assert pair.client.next_event() == ConnectionClosed()
