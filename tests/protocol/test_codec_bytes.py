"""Byte-exact PDUs from the reference (usbip-protocol.md §2, §3 and the worked example of §8).

Each test lays the expected bytes out one field per line, then checks both directions: what our
side sends is exactly those bytes, and the peer decodes those bytes back to the same event.
"""

from __future__ import annotations

from dataclasses import replace

from tests.protocol.pairs import Pair, imported_pair
from tests.raw import setup_packet
from usbwire.protocol import (
    CmdSubmit,
    CmdUnlink,
    DeviceInfo,
    Direction,
    Errno,
    InterfaceInfo,
    IsoPacket,
    OpRepDevlist,
    OpRepImport,
    OpReqDevlist,
    OpReqImport,
    OpStatus,
    RetSubmit,
    RetUnlink,
    Speed,
    UrbFlag,
)

PATH = "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-2"

# Bus 1, device 3, as in the worked example: devid 0x00010003.
DEVICE = DeviceInfo(
    path=PATH,
    busid="1-2",
    busnum=1,
    devnum=3,
    speed=Speed.HIGH,
    idVendor=0x1209,
    idProduct=0x0001,
    bcdDevice=0x0100,
    bDeviceClass=0xEF,
    bDeviceSubClass=0x02,
    bDeviceProtocol=0x01,
    bConfigurationValue=0,
    bNumConfigurations=1,
    bNumInterfaces=0,
)

DEVICE_RECORD = (
    PATH.encode().ljust(256, b"\0")  # 0x000 path, NUL-padded
    + b"1-2".ljust(32, b"\0")  # 0x100 busid, NUL-padded
    + bytes.fromhex("00000001")  # 0x120 busnum
    + bytes.fromhex("00000003")  # 0x124 devnum
    + bytes.fromhex("00000003")  # 0x128 speed: USB_SPEED_HIGH
    + bytes.fromhex("1209")  # 0x12C idVendor
    + bytes.fromhex("0001")  # 0x12E idProduct
    + bytes.fromhex("0100")  # 0x130 bcdDevice
    + bytes.fromhex("ef")  # 0x132 bDeviceClass: miscellaneous
    + bytes.fromhex("02")  # 0x133 bDeviceSubClass
    + bytes.fromhex("01")  # 0x134 bDeviceProtocol: interface association
    + bytes.fromhex("00")  # 0x135 bConfigurationValue: unconfigured
    + bytes.fromhex("01")  # 0x136 bNumConfigurations
    + bytes.fromhex("00")  # 0x137 bNumInterfaces: 0 while unconfigured
)

DEVICE_DESCRIPTOR = bytes.fromhex(
    "12"  # bLength
    "01"  # bDescriptorType: DEVICE
    "0002"  # bcdUSB 2.00 (little-endian, as on the bus)
    "000000"  # class, subclass, protocol
    "40"  # bMaxPacketSize0
    "0912"  # idVendor 0x1209
    "0100"  # idProduct 0x0001
    "0001"  # bcdDevice 1.00
    "010203"  # iManufacturer, iProduct, iSerialNumber
    "01"  # bNumConfigurations
)


def test_device_record_is_312_bytes() -> None:
    assert len(DEVICE_RECORD) == 0x138


def test_devid_is_busnum_shifted_16_or_devnum() -> None:
    assert DEVICE.devid == 0x0001_0003


def test_devid_is_truncated_to_32_bits_as_the_linux_tools_do() -> None:
    # usbip attach computes (busnum << 16) | devnum in a uint32_t.
    device = replace(DEVICE, busnum=0x0012_3456, devnum=0x0000_0007)
    assert device.devid == 0x3456_0007


# ---------------------------------------------------------------------------------------------
# Management phase (§2)


def test_op_req_devlist_is_8_bytes() -> None:
    expected = (
        bytes.fromhex("0111")  # version
        + bytes.fromhex("8005")  # code: OP_REQ_DEVLIST
        + bytes.fromhex("00000000")  # status
    )
    pair = Pair()
    assert pair.client.send(OpReqDevlist()) == expected
    pair.server.receive_data(expected)
    assert pair.server.next_event() == OpReqDevlist()


