"""The disk image's I/O never makes the event loop wait for the disk, and loses nothing.

A read takes what the page cache holds at once and the rest in a worker thread; writes are
done behind the URBs that carried them, by one thread, in order. What the host is told must
stay exact: a read sees every write before it, a command's status waits for its writes
(and says when one failed), and closing the image waits for them too.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from usbwire.devices.msc import BLOCK_SIZE, Image

KIB = 1024


def numbered_blocks(count: int) -> list[bytes]:
    return [n.to_bytes(4, "big") * (BLOCK_SIZE // 4) for n in range(count)]


def test_a_read_sees_the_writes_still_behind_it(tmp_path: Path) -> None:
    blocks = numbered_blocks(256)

    async def write_then_read() -> bytes:
        image = Image(tmp_path / "disk.img", size=len(blocks) * BLOCK_SIZE)
        try:
            for n, block in enumerate(blocks):
                await image.write(n * BLOCK_SIZE, block)  # no flush between
            return await image.read(0, len(blocks) * BLOCK_SIZE)
        finally:
            image.close()

    assert asyncio.run(write_then_read()) == b"".join(blocks)


def test_closing_the_image_waits_for_the_writes_behind(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    blocks = numbered_blocks(2048)

    async def write_and_close() -> None:
        image = Image(path, size=len(blocks) * BLOCK_SIZE)
        for n, block in enumerate(blocks):
            await image.write(n * BLOCK_SIZE, block)
        image.close()  # neither flushed nor synced

    asyncio.run(write_and_close())
    assert path.read_bytes() == b"".join(blocks)


def test_a_block_missing_from_the_page_cache_is_read_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "disk.img"
    data = os.urandom(256 * KIB)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # clean pages can be dropped:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            os.preadv(fd, [bytearray(BLOCK_SIZE)], 0, os.RWF_NOWAIT)
            cold, nowait = False, True
        except BlockingIOError:
            cold, nowait = True, True
        except OSError:
            cold, nowait = False, False  # tmpfs: the file is in memory, and read in place
    finally:
        os.close(fd)
    readers: list[str] = []  # the threads that waited for the disk
    real_pread = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        readers.append(threading.current_thread().name)
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", pread)

    async def read_twice() -> tuple[bytes, bytes, list[str]]:
        image = Image(path, read_only=True)
        try:
            first = await image.read(0, len(data))
            cold_readers = list(readers)
            return first, await image.read(0, len(data)), cold_readers
        finally:
            image.close()

    first, again, cold_readers = asyncio.run(read_twice())
    assert first == again == data
    if not nowait:
        assert set(readers) == {threading.main_thread().name}
        return
    if cold:
        assert cold_readers and threading.main_thread().name not in cold_readers
    assert readers == cold_readers  # the second read came from the page cache, at once


# A host process whose files may not grow past 512 KiB: a real failed write (EFBIG), where
# a full disk would give ENOSPC.
FAILING_WRITES = """
    import json, resource, signal, sys
    from tests.devices.test_mass_storage import BotHost, DirectBus, read10, write10
    from usbwire.devices.msc import MassStorage

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, 512 * 1024))
    host = BotHost(DirectBus(MassStorage(sys.argv[1])))
    host.configure()
    inside = host.command(write10(0, 64), write=bytes(range(256)) * 128, urb_size=16384)
    past = host.command(write10(1536, 256), write=bytes(256 * 512), urb_size=16384)
    sense = host.sense()
    back = host.command(read10(0, 64), read=64 * 512)
    print(json.dumps([inside.status, past.status, sense, back.status, back.data == bytes(range(256)) * 128]))
"""


def test_a_write_failing_behind_its_urbs_fails_the_command_with_write_error(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(2048 * BLOCK_SIZE))  # 1 MiB
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FAILING_WRITES), str(path)],
        check=False,  # its stderr, below, says why it failed
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "src")])},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    inside, past, sense, back, same = json.loads(done.stdout)
    assert inside == 0  # PASSED
    assert past == 1  # FAILED: the host must not think those blocks are on the disk
    assert sense == [0x3, 0x0C, 0x00]  # MEDIUM ERROR, WRITE ERROR
    assert (back, same) == (0, True)  # the writes before it are all there
