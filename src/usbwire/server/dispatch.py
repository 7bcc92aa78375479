"""Runs the URBs of one import: per-endpoint order, many endpoints at once, UNLINK.

Each endpoint has a FIFO; its head runs, the rest wait, so a pending bulk IN never blocks
another endpoint and transfers on one endpoint complete in submission order, as on a real
bus. A head runs *eagerly*: its coroutine starts inline and, if it finishes without
suspending (the common case for emulated devices), the reply is produced without creating a
Task. Only a transfer that really waits gets a Task, which UNLINK can cancel.

Most transfers an emulated device completes at once never come here: the connection's fast
lane answers them straight from the bytes, and leaves to the dispatcher every command for an
endpoint that has URBs here, so the order holds across both.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol

from usbwire.backends.base import ExportedDevice, Urb, UrbResult
from usbwire.errors import RemoteProtocolError
from usbwire.protocol.connection import ServerConnection
from usbwire.protocol.constants import Direction, Errno, TransferType
from usbwire.protocol.pdu import CmdSubmit, CmdUnlink, IsoPacket, RetSubmit, RetUnlink

log = logging.getLogger("usbwire.server")

_STALL = UrbResult(status=-Errno.EPIPE)
# Enum members the per-URB paths use, as module globals: looking one up on its class costs
# ~70 ns on Python 3.11, several times a URB.
_CONTROL, _IN = TransferType.CONTROL, Direction.IN


@types.coroutine
def _resume(coro: Coroutine[Any, Any, UrbResult], yielded: object) -> Generator[object, object, UrbResult]:
    """Continue a coroutine that was started inline and suspended, under a Task."""
    while True:
        try:
            value = yield yielded
        except BaseException as error:
            try:
                yielded = coro.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                yielded = coro.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]


async def _finish(coro: Coroutine[Any, Any, UrbResult], yielded: object) -> UrbResult:
    return await _resume(coro, yielded)


class Sender(Protocol):
    def __call__(self, data: bytes, payload: bytes = b"", /) -> None:
        """Queue ``data`` (and ``payload`` right behind it) for the client."""


class Dispatcher:
    """Turns CMD_SUBMIT/CMD_UNLINK into device calls and RET_* bytes for ``send``."""

    def __init__(
        self,
        device: ExportedDevice,
        connection: ServerConnection,
        send: Sender,
        on_idle: Callable[[], None],
    ) -> None:
        self.device = device
        self.connection = connection
        self.send = send
        self.on_idle = on_idle  # called when in-flight work drops, to resume reading
        self.urbs = 0
        self._queues: dict[int, deque[CmdSubmit]] = {}
        self._endpoint_of: dict[int, int] = {}  # seqnum -> endpoint key
        self._tasks: dict[int, asyncio.Task[UrbResult]] = {}
        # target seqnum -> the CMD_UNLINK seqnums waiting for it to end, first one first
        self._unlinks: dict[int, list[int]] = {}
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._endpoint_of)

    def submit(self, cmd: CmdSubmit) -> None:
        key = cmd.ep if cmd.ep == 0 else cmd.ep | (cmd.direction << 7)
        self._endpoint_of[cmd.seqnum] = key
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(cmd)
        if len(queue) == 1:
            self._run(key, queue)

    def unlink(self, cmd: CmdUnlink) -> None:
        """Cancel ``cmd.unlink_seqnum``; raises RemoteProtocolError if ``cmd.seqnum`` is in use."""
        if any(cmd.seqnum in waiting for waiting in self._unlinks.values()):
            # Two answers would carry the same seqnum: the client could not tell them apart.
            raise RemoteProtocolError(
                f"CMD_UNLINK seqnum {cmd.seqnum} is already in flight",
                field="seqnum",
                value=cmd.seqnum,
            )
        target = cmd.unlink_seqnum
        key = self._endpoint_of.get(target)
        if key is None:
            # Already answered (or never seen): the kernel's stub says 0.
            self.send(self.connection.send(RetUnlink(seqnum=cmd.seqnum, status=0)))
            return
        task = self._tasks.get(target)
        if task is not None:
            # A repeated UNLINK of the same URB is answered 0 once the first one's RET_UNLINK
            # is out, as by the stub, which relabels the URB and then no longer finds it.
            self._unlinks.setdefault(target, []).append(cmd.seqnum)
            task.cancel()
            return
        queue = self._queues[key]
        queue.remove(next(c for c in queue if c.seqnum == target))
        del self._endpoint_of[target]
        self.send(self.connection.send(self.connection.cancelled(cmd.seqnum)))
        self.on_idle()

    def close(self) -> None:
        """The connection is gone: cancel everything still running."""
        self._closed = True
        for task in self._tasks.values():
            task.cancel()
        self._queues.clear()
        self._endpoint_of.clear()

    def _run(self, key: int, queue: deque[CmdSubmit]) -> None:
        while queue and not self._closed:
            cmd = queue[0]
            coro = self._start(cmd)
            if coro is None:
                result = _STALL
            else:
                try:
                    yielded = coro.send(None)
                except StopIteration as stop:
                    result = stop.value
                except Exception as error:
                    result = self._failed(cmd, error)
                else:
                    task = asyncio.get_running_loop().create_task(_finish(coro, yielded))
                    self._tasks[cmd.seqnum] = task
                    task.add_done_callback(functools.partial(self._task_done, key, cmd))
                    return
            queue.popleft()
            self._reply(cmd, result)

    def _start(self, cmd: CmdSubmit) -> Coroutine[Any, Any, UrbResult] | None:
        transfer = _CONTROL if cmd.ep == 0 else self.device.endpoint_type(cmd.ep, cmd.direction)
        if transfer is None:
            log.debug("URB %d for endpoint %d not in the active configuration", cmd.seqnum, cmd.ep)
            return None
        urb = Urb(
            cmd.ep,
            cmd.direction,
            transfer,
            cmd.transfer_buffer_length,
            cmd.data,
            cmd.setup,
            cmd.transfer_flags,
            cmd.interval,
            cmd.start_frame,
            cmd.iso_packets,
        )
        return self.device.submit(urb)

    @staticmethod
    def _iso_answer(cmd: CmdSubmit, result: UrbResult, status: int) -> tuple[bytes, int, tuple[IsoPacket, ...]]:
        if not result.iso_packets:
            # A failed iso URB still reports every packet, each with the URB's status.
            failed = status or -Errno.EXDEV
            return b"", 0, tuple(IsoPacket(p.offset, p.length, 0, failed) for p in cmd.iso_packets)
        actual = sum(p.actual_length for p in result.iso_packets)
        data = result.data if cmd.direction == Direction.IN else b""
        return data, actual, result.iso_packets

    def _failed(self, cmd: CmdSubmit, error: BaseException) -> UrbResult:
        log.error("device %s failed URB %d: %r", self.device.info.busid, cmd.seqnum, error)
        return UrbResult(status=-Errno.EPROTO)

    def _task_done(self, key: int, cmd: CmdSubmit, task: asyncio.Task[UrbResult]) -> None:
        self._tasks.pop(cmd.seqnum, None)
        if self._closed:
            return
        queue = self._queues[key]
        queue.popleft()
        unlinks = self._unlinks.pop(cmd.seqnum, None)
        if unlinks is not None:
            # Cancelled by UNLINK: only a RET_UNLINK, never a RET_SUBMIT (the client forgot it).
            if not task.cancelled() and task.exception() is not None:
                self._failed(cmd, task.exception())  # type: ignore[arg-type]
            del self._endpoint_of[cmd.seqnum]
            first, *repeated = unlinks
            self.send(self.connection.send(self.connection.cancelled(first)))
            for seqnum in repeated:
                self.send(self.connection.send(RetUnlink(seqnum=seqnum, status=0)))
        elif task.cancelled():
            self._reply(cmd, UrbResult(status=-Errno.ECONNRESET))
        elif (error := task.exception()) is not None:
            self._reply(cmd, self._failed(cmd, error))
        else:
            self._reply(cmd, task.result())
        self._run(key, queue)

    def _reply(self, cmd: CmdSubmit, result: UrbResult) -> None:
        del self._endpoint_of[cmd.seqnum]
        self.urbs += 1
        status = result.status if result.status <= 0 else -Errno.EPROTO
        if cmd.iso_packets:
            data, actual, iso_packets = self._iso_answer(cmd, result, status)
            ret = RetSubmit.answer(
                cmd.seqnum, status, actual, result.start_frame, len(iso_packets), result.error_count, data, iso_packets
            )
            self.send(self.connection.send(ret))
        else:
            if cmd.direction == _IN:
                data = result.data
                actual = len(data)
                if actual > cmd.transfer_buffer_length:
                    # A device answering more than was asked is babble.
                    data, actual, status = b"", 0, -Errno.EOVERFLOW
            else:
                data = b""
                actual = result.actual_length if result.actual_length is not None else 0
            self.send(*self.connection.answer(cmd, status, actual, data))
        self.on_idle()