def test_op_rep_devlist_with_no_device_is_exactly_12_bytes() -> None:
    expected = (
        bytes.fromhex("0111")  # version
        + bytes.fromhex("0005")  # code: OP_REP_DEVLIST
        + bytes.fromhex("00000000")  # status: ST_OK
        + bytes.fromhex("00000000")  # ndev
    )
    pair = Pair()
    pair.to_server(OpReqDevlist())
    assert pair.server.send(OpRepDevlist(devices=())) == expected
    assert len(expected) == 12
    pair.client.receive_data(expected)
    assert pair.client.next_event() == OpRepDevlist(devices=())


def test_op_rep_devlist_places_records_and_interfaces_at_the_reference_offsets() -> None:
    first = replace(
        DEVICE,
        bConfigurationValue=1,
        bNumInterfaces=2,
        interfaces=(InterfaceInfo(0x03, 0x01, 0x01), InterfaceInfo(0xFF, 0x00, 0x00)),
    )
    second = replace(DEVICE, busid="3-1.4", busnum=3, devnum=9)
    expected = (
        bytes.fromhex("0111 0005 00000000")  # 0x000 op_common: version, OP_REP_DEVLIST, ST_OK
        + bytes.fromhex("00000002")  # 0x008 ndev
        + DEVICE_RECORD[:0x135]  # 0x00C first device, up to bConfigurationValue
        + bytes.fromhex("01")  # 0x141 bConfigurationValue
        + bytes.fromhex("01")  # 0x142 bNumConfigurations
        + bytes.fromhex("02")  # 0x143 bNumInterfaces
        + bytes.fromhex("030101 00")  # 0x144 interface 0: HID boot keyboard, padding
        + bytes.fromhex("ff0000 00")  # 0x148 interface 1: vendor specific, padding
        + PATH.encode().ljust(256, b"\0")  # 0x14C second device: path
        + b"3-1.4".ljust(32, b"\0")  # 0x24C busid
        + bytes.fromhex("00000003")  # 0x26C busnum
        + bytes.fromhex("00000009")  # 0x270 devnum
        + DEVICE_RECORD[0x128:]  # 0x274 speed .. bNumInterfaces, as in DEVICE
    )
    pair = Pair()
    pair.to_server(OpReqDevlist())
    encoded = pair.server.send(OpRepDevlist(devices=(first, second)))
    assert encoded == expected
    assert encoded[0x10C : 0x10C + 4] == b"1-2\0"  # busid of the first record
    assert encoded[0x12C:0x130] == bytes.fromhex("00000001")  # its busnum
    # Device i starts at 0x0C + sum of (0x138 + 4 * bNumInterfaces) of the ones before it.
    assert encoded[0x0C + 0x138 + 4 * 2 + 0x100 :].startswith(b"3-1.4\0")
    pair.client.receive_data(expected)
    assert pair.client.next_event() == OpRepDevlist(devices=(first, second))


def test_op_req_import_of_1_2_is_40_bytes() -> None:
    expected = (
        bytes.fromhex("0111")  # version
        + bytes.fromhex("8003")  # code: OP_REQ_IMPORT
        + bytes.fromhex("00000000")  # status
        + bytes.fromhex("312d32")  # busid "1-2"
        + bytes(29)  # NUL padding to 32 bytes
    )
    pair = Pair()
    assert pair.client.send(OpReqImport(busid="1-2")) == expected
    assert len(expected) == 40
    pair.server.receive_data(expected)
    assert pair.server.next_event() == OpReqImport(busid="1-2")


