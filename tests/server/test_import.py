"""Importing the demo loopback device and moving data through it, as a USB/IP client would."""

from __future__ import annotations

import os
import struct

from tests.conftest import RunningServer, wait_released
from tests.wire import WireClient
from usbwire.protocol import Direction, Errno, OpStatus, RetSubmit, RetUnlink, Speed

LOOPBACK = "1-1"
GET_DESCRIPTOR = 6


def replies(client: WireClient, count: int) -> dict[int, RetSubmit | RetUnlink]:
    out: dict[int, RetSubmit | RetUnlink] = {}
    while len(out) < count:
        event = client.read_event()
        assert isinstance(event, RetSubmit | RetUnlink), event
        out[event.seqnum] = event
    return out


def test_devlist_shows_the_loopback_device(server: RunningServer) -> None:
    with WireClient(server.port) as client:
        devices = {d.busid: d for d in client.devlist()}
    device = devices[LOOPBACK]
    assert (device.busid, device.idVendor, device.idProduct) == (LOOPBACK, 0x1209, 0x0001)
    assert device.speed == Speed.HIGH
    assert [(i.bInterfaceClass, i.bInterfaceSubClass) for i in device.interfaces] == [(0xFF, 0)]


def test_import_of_unknown_busid_is_answered_nodev(server: RunningServer) -> None:
    with WireClient(server.port) as client:
        assert client.import_("9-9").status == OpStatus.NODEV


def test_second_import_of_a_held_device_is_dev_busy_and_devlist_hides_it(server: RunningServer) -> None:
    with WireClient(server.port) as first:
        assert first.import_(LOOPBACK).status == OpStatus.OK
        with WireClient(server.port) as second:
            assert second.import_(LOOPBACK).status == OpStatus.DEV_BUSY
        with WireClient(server.port) as lister:
            assert LOOPBACK not in [d.busid for d in lister.devlist()]


def test_import_echoes_busid_and_devid(server: RunningServer) -> None:
    with WireClient(server.port) as client:
        reply = client.import_(LOOPBACK)
    assert reply.device is not None
    assert reply.device.busid == LOOPBACK
    assert reply.device.devid == (1 << 16) | 2


def test_get_device_descriptor(server: RunningServer) -> None:
    with WireClient(server.port) as client:
        client.import_(LOOPBACK)
        seqnum = client.control_in(0x80, GET_DESCRIPTOR, 0x0100, 0, 18)
        reply = replies(client, 1)[seqnum]
    assert isinstance(reply, RetSubmit)
    assert reply.status == 0
    assert reply.actual_length == 18
    assert struct.unpack_from("<BBHBBBBHH", reply.data) == (18, 1, 0x0200, 0, 0, 0, 64, 0x1209, 0x0001)


def configure(client: WireClient) -> None:
    seqnum = client.control_out(0x00, 9, 1, 0)
    assert replies(client, 1)[seqnum].status == 0


def test_bulk_loopback_with_one_urb_in_flight(server: RunningServer) -> None:
    with WireClient(server.port) as client:
        client.import_(LOOPBACK)
        configure(client)
        # The largest spans three reads of the server's receive buffer (256 KiB).
        for size in (1, 64, 512, 4096, 65536, 600 * 1024):
            payload = os.urandom(size)
            out = client.submit(ep=1, direction=Direction.OUT, data=payload)
            sent = replies(client, 1)[out]
            assert isinstance(sent, RetSubmit) and sent.actual_length == size
            back = client.submit(ep=1, direction=Direction.IN, length=size)
            reply = replies(client, 1)[back]
            assert isinstance(reply, RetSubmit)
            assert reply.data == payload


def test_bulk_loopback_with_64_urbs_in_flight(server: RunningServer) -> None:
    with WireClient(server.port) as client:
        client.import_(LOOPBACK)
        configure(client)
        payloads = [os.urandom(1 + i * 37) for i in range(64)]
        # The IN URBs go first: they wait on the device until the OUT data arrives.
        batch = [client.submit_bytes(ep=1, direction=Direction.IN, length=len(p)) for p in payloads]
        batch += [client.submit_bytes(ep=1, direction=Direction.OUT, data=p) for p in payloads]
        client.sock.sendall(b"".join(raw for _, raw in batch))
        got = replies(client, 128)
    for (seqnum, _), payload in zip(batch[:64], payloads, strict=True):
        reply = got[seqnum]
        assert isinstance(reply, RetSubmit)
        assert reply.data == payload
    assert all(got[seqnum].status == 0 for seqnum, _ in batch)


def test_unlink_of_a_waiting_urb_cancels_it_without_ret_submit(server: RunningServer) -> None:
    with WireClient(server.port) as client:
        client.import_(LOOPBACK)
        configure(client)
        pending = client.submit(ep=1, direction=Direction.IN, length=64)
        unlink = client.unlink(pending)
        reply = client.read_event()
        assert reply == RetUnlink(seqnum=unlink, status=-Errno.ECONNRESET)
        # The stream goes on, and the cancelled URB never gets a RET_SUBMIT.
        probe = client.control_in(0x80, GET_DESCRIPTOR, 0x0100, 0, 18)
        assert set(replies(client, 1)) == {probe}


def test_unlink_after_completion_answers_status_zero_after_the_ret_submit(server: RunningServer) -> None:
    with WireClient(server.port) as client:
        client.import_(LOOPBACK)
        seqnum, raw = client.submit_bytes(
            ep=0,
            direction=Direction.IN,
            length=18,
            setup=struct.pack("<BBHHH", 0x80, GET_DESCRIPTOR, 0x0100, 0, 18),
        )
        client.sock.sendall(raw)
        unlink = client.unlink(seqnum)
        first, second = client.read_event(), client.read_event()
    assert isinstance(first, RetSubmit) and first.seqnum == seqnum and first.status == 0
    assert second == RetUnlink(seqnum=unlink, status=0)


def test_client_vanishing_with_urbs_in_flight_frees_the_device(server: RunningServer) -> None:
    with WireClient(server.port) as client:
        client.import_(LOOPBACK)
        configure(client)
        for _ in range(8):
            client.submit(ep=1, direction=Direction.IN, length=512)
    wait_released(server, LOOPBACK)  # the server must first see the EOF and close the device
    with WireClient(server.port) as again:
        assert again.import_(LOOPBACK).status == OpStatus.OK
        configure(again)
        out = again.submit(ep=1, direction=Direction.OUT, data=b"fresh")
        back = again.submit(ep=1, direction=Direction.IN, length=64)
        got = replies(again, 2)
    assert got[out].status == 0
    reply = got[back]
    assert isinstance(reply, RetSubmit) and reply.data == b"fresh"
