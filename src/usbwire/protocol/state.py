"""Which PDU may come next: the whole USB/IP connection state machine in one table.

Both roles walk the same states; a role may only *send* the PDUs its side originates
(requests and commands come from the client, replies from the server). Anything else is a
protocol error and leaves the state untouched.
"""

from __future__ import annotations

import enum

from usbwire.errors import LocalProtocolError
from usbwire.protocol.constants import OpStatus
from usbwire.protocol.pdu import (
    CmdSubmit,
    CmdUnlink,
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
    RetSubmit,
    RetUnlink,
)


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    OP_REQUEST = "waiting for an OP request"
    DEVLIST_REPLY = "waiting for OP_REP_DEVLIST"
    IMPORT_REPLY = "waiting for OP_REP_IMPORT"
    URB = "exchanging URBs"
    CHALLENGE_REPLY = "waiting for the authentication challenge"
    AUTH_REQUEST = "waiting for the authentication proof"
    AUTH_REPLY = "waiting for the authentication verdict"
    SESSION_REPLY = "waiting for the session grant"
    RESUME_REPLY = "waiting for the resumption verdict"
    DONE = "done"


SENDER: dict[type[Event], Role] = {
    OpReqDevlist: Role.CLIENT,
    OpReqChallenge: Role.CLIENT,
    OpReqAuth: Role.CLIENT,
    OpRepChallenge: Role.SERVER,
    OpRepAuth: Role.SERVER,
    OpReqSession: Role.CLIENT,
    OpRepSession: Role.SERVER,
    OpReqResume: Role.CLIENT,
    OpRepResume: Role.SERVER,
    OpReqImport: Role.CLIENT,
    CmdSubmit: Role.CLIENT,
    CmdUnlink: Role.CLIENT,
    OpRepDevlist: Role.SERVER,
    OpRepImport: Role.SERVER,
    RetSubmit: Role.SERVER,
    RetUnlink: Role.SERVER,
}

# (state, event type) -> next state. OP_REP_IMPORT is resolved by its status below.
TRANSITIONS: dict[tuple[State, type[Event]], State] = {
    (State.OP_REQUEST, OpReqDevlist): State.DEVLIST_REPLY,
    (State.OP_REQUEST, OpReqImport): State.IMPORT_REPLY,
    (State.OP_REQUEST, OpReqChallenge): State.CHALLENGE_REPLY,
    (State.CHALLENGE_REPLY, OpRepChallenge): State.AUTH_REQUEST,
    (State.AUTH_REQUEST, OpReqAuth): State.AUTH_REPLY,
    (State.AUTH_REPLY, OpRepAuth): State.OP_REQUEST,
    (State.OP_REQUEST, OpReqSession): State.SESSION_REPLY,
    (State.SESSION_REPLY, OpRepSession): State.OP_REQUEST,
    # A resumed stream goes on in the session's framing (protocol/session.py), which this
    # state machine does not parse: for it the exchange is over either way.
    (State.OP_REQUEST, OpReqResume): State.RESUME_REPLY,
    (State.RESUME_REPLY, OpRepResume): State.DONE,
    (State.DEVLIST_REPLY, OpRepDevlist): State.DONE,
    (State.IMPORT_REPLY, OpRepImport): State.URB,
    (State.URB, CmdSubmit): State.URB,
    (State.URB, CmdUnlink): State.URB,
    (State.URB, RetSubmit): State.URB,
    (State.URB, RetUnlink): State.URB,
}


def next_state(state: State, event: Event) -> State:
    """The state after ``event``; raises LocalProtocolError if it may not come now."""
    try:
        after = TRANSITIONS[state, type(event)]
    except KeyError:
        raise LocalProtocolError(
            f"{type(event).__name__} may not come while {state.value}",
            field="state",
            value=state.name,
        ) from None
    if isinstance(event, OpRepImport | OpRepAuth) and event.status != OpStatus.OK:
        # A refused import (as usbipd does) or a failed authentication ends the connection.
        return State.DONE
    return after
