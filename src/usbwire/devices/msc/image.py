"""The medium of a mass storage device: a raw image file read and written by position.

Reads and writes are plain ``os.pread``/``os.pwrite`` on the event loop's thread: served
from the page cache they take microseconds (about 45 us for 1 MiB, against some 120 us
just to hand a call to a worker thread), so a thread would only add latency. ``fsync``
really waits for the disk, so :meth:`Image.sync` runs it in a worker thread.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import weakref

BLOCK_SIZE = 512


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
        # An image dropped without close() must not leak its descriptor (or its lock).
        self._finalizer = weakref.finalize(self, os.close, self._fd)
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

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at byte ``offset``.

        Raises:
            OSError: The read failed, the image shrank under us (``EIO``) or is closed (``EBADF``).
        """
        self._check_open()
        data = os.pread(self._fd, length, offset)
        if len(data) == length:
            return data
        # Short reads happen for huge lengths; an empty one means the file shrank.
        parts = [data]
        done = len(data)
        while done < length:
            part = os.pread(self._fd, length - done, offset + done)
            if not part:
                raise OSError(errno.EIO, f"image ends before byte {offset + length}", self.path)
            parts.append(part)
            done += len(part)
        return b"".join(parts)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write all of ``data`` at byte ``offset`` (into the page cache: see :meth:`sync`).

        Raises:
            OSError: The write failed (``ENOSPC`` on a full file system holding a sparse
                image, ``EBADF`` if read-only or closed).
        """
        self._check_open()
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    async def sync(self) -> None:
        """Make every write so far durable (``fsync``), without blocking the event loop.

        Raises:
            OSError: fsync failed: written data may be lost.
        """
        self._check_open()
        # The worker gets its own descriptor and closes it itself: if we are cancelled, or
        # the image is closed meanwhile, it never touches a number the process reused.
        fd = os.dup(self._fd)
        await asyncio.to_thread(_sync_and_close, fd)

    def sync_now(self) -> None:
        """:meth:`sync`, blocking: for callers outside the event loop.

        Raises:
            OSError: fsync failed.
        """
        self._check_open()
        os.fsync(self._fd)

    def close(self) -> None:
        """Release the file and its lock; does not sync. Closing twice is harmless."""
        self._finalizer()

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise OSError(errno.EBADF, "image is closed", self.path)

    def __repr__(self) -> str:
        mode = "ro" if self.read_only else "rw"
        return f"<Image {self.path!r} {self.block_count} blocks {mode}{' closed' if self.closed else ''}>"


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
