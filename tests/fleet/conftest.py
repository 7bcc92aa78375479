"""A real etcd on loopback and real ``usbwire serve --fleet`` processes, for the fleet tests.

etcd runs with a 50 ms heartbeat and a 250 ms election timeout, so leases of 1 s hold (etcd's
smallest TTL is 1.5 election timeouts). Each server is its own process so a test can kill -9 it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import wait_until
from usbwire.fleet import Snapshot, read_snapshot
from usbwire.fleet.etcd import Etcd

USBWIRE = [sys.executable, "-m", "usbwire"]
TTL_S = 1  # the servers' and clients' lease TTL in these tests
DEMO_DEVICES = 5  # what each server exports (usbwire.demo)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EtcdProcess:
    """One etcd member on 127.0.0.1 with its data in ``data_dir`` (kept across restarts)."""

    data_dir: Path
    log_path: Path
    client_port: int = field(default_factory=_free_port)
    peer_port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "etcd",
                    "--name=fleet-test",
                    f"--data-dir={self.data_dir}",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=fleet-test={peer}",
                    "--heartbeat-interval=50",
                    "--election-timeout=250",
                    "--logger=zap",
                    "--log-level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._healthy, "etcd to answer /health", timeout_s=20)

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"etcd exited: {self.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.client_port}/health", timeout=1) as reply:
                return b'"health":"true"' in reply.read()
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    if shutil.which("etcd") is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("etcd is not installed (Debian package etcd-server; ./run test installs it)")
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    member = EtcdProcess(tmp_path / "etcd-data", tmp_path / "etcd.log")
    member.start()
    try:
        yield member
    finally:
        member.stop()


@dataclass
class FleetServer:
    """``usbwire serve --demo --fleet`` as its own process."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    control: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text()


def start_fleet_server(
    etcd: EtcdProcess, name: str, directory: Path, *labels: str, port: int = 0, address: str | None = None
) -> FleetServer:
    """``usbwire serve --demo --fleet`` on 127.0.0.1:``port`` (0: any), registered as reached at ``address``."""
    log_path = directory / f"{name}.log"
    control = directory / f"{name}.sock"
    command = [
        *USBWIRE, "serve", "-v", "--demo", "--host", "127.0.0.1", "--port", str(port), "--control", str(control),
        "--fleet", etcd.url, "--fleet-name", name, "--fleet-ttl", str(TTL_S),
    ]  # fmt: skip
    for label in labels:
        command += ["--label", label]
    if address is not None:
        command += ["--fleet-address", address]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    port = 0

    def listening() -> bool:
        nonlocal port
        if process.poll() is not None:
            raise AssertionError(f"usbwire serve exited: {log_path.read_text()}")
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", log_path.read_text())
        port = int(found[1]) if found else 0
        return bool(port)

    wait_until(listening, f"server {name} to listen", timeout_s=20)
    return FleetServer(name, process, port, log_path, control)


@pytest.fixture
def servers(etcd: EtcdProcess, tmp_path: Path) -> Iterator[list[FleetServer]]:
    """Three fleet servers (s1, s2 on rack a; s3 on rack b), each with the 5 demo devices, registered."""
    started: list[FleetServer] = []
    try:
        for name, rack in (("s1", "a"), ("s2", "a"), ("s3", "b")):
            started.append(start_fleet_server(etcd, name, tmp_path, f"rack={rack}"))
        asyncio.run(eventually(etcd.url, lambda s: len(s.devices) == 3 * DEMO_DEVICES, "15 devices registered"))
        yield started
    finally:
        for server in started:
            server.stop()


async def eventually(
    url: str, condition: Callable[[Snapshot], bool], what: str, timeout_s: float = 10.0
) -> tuple[Snapshot, float]:
    """Poll etcd (external state, as conftest.wait_until does) until ``condition``; the snapshot and seconds taken."""
    etcd = Etcd(url)
    start = time.monotonic()
    try:
        while True:
            with contextlib.suppress(Exception):
                snapshot = await read_snapshot(etcd)
                if condition(snapshot):
                    return snapshot, time.monotonic() - start
            if time.monotonic() - start > timeout_s:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            await asyncio.sleep(0.02)
    finally:
        await etcd.aclose()


async def closed_within(wait: Awaitable[object], timeout_s: float) -> float:
    """Seconds until ``wait`` finishes (the server closed a connection), failing after ``timeout_s``."""
    start = time.monotonic()
    with contextlib.suppress(ConnectionError):
        await asyncio.wait_for(wait, timeout_s)
    return time.monotonic() - start
