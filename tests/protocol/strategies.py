"""Hypothesis strategies that build only valid USB/IP PDUs, and whole valid conversations.

Every strategy respects the ``__post_init__`` checks of ``usbwire.protocol.pdu``, so a drawn
value can always be sent. Endpoint numbers follow one fixed convention shared with the server
side of the tests: 0 is control, 1..7 are bulk or interrupt, 8..15 are isochronous
(:func:`endpoint_is_iso` is what a test's ``ServerConnection.is_iso`` must be).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from operator import or_
from typing import TypeAlias

from hypothesis import strategies as st

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

U8 = 0xFF
U16 = 0xFFFF
U32 = 0xFFFF_FFFF
S32_MIN = -(2**31)
S32_MAX = 2**31 - 1

FIRST_ISO_ENDPOINT = 8
# Keeps payloads small so a few hundred examples run in seconds; sizes are not what we test.
MAX_DATA = 96
MAX_ISO_PACKETS_DRAWN = 6

ClientEvent: TypeAlias = OpReqDevlist | OpReqImport | CmdSubmit | CmdUnlink
ServerEvent: TypeAlias = OpRepDevlist | OpRepImport | RetSubmit | RetUnlink


def endpoint_is_iso(ep: int, direction: Direction) -> bool:
    """The endpoint table every test server uses (see the module docstring)."""
    return ep >= FIRST_ISO_ENDPOINT


u8 = st.integers(0, U8)
u16 = st.integers(0, U16)
u32 = st.integers(0, U32)
s32 = st.integers(S32_MIN, S32_MAX)
seqnums = u32
devids = u32
directions = st.sampled_from(Direction)
speeds = st.sampled_from(Speed)
# URB completion statuses: 0, the errnos USB really uses, or any negative s32.
urb_statuses = st.one_of(st.just(0), st.sampled_from([-e for e in Errno]), st.integers(S32_MIN, -1))
transfer_flags = st.one_of(st.sets(st.sampled_from(UrbFlag)).map(lambda flags: reduce(or_, map(int, flags), 0)), u32)
# Non-iso URBs carry these verbatim: Linux sends 0 or whatever the last RET_SUBMIT said.
non_iso_number_of_packets = st.one_of(st.sampled_from([0, -1]), s32)


@st.composite
def fixed_text(draw: st.DrawFn, size: int) -> str:
    """Text that fits a NUL-terminated ``char[size]`` field: at most size-1 UTF-8 bytes."""
    text = draw(st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=size - 1))
    while len(text.encode()) >= size:
        text = text[:-1]
    return text


busids = st.one_of(
    st.from_regex(r"\A[1-9][0-9]?-[1-9](\.[1-9]){0,4}\Z"),
    st.just("usbip-vudc.0"),
    fixed_text(32),
)
paths = st.one_of(
    busids.map(lambda busid: f"/sys/devices/pci0000:00/0000:00:14.0/usb1/{busid}"),
    fixed_text(256),
)
interface_infos = st.builds(InterfaceInfo, u8, u8, u8)


@st.composite
def device_infos(draw: st.DrawFn, *, with_interfaces: bool, max_interfaces: int = 6) -> DeviceInfo:
    """A device record; DEVLIST carries its interface records, IMPORT never does."""
    interfaces: tuple[InterfaceInfo, ...] = ()
    if with_interfaces:
        interfaces = tuple(draw(st.lists(interface_infos, max_size=max_interfaces)))
        num_interfaces = len(interfaces)
    else:
        num_interfaces = draw(u8)
    return DeviceInfo(
        path=draw(paths),
        busid=draw(busids),
        busnum=draw(st.one_of(st.integers(1, 127), u32)),
        devnum=draw(st.one_of(st.integers(1, 127), u32)),
        speed=draw(speeds),
        idVendor=draw(u16),
        idProduct=draw(u16),
        bcdDevice=draw(u16),
        bDeviceClass=draw(u8),
        bDeviceSubClass=draw(u8),
        bDeviceProtocol=draw(u8),
        bConfigurationValue=draw(u8),
        bNumConfigurations=draw(u8),
        bNumInterfaces=num_interfaces,
        interfaces=interfaces,
    )


op_req_devlists = st.just(OpReqDevlist())
op_rep_devlists = st.builds(
    OpRepDevlist,
    devices=st.lists(device_infos(with_interfaces=True), max_size=4).map(tuple),
    status=st.sampled_from(OpStatus),
)
op_req_imports = st.builds(OpReqImport, busid=busids)
op_rep_imports_ok = st.builds(OpRepImport, status=st.just(OpStatus.OK), device=device_infos(with_interfaces=False))
op_rep_imports_refused = st.builds(OpRepImport, status=st.sampled_from([s for s in OpStatus if s != OpStatus.OK]))
op_rep_imports = st.one_of(op_rep_imports_ok, op_rep_imports_refused)


def _data(draw: st.DrawFn, direction: Direction, length: int) -> bytes:
    if direction == Direction.IN:
        return b""
    return draw(st.binary(min_size=length, max_size=length))


@st.composite
def control_submits(draw: st.DrawFn, *, devid: st.SearchStrategy[int] = devids, seqnum: int | None = None) -> CmdSubmit:
    """A control transfer on ep 0: transfer_buffer_length is wLength, direction fits bit 7."""
    direction = draw(directions)
    w_length = draw(st.integers(0, MAX_DATA))
    request_type = draw(u8)
    if w_length:
        # Bit 7 of bmRequestType is the data stage direction; it binds only if there is one.
        request_type = (request_type & 0x7F) | (0x80 if direction == Direction.IN else 0)
    return CmdSubmit(
        seqnum=draw(seqnums) if seqnum is None else seqnum,
        devid=draw(devid),
        direction=direction,
        ep=0,
        transfer_flags=draw(transfer_flags),
        transfer_buffer_length=w_length,
        start_frame=draw(s32),
        number_of_packets=draw(non_iso_number_of_packets),
        interval=draw(s32),
        setup=setup_packet(request_type, draw(u8), draw(u16), draw(u16), w_length),
        data=_data(draw, direction, w_length),
    )


@st.composite
def bulk_submits(draw: st.DrawFn, *, devid: st.SearchStrategy[int] = devids, seqnum: int | None = None) -> CmdSubmit:
    """A bulk transfer on a non-iso endpoint; setup is meaningless there and carried verbatim."""
    direction = draw(directions)
    length = draw(st.integers(0, MAX_DATA))
    return CmdSubmit(
        seqnum=draw(seqnums) if seqnum is None else seqnum,
        devid=draw(devid),
        direction=direction,
        ep=draw(st.integers(1, FIRST_ISO_ENDPOINT - 1)),
        transfer_flags=draw(transfer_flags),
        transfer_buffer_length=length,
        start_frame=draw(s32),
        number_of_packets=draw(non_iso_number_of_packets),
        interval=draw(st.one_of(st.just(0), s32)),
        setup=draw(st.one_of(st.just(bytes(8)), st.binary(min_size=8, max_size=8))),
        data=_data(draw, direction, length),
    )


@st.composite
def interrupt_submits(
    draw: st.DrawFn, *, devid: st.SearchStrategy[int] = devids, seqnum: int | None = None
) -> CmdSubmit:
    """An interrupt transfer: like bulk, with a positive polling interval."""
    direction = draw(directions)
    length = draw(st.integers(0, 64))
    return CmdSubmit(
        seqnum=draw(seqnums) if seqnum is None else seqnum,
        devid=draw(devid),
        direction=direction,
        ep=draw(st.integers(1, FIRST_ISO_ENDPOINT - 1)),
        transfer_flags=draw(transfer_flags),
        transfer_buffer_length=length,
        start_frame=draw(st.sampled_from([0, -1])),
        number_of_packets=draw(st.sampled_from([0, -1])),
        interval=draw(st.integers(1, 2**15)),
        data=_data(draw, direction, length),
    )


@st.composite
def iso_layouts(
    draw: st.DrawFn, *, min_packets: int = 0, max_packets: int = MAX_ISO_PACKETS_DRAWN
) -> tuple[int, tuple[IsoPacket, ...]]:
    """A transfer_buffer_length and its submitted packets, in order, with gaps between them."""
    count = draw(st.integers(min_packets, max_packets))
    packets = []
    offset = 0
    for _ in range(count):
        offset += draw(st.integers(0, 4))
        length = draw(st.integers(0, 24))
        # The USB core presets each submitted packet to -EXDEV; actual_length is always 0.
        status = draw(st.one_of(st.sampled_from([0, -Errno.EXDEV]), st.integers(S32_MIN, 0)))
        packets.append(IsoPacket(offset=offset, length=length, actual_length=0, status=status))
        offset += length
    return offset + draw(st.integers(0, 8)), tuple(packets)


@st.composite
def iso_submits(
    draw: st.DrawFn,
    *,
    devid: st.SearchStrategy[int] = devids,
    seqnum: int | None = None,
    min_packets: int = 0,
    direction: Direction | None = None,
) -> CmdSubmit:
    """An iso transfer: OUT carries the whole buffer with its gaps, then the descriptors."""
    direction = draw(directions) if direction is None else direction
    length, packets = draw(iso_layouts(min_packets=min_packets))
    return CmdSubmit(
        seqnum=draw(seqnums) if seqnum is None else seqnum,
        devid=draw(devid),
        direction=direction,
        ep=draw(st.integers(FIRST_ISO_ENDPOINT, 15)),
        transfer_flags=draw(transfer_flags) | UrbFlag.ISO_ASAP,
        transfer_buffer_length=length,
        start_frame=draw(s32),
        number_of_packets=len(packets),
        interval=draw(st.integers(1, 2**15)),
        data=_data(draw, direction, length),
        iso_packets=packets,
    )


def cmd_submits(*, devid: st.SearchStrategy[int] = devids, seqnum: int | None = None) -> st.SearchStrategy[CmdSubmit]:
    """Any CMD_SUBMIT, of every transfer type and both directions."""
    return st.one_of(
        control_submits(devid=devid, seqnum=seqnum),
        bulk_submits(devid=devid, seqnum=seqnum),
        interrupt_submits(devid=devid, seqnum=seqnum),
        iso_submits(devid=devid, seqnum=seqnum),
    )


@st.composite
def ret_submit_for(draw: st.DrawFn, cmd: CmdSubmit) -> RetSubmit:
    """A RET_SUBMIT that validly answers ``cmd`` (what a server may send, a client accepts)."""
    if cmd.is_iso:
        # A server may report fewer packets than were submitted, never more.
        count = draw(st.integers(1, len(cmd.iso_packets)))
        packets = []
        for submitted in cmd.iso_packets[:count]:
            packets.append(
                IsoPacket(
                    offset=submitted.offset,
                    length=submitted.length,
                    actual_length=draw(st.integers(0, submitted.length)),
                    status=draw(urb_statuses),
                )
            )
        actual_length = sum(p.actual_length for p in packets)
        # IN data is packed: each packet's actual_length bytes, back to back, no gaps.
        data = b""
        if cmd.direction == Direction.IN:
            data = draw(st.binary(min_size=actual_length, max_size=actual_length))
        return RetSubmit(
            seqnum=cmd.seqnum,
            status=draw(urb_statuses),
            actual_length=actual_length,
            start_frame=draw(s32),
            number_of_packets=len(packets),
            error_count=sum(1 for p in packets if p.status),
            data=data,
            iso_packets=tuple(packets),
        )
    actual_length = draw(st.integers(0, cmd.transfer_buffer_length))
    data = b""
    if cmd.direction == Direction.IN:
        data = draw(st.binary(min_size=actual_length, max_size=actual_length))
    return RetSubmit(
        seqnum=cmd.seqnum,
        status=draw(urb_statuses),
        actual_length=actual_length,
        start_frame=cmd.start_frame,
        # Linux echoes the request's value for non-iso URBs; 0 is what a careful server sends.
        number_of_packets=draw(st.sampled_from([cmd.number_of_packets, 0])),
        error_count=0,
        data=data,
    )


def iso_in_ret_submits() -> st.SearchStrategy[RetSubmit]:
    """RET_SUBMITs of iso IN requests: packed data, sum of packet actual_length == actual_length."""
    return iso_submits(min_packets=1, direction=Direction.IN).flatmap(ret_submit_for)


ret_submits = cmd_submits().flatmap(ret_submit_for)
cmd_unlinks = st.builds(CmdUnlink, seqnum=seqnums, devid=devids, unlink_seqnum=seqnums)
ret_unlinks = st.builds(RetUnlink, seqnum=seqnums, status=st.sampled_from([0, -Errno.ECONNRESET]) | urb_statuses)


@dataclass(frozen=True)
class Conversation:
    """One valid connection: what the client sends, then what the server sends back.

    ``client_sends[0]`` is the OP request and ``server_sends[0]`` its reply; after an accepted
    import the rest are URB-phase PDUs, all client ones sent before the server answers any.
    """

    client_sends: tuple[ClientEvent, ...]
    server_sends: tuple[ServerEvent, ...]

    @property
    def imported(self) -> bool:
        reply = self.server_sends[0]
        return isinstance(reply, OpRepImport) and reply.status == OpStatus.OK


@st.composite
def devlist_conversations(draw: st.DrawFn) -> Conversation:
    return Conversation((OpReqDevlist(),), (draw(op_rep_devlists),))


@st.composite
def refused_import_conversations(draw: st.DrawFn) -> Conversation:
    return Conversation((draw(op_req_imports),), (draw(op_rep_imports_refused),))


@st.composite
def urb_conversations(draw: st.DrawFn, *, max_submits: int = 4) -> Conversation:
    """An import, then submits each answered, cancelled, unlinked too late, or left pending."""
    device = draw(device_infos(with_interfaces=False))
    devid = st.just(device.devid)
    count = draw(st.integers(0, max_submits))
    # Unique across submits *and* unlinks: a seqnum names one request while it is outstanding.
    numbers = draw(st.lists(seqnums, min_size=2 * count + 2, max_size=2 * count + 2, unique=True))
    submits = [draw(cmd_submits(devid=devid, seqnum=numbers[i])) for i in range(count)]
    unlinks: list[CmdUnlink] = []
    answers: list[ServerEvent] = []
    late: list[RetUnlink] = []
    for i, cmd in enumerate(submits):
        fate = draw(st.sampled_from(["answered", "cancelled", "unlinked late", "pending"]))
        unlink = CmdUnlink(seqnum=numbers[count + i], devid=device.devid, unlink_seqnum=cmd.seqnum)
        if fate == "answered":
            answers.append(draw(ret_submit_for(cmd)))
        elif fate == "cancelled":
            unlinks.append(unlink)
            answers.append(RetUnlink(seqnum=unlink.seqnum, status=-Errno.ECONNRESET))
        elif fate == "unlinked late":
            unlinks.append(unlink)
            answers.append(draw(ret_submit_for(cmd)))
            late.append(RetUnlink(seqnum=unlink.seqnum, status=0))
    if draw(st.booleans()):
        # An unlink of something never submitted is answered with status 0.
        stray = CmdUnlink(seqnum=numbers[-2], devid=device.devid, unlink_seqnum=numbers[-1])
        unlinks.append(stray)
        late.append(RetUnlink(seqnum=stray.seqnum, status=0))
    replies = draw(st.permutations(answers)) + draw(st.permutations(late))
    return Conversation(
        (OpReqImport(busid=device.busid), *submits, *unlinks),
        (OpRepImport(status=OpStatus.OK, device=device), *replies),
    )


conversations = st.one_of(devlist_conversations(), refused_import_conversations(), urb_conversations())
