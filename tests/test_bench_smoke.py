"""The benchmark builds and runs: the C reference server answers the C load generator.

A fraction of a second of load, so CI proves ``bench/`` still compiles and measures; the
figures themselves come from ``./run bench``.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench._build import Binaries, build
from bench._cli import main as bench_main
from bench._loadgen import Load, Target, run_load

if shutil.which("gcc") is None and os.environ.get("CI") != "true":
    pytest.skip("gcc is not installed (apt-get install gcc libc6-dev)", allow_module_level=True)


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> Binaries:
    return build(Path(tmp_path_factory.mktemp("bench-build")))


@pytest.fixture
def echo_port(binaries: Binaries) -> Iterator[int]:
    server = subprocess.Popen(
        [str(binaries.echo_server), "--host", "127.0.0.1", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1])
    finally:
        server.kill()
        server.wait()


def test_echo_server_devlist_lists_busid_1_1(echo_port: int) -> None:
    with socket.create_connection(("127.0.0.1", echo_port), timeout=5) as sock:
        sock.sendall(
            b"\x01\x11"  # version 1.1.1
            b"\x80\x05"  # OP_REQ_DEVLIST
            b"\x00\x00\x00\x00"  # status
        )
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    version, code, status, ndev = struct.unpack(">HHII", reply[:12])
    assert (version, code, status, ndev) == (0x0111, 0x0005, 0, 1)
    assert reply[12 + 0x100 : 12 + 0x104] == b"1-1\x00"


@pytest.mark.parametrize(
    "load",
    [
        pytest.param(Load("ctrl", 1, warmup_s=0.05, duration_s=0.2), id="control-1-in-flight"),
        pytest.param(Load("bulk", 8, size=1024, warmup_s=0.05, duration_s=0.2), id="bulk-8-in-flight"),
        pytest.param(Load("ctrl", 64, batch=32, warmup_s=0.05, duration_s=0.2), id="control-32-per-write"),
    ],
)
def test_loadgen_against_echo_server_completes_urbs_without_errors(
    binaries: Binaries, echo_port: int, load: Load
) -> None:
    targets = [Target("127.0.0.1", echo_port, "1-1")]

    result = run_load(binaries.loadgen, targets, load, timeout_s=10)

    assert result["urbs"] > 0
    assert result["errors"] == 0


def test_bench_list_shows_registered_sections(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "wire" in listed
    assert "soak" in listed
