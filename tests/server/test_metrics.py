"""``serve --metrics``: Prometheus figures of what the server is doing, scraped over HTTP."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import usbwire
from tests.conftest import wait_until
from tests.processes import serve_process
from tests.wire import WireClient
from usbwire.protocol import Direction, OpStatus, RetSubmit

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(log: Path) -> Samples:
    """Every sample of the server's /metrics, keyed by name and labels."""
    match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", log.read_text())
    assert match, log.read_text()
    with urllib.request.urlopen(f"http://127.0.0.1:{match[1]}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def busid(value: str) -> tuple[tuple[str, str], ...]:
    return (("busid", value),)


def test_counters_and_gauges_follow_an_import_its_urbs_and_its_end(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with serve_process(log, "--metrics", "127.0.0.1:0") as served:
        before = scrape(log)
        assert before[("usbwire_exported", (("busid", "1-1"), ("vid_pid", "1209:0001")))] == 1
        assert before[("usbwire_imports_total", ())] == 0
        with WireClient(served.port) as client:
            client.import_("1-1")
            client.control_out(0x00, 9, 1, 0)  # SET_CONFIGURATION 1
            assert isinstance(client.read_event(), RetSubmit)
            setup = bytes((0x80, 6, 0, 1, 0, 0, 18, 0))
            for _ in range(10):
                client.submit(ep=0, direction=Direction.IN, length=18, setup=setup)
                assert isinstance(client.read_event(), RetSubmit)
            client.submit(ep=1, direction=Direction.IN, length=64)  # waits: nothing was written
            wait_until(lambda: scrape(log)[("usbwire_urbs_in_flight", busid("1-1"))] == 1, "the IN to wait")
            during = scrape(log)
        wait_until(lambda: scrape(log)[("usbwire_imported", busid("1-1"))] == 0, "the device to be released")
        after = scrape(log)
    assert during[("usbwire_imported", busid("1-1"))] == 1
    assert during[("usbwire_imported", busid("1-2"))] == 0
    assert during[("usbwire_open_connections", ())] == 1
    assert during[("usbwire_imports_total", ())] == 1
    assert during[("usbwire_replies_total", ())] - before[("usbwire_replies_total", ())] == 12  # import + 11 URBs
    assert (after[("usbwire_open_connections", ())], after[("usbwire_urbs_in_flight", busid("1-1"))]) == (0, 0)
    assert after[("usbwire_connections_total", ())] == before[("usbwire_connections_total", ())] + 1
    assert [dict(labels) for name, labels in after if name == "usbwire_info"] == [{"version": usbwire.__version__}]


def test_refused_imports_are_counted_by_their_status(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with serve_process(log, "--metrics", "127.0.0.1:0") as served:
        before = scrape(log)
        with WireClient(served.port) as holder:
            assert holder.import_("1-1").status == OpStatus.OK
            with WireClient(served.port) as second:
                assert second.import_("1-1").status == OpStatus.DEV_BUSY
        with WireClient(served.port) as lost:
            assert lost.import_("9-9").status == OpStatus.NODEV
        after = scrape(log)
    for status in ("NA", "DEV_BUSY", "DEV_ERR", "NODEV", "ERROR"):
        assert before[("usbwire_refused_imports_total", (("status", status),))] == 0
    refused = {
        status: after[("usbwire_refused_imports_total", (("status", status),))]
        for status in ("DEV_BUSY", "NODEV", "NA")
    }
    assert refused == {"DEV_BUSY": 1, "NODEV": 1, "NA": 0}
    assert after[("usbwire_imports_total", ())] == 1


@pytest.mark.parametrize(
    ("address", "message"),
    [
        pytest.param("nonsense", "--metrics: bad address 'nonsense': expected [HOST:]PORT", id="no-port"),
        pytest.param("127.0.0.1:70000", "PORT 0-65535", id="port-range"),
        pytest.param("TAKEN", "cannot serve metrics on 127.0.0.1:", id="in-use"),
    ],
)
def test_an_address_it_cannot_serve_metrics_on_is_one_error_line(address: str, message: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = address.replace("TAKEN", f"127.0.0.1:{taken.getsockname()[1]}")
        result = subprocess.run(
            [sys.executable, "-m", "usbwire", "serve", "--host", "127.0.0.1", "--port", "0", "--control", "none",
             "--metrics", address],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("usbwire: error: ") and message in last, result.stderr
    assert "Traceback" not in result.stderr
