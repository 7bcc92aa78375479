"""The state table of state.py, read as a specification of the USB/IP connection phases."""

from __future__ import annotations

import pytest

from tests.protocol.pairs import DEVICE
from usbwire.errors import LocalProtocolError
from usbwire.protocol import (
    CmdSubmit,
    CmdUnlink,
    Direction,
    Event,
    OpRepAuth,
    OpRepChallenge,
    OpRepDevlist,
    OpRepImport,
    OpRepResume,
    OpRepSession,
    OpReqAuth,
    OpReqChallenge,
    OpReqDevlist,
    OpReqImport,
    OpReqResume,
    OpReqSession,
    OpStatus,
    RetSubmit,
    RetUnlink,
    Role,
    State,
)
from usbwire.protocol.state import SENDER, TRANSITIONS, next_state

ONE_OF_EACH: list[Event] = [
    OpReqDevlist(),
    OpRepDevlist(),
    OpReqImport(busid="1-2"),
    OpRepImport(status=OpStatus.OK, device=DEVICE),
    CmdSubmit(seqnum=1, devid=DEVICE.devid, direction=Direction.IN, ep=1, transfer_buffer_length=8),
    RetSubmit(seqnum=1),
    CmdUnlink(seqnum=2, devid=DEVICE.devid, unlink_seqnum=1),
    RetUnlink(seqnum=2),
    OpReqChallenge(),
    OpRepChallenge(nonce=bytes(32)),
    OpReqAuth(nonce=bytes(32), proof=bytes(32)),
    OpRepAuth(status=OpStatus.OK),
    OpReqSession(busid="1-2"),
    OpRepSession(status=OpStatus.OK),
    OpReqResume(session_id=bytes(16), secret=bytes(32), received=0),
    OpRepResume(status=OpStatus.OK),
]
URB_EVENTS = (CmdSubmit, CmdUnlink, RetSubmit, RetUnlink)


def test_every_pdu_has_exactly_one_sending_role() -> None:
    assert set(SENDER) == {type(event) for event in ONE_OF_EACH}


def test_requests_and_commands_come_from_the_client_replies_from_the_server() -> None:
    client = {OpReqDevlist, OpReqImport, OpReqChallenge, OpReqAuth, OpReqSession, OpReqResume, CmdSubmit, CmdUnlink}
    assert {kind for kind, role in SENDER.items() if role is Role.CLIENT} == client
    assert {kind for kind, role in SENDER.items() if role is Role.SERVER} == set(SENDER) - client


@pytest.mark.parametrize(
    ("state", "event", "after"),
    [
        (State.OP_REQUEST, OpReqDevlist(), State.DEVLIST_REPLY),
        (State.OP_REQUEST, OpReqImport(busid="1-2"), State.IMPORT_REPLY),
        (State.DEVLIST_REPLY, OpRepDevlist(), State.DONE),
        (State.IMPORT_REPLY, OpRepImport(status=OpStatus.OK, device=DEVICE), State.URB),
        (State.IMPORT_REPLY, OpRepImport(status=OpStatus.DEV_BUSY), State.DONE),
        (State.OP_REQUEST, OpReqSession(busid="1-2"), State.SESSION_REPLY),
        (State.SESSION_REPLY, OpRepSession(status=OpStatus.NA), State.OP_REQUEST),
        (State.OP_REQUEST, OpReqResume(session_id=bytes(16), secret=bytes(32), received=0), State.RESUME_REPLY),
        (State.RESUME_REPLY, OpRepResume(status=OpStatus.OK), State.DONE),
    ],
    ids=[
        "devlist",
        "import",
        "devlist reply",
        "import accepted",
        "import refused",
        "session asked before the import",
        "session granted or not, the import follows",
        "resumption",
        "a resumed stream leaves the USB/IP state machine",
    ],
)
def test_management_phase_transitions(state: State, event: Event, after: State) -> None:
    assert next_state(state, event) is after


@pytest.mark.parametrize("event", [e for e in ONE_OF_EACH if isinstance(e, URB_EVENTS)], ids=lambda e: type(e).__name__)
def test_urb_phase_keeps_its_state_for_every_urb_pdu(event: Event) -> None:
    assert next_state(State.URB, event) is State.URB


def test_done_is_final() -> None:
    assert not [key for key in TRANSITIONS if key[0] is State.DONE]


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.name)
def test_every_pdu_the_table_lacks_is_refused_naming_the_state(state: State) -> None:
    for event in ONE_OF_EACH:
        if (state, type(event)) in TRANSITIONS:
            continue
        with pytest.raises(LocalProtocolError) as error:
            next_state(state, event)
        assert (error.value.field, error.value.value) == ("state", state.name)
