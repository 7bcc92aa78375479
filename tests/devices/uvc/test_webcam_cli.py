"""``usbwire serve --webcam``: the webcam joins whatever else is served, at the next free busid."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli import serving, usbwire


@pytest.fixture
def served_webcam(tmp_path: Path) -> Iterator[tuple[int, Path, list[str]]]:
    for served in serving(tmp_path, "--webcam", "--format", "yuyv", "--size", "320x240", "--fps", "15"):
        yield served.port, served.control, served.log


def test_webcam_is_exported_after_the_demo_devices(served_webcam: tuple[int, Path, list[str]]) -> None:
    port, control, log = served_webcam
    listed = json.loads(usbwire("list", "-r", "127.0.0.1", "--port", str(port), "--json").stdout)
    webcam = next(d for d in listed if d["busid"] == "1-6")
    assert (webcam["vendor_id"], webcam["product_id"], webcam["speed"]) == ("1209", "0006", "high")
    assert webcam["interfaces"] == [[0x0E, 1, 0], [0x0E, 2, 0]]  # video control, video streaming
    assert {d["busid"] for d in listed} >= {"1-1", "1-5"}
    assert any("webcam at 1-6: YUYV 320x240@15" in line for line in log), log
    # A second one through the control socket takes the next busid.
    assert usbwire("export", "webcam", "--control", str(control)).stdout == "exported webcam as 1-7\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--webcam", "--size", "320x240", "--fps", "15", "--webcam-speed", "full"],
            "320x240 at 15 fps needs 2.30 MB/s; a full-speed iso stream carries at most 1.02 MB/s",
            id="does-not-fit",
        ),
        pytest.param(["--size", "320x240"], "--size: only with --webcam", id="without-webcam"),
        pytest.param(["--webcam", "--size", "big"], "size 'big' is not WIDTHxHEIGHT", id="bad-size"),
        pytest.param(
            ["--webcam", "--webcam-image", "/nonexistent.jpg"],
            "cannot read /nonexistent.jpg: No such file or directory",
            id="image",
        ),
    ],
)
def test_webcam_errors_are_one_line(args: list[str], message: str) -> None:
    result = usbwire("serve", "--host", "127.0.0.1", "--port", "0", "--control", "none", *args, check=False)
    assert result.returncode == 1
    assert result.stderr == f"usbwire: error: {message}\n"
