"""The SCSI transparent command set of one logical unit (SPC-4, SBC-3) over an image file.

A command is decoded into a :class:`Transfer`: the data phase the logical unit wants (its
direction and length) plus the code that produces or consumes that data. The transport
(``bot.py``) moves the bytes, reconciles them with what the host announced and reports the
status; this module never sees a USB transfer. Decoding never waits: what has to (an
fsync) is part of finishing the command, before its status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import logging
import struct
from collections.abc import Callable

from usbwire.devices.msc import pages
from usbwire.devices.msc.image import BLOCK_SIZE, Image
from usbwire.devices.msc.sense import (
    INVALID_COMMAND_OPERATION_CODE,
    INVALID_FIELD_IN_CDB,
    LBA_OUT_OF_RANGE,
    MEDIUM_MAY_HAVE_CHANGED,
    MEDIUM_NOT_PRESENT,
    MEDIUM_REMOVAL_PREVENTED,
    MISCOMPARE_DURING_VERIFY,
    NO_SENSE,
    SPACE_ALLOCATION_FAILED,
    UNRECOVERED_READ_ERROR,
    WRITE_ERROR,
    WRITE_PROTECTED,
    CheckCondition,
    Sense,
)
from usbwire.protocol.constants import Direction

log = logging.getLogger(__name__)


class Opcode(enum.IntEnum):
    TEST_UNIT_READY = 0x00
    REQUEST_SENSE = 0x03
    READ_6 = 0x08
    WRITE_6 = 0x0A
    INQUIRY = 0x12
    MODE_SENSE_6 = 0x1A
    START_STOP_UNIT = 0x1B
    PREVENT_ALLOW_MEDIUM_REMOVAL = 0x1E
    READ_FORMAT_CAPACITIES = 0x23  # MMC/UFI, but Windows asks every USB disk
    READ_CAPACITY_10 = 0x25
    READ_10 = 0x28
    WRITE_10 = 0x2A
    VERIFY_10 = 0x2F
    SYNCHRONIZE_CACHE_10 = 0x35
    MODE_SENSE_10 = 0x5A
    READ_16 = 0x88
    WRITE_16 = 0x8A
    VERIFY_16 = 0x8F
    SYNCHRONIZE_CACHE_16 = 0x91
    SERVICE_ACTION_IN_16 = 0x9E
    REPORT_LUNS = 0xA0
    READ_12 = 0xA8
    WRITE_12 = 0xAA


SERVICE_ACTION_READ_CAPACITY_16 = 0x10
READ_CAPACITY_16_SIZE = 32
_FUA = 0x08  # CDB byte 1 of READ/WRITE(10/12/16): force unit access
# Bytes of a read command's data read before the host asks for them, at most (a host moves a
# command's data in one URB: Linux's usb-storage 120 KiB at high speed).
READ_AHEAD_MOST = 256 * 1024

# Commands a pending unit attention does not fail (SAM-5 §5.14): the host must be able to
# identify the unit and fetch the attention itself.
_NO_UNIT_ATTENTION = {Opcode.INQUIRY, Opcode.REPORT_LUNS, Opcode.REQUEST_SENSE}


# -- what a command wants from the transport ------------------------------------------------


class Transfer:
    """A command's data phase: ``length`` bytes in ``direction``, then :meth:`finish`.

    ``read`` and ``write`` get the offset within the data phase and run in order; any of
    the three methods raises :class:`CheckCondition` to fail the command. Each has a form
    that never suspends (``read_now``, ``write_now``, ``finish_now``), which the transport
    tries first: it declines, having done nothing, where the other would have to wait.
    """

    direction: Direction | None = None
    length: int = 0

    def read_now(self, offset: int, size: int) -> bytes | None:
        return None

    async def read(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def read_ahead(self, size: int) -> None:
        """A hint: the host is about to read the first ``size`` bytes in one go."""

    def write_now(self, offset: int, data: bytes) -> bool:
        return False

    async def write(self, offset: int, data: bytes) -> None:
        raise NotImplementedError

    def finish_now(self) -> bool:
        """:meth:`finish` if it needs no waiting; False, having done nothing, otherwise."""
        return True

    async def finish(self) -> None:
        """After the whole data phase (never after a failed or truncated one)."""


NO_DATA = Transfer()


class Reply(Transfer):
    """Parameter data for the host, computed up front and cut to the allocation length."""

    direction = Direction.IN

    def __init__(self, data: bytes, allocation_length: int) -> None:
        self.data = data[:allocation_length]
        self.length = len(self.data)

    def read_now(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    async def read(self, offset: int, size: int) -> bytes:
        return self.read_now(offset, size)


class ReadBlocks(Transfer):
    """Blocks streamed from the image as the host asks for them, one URB's worth at a time."""

    direction = Direction.IN

    def __init__(self, image: Image, start: int, length: int) -> None:
        self.image, self.start, self.length = image, start, length
        self._ahead: bytes | None = None  # the first bytes, read before the host asked

    def read_ahead(self, size: int) -> None:
        # Only what the page cache holds: a read that would wait is left to the URB. A
        # failure is left to it too, which reports it.
        with contextlib.suppress(OSError):
            self._ahead = self.image.read_cached(self.start, min(size, READ_AHEAD_MOST))

    def read_now(self, offset: int, size: int) -> bytes | None:
        ahead = self._ahead
        if ahead is not None:
            if offset + size < len(ahead):
                return ahead[offset : offset + size]  # (a host moving the data in pieces)
            self._ahead = None
            if offset + size == len(ahead):
                return ahead if offset == 0 else ahead[offset:]
        try:
            return self.image.read_cached(self.start + offset, size)
        except OSError as error:
            raise self._read_failed(offset, error) from error

    async def read(self, offset: int, size: int) -> bytes:
        try:
            return await self.image.read(self.start + offset, size)
        except OSError as error:
            raise self._read_failed(offset, error) from error

    def _read_failed(self, offset: int, error: OSError) -> CheckCondition:
        log.error("read of %s at byte %d failed: %s", self.image.path, self.start + offset, error)
        return CheckCondition(UNRECOVERED_READ_ERROR)


