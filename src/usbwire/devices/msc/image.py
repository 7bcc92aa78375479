"""The medium of a mass storage device: a raw image file read and written by position.

The event loop never waits for the disk, which would stall every other device and client
of the server. A read the page cache holds is done at once (``RWF_NOWAIT``: a few us for
64 KiB), any other in a worker thread. Writes go to one worker thread in order, behind the
URBs that carried them: a buffered write can wait on the disk too (dirty page throttling, a
partly written page to read first), and handing every write over and waiting for it would
cost a thread wake-up per URB. What the host is told stays exact: a command's status waits
for its writes (:meth:`Image.flush`), a read waits for the writes before it, and
:meth:`Image.sync` (``fsync``) for all of them.

Reading, writing and flushing each have a form that never suspends (:meth:`Image.read_cached`,
:meth:`Image.write_now`, :meth:`Image.flushed`): it declines, having done nothing, where the
other would wait, so that the server's fast lane can answer most URBs without a coroutine.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import fcntl
import os
import weakref

BLOCK_SIZE = 512
# Bytes of writes handed to the writer thread and not yet written, at most: then a write
# waits for room (the disk is slower than the network), which bounds the memory held.
WRITE_BEHIND_LIMIT = 8 * 1024 * 1024


class Image:
    """A raw image of ``block_count`` 512-byte blocks, open until :meth:`close`.

    Args:
        path: The image file (or a block device). It is locked (``flock``) while open so
            that two devices cannot write the same image.
        size: Size in bytes of an image to create if ``path`` does not exist (a sparse
            file). If the file exists, its size must match (or ``size`` be None).
        read_only: Open for reading only; writes must be refused by the caller.

    Raises:
        ValueError: ``size`` is not a positive multiple of 512, disagrees with an existing
            image, or the image is smaller than one block.
        FileNotFoundError: ``path`` does not exist and no ``size`` was given.
        OSError: The image cannot be opened, or is locked by another user (``EBUSY``).
    """

    def __init__(self, path: str | os.PathLike[str], size: int | None = None, read_only: bool = False) -> None:
        if size is not None and (size <= 0 or size % BLOCK_SIZE):
            raise ValueError(f"image size {size} is not a positive multiple of {BLOCK_SIZE}")
        self.path = os.fspath(path)
        self.read_only = read_only
        self._fd = self._open(size)
        # The writer thread, once the first write starts it (a list the finalizer can share).
        self._writers: list[concurrent.futures.ThreadPoolExecutor] = []
        # An image dropped without close() must not leak its descriptor (or its lock), nor
        # close it under a write still to be done.
        self._finalizer = weakref.finalize(self, _release, self._fd, self._writers)
        # False once the file system refused RWF_NOWAIT (tmpfs: in memory anyway).
        self._nowait_reads = hasattr(os, "RWF_NOWAIT")
        self._pending: collections.deque[tuple[concurrent.futures.Future[None], int]] = collections.deque()
        self._pending_bytes = 0
        self._write_error: OSError | None = None  # of a write done behind, until reported
        try:
            end = os.lseek(self._fd, 0, os.SEEK_END)  # also right for block devices
            if size is not None and end != size:
                raise ValueError(f"{self.path} is {end} bytes, not {size}")
            # Like a loop device, trailing bytes short of a whole block are not part of the disk.
            self.block_count = end // BLOCK_SIZE
            if self.block_count == 0:
                raise ValueError(f"{self.path} is smaller than one {BLOCK_SIZE}-byte block")
        except BaseException:
            self.close()
            raise

    def _open(self, size: int | None) -> int:
        mode = os.O_RDONLY if self.read_only else os.O_RDWR
        try:
            fd = os.open(self.path, mode)
        except FileNotFoundError:
            if size is None:
                raise
            # O_EXCL: of two racing creators, the loser opens the winner's file below.
            try:
                created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pass
            else:
                try:
                    os.ftruncate(created, size)
                finally:
                    os.close(created)
            fd = os.open(self.path, mode)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(errno.EBUSY, "image is in use by another device or program", self.path) from None
        return fd

    @property
    def size(self) -> int:
        """The disk's size in bytes (whole blocks only)."""
        return self.block_count * BLOCK_SIZE

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    async def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at byte ``offset``, as written so far (also behind).

        Raises:
            OSError: The read failed, the image shrank under us (``EIO``) or is closed
                (``EBADF``); a write done behind failed.
        """
        await self.flush()
        cached = self.read_cached(offset, length)
        if cached is not None:
            return cached
        # A copy of the descriptor, closed by the worker: if we are cancelled, or the image
        # is closed meanwhile, the worker never touches a number the process reused.
        fd = os.dup(self._fd)
        return await asyncio.to_thread(_read_and_close, fd, offset, length, self.path)

    def read_cached(self, offset: int, length: int) -> bytes | None:
        """:meth:`read` if it needs no waiting: None, having done nothing, while a write is
        still behind or the page cache lacks some of the bytes.

        Raises:
            OSError: As :meth:`read`.
        """
        if not self.flushed():
            return None
        if not self._nowait_reads:
            return _read_all(self._fd, offset, length, self.path)
        buffer = bytearray(length)
        try:
            cached = os.preadv(self._fd, [buffer], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as error:
            if error.errno != errno.EOPNOTSUPP:
                raise
            self._nowait_reads = False
            return _read_all(self._fd, offset, length, self.path)
        # A part cached is dropped: the worker reads it again with the rest, from memory.
        return bytes(buffer) if cached == length else None

    def read_now(self, offset: int, length: int) -> bytes:
        """:meth:`read`, blocking (after any writes done behind): for callers outside the
        event loop, and for images in memory.

        Raises:
            OSError: As :meth:`read`.
        """
        self._check_open()
        self._flush_now()
        return _read_all(self._fd, offset, length, self.path)

    async def write(self, offset: int, data: bytes) -> None:
        """Write all of ``data`` at byte ``offset``: into the page cache (see :meth:`sync`),
        behind, in order. :meth:`flush` waits for it and reports its failure.

        Raises:
            OSError: A write done behind failed (``ENOSPC`` on a full file system holding a
                sparse image, say); the image is read-only (``EBADF``) or closed.
        """
        while not self.write_now(offset, data):
            await self._wait_for_oldest()

    def write_now(self, offset: int, data: bytes) -> bool:
        """:meth:`write` if there is room behind for ``data`` now; False, having done
        nothing, while the writes behind hold ``WRITE_BEHIND_LIMIT`` bytes.

        Raises:
            OSError: As :meth:`write`.
        """
        self._check_open()
        self._report_write_error()
        if self.read_only:
            raise OSError(errno.EBADF, "image is read-only", self.path)
        room = WRITE_BEHIND_LIMIT - len(data)
        if self._pending_bytes > room:
            self._settle_finished()
            if self._pending and self._pending_bytes > room:
                return False
        if not self._writers:
            self._writers.append(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="usbwire-image"))
        done = self._writers[0].submit(_write_all, self._fd, data, offset, self.path)
        self._pending.append((done, len(data)))
        self._pending_bytes += len(data)
        return True

    async def flush(self) -> None:
        """Wait for the writes done behind.

        Raises:
            OSError: One of them failed (reported once): the data may not be in the image.
        """
        while not self.flushed():
            await self._wait_for_oldest()

    def flushed(self) -> bool:
        """:meth:`flush` if it needs no waiting: whether every write behind is done.

        Raises:
            OSError: As :meth:`flush`, once all are done.
        """
        self._check_open()
        if not self._settle_finished():
            return False
        self._report_write_error()
        return True

    async def sync(self) -> None:
        """Make every write so far durable (``fsync``), without blocking the event loop.

        Raises:
            OSError: fsync, or a write done behind, failed: written data may be lost.
        """
        await self.flush()
        # The worker gets its own descriptor and closes it itself: if we are cancelled, or
        # the image is closed meanwhile, it never touches a number the process reused.
        fd = os.dup(self._fd)
        await asyncio.to_thread(_sync_and_close, fd)

    def sync_now(self) -> None:
        """:meth:`sync`, blocking: for callers outside the event loop.

        Raises:
            OSError: As :meth:`sync`.
        """
        self._check_open()
        self._flush_now()
        os.fsync(self._fd)

    async def _wait_for_oldest(self) -> None:
        """Wait until the oldest write behind is done (then :meth:`_settle_finished` counts it)."""
        done = self._pending[0][0]
        if done.done():
            return  # awaiting it anyway would cost a trip through the event loop
        # Shielded: a waiter cancelled must not cancel the write. A failure is kept by
        # _settle_finished and reported by whoever settles it.
        with contextlib.suppress(OSError):
            await asyncio.shield(asyncio.wrap_future(done))

    def _settle_finished(self) -> bool:
        """Forget the writes behind that are done, keeping the first failure; True if none is left."""
        pending = self._pending
        while pending and pending[0][0].done():
            done, size = pending.popleft()
            self._pending_bytes -= size
            error = done.exception()
            if isinstance(error, OSError):
                self._write_error = self._write_error or error
        return not pending

    def _flush_now(self) -> None:
        """:meth:`flush`, blocking."""
        for done, _ in list(self._pending):
            done.exception()  # waits
        self._settle_finished()
        self._report_write_error()

    def _report_write_error(self) -> None:
        error, self._write_error = self._write_error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Release the file and its lock after the writes done behind (not synced: see
        :meth:`sync`). Closing twice is harmless."""
        self._finalizer()
        self._pending.clear()
        self._pending_bytes = 0

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise OSError(errno.EBADF, "image is closed", self.path)

    def __repr__(self) -> str:
        mode = "ro" if self.read_only else "rw"
        return f"<Image {self.path!r} {self.block_count} blocks {mode}{' closed' if self.closed else ''}>"


def _release(fd: int, writers: list[concurrent.futures.ThreadPoolExecutor]) -> None:
    for writer in writers:
        writer.shutdown(wait=True)  # its writes first: none may land on a reused descriptor
    writers.clear()
    os.close(fd)


def _read_all(fd: int, offset: int, length: int, path: str) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    # Short reads happen for huge lengths; an empty one means the file shrank.
    parts = [data]
    done = len(data)
    while done < length:
        part = os.pread(fd, length - done, offset + done)
        if not part:
            raise OSError(errno.EIO, f"image ends before byte {offset + length}", path)
        parts.append(part)
        done += len(part)
    return b"".join(parts)


def _read_and_close(fd: int, offset: int, length: int, path: str) -> bytes:
    try:
        return _read_all(fd, offset, length, path)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes, offset: int, path: str) -> None:
    view = memoryview(data)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
    except OSError as error:
        # Reported later, maybe for another write: it names the byte that failed.
        raise OSError(error.errno, f"{error.strerror} (at byte {offset})", path) from error


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
