"""Servers announce themselves on the local network; clients find them (multicast DNS, DNS-SD).

Every test asks on 127.0.0.1 only, and names its server uniquely, so that nothing else on the
machine's networks takes part.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import RunningServer, wait_until
from tests.processes import serve_process
from tests.test_cli import usbwire
from usbwire.discovery import Advertisement, Browser, devices_of, discover

LOOPBACK = ["127.0.0.1"]
WAIT_S = 10.0


def unique_name() -> str:
    return f"usbwire test {uuid.uuid4().hex[:8]}"


def advertised(log: Path) -> bool:
    return "advertised as" in log.read_text()


def test_an_advertised_server_is_discovered_with_where_it_listens_and_what_it_exports(tmp_path: Path) -> None:
    name = unique_name()
    log = tmp_path / "serve.log"
    with serve_process(log, "--advertise", name) as served:
        wait_until(lambda: advertised(log), "the server to advertise itself")
        servers = usbwire_json("discover", "--interface", "127.0.0.1", "--timeout", "3", "--json")
    assert name in servers, servers
    server = servers[name]
    assert (server["addresses"], server["port"], server["tls"]) == (["127.0.0.1"], served.port, False)
    assert server["address"] == "127.0.0.1"  # the one that answered
    assert server["implementation"].startswith("usbwire ")
    assert [device["busid"] for device in server["devices"]] == ["1-1", "1-2", "1-3", "1-4", "1-5"]
    assert server["error"] is None


def test_a_tls_server_says_so_and_is_listed_over_tls_with_the_ca_given(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    name = unique_name()
    log = tmp_path / "serve.log"
    discover_args = ["discover", "--interface", "127.0.0.1", "--timeout", "3", "--json"]
    with serve_process(log, "--advertise", name, "--tls-cert", str(tmp_path / "server.pem")):
        wait_until(lambda: advertised(log), "the server to advertise itself")
        with_ca = usbwire_json(*discover_args, "--ca", str(tmp_path / "ca.pem"))[name]
        without = usbwire_json(*discover_args)[name]  # the system's CAs do not know ours
    assert with_ca["tls"] is True and with_ca["error"] is None
    assert [device["busid"] for device in with_ca["devices"]] == ["1-1", "1-2", "1-3", "1-4", "1-5"]
    assert without["tls"] is True and without["devices"] is None
    assert "certificate" in without["error"], without["error"]


def usbwire_json(*args: str) -> dict[str, dict[str, Any]]:
    """``usbwire ARGS`` (with --json): the servers it printed, by name."""
    return {server["name"]: server for server in json.loads(usbwire(*args).stdout)}


def test_a_server_that_stops_is_withdrawn_from_a_browser_watching(tmp_path: Path) -> None:
    name = unique_name()
    log = tmp_path / "serve.log"

    async def watch() -> None:
        async with Browser(LOOPBACK) as browser:
            with serve_process(log, "--advertise", name):
                wait_until(lambda: advertised(log), "the server to advertise itself")  # (and to handle signals)
                async with asyncio.timeout(WAIT_S):
                    await browser.wait_until(lambda names: name in names)
            # Stopped: its goodbye takes it off the list at once, not when its records expire.
            async with asyncio.timeout(WAIT_S):
                await browser.wait_until(lambda names: name not in names)

    asyncio.run(watch())


def test_a_server_is_asked_at_each_of_its_addresses_until_one_answers(server: RunningServer) -> None:
    # 127.0.0.2 is this machine too, but the server listens on 127.0.0.1 only: refused there.
    announced = Advertisement("several", ("127.0.0.2", "127.0.0.1"), server.port, tls=False, implementation=None)
    found = asyncio.run(devices_of(announced))
    assert (found.address, found.error) == ("127.0.0.1", None)
    assert found.devices is not None and found.devices[0].busid == "1-1"


def test_a_server_no_address_of_which_answers_is_found_with_why(server: RunningServer) -> None:
    announced = Advertisement("nowhere", ("127.0.0.2", "127.0.0.3"), server.port, tls=False, implementation=None)
    found = asyncio.run(devices_of(announced))
    assert (found.address, found.devices) == (None, None)
    assert found.error is not None
    assert found.error.startswith(f"127.0.0.2:{server.port}: ") and f"; 127.0.0.3:{server.port}: " in found.error


def test_a_server_not_asked_to_advertise_stays_silent(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with serve_process(log) as served:
        servers = asyncio.run(discover(3.0, LOOPBACK))
    assert served.port not in [server.port for server in servers]


def test_two_servers_asking_for_one_name_are_told_apart(tmp_path: Path) -> None:
    name = unique_name()
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    with serve_process(first, "--advertise", name) as one, serve_process(second, "--advertise", name) as two:
        wait_until(lambda: advertised(first) and advertised(second), "both servers to advertise themselves")
        servers = asyncio.run(discover(3.0, LOOPBACK))
    ports = {server.name: server.port for server in servers if server.name.startswith(name)}
    assert sorted(ports.values()) == sorted([one.port, two.port]), ports
    assert len(ports) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["discover", "--timeout", "0"], "--timeout must be more than 0 seconds", id="timeout"),
        pytest.param(
            ["serve", "--host", "127.0.0.1", "--port", "0", "--control", "none", "--advertise", "x" * 64],
            "a service instance name is 1 to 63 bytes",
            id="long-name",
        ),
        pytest.param(
            ["serve", "--host", "127.0.0.1", "--port", "0", "--control", "none", "--config", "CONFIG"],
            "server.advertise must be a name, true or false",
            id="config",
        ),
    ],
)
def test_nonsense_is_refused_in_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    config = tmp_path / "usbwire.toml"
    config.write_text("[server]\nadvertise = 5\n")
    result = usbwire(*[str(config) if arg == "CONFIG" else arg for arg in args], check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.endswith(f"{message}\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("usbwire: error: ")