class WriteBlocks(Transfer):
    """Blocks written to the image as they arrive; with FUA, synced before the status."""

    direction = Direction.OUT

    def __init__(self, image: Image, start: int, length: int, force_unit_access: bool) -> None:
        self.image, self.start, self.length = image, start, length
        self.force_unit_access = force_unit_access

    def write_now(self, offset: int, data: bytes) -> bool:
        try:
            return self.image.write_now(self.start + offset, data)
        except OSError as error:
            raise _write_failed(self.image, error) from error

    async def write(self, offset: int, data: bytes) -> None:
        try:
            await self.image.write(self.start + offset, data)
        except OSError as error:
            raise _write_failed(self.image, error) from error

    def finish_now(self) -> bool:
        # The status says the blocks are written: they must be, not just handed over.
        if self.force_unit_access:
            return False  # an fsync, in a worker thread
        try:
            return self.image.flushed()
        except OSError as error:
            raise _write_failed(self.image, error) from error

    async def finish(self) -> None:
        try:
            await self.image.flush()
        except OSError as error:
            raise _write_failed(self.image, error) from error
        if self.force_unit_access:
            await _sync(self.image)


class CompareBlocks(Transfer):
    """VERIFY with BYTCHK=1: the host's data compared with the medium (SBC-3 §5.33)."""

    direction = Direction.OUT

    def __init__(self, image: Image, start: int, length: int) -> None:
        self.image, self.start, self.length = image, start, length
        self.miscompare: int | None = None

    def write_now(self, offset: int, data: bytes) -> bool:
        if self.miscompare is not None:
            return True
        try:
            stored = self.image.read_cached(self.start + offset, len(data))
        except OSError as error:
            raise CheckCondition(UNRECOVERED_READ_ERROR) from error
        if stored is None:
            return False
        self._compare(offset, stored, data)
        return True

    async def write(self, offset: int, data: bytes) -> None:
        if self.miscompare is not None:
            return
        try:
            stored = await self.image.read(self.start + offset, len(data))
        except OSError as error:
            raise CheckCondition(UNRECOVERED_READ_ERROR) from error
        self._compare(offset, stored, data)

    def _compare(self, offset: int, stored: bytes, data: bytes) -> None:
        if stored != data:
            first = next(i for i, (a, b) in enumerate(zip(stored, data, strict=True)) if a != b)
            self.miscompare = offset + first

    def finish_now(self) -> bool:
        if self.miscompare is not None:
            # INFORMATION: offset of the first byte that differs (SBC-3 §5.33).
            raise CheckCondition(dataclasses.replace(MISCOMPARE_DURING_VERIFY, information=self.miscompare))
        return True

    async def finish(self) -> None:
        self.finish_now()


