"""SCSI sense data: why a command ended in CHECK CONDITION, in fixed format (SPC-4 §4.5.3)."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass


class SenseKey(enum.IntEnum):
    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    ABORTED_COMMAND = 0xB
    MISCOMPARE = 0xE


FIXED_SENSE_SIZE = 18
_CURRENT_FIXED = 0x70  # response code: current error, fixed format
_VALID = 0x80  # the INFORMATION field means something


@dataclass(frozen=True, slots=True)
class Sense:
    """A sense key with its additional sense code and qualifier (ASC/ASCQ)."""

    key: SenseKey
    asc: int = 0
    ascq: int = 0
    # INFORMATION field, e.g. the offset of the first miscompare (SBC-3 §5.22).
    information: int | None = None

    def to_bytes(self) -> bytes:
        """The 18-byte fixed format sense data REQUEST SENSE returns."""
        valid = _VALID if self.information is not None else 0
        return struct.pack(
            ">BBBIBIBBBBBB",
            _CURRENT_FIXED | valid,
            0,  # obsolete
            self.key,
            (self.information or 0) & 0xFFFFFFFF,
            FIXED_SENSE_SIZE - 8,  # additional sense length
            0,  # command-specific information
            self.asc,
            self.ascq,
            0,  # field replaceable unit code
            0,  # SKSV and sense-key specific bytes
            0,
            0,
        )

    def __str__(self) -> str:
        return f"{self.key.name} {self.asc:02X}/{self.ascq:02X}"


class CheckCondition(Exception):
    """A command ends in CHECK CONDITION; the transport reports it, REQUEST SENSE explains it.

    Internal to the mass storage device: it never leaves :mod:`usbwire.devices.msc`.
    """

    def __init__(self, sense: Sense) -> None:
        super().__init__(str(sense))
        self.sense = sense


NO_SENSE = Sense(SenseKey.NO_SENSE)
# NOT READY
MEDIUM_NOT_PRESENT = Sense(SenseKey.NOT_READY, 0x3A, 0x00)
# MEDIUM ERROR
WRITE_ERROR = Sense(SenseKey.MEDIUM_ERROR, 0x0C, 0x00)
UNRECOVERED_READ_ERROR = Sense(SenseKey.MEDIUM_ERROR, 0x11, 0x00)
# ILLEGAL REQUEST
INVALID_COMMAND_OPERATION_CODE = Sense(SenseKey.ILLEGAL_REQUEST, 0x20, 0x00)
LBA_OUT_OF_RANGE = Sense(SenseKey.ILLEGAL_REQUEST, 0x21, 0x00)
INVALID_FIELD_IN_CDB = Sense(SenseKey.ILLEGAL_REQUEST, 0x24, 0x00)
SAVING_PARAMETERS_NOT_SUPPORTED = Sense(SenseKey.ILLEGAL_REQUEST, 0x39, 0x00)
MEDIUM_REMOVAL_PREVENTED = Sense(SenseKey.ILLEGAL_REQUEST, 0x53, 0x02)
# UNIT ATTENTION
MEDIUM_MAY_HAVE_CHANGED = Sense(SenseKey.UNIT_ATTENTION, 0x28, 0x00)
# DATA PROTECT
WRITE_PROTECTED = Sense(SenseKey.DATA_PROTECT, 0x27, 0x00)
SPACE_ALLOCATION_FAILED = Sense(SenseKey.DATA_PROTECT, 0x27, 0x07)  # thin provisioning: disk full
# MISCOMPARE
MISCOMPARE_DURING_VERIFY = Sense(SenseKey.MISCOMPARE, 0x1D, 0x00)
