"""The benchmark builds and runs: the C reference server and the lean Python one answer the C
load generator.

A fraction of a second of load, so CI proves ``bench/`` still compiles and measures; the
figures themselves come from ``./run bench``.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench._build import Binaries, build
from bench._cli import main as bench_main
from bench._disk import IMAGE_BYTES, blank_image, commands_per_second, usbwire_disk
from bench._loadgen import Load, Target, run_load
from bench._model import Row, Sample, SectionResult
from bench._wire import lean_note

if shutil.which("gcc") is None and os.environ.get("CI") != "true":
    pytest.skip("gcc is not installed (apt-get install gcc libc6-dev)", allow_module_level=True)


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> Binaries:
    return build(Path(tmp_path_factory.mktemp("bench-build")))


@pytest.fixture
def echo_port(binaries: Binaries) -> Iterator[int]:
    yield from _listening([str(binaries.echo_server), "--host", "127.0.0.1", "--port", "0"])


@pytest.fixture
def lean_port() -> Iterator[int]:
    yield from _listening([sys.executable, "-m", "bench._lean_server", "--host", "127.0.0.1", "--port", "0"])


def _listening(argv: list[str]) -> Iterator[int]:
    server = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
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


def test_disk_benchmark_client_runs_whole_commands_through_usbwires_disk(tmp_path: Path) -> None:
    with usbwire_disk(blank_image(tmp_path / "disk.img", IMAGE_BYTES)) as port:  # (sparse)
        write_rate, read_rate = commands_per_second(port, [(True, 8), (False, 240)], duration_s=0.2)
    assert write_rate > 0 and read_rate > 0


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


@pytest.mark.parametrize(
    "load",
    [
        pytest.param(Load("ctrl", 1, warmup_s=0.05, duration_s=0.2), id="control-1-in-flight"),
        pytest.param(Load("bulk", 1, size=64, warmup_s=0.05, duration_s=0.2), id="bulk-1-in-flight"),
        pytest.param(Load("ctrl", 64, batch=32, warmup_s=0.05, duration_s=0.2), id="control-32-per-write"),
        pytest.param(Load("bulk", 8, size=16384, warmup_s=0.05, duration_s=0.2), id="bulk-16k-split-reads"),
    ],
)
def test_lean_python_server_answers_the_rows_it_runs_without_errors(
    binaries: Binaries, lean_port: int, load: Load
) -> None:
    # The load generator checks every reply (status, length, descriptor, loopback order), so
    # the lean server's figures are of a server doing the same work as the C one.
    result = run_load(binaries.loadgen, [Target("127.0.0.1", lean_port, "2-7")], load, timeout_s=10)

    assert result["urbs"] > 0
    assert result["errors"] == 0


def _rate_row(key: str, c: float, lean: float, higher_is_better: bool = True) -> Row:
    row = Row(key, key, "URB/s", "", higher_is_better)
    row.add("c", Sample(c))
    row.add("lean-python", Sample(lean))
    return row


def test_lean_note_names_the_goals_the_lean_server_misses_itself() -> None:
    result = SectionResult("wire", "")
    result.rows = [
        _rate_row("ctrl-1", 100.0, 70.0),  # 0.70x: misses >= 0.80x
        _rate_row("bulk-1", 100.0, 85.0),  # 0.85x: holds
        _rate_row("cpu", 2.0, 1.0, higher_is_better=False),  # 0.50x: holds <= 0.60x
    ]

    note = lean_note(result)

    assert "ctrl-1 0.70x, bulk-1 0.85x, cpu 0.50x" in note
    assert "It misses ctrl-1 (>= 0.80x) itself" in note
    assert "bulk-1 (" not in note and "cpu (" not in note


def test_lean_note_claims_nothing_when_the_lean_server_meets_every_goal() -> None:
    result = SectionResult("wire", "")
    result.rows = [_rate_row("ctrl-1", 100.0, 90.0), _rate_row("bulk-1", 100.0, 81.0)]
    result.rows.append(_rate_row("cpu", 2.0, 1.1, higher_is_better=False))

    assert "misses" not in lean_note(result)