def test_op_rep_import_ok_is_320_bytes_with_the_record_at_offset_8() -> None:
    expected = (
        bytes.fromhex("0111")  # version
        + bytes.fromhex("0003")  # code: OP_REP_IMPORT
        + bytes.fromhex("00000000")  # status: ST_OK
        + DEVICE_RECORD  # 0x008 device record, no interface records
    )
    pair = Pair()
    pair.to_server(OpReqImport(busid="1-2"))
    encoded = pair.server.send(OpRepImport(status=OpStatus.OK, device=DEVICE))
    assert encoded == expected
    assert len(encoded) == 320
    assert encoded[0x108:0x10C] == b"1-2\0"  # busid
    assert encoded[0x128:0x130] == bytes.fromhex("00000001 00000003")  # busnum, devnum
    assert encoded[0x134:0x136] == bytes.fromhex("1209")  # idVendor
    pair.client.receive_data(expected)
    assert pair.client.next_event() == OpRepImport(status=OpStatus.OK, device=DEVICE)


def test_op_rep_import_nodev_is_8_bytes() -> None:
    expected = (
        bytes.fromhex("0111")  # version
        + bytes.fromhex("0003")  # code: OP_REP_IMPORT
        + bytes.fromhex("00000004")  # status: ST_NODEV, no device record follows
    )
    pair = Pair()
    pair.to_server(OpReqImport(busid="9-9"))
    assert pair.server.send(OpRepImport(status=OpStatus.NODEV)) == expected
    pair.client.receive_data(expected)
    assert pair.client.next_event() == OpRepImport(status=OpStatus.NODEV)


# ---------------------------------------------------------------------------------------------
# URB phase (§3), starting with the worked example of §8

GET_DEVICE_DESCRIPTOR = CmdSubmit(
    seqnum=7,
    devid=0x0001_0003,
    direction=Direction.IN,
    ep=0,
    transfer_flags=UrbFlag.DIR_IN,
    transfer_buffer_length=18,
    setup=setup_packet(0x80, 6, 0x0100, 0, 18),
)


def test_cmd_submit_get_descriptor_matches_the_worked_example() -> None:
    expected = (
        bytes.fromhex("00000001")  # 0x00 command: CMD_SUBMIT
        + bytes.fromhex("00000007")  # 0x04 seqnum
        + bytes.fromhex("00010003")  # 0x08 devid: bus 1, device 3
        + bytes.fromhex("00000001")  # 0x0C direction: IN
        + bytes.fromhex("00000000")  # 0x10 ep 0
        + bytes.fromhex("00000200")  # 0x14 transfer_flags: USBIP_URB_DIR_IN
        + bytes.fromhex("00000012")  # 0x18 transfer_buffer_length: 18
        + bytes.fromhex("00000000")  # 0x1C start_frame
        + bytes.fromhex("00000000")  # 0x20 number_of_packets
        + bytes.fromhex("00000000")  # 0x24 interval
        + bytes.fromhex("80 06 0001 0000 1200")  # 0x28 setup: GET_DESCRIPTOR(DEVICE), wLength 18 LE
    )
    pair = imported_pair(DEVICE)
    assert pair.client.send(GET_DEVICE_DESCRIPTOR) == expected
    pair.server.receive_data(expected)
    assert pair.server.next_event() == GET_DEVICE_DESCRIPTOR


def test_ret_submit_of_the_device_descriptor_matches_the_worked_example() -> None:
    expected = (
        bytes.fromhex("00000003")  # 0x00 command: RET_SUBMIT
        + bytes.fromhex("00000007")  # 0x04 seqnum of the CMD_SUBMIT
        + bytes.fromhex("00000000")  # 0x08 devid: 0 in replies
        + bytes.fromhex("00000000")  # 0x0C direction: 0 in replies
        + bytes.fromhex("00000000")  # 0x10 ep: 0 in replies
        + bytes.fromhex("00000000")  # 0x14 status: success
        + bytes.fromhex("00000012")  # 0x18 actual_length: 18
        + bytes.fromhex("00000000")  # 0x1C start_frame
        + bytes.fromhex("00000000")  # 0x20 number_of_packets
        + bytes.fromhex("00000000")  # 0x24 error_count
        + bytes(8)  # 0x28 padding
        + DEVICE_DESCRIPTOR  # 0x30 IN data: 18 bytes
    )
    reply = RetSubmit(seqnum=7, actual_length=18, data=DEVICE_DESCRIPTOR)
    pair = imported_pair(DEVICE)
    pair.to_server(GET_DEVICE_DESCRIPTOR)
    assert pair.server.send(reply) == expected
    assert len(expected) == 48 + 18
    pair.client.receive_data(expected)
    assert pair.client.next_event() == reply