class Synchronize(Transfer):
    """No data; the status waits for the image to be synced, and only then does ``then``
    (an eject, say) take effect."""

    def __init__(self, image: Image, then: Callable[[], None] | None = None) -> None:
        self.image, self.then = image, then

    def finish_now(self) -> bool:
        return False  # an fsync, in a worker thread

    async def finish(self) -> None:
        await _sync(self.image)
        if self.then is not None:
            self.then()


def _write_failed(image: Image, error: OSError) -> CheckCondition:
    """What a failed write (done behind: reported by a later write, or the status) makes of
    the command; the error names the byte."""
    log.error("write to %s failed: %s", image.path, error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckCondition(SPACE_ALLOCATION_FAILED)
    return CheckCondition(WRITE_ERROR)


async def _sync(image: Image) -> None:
    try:
        await image.sync()
    except OSError as error:
        log.error("fsync of %s failed: %s", image.path, error)
        raise CheckCondition(WRITE_ERROR) from error


# -- the logical unit ------------------------------------------------------------------------

Handler = Callable[["LogicalUnit", bytes], Transfer]


class LogicalUnit:
    """LUN 0 of a direct-access block device: sense, unit attention and medium state.

    Args:
        image: The medium, or None for a drive without one.
        identity: What INQUIRY reports.
    """

    def __init__(self, image: Image | None, identity: pages.Identity) -> None:
        self.image = image
        self.identity = identity
        self.sense = NO_SENSE  # of the last command that failed, until REQUEST SENSE
        self.unit_attention: Sense | None = None
        self.prevent_removal = False
        self.loaded = True  # False once the host ejected the medium (START STOP UNIT)

    # -- used by the transport --------------------------------------------------------------

    def start(self, cdb: bytes) -> Transfer:
        """Decode ``cdb`` (16 bytes, zero past the command's length) and run what needs no data.

        Raises:
            CheckCondition: The command failed before any data phase.
        """
        opcode = cdb[0]
        if opcode != Opcode.REQUEST_SENSE:
            self.sense = NO_SENSE
        handler = _COMMANDS.get(opcode)
        if handler is None:
            raise CheckCondition(INVALID_COMMAND_OPERATION_CODE)
        if self.unit_attention is not None and opcode not in _NO_UNIT_ATTENTION:
            attention, self.unit_attention = self.unit_attention, None
            raise CheckCondition(attention)
        return handler(self, cdb)

    def failed(self, error: CheckCondition) -> None:
        """The command ended in CHECK CONDITION: keep its sense for REQUEST SENSE."""
        log.debug("CHECK CONDITION: %s", error.sense)
        self.sense = error.sense

    def change_medium(self, image: Image | None) -> Image | None:
        """Insert ``image`` (None: remove the medium); returns the previous one, not closed."""
        old, self.image = self.image, image
        self.loaded = True
        self.prevent_removal = False
        if image is not None:
            self.unit_attention = MEDIUM_MAY_HAVE_CHANGED
        return old

    def unplugged(self) -> None:
        """The device was unplugged: a medium ejected by the host is back for the next plug."""
        self.loaded = True
        self.prevent_removal = False
        self.sense = NO_SENSE
        self.unit_attention = None

    @property
    def medium(self) -> Image | None:
        """The medium the host can use now (None if absent or ejected)."""
        return self.image if self.loaded else None

    # -- helpers ------------------------------------------------------------------------------

    def _ready(self) -> Image:
        image = self.medium
        if image is None:
            raise CheckCondition(MEDIUM_NOT_PRESENT)
        return image

    def _range(self, image: Image, lba: int, blocks: int) -> tuple[int, int]:
        if lba + blocks > image.block_count:
            raise CheckCondition(LBA_OUT_OF_RANGE)
        return lba * BLOCK_SIZE, blocks * BLOCK_SIZE

    # -- SPC commands -------------------------------------------------------------------------

    def _test_unit_ready(self, cdb: bytes) -> Transfer:
        self._ready()
        return NO_DATA

    def _request_sense(self, cdb: bytes) -> Transfer:
        if cdb[1] & 0x01:  # DESC: descriptor format sense, which we do not produce
            raise CheckCondition(INVALID_FIELD_IN_CDB)
        sense = self.sense
        if sense == NO_SENSE and self.unit_attention is not None:
            sense, self.unit_attention = self.unit_attention, None
        self.sense = NO_SENSE
        return Reply(sense.to_bytes(), cdb[4])

    def _inquiry(self, cdb: bytes) -> Transfer:
        evpd, page = cdb[1] & 0x01, cdb[2]
        (allocation_length,) = struct.unpack_from(">H", cdb, 3)
        if evpd:
            return Reply(pages.vpd_page(self.identity, page), allocation_length)
        if page:
            raise CheckCondition(INVALID_FIELD_IN_CDB)
        return Reply(pages.standard_inquiry(self.identity), allocation_length)

    def _mode_sense_6(self, cdb: bytes) -> Transfer:
        request = pages.ModeSense(
            page=cdb[2] & 0x3F,
            subpage=cdb[3],
            control=pages.PageControl(cdb[2] >> 6),
            block_descriptors=not cdb[1] & 0x08,
        )
        return Reply(self._mode_parameters(request, ten=False), cdb[4])

    def _mode_sense_10(self, cdb: bytes) -> Transfer:
        request = pages.ModeSense(
            page=cdb[2] & 0x3F,
            subpage=cdb[3],
            control=pages.PageControl(cdb[2] >> 6),
            block_descriptors=not cdb[1] & 0x08,
            long_lba=bool(cdb[1] & 0x10),
        )
        (allocation_length,) = struct.unpack_from(">H", cdb, 7)
        return Reply(self._mode_parameters(request, ten=True), allocation_length)

    def _mode_parameters(self, request: pages.ModeSense, *, ten: bool) -> bytes:
        image = self.medium
        return pages.mode_parameters(
            request,
            ten=ten,
            block_count=image.block_count if image else 0,
            block_size=BLOCK_SIZE,
            write_protected=image.read_only if image else False,
        )

    def _report_luns(self, cdb: bytes) -> Transfer:
        (allocation_length,) = struct.unpack_from(">I", cdb, 6)
        # A LUN list of one entry, LUN 0 (whose 8-byte encoding is all zeros).
        return Reply(struct.pack(">II", 8, 0) + bytes(8), allocation_length)

    def _prevent_allow_medium_removal(self, cdb: bytes) -> Transfer:
        prevent = cdb[4] & 0x03
        if prevent > 1:  # 2 and 3 are for medium changers
            raise CheckCondition(INVALID_FIELD_IN_CDB)
        self.prevent_removal = bool(prevent)
        return NO_DATA

    # -- SBC commands -------------------------------------------------------------------------

    def _read_capacity_10(self, cdb: bytes) -> Transfer:
        image = self._ready()
        # All ones: the disk is too big for 32 bits, ask READ CAPACITY(16).
        last = min(image.block_count - 1, 0xFFFFFFFF)
        return Reply(struct.pack(">II", last, BLOCK_SIZE), 8)

    def _service_action_in_16(self, cdb: bytes) -> Transfer:
        if cdb[1] & 0x1F != SERVICE_ACTION_READ_CAPACITY_16:
            raise CheckCondition(INVALID_FIELD_IN_CDB)
        image = self._ready()
        (allocation_length,) = struct.unpack_from(">I", cdb, 10)
        # One logical block per physical block, no protection, no thin provisioning.
        data = struct.pack(">QI", image.block_count - 1, BLOCK_SIZE).ljust(READ_CAPACITY_16_SIZE, b"\0")
        return Reply(data, allocation_length)

    def _read_format_capacities(self, cdb: bytes) -> Transfer:
        (allocation_length,) = struct.unpack_from(">H", cdb, 7)
        image = self.medium
        # Descriptor type 2: formatted medium, 3: no medium present.
        blocks, kind = (image.block_count, 2) if image else (0, 3)
        data = struct.pack(">II", 8, min(blocks, 0xFFFFFFFF)) + struct.pack(">I", (kind << 24) | BLOCK_SIZE)
        return Reply(data, allocation_length)

    def _read(self, cdb: bytes) -> Transfer:
        image = self._ready()
        lba, blocks = _lba_and_length(cdb)
        start, length = self._range(image, lba, blocks)
        return ReadBlocks(image, start, length)

    def _write(self, cdb: bytes) -> Transfer:
        image = self._ready()
        lba, blocks = _lba_and_length(cdb)
        if image.read_only:
            raise CheckCondition(WRITE_PROTECTED)
        start, length = self._range(image, lba, blocks)
        force_unit_access = cdb[0] != Opcode.WRITE_6 and bool(cdb[1] & _FUA)
        return WriteBlocks(image, start, length, force_unit_access)

    def _verify(self, cdb: bytes) -> Transfer:
        image = self._ready()
        lba, blocks = _lba_and_length(cdb)
        start, length = self._range(image, lba, blocks)
        bytchk = (cdb[1] >> 1) & 0x03
        if bytchk == 0:
            # Medium verification: an image file has no unreadable sectors to find.
            return NO_DATA
        if bytchk == 1:
            return CompareBlocks(image, start, length)
        raise CheckCondition(INVALID_FIELD_IN_CDB)

    def _synchronize_cache(self, cdb: bytes) -> Transfer:
        image = self._ready()
        lba, blocks = _lba_and_length(cdb)
        self._range(image, lba, blocks)
        # The whole image is synced whatever the range: fsync has no finer grain.
        return Synchronize(image)

    def _start_stop_unit(self, cdb: bytes) -> Transfer:
        power_condition, load_eject, start = cdb[4] >> 4, cdb[4] & 0x02, cdb[4] & 0x01
        if power_condition:
            return NO_DATA  # power conditions are accepted and change nothing
        if not start and self.image is not None and self.loaded:
            if load_eject and self.prevent_removal:
                raise CheckCondition(MEDIUM_REMOVAL_PREVENTED)
            # Stopping (or ejecting) a disk writes its cache out, as a drive would.
            return Synchronize(self.image, self._eject if load_eject else None)
        if load_eject:
            if start and not self.loaded and self.image is not None:
                self.unit_attention = MEDIUM_MAY_HAVE_CHANGED
            self.loaded = bool(start)
        return NO_DATA

    def _eject(self) -> None:
        self.loaded = False


def _lba_and_length(cdb: bytes) -> tuple[int, int]:
    """LBA and TRANSFER LENGTH of a READ/WRITE/VERIFY/SYNCHRONIZE CACHE CDB (SBC-3 §5)."""
    group = cdb[0] >> 5
    if group == 0:  # 6-byte CDB: 21-bit LBA, a length of 0 means 256 blocks
        lba = int.from_bytes(cdb[1:4], "big") & 0x1FFFFF
        return lba, cdb[4] or 256
    if group in (1, 2):  # 10-byte CDB
        lba, blocks = struct.unpack_from(">IxH", cdb, 2)
        return int(lba), int(blocks)
    if group == 5:  # 12-byte CDB
        lba, blocks = struct.unpack_from(">II", cdb, 2)
        return int(lba), int(blocks)
    lba, blocks = struct.unpack_from(">QI", cdb, 2)  # group 4: 16-byte CDB
    return int(lba), int(blocks)


_COMMANDS: dict[int, Handler] = {
    Opcode.TEST_UNIT_READY: LogicalUnit._test_unit_ready,
    Opcode.REQUEST_SENSE: LogicalUnit._request_sense,
    Opcode.INQUIRY: LogicalUnit._inquiry,
    Opcode.MODE_SENSE_6: LogicalUnit._mode_sense_6,
    Opcode.MODE_SENSE_10: LogicalUnit._mode_sense_10,
    Opcode.REPORT_LUNS: LogicalUnit._report_luns,
    Opcode.PREVENT_ALLOW_MEDIUM_REMOVAL: LogicalUnit._prevent_allow_medium_removal,
    Opcode.START_STOP_UNIT: LogicalUnit._start_stop_unit,
    Opcode.READ_CAPACITY_10: LogicalUnit._read_capacity_10,
    Opcode.SERVICE_ACTION_IN_16: LogicalUnit._service_action_in_16,
    Opcode.READ_FORMAT_CAPACITIES: LogicalUnit._read_format_capacities,
    Opcode.READ_6: LogicalUnit._read,
    Opcode.READ_10: LogicalUnit._read,
    Opcode.READ_12: LogicalUnit._read,
    Opcode.READ_16: LogicalUnit._read,
    Opcode.WRITE_6: LogicalUnit._write,
    Opcode.WRITE_10: LogicalUnit._write,
    Opcode.WRITE_12: LogicalUnit._write,
    Opcode.WRITE_16: LogicalUnit._write,
    Opcode.VERIFY_10: LogicalUnit._verify,
    Opcode.VERIFY_16: LogicalUnit._verify,
    Opcode.SYNCHRONIZE_CACHE_10: LogicalUnit._synchronize_cache,
    Opcode.SYNCHRONIZE_CACHE_16: LogicalUnit._synchronize_cache,
}
