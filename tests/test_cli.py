"""The ``usbwire`` command as a user runs it, against a real ``usbwire serve`` process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import closed_port

USBWIRE = [sys.executable, "-m", "usbwire"]
COMMANDS = [
    "serve", "list", "status", "export", "unexport", "type", "mouse",
    "attach", "detach", "port", "bind", "unbind", "certs", "fleet", "discover",
]  # fmt: skip


def usbwire(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*USBWIRE, *args], capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    port: int
    control: Path
    log: list[str]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServeProcess]:
    """``usbwire serve --demo`` on an ephemeral loopback port, as its own process."""
    yield from serving(tmp_path)


def serving(tmp_path: Path, *options: str, demo: bool = True) -> Iterator[ServeProcess]:
    control = tmp_path / "control.sock"
    process = subprocess.Popen(
        [
            *USBWIRE,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *(["--demo"] * demo),
            "--control",
            str(control),
            *options,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    log: list[str] = []
    port = 0
    for line in process.stderr:
        log.append(line)
        if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
            port = int(match.group(1))
        if "control socket" in line:
            break
    assert port, "".join(log)
    try:
        yield ServeProcess(process, port, control, log)
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_version() -> None:
    assert re.fullmatch(r"usbwire \S+\n", usbwire("--version").stdout)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    assert "usage: usbwire " + command in usbwire(command, "--help").stdout


@pytest.mark.skipif(shutil.which("usbip") is None, reason="Debian's usbip tool is not installed")
def test_usbip_tool_and_usbwire_list_print_the_same(served: ServeProcess) -> None:
    theirs = subprocess.run(
        ["usbip", "--tcp-port", str(served.port), "list", "-r", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert theirs.returncode == 0, theirs.stderr
    assert "1-1: " in theirs.stdout and "(1209:0001)" in theirs.stdout
    assert "(ff/00/00)" in theirs.stdout
    ours = usbwire("list", "-r", "127.0.0.1", "--port", str(served.port))
    assert ours.stdout == theirs.stdout


def test_list_json(served: ServeProcess) -> None:
    devices = json.loads(usbwire("list", "-r", "127.0.0.1", "--port", str(served.port), "--json").stdout)
    device = devices[0]
    assert (device["busid"], device["vendor_id"], device["product_id"]) == ("1-1", "1209", "0001")
    assert device["interfaces"] == [[0xFF, 0, 0]]


def test_status_export_unexport_through_the_control_socket(served: ServeProcess) -> None:
    control = ["--control", str(served.control)]
    assert oct(os.stat(served.control).st_mode & 0o777) == "0o600"
    assert usbwire("export", "loopback", "-b", "3-1", *control).stdout == "exported loopback as 3-1\n"
    status = json.loads(usbwire("status", "--json", *control).stdout)
    assert [e["busid"] for e in status["exports"]][-1] == "3-1"
    listed = json.loads(usbwire("list", "-r", "127.0.0.1", "--port", str(served.port), "--json").stdout)
    assert "3-1" in [d["busid"] for d in listed]
    usbwire("unexport", "-b", "3-1", *control)
    failed = usbwire("unexport", "-b", "3-1", *control, check=False)
    assert (failed.returncode, failed.stderr) == (1, "usbwire: error: busid 3-1 is not exported\n")
    summary = usbwire("status", *control).stdout
    assert "1-1" in summary and "imports 0 (0 refused)" in summary


CLOSED_PORT = "(a port that refuses connections)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["list", "-r", "127.0.0.1", "--port", CLOSED_PORT], "connection refused", id="refused"),
        pytest.param(["list", "-r", "no-such-host.invalid"], "cannot resolve", id="unknown-host"),
        pytest.param(["status", "--control", "/nonexistent/usbwire.sock"], "no server is running", id="no-server"),
    ],
)
def test_errors_are_one_line_and_exit_1(args: list[str], message: str) -> None:
    with closed_port() as port:
        result = usbwire(*[str(port) if arg == CLOSED_PORT else arg for arg in args], check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("usbwire: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_logs_one_line_per_connection_event(served: ServeProcess) -> None:
    usbwire("list", "-r", "127.0.0.1", "--port", str(served.port))
    served.process.terminate()
    assert served.process.stderr is not None
    rest = served.process.stderr.read()
    assert re.search(r"127\.0\.0\.1:\d+ listed \d+ device\(s\)", rest)


def test_serve_audio_adds_the_headset_whose_microphone_plays_the_chosen_tone(tmp_path: Path) -> None:
    from tests.audio import measure
    from usbwire.client import connect

    async def record(port: int) -> bytes:
        async with connect("127.0.0.1", "1-6", port=port) as headset:
            await headset.set_configuration(1)
            await headset.set_interface(2, 1)
            result = await headset.iso_transfer(0x82, [192] * 100)
            return result.data

    for served in serving(tmp_path, "--audio", "--mic-tone", "440", "--speaker-out", str(tmp_path / "out.wav")):
        listed = json.loads(usbwire("list", "-r", "127.0.0.1", "--port", str(served.port), "--json").stdout)
        headset = next(device for device in listed if device["busid"] == "1-6")
        assert headset["interfaces"] == [[1, 1, 0], [1, 2, 0], [1, 2, 0]]
        tone = measure(asyncio.run(record(served.port)), 48000)
        assert tone.frequency == pytest.approx(440, rel=0.01)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--mic-tone", "440"], "add --audio", id="tone-without-audio"),
        pytest.param(["--audio", "--mic-wav", "/nonexistent.wav"], "cannot play /nonexistent.wav", id="no-wav"),
        pytest.param(["--audio", "--mic-tone", "30000"], "outside", id="tone-too-high"),
        pytest.param(
            ["--audio", "--speaker-out", "/nonexistent/x.wav"], "cannot write /nonexistent/x.wav", id="no-directory"
        ),
    ],
)
def test_serve_refuses_impossible_audio_in_one_line(args: list[str], message: str) -> None:
    result = usbwire("serve", "--host", "127.0.0.1", "--port", "0", "--control", "none", *args, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("usbwire: error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_serve_disk_exports_that_image_alone_and_a_client_reads_its_blocks(tmp_path: Path) -> None:
    from tests.devices.test_mass_storage import cbw, read10
    from usbwire.client import connect
    from usbwire.protocol import Direction

    image = tmp_path / "stick.img"
    written = os.urandom(64 * 1024)
    image.write_bytes(written + bytes(1 << 20))

    async def first_blocks(port: int) -> tuple[bytes | int, bytes | int]:
        async with connect("127.0.0.1", "1-1", port=port) as disk:
            await disk.set_configuration(1)
            await disk.bulk_transfer(0x02, cbw(read10(0, 128), length=len(written), direction=Direction.IN, tag=7))
            return await disk.bulk_transfer(0x81, len(written)), await disk.bulk_transfer(0x81, 13)

    for served in serving(tmp_path, "--disk", str(image), demo=False):
        listed = json.loads(usbwire("list", "-r", "127.0.0.1", "--port", str(served.port), "--json").stdout)
        assert [(device["busid"], device["interfaces"]) for device in listed] == [("1-1", [[8, 6, 80]])]
        data, status = asyncio.run(first_blocks(served.port))
        assert data == written
        assert isinstance(status, bytes) and status[:4] == b"USBS" and status[12] == 0  # CSW: passed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--disk", "/nonexistent.img"], "/nonexistent.img: no such disk image", id="missing"),
        pytest.param(["--disk", "IMAGE", "--disk-ro", "IMAGE"], "image is in use by another", id="twice"),
        pytest.param(["--disk", "/"], "/: Is a directory", id="directory"),
        pytest.param(["--config", "CONFIG"], "each [[disk]] needs image", id="config"),
    ],
)
def test_serve_refuses_a_disk_it_cannot_export_in_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    config = tmp_path / "usbwire.toml"
    config.write_text("[[disk]]\nread_only = true\n")
    args = [str(image) if arg == "IMAGE" else str(config) if arg == "CONFIG" else arg for arg in args]
    result = usbwire("serve", "--host", "127.0.0.1", "--port", "0", "--control", "none", *args, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("usbwire: error: ") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_serve_refuses_a_rescan_interval_that_is_not_positive() -> None:
    result = usbwire(
        "serve", "--host", "127.0.0.1", "--port", "0", "--control", "none", "--export", "all",
        "--rescan-interval", "0", check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("usbwire: error: ") and "more than 0 seconds" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["serve", "--port", "99999"], "--port: port 99999 is outside 0-65535", id="serve"),
        pytest.param(["list", "-r", "127.0.0.1", "--port", "0"], "--port: port 0 is outside 1-65535", id="list"),
        pytest.param(["attach", "-r", "::1", "-b", "1-1", "-p", "70000"], "port 70000 is outside 1-65535", id="attach"),
        pytest.param(["list", "-r", "127.0.0.1", "--port", "http"], "--port: 'http' is not a port number", id="name"),
    ],
)
def test_a_port_that_is_not_one_is_refused_as_a_usage_error(args: list[str], message: str) -> None:
    # (getaddrinfo would quietly take 99999 for 34463.)
    result = usbwire(*args, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(message), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["fleet", "list", "--fleet", "etcd://127.0.0.1:99999"], "bad etcd URL 'etcd://127.0.0.1:99999'", id="etcd"
        ),
        pytest.param(
            ["serve", "--host", "127.0.0.1", "--port", "0", "--control", "none", "--fleet", "etcd://127.0.0.1:2379",
             "--fleet-address", "10.0.0.1:99999"],
            "bad fleet address '10.0.0.1:99999': port 99999 is outside 1-65535",
            id="fleet-address",
        ),
        pytest.param(["serve", "--config", "CONFIG"], "server.port: port 70000 is outside 0-65535", id="config"),
    ],
)  # fmt: skip
def test_a_port_out_of_range_elsewhere_is_one_error_line(args: list[str], message: str, tmp_path: Path) -> None:
    config = tmp_path / "usbwire.toml"
    config.write_text("[server]\nport = 70000\n")
    result = usbwire(*[str(config) if arg == "CONFIG" else arg for arg in args], check=False)
    assert result.returncode == 1, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("usbwire: error: ") and message in last, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--max-in-flight", "0"], "max-in-flight must be at least 1, not 0", id="in-flight"),
        pytest.param(["--liveness-timeout", "0"], "liveness-timeout must be more than 0 seconds", id="liveness"),
        pytest.param(["--resume-window", "-1"], "resume-window must be 0 seconds (no sessions) or more", id="window"),
        pytest.param(["--config", "CONFIG"], "max-transfer must be at least 1, not 0", id="config"),
    ],
)
def test_serve_refuses_limits_that_would_leave_it_useless(args: list[str], message: str, tmp_path: Path) -> None:
    config = tmp_path / "usbwire.toml"
    config.write_text("[server]\nmax_transfer = 0\n")
    result = usbwire(
        "serve", "--host", "127.0.0.1", "--port", "0", "--control", "none",
        *[str(config) if arg == "CONFIG" else arg for arg in args], check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("usbwire: error: ") and message in last, result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_a_port_in_use_names_it_in_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = usbwire("serve", "--host", "127.0.0.1", "--port", str(port), "--control", "none", check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"usbwire: error: cannot listen on 127.0.0.1 port {port}: Address already in use"
        " (is usbipd or another USB/IP server using it?)"
    )


@pytest.mark.parametrize("command", [["list", "-r", "127.0.0.1"], ["attach", "-r", "127.0.0.1", "-b", "1-1"]])
def test_a_client_key_without_its_certificate_is_refused_not_ignored(command: list[str], tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("")
    result = usbwire(*command, "--key", str(key), check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == "usbwire: error: --key is the client certificate's key: give --cert too"


@pytest.mark.parametrize("option", ["--client-ca", "--tls-key"])
def test_serve_refuses_tls_settings_without_a_certificate_rather_than_serve_in_the_clear(
    option: str, tmp_path: Path
) -> None:
    pem = tmp_path / "some.pem"
    pem.write_text("")
    result = usbwire("serve", "--host", "127.0.0.1", "--port", "0", "--control", "none", option, str(pem), check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "usbwire: error: a client CA or a TLS key needs TLS: give --tls-cert (and --tls-key) too"
    )