def test_cmd_submit_bulk_out_carries_its_data_after_the_header() -> None:
    submit = CmdSubmit(
        seqnum=8,
        devid=0x0001_0003,
        direction=Direction.OUT,
        ep=2,
        transfer_flags=UrbFlag.ZERO_PACKET,
        transfer_buffer_length=3,
        data=b"abc",
    )
    expected = (
        bytes.fromhex("00000001")  # command: CMD_SUBMIT
        + bytes.fromhex("00000008")  # seqnum
        + bytes.fromhex("00010003")  # devid
        + bytes.fromhex("00000000")  # direction: OUT
        + bytes.fromhex("00000002")  # ep 2
        + bytes.fromhex("00000040")  # transfer_flags: USBIP_URB_ZERO_PACKET
        + bytes.fromhex("00000003")  # transfer_buffer_length
        + bytes.fromhex("00000000")  # start_frame
        + bytes.fromhex("00000000")  # number_of_packets
        + bytes.fromhex("00000000")  # interval
        + bytes(8)  # setup: unused outside control transfers
        + b"abc"  # 0x30 OUT data
    )
    pair = imported_pair(DEVICE)
    assert pair.client.send(submit) == expected
    pair.server.receive_data(expected)
    assert pair.server.next_event() == submit


def test_ret_submit_of_an_out_transfer_carries_no_data() -> None:
    submit = CmdSubmit(
        seqnum=8, devid=0x0001_0003, direction=Direction.OUT, ep=2, transfer_buffer_length=3, data=b"abc"
    )
    expected = (
        bytes.fromhex("00000003 00000008 00000000 00000000 00000000")  # RET_SUBMIT, seqnum 8
        + bytes.fromhex("ffffffe0")  # status: -EPIPE, a stall
        + bytes.fromhex("00000000")  # actual_length
        + bytes.fromhex("00000000 00000000 00000000")  # start_frame, number_of_packets, errors
        + bytes(8)  # padding; nothing follows
    )
    reply = RetSubmit(seqnum=8, status=-Errno.EPIPE)
    pair = imported_pair(DEVICE)
    pair.to_server(submit)
    assert pair.server.send(reply) == expected
    pair.client.receive_data(expected)
    assert pair.client.next_event() == reply


ISO_PACKETS = (
    IsoPacket(offset=0, length=4, actual_length=0, status=-Errno.EXDEV),
    IsoPacket(offset=6, length=4, actual_length=0, status=-Errno.EXDEV),
)


def test_cmd_submit_iso_out_sends_the_whole_buffer_then_the_descriptors() -> None:
    submit = CmdSubmit(
        seqnum=9,
        devid=0x0001_0003,
        direction=Direction.OUT,
        ep=8,
        transfer_flags=UrbFlag.ISO_ASAP,
        transfer_buffer_length=10,
        number_of_packets=2,
        interval=1,
        data=b"AAAA--BBBB",
        iso_packets=ISO_PACKETS,
    )
    expected = (
        bytes.fromhex("00000001 00000009 00010003")  # CMD_SUBMIT, seqnum 9, devid
        + bytes.fromhex("00000000")  # direction: OUT
        + bytes.fromhex("00000008")  # ep 8 (isochronous in the tests' endpoint table)
        + bytes.fromhex("00000002")  # transfer_flags: USBIP_URB_ISO_ASAP
        + bytes.fromhex("0000000a")  # transfer_buffer_length: 10
        + bytes.fromhex("00000000")  # start_frame
        + bytes.fromhex("00000002")  # number_of_packets
        + bytes.fromhex("00000001")  # interval
        + bytes(8)  # setup
        + b"AAAA--BBBB"  # 0x30 the whole buffer, the gap at 4..5 included
        + bytes.fromhex("00000000 00000004 00000000 ffffffee")  # packet 0: offset, length, 0, -EXDEV
        + bytes.fromhex("00000006 00000004 00000000 ffffffee")  # packet 1: offset, length, 0, -EXDEV
    )
    pair = imported_pair(DEVICE)
    assert pair.client.send(submit) == expected
    pair.server.receive_data(expected)
    assert pair.server.next_event() == submit


