"""``usbwire serve`` as a process of its own, for tests that must freeze or kill the server."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def serve_process(log: Path, *args: str, port: int = 0) -> Iterator[ServeProcess]:
    """``usbwire serve --demo`` on 127.0.0.1 (``port``, 0: any), with ``args``; its log goes to
    ``log`` (a pipe nobody reads would fill and block the server)."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "usbwire", "serve", "--host", "127.0.0.1", "--port", str(port), "--demo",
             "--control", "none", *args],
            stderr=sink,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (match := re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield ServeProcess(process, int(match.group(1)), log)
    finally:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise
