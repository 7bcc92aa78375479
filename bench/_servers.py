"""The servers under test: how to start each one pinned, reach its devices, and stop it.

Every server runs as its own process under ``taskset -c SERVER_CPU`` (so all its threads stay
on that core) and announces ``listening on HOST:PORT`` on stderr. Devices:

* ``1-1``: the device of the single-connection rows (usbwire's demo bulk loopback, PyPI usbip's
  CDC-ACM echo port, anything for the C server).
* ``2-1`` .. ``2-N``: one per connection of the scale rows; usbwire gets them through its
  control socket, PyPI usbip exports them from ``bench._peer_usbip`` (16 per listener).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench._build import Binaries
from bench._loadgen import Target

HOST = "127.0.0.1"
MAIN_BUSID = "1-1"
START_TIMEOUT_S = 30.0


def usbwire_serve_args(loop: str, control: str = "none", *extra: str) -> list[str]:
    """``python`` arguments of the usbwire server every section measures (demo devices, any port)."""
    args = ["-m", "usbwire", "serve", "--host", HOST, "--port", "0", "--demo", "--control", control]
    return [*args, "--loop", loop, *extra]


class ServerError(RuntimeError):
    """A server did not start, or died; the message carries the end of its stderr."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One server to compare.

    Attributes:
        key: short name used in the JSON output (``c``, ``usbwire-asyncio``...).
        label: column heading.
        kind: ``c``, ``usbwire`` or ``usbip``: how to start it and give it devices.
        loop: usbwire's ``--loop``.
        limits: rows this server cannot run, each with the reason (row key -> reason).
        rows: the only rows it runs, when not all (the others show ``-``, without a reason).
    """

    key: str
    label: str
    kind: str
    loop: str = ""
    limits: dict[str, str] = field(default_factory=dict)
    rows: frozenset[str] | None = None


C_SERVER = ServerSpec("c", "C echo (limit)", "c")
USBWIRE_ASYNCIO = ServerSpec("usbwire-asyncio", "usbwire asyncio", "usbwire", loop="asyncio")
USBWIRE_UVLOOP = ServerSpec("usbwire-uvloop", "usbwire uvloop", "usbwire", loop="uvloop")
# Not a peer: the least a Python asyncio server can do per URB (bench/_lean_server.py), to
# show in the same run how much of the gap to C is the interpreter's. Only on the rows that
# measure the cost of one URB: with many in flight or big transfers it is no floor (it neither
# paces its writes nor avoids copies), and usbwire beats it.
LEAN_PYTHON = ServerSpec("lean-python", "lean Python (uvloop)", "lean", rows=frozenset({"ctrl-1", "bulk-1", "cpu"}))


def usbip_spec() -> ServerSpec:
    """The PyPI ``usbip`` peer, labelled with its installed version."""
    try:
        version = importlib.metadata.version("usbip")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return ServerSpec("usbip", f"PyPI usbip {version}", "usbip")


def ensure_usbip_installed(install: bool) -> str | None:
    """Make the PyPI ``usbip`` package importable by this interpreter.

    Args:
        install: run ``pip install usbip`` when it is missing.

    Returns:
        None when it is there, else why not.
    """
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("usbip")
        return None
    if not install:
        return "the PyPI package usbip is not installed (and --no-install was given)"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "usbip"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return f"pip install usbip failed: {result.stderr.strip().splitlines()[-1:]}"
    importlib.invalidate_caches()
    return None


class RunningServer:
    """A started server process: its pid, its devices, and the tail of its log."""

    def __init__(self, spec: ServerSpec, binaries: Binaries, *, cpu: int, scale_devices: int, nice: int = 0) -> None:
        self.spec = spec
        self.cpu = cpu
        self.scale_devices = scale_devices
        self._tmp = tempfile.TemporaryDirectory(prefix=f"bench-{spec.key}-")
        self._control = Path(self._tmp.name) / "control.sock"
        self._lines: queue.Queue[str] = queue.Queue()
        self._tail: list[str] = []
        self._targets: dict[str, Target] = {}
        argv = ["taskset", "-c", str(cpu), *(["nice", "-n", str(nice)] if nice else [])]
        argv += self._command(binaries)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            self.port = self._wait_listening()
            self._export_devices()
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _command(self, binaries: Binaries) -> list[str]:
        kind = self.spec.kind
        if kind == "c":
            return [str(binaries.echo_server), "--host", HOST, "--port", "0"]
        if kind == "usbwire":
            control = str(self._control) if self.scale_devices else "none"
            return [sys.executable, *usbwire_serve_args(self.spec.loop, control)]
        if kind == "lean":
            return [sys.executable, "-m", "bench._lean_server", "--host", HOST, "--port", "0"]
        if kind == "usbip":
            return [
                sys.executable,
                "-m",
                "bench._peer_usbip",
                "--host",
                HOST,
                "--devices",
                str(self.scale_devices),
            ]
        raise ValueError(f"unknown server kind {kind!r}")

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.put(line.rstrip("\n"))
            self._tail = [*self._tail[-19:], line.rstrip("\n")]

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    raise ServerError(f"{self.spec.label} exited at start: {self.log_tail()}") from None
                continue
            if line.startswith("target "):  # bench._peer_usbip: "target HOST:PORT:BUSID"
                host, port, busid = line.split()[1].split(":")
                self._targets[busid] = Target(host, int(port), busid)
            if "listening on " in line:
                return int(line.rsplit(":", 1)[1].split()[0])
        raise ServerError(f"{self.spec.label} did not say 'listening on' within {START_TIMEOUT_S:.0f} s")

    def _export_devices(self) -> None:
        if self.spec.kind == "usbip":
            return  # bench._peer_usbip exported them and said where
        self._targets[MAIN_BUSID] = Target(HOST, self.port, MAIN_BUSID)
        for n in range(1, self.scale_devices + 1):
            busid = f"2-{n}"
            if self.spec.kind == "usbwire":
                self._control_request({"command": "export", "device": "loopback", "busid": busid})
            self._targets[busid] = Target(HOST, self.port, busid)

    def _control_request(self, request: dict[str, str]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._control.exists():
            if time.monotonic() > deadline:
                raise ServerError(f"{self.spec.label}: no control socket at {self._control}")
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self._control))
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as stream:
                reply = json.loads(stream.readline())
        if not reply.get("ok"):
            raise ServerError(f"{self.spec.label}: control request {request} failed: {reply.get('error')}")

    def targets(self, busids: Sequence[str]) -> list[Target]:
        """The targets of these busids.

        Args:
            busids: ``1-1`` or ``2-N`` names.

        Returns:
            One target per busid.

        Raises:
            ServerError: the server does not export one of them.
        """
        missing = [busid for busid in busids if busid not in self._targets]
        if missing:
            raise ServerError(f"{self.spec.label} does not export {', '.join(missing[:3])}")
        return [self._targets[busid] for busid in busids]

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        return " | ".join(self._tail[-5:]) or "(no output)"

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 5 s) and remove its temporary files."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._tmp.cleanup()
