"""Bulk-Only Transport (USB MSC BOT 1.0): CBW, data and CSW over one bulk OUT and one bulk IN.

The transport is a state machine over the two endpoints::

    COMMAND --CBW--> DATA_OUT --all data--> STATUS --CSW--> COMMAND
                 \\-> DATA_IN  --all data--/
                 \\----------(no data)----/
    any --invalid CBW--> NEEDS_RESET --Bulk-Only Mass Storage Reset--> COMMAND

A data phase spans as many URBs as the host likes: OUT data is consumed as it arrives and
IN data is produced in each URB's length (a read's, once its CBW is answered, read ahead for
the one URB a host usually moves it in). An URB on an endpoint that has nothing to do yet
waits, as a real device NAKs, so a host may queue the CSW read early. Where the host's
dCBWDataTransferLength and the command disagree, the device follows the thirteen cases of
BOT §6.7: it moves what both agree on, stalls the pipe the host expected more on, and
reports the difference in dCSWDataResidue (or a phase error).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

from usbwire.devices.base import Device
from usbwire.devices.descriptors import Configuration, DeviceDescriptor, Endpoint
from usbwire.devices.msc.scsi import NO_DATA, LogicalUnit, Transfer
from usbwire.devices.msc.sense import CheckCondition
from usbwire.devices.requests import Recipient, RequestType, Setup
from usbwire.errors import Stall
from usbwire.protocol.constants import Direction, Speed, TransferType

log = logging.getLogger(__name__)

CBW_SIGNATURE = 0x43425355  # "USBC"
CSW_SIGNATURE = 0x53425355  # "USBS"
CBW_SIZE = 31
CSW_SIZE = 13
MAX_CDB_SIZE = 16
_CBW = struct.Struct("<IIIBBB16s")
_CSW = struct.Struct("<IIIB")
_CBW_FLAG_IN = 0x80


class ClassRequest(enum.IntEnum):
    """BOT §3: the two class-specific requests, addressed to the interface."""

    GET_MAX_LUN = 0xFE
    BULK_ONLY_RESET = 0xFF


class CswStatus(enum.IntEnum):
    PASSED = 0
    FAILED = 1
    PHASE_ERROR = 2


class Phase(enum.Enum):
    COMMAND = enum.auto()
    DATA_OUT = enum.auto()
    DATA_IN = enum.auto()
    STATUS = enum.auto()
    NEEDS_RESET = enum.auto()


_OUT_READY = (Phase.COMMAND, Phase.DATA_OUT)
_IN_READY = (Phase.DATA_IN, Phase.STATUS)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandBlockWrapper:
    """A valid and meaningful CBW (BOT §5.1, §6.2)."""

    tag: int
    data_transfer_length: int
    direction: Direction
    lun: int
    cdb: bytes  # always 16 bytes, zero past bCBWCBLength

    @classmethod
    def from_bytes(cls, raw: bytes, max_lun: int) -> CommandBlockWrapper | None:
        """The CBW in ``raw``, or None if it is not valid or not meaningful."""
        if len(raw) != CBW_SIZE:
            return None
        signature, tag, length, flags, lun, cb_length, cb = _CBW.unpack(raw)
        # Reserved bits must be zero (BOT §6.2.2); we treat violations as invalid.
        if signature != CBW_SIGNATURE or flags & ~_CBW_FLAG_IN or lun > max_lun:
            return None
        if not 1 <= cb_length <= MAX_CDB_SIZE:
            return None
        return cls(
            tag=tag,
            data_transfer_length=length,
            direction=Direction.IN if flags & _CBW_FLAG_IN else Direction.OUT,
            lun=lun,
            cdb=cb[:cb_length].ljust(MAX_CDB_SIZE, b"\0"),
        )


@dataclass(slots=True)
class _Command:
    """One CBW from its arrival to its CSW."""

    tag: int
    host_length: int  # dCBWDataTransferLength
    transfer: Transfer
    status: CswStatus
    planned: int = 0  # bytes the data phase moves
    moved: int = 0  # bytes moved so far
    discard: bool = False  # OUT data received only to be dropped (phase error)

    def csw(self) -> bytes:
        residue = self.host_length - self.moved
        return _CSW.pack(CSW_SIGNATURE, self.tag, residue, self.status)


class BulkOnlyDevice(Device):
    """A mass storage device: SCSI commands to ``unit`` over the Bulk-Only Transport.

    Args:
        descriptor: Must have one interface with one bulk IN and one bulk OUT endpoint.
        speed: The bus speed the descriptors are built for.
        unit: The logical unit (LUN 0, the only one).
    """

    def __init__(self, descriptor: DeviceDescriptor, speed: Speed, unit: LogicalUnit) -> None:
        super().__init__(descriptor, speed)
        self.unit = unit
        self.phase = Phase.COMMAND
        self._command: _Command | None = None
        self._changed = asyncio.Event()
        # Counts resets. Control requests run while a bulk URB awaits (an fsync, say): a
        # reset in between abandons that URB's command, which must not come back after.
        self._generation = 0

    # -- waiting: an endpoint with nothing to do NAKs ------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, endpoint: Endpoint, ready: Callable[[], bool]) -> None:
        while True:
            # A halt wins over readiness: a halted IN endpoint must stall before the CSW.
            if endpoint.address in self.halted:
                raise Stall(f"endpoint 0x{endpoint.address:02x} is halted")
            if ready():
                return
            await self._changed.wait()

    def _halt(self, direction: Direction) -> None:
        """Stall the bulk pipe in ``direction`` (there is one each way)."""
        for number in self.configuration.interface_numbers if self.configuration else ():
            interface = self.interface(number)
            for endpoint in interface.endpoints if interface else ():
                if endpoint.transfer == TransferType.BULK and endpoint.direction == direction:
                    self.halt(endpoint)
        self._notify()

    # -- bulk transfers -------------------------------------------------------------------
    # Each stage is tried without waiting first (``out_now``/``in_now``, also the server's fast
    # lane); only a stage that has to wait for the disk takes the coroutine after it.

    def out_now(self, endpoint: Endpoint, data: bytes) -> bool:
        if self.phase == Phase.COMMAND:
            self._receive_command(data)
            return True
        if self.phase == Phase.DATA_OUT:
            return self._receive_data_now(data)
        return False

    def in_now(self, endpoint: Endpoint, length: int) -> bytes | None:
        if self.phase == Phase.DATA_IN:
            return self._send_data_now(length)
        if self.phase == Phase.STATUS:
            return self._send_status_now()
        return None

    async def handle_out(self, endpoint: Endpoint, data: bytes) -> None:
        await self._wait_until(endpoint, lambda: self.phase in _OUT_READY)
        if not self.out_now(endpoint, data):
            await self._receive_data(data)

    async def handle_in(self, endpoint: Endpoint, length: int) -> bytes:
        while True:
            await self._wait_until(endpoint, lambda: self.phase in _IN_READY)
            ready = self.in_now(endpoint, length)
            if ready is not None:
                return ready
            if self.phase == Phase.DATA_IN:
                return await self._send_data(length)
            csw = await self._send_status()
            if csw is not None:
                return csw
            # A reset abandoned the command while it finished: this URB waits for the next.

    def _receive_command(self, raw: bytes) -> None:
        cbw = CommandBlockWrapper.from_bytes(raw, max_lun=0)
        if cbw is None:
            # BOT §6.6.1: stall both pipes until a Reset Recovery, whatever the host clears.
            log.warning("invalid CBW (%d bytes: %s): waiting for a reset", len(raw), raw[:32].hex())
            self._command = None
            self.phase = Phase.NEEDS_RESET
            self._halt(Direction.IN)
            self._halt(Direction.OUT)
            return
        try:
            transfer = self.unit.start(cbw.cdb)
            status = CswStatus.PASSED
        except CheckCondition as error:
            self.unit.failed(error)
            transfer, status = NO_DATA, CswStatus.FAILED
        command = _Command(cbw.tag, cbw.data_transfer_length, transfer, status)
        self._command = command
        self._plan(command, cbw.direction)

    def _plan(self, command: _Command, host_direction: Direction) -> None:
        """Reconcile what the host announced with what the command wants (BOT §6.7)."""
        host = command.host_length
        wanted = command.transfer.length
        device_direction = command.transfer.direction if wanted else None
        self.phase = Phase.STATUS
        if host == 0:
            if device_direction is not None:  # cases 2, 3: Hn < Di, Hn < Do
                command.status = CswStatus.PHASE_ERROR
        elif device_direction is None:  # cases 4, 9: Hi > Dn, Ho > Dn
            self._halt(host_direction)
        elif device_direction != host_direction:  # cases 8, 10: Hi <> Do, Ho <> Di
            command.status = CswStatus.PHASE_ERROR
            self._halt(host_direction)
        else:  # cases 5, 6, 7 and 11, 12, 13
            command.planned = min(host, wanted)
            if wanted > host:  # cases 7, 13: move what the host allows, then phase error
                command.status = CswStatus.PHASE_ERROR
                command.discard = host_direction == Direction.OUT
            self.phase = Phase.DATA_IN if host_direction == Direction.IN else Phase.DATA_OUT
            if self.phase == Phase.DATA_IN:
                self._read_ahead_soon(command)
        self._notify()

    def _read_ahead_soon(self, command: _Command) -> None:
        """Have the command's data read once the CBW's answer has left, while the host sends
        for it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # driven without an event loop (a test): the data URB reads
        loop.call_soon(self._read_ahead, command)

    def _read_ahead(self, command: _Command) -> None:
        if self._command is command and self.phase == Phase.DATA_IN and command.moved == 0:
            command.transfer.read_ahead(command.planned)

    def _send_data_now(self, length: int) -> bytes | None:
        command = self._command
        assert command is not None
        try:
            chunk = command.transfer.read_now(command.moved, min(length, command.planned - command.moved))
        except CheckCondition as error:
            self._data_failed(command, error, Direction.IN)
            raise Stall("read failed") from error
        if chunk is not None:
            self._data_sent(command, chunk)
        return chunk

    async def _send_data(self, length: int) -> bytes:
        command = self._command
        assert command is not None
        generation = self._generation
        try:
            chunk = await command.transfer.read(command.moved, min(length, command.planned - command.moved))
        except CheckCondition as error:
            if generation == self._generation:
                self._data_failed(command, error, Direction.IN)
            raise Stall("read failed") from error
        if generation == self._generation:
            self._data_sent(command, chunk)
        return chunk

    def _data_sent(self, command: _Command, chunk: bytes) -> None:
        command.moved += len(chunk)
        if command.moved == command.planned:
            self._end_data(command, Direction.IN)

    def _receive_data_now(self, data: bytes) -> bool:
        command = self._command
        assert command is not None
        take = min(len(data), command.planned - command.moved)
        if not command.discard:
            try:
                if not command.transfer.write_now(command.moved, data if take == len(data) else data[:take]):
                    return False
            except CheckCondition as error:
                self._data_failed(command, error, Direction.OUT)
                raise Stall("write failed") from error
        self._data_received(command, take, len(data))
        return True

    async def _receive_data(self, data: bytes) -> None:
        """:meth:`_receive_data_now` for data the transfer could not take without waiting."""
        command = self._command
        assert command is not None
        take = min(len(data), command.planned - command.moved)
        generation = self._generation
        try:
            await command.transfer.write(command.moved, data if take == len(data) else data[:take])
        except CheckCondition as error:
            if generation == self._generation:
                self._data_failed(command, error, Direction.OUT)
            raise Stall("write failed") from error
        if generation == self._generation:
            self._data_received(command, take, len(data))

    def _data_received(self, command: _Command, take: int, size: int) -> None:
        command.moved += take
        if command.moved < command.planned:
            return
        self._end_data(command, Direction.OUT)
        if take < size and command.planned < command.host_length:
            # The device took the first part of this URB and stalled on the rest (case 11).
            raise Stall("more data than the command takes")

    def _end_data(self, command: _Command, direction: Direction) -> None:
        # The transfer finishes (its writes reach the image; FUA: the disk) when the host asks
        # for the status: meanwhile the host works on this URB's answer and sends that request.
        self.phase = Phase.STATUS
        if command.planned < command.host_length:  # cases 5, 11: stall what is left
            self._halt(direction)
        self._notify()

    def _data_failed(self, command: _Command, error: CheckCondition, direction: Direction) -> None:
        self.unit.failed(error)
        command.status = CswStatus.FAILED
        self.phase = Phase.STATUS
        self._halt(direction)

    def _send_status_now(self) -> bytes | None:
        command = self._command
        assert command is not None
        if command.status == CswStatus.PASSED:
            try:
                if not command.transfer.finish_now():
                    return None
            except CheckCondition as error:
                self.unit.failed(error)
                command.status = CswStatus.FAILED
        return self._status_sent(command)

    async def _send_status(self) -> bytes | None:
        """The CSW, once the command's transfer has finished; None if a reset abandoned the
        command meanwhile."""
        command = self._command
        assert command is not None
        if command.status == CswStatus.PASSED:
            generation = self._generation
            try:
                await command.transfer.finish()  # (again, harmlessly, if an unlink cut it short)
            except CheckCondition as error:
                if generation == self._generation:
                    self.unit.failed(error)
                    command.status = CswStatus.FAILED
            if generation != self._generation:
                return None
        return self._status_sent(command)

    def _status_sent(self, command: _Command) -> bytes:
        self._command = None
        self.phase = Phase.COMMAND
        self._notify()
        return command.csw()

    # -- control requests and endpoint state ------------------------------------------------

    async def class_request(self, setup: Setup, data: bytes) -> bytes | None:
        interface = self.interface(setup.index & 0xFF)
        if setup.type != RequestType.CLASS or setup.recipient != Recipient.INTERFACE or interface is None:
            raise Stall(f"unsupported request {setup}")
        if setup.request == ClassRequest.GET_MAX_LUN and setup.direction == Direction.IN:
            return bytes([0])  # one logical unit
        if setup.request == ClassRequest.BULK_ONLY_RESET and setup.direction == Direction.OUT:
            # BOT §3.1: ready for the next CBW; stalls and data toggles stay as they are.
            log.info("Bulk-Only Mass Storage Reset")
            self._reset_transport()
            return None
        raise Stall(f"unsupported class request {setup}")

    def on_clear_halt(self, endpoint: Endpoint) -> None:
        if self.phase == Phase.NEEDS_RESET:
            # Only a Reset Recovery ends the state an invalid CBW started (BOT §6.6.1).
            self.halted.add(endpoint.address)

    def on_interface(self, number: int, alternate: int) -> None:
        if self.phase == Phase.NEEDS_RESET:
            # SET_INTERFACE cleared the halts, but not the need for a Reset Recovery.
            self._halt(Direction.IN)
            self._halt(Direction.OUT)

    def on_configuration(self, configuration: Configuration | None) -> None:
        # Also the end of a USB reset (Device.reset unconfigures the device).
        self._reset_transport()

    def _reset_transport(self) -> None:
        self._generation += 1
        self._command = None
        self.phase = Phase.COMMAND
        self._notify()