def test_ret_submit_iso_in_packs_each_packets_bytes_then_the_descriptors() -> None:
    submit = CmdSubmit(
        seqnum=10,
        devid=0x0001_0003,
        direction=Direction.IN,
        ep=9,
        transfer_flags=UrbFlag.ISO_ASAP | UrbFlag.DIR_IN,
        transfer_buffer_length=10,
        number_of_packets=2,
        interval=1,
        iso_packets=ISO_PACKETS,
    )
    reply = RetSubmit(
        seqnum=10,
        actual_length=5,
        start_frame=0x1234,
        number_of_packets=2,
        error_count=0,
        data=b"AAA" + b"BB",
        iso_packets=(IsoPacket(0, 4, 3, 0), IsoPacket(6, 4, 2, 0)),
    )
    expected = (
        bytes.fromhex("00000003 0000000a 00000000 00000000 00000000")  # RET_SUBMIT, seqnum 10
        + bytes.fromhex("00000000")  # status
        + bytes.fromhex("00000005")  # actual_length: 3 + 2, the sum over the packets
        + bytes.fromhex("00001234")  # start_frame the server used
        + bytes.fromhex("00000002")  # number_of_packets
        + bytes.fromhex("00000000")  # error_count
        + bytes(8)  # padding
        + b"AAA"  # 0x30 packed data: packet 0's 3 bytes,
        + b"BB"  # 0x33 then packet 1's 2 bytes, with no gap between them
        + bytes.fromhex("00000000 00000004 00000003 00000000")  # packet 0: 3 of 4 bytes, ok
        + bytes.fromhex("00000006 00000004 00000002 00000000")  # packet 1: 2 of 4 bytes, ok
    )
    pair = imported_pair(DEVICE)
    pair.to_server(submit)
    assert pair.server.send(reply) == expected
    pair.client.receive_data(expected)
    assert pair.client.next_event() == reply


def test_cmd_unlink_is_48_bytes_with_the_target_at_0x14() -> None:
    unlink = CmdUnlink(seqnum=11, devid=0x0001_0003, unlink_seqnum=7)
    expected = (
        bytes.fromhex("00000002")  # 0x00 command: CMD_UNLINK
        + bytes.fromhex("0000000b")  # 0x04 its own seqnum
        + bytes.fromhex("00010003")  # 0x08 devid
        + bytes.fromhex("00000000")  # 0x0C direction: 0
        + bytes.fromhex("00000000")  # 0x10 ep: 0
        + bytes.fromhex("00000007")  # 0x14 unlink_seqnum: the CMD_SUBMIT to cancel
        + bytes(24)  # 0x18 padding
    )
    pair = imported_pair(DEVICE)
    assert pair.client.send(unlink) == expected
    pair.server.receive_data(expected)
    assert pair.server.next_event() == unlink


def test_ret_unlink_of_a_cancelled_urb_carries_econnreset() -> None:
    expected = (
        bytes.fromhex("00000004")  # 0x00 command: RET_UNLINK
        + bytes.fromhex("0000000b")  # 0x04 seqnum of the CMD_UNLINK, not of the URB
        + bytes.fromhex("00000000 00000000 00000000")  # 0x08 devid, direction, ep: 0
        + bytes.fromhex("ffffff98")  # 0x14 status: -ECONNRESET (-104)
        + bytes(24)  # 0x18 padding
    )
    pair = imported_pair(DEVICE)
    pair.to_server(GET_DEVICE_DESCRIPTOR)
    pair.to_server(CmdUnlink(seqnum=11, devid=0x0001_0003, unlink_seqnum=7))
    assert pair.server.send(RetUnlink(seqnum=11, status=-Errno.ECONNRESET)) == expected
    pair.client.receive_data(expected)
    assert pair.client.next_event() == RetUnlink(seqnum=11, status=-Errno.ECONNRESET)
    assert pair.client.outstanding == 0
