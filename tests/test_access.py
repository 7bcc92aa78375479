"""Access control: tokens, client addresses and certificates decide what each client sees."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, start_server
from tests.wire import WireClient, read_until_closed
from usbwire import AuthenticationFailed, DeviceInfo, Limits, list_devices, load_config
from usbwire.client import connect
from usbwire.protocol import OpStatus
from usbwire.server.access import AccessPolicy

TOKEN = "correct horse battery staple"


def policy_server(policy: AccessPolicy, limits: Limits | None = None) -> Iterator[RunningServer]:
    yield from start_server(limits, policy=policy)


@pytest.fixture
def guarded() -> Iterator[RunningServer]:
    """1-1 only for the token "laptop"; 1-2 only from 127.0.0.1; the rest for anyone."""
    policy = AccessPolicy.build(
        rules=[("1-1", ["token:laptop"]), ("1-2", ["cidr:127.0.0.1/32"])],
        default=["any"],
        tokens={"laptop": TOKEN},
    )
    yield from policy_server(policy)


def busids(devices: list[DeviceInfo]) -> set[str]:
    return {d.busid for d in devices}


def test_a_device_is_hidden_from_one_client_and_listed_for_another(guarded: RunningServer) -> None:
    anonymous = asyncio.run(list_devices("127.0.0.1", guarded.port))
    with_token = asyncio.run(list_devices("127.0.0.1", guarded.port, token=TOKEN))
    assert "1-1" not in busids(anonymous) and "1-1" in busids(with_token)
    assert {"1-3", "1-4"} <= busids(anonymous)


def test_the_token_opens_its_device(guarded: RunningServer) -> None:
    async def main() -> bytes | int:
        async with connect("127.0.0.1", "1-1", port=guarded.port, token=TOKEN) as device:
            await device.set_configuration(1)
            await device.bulk_transfer(0x01, b"authorized")
            return await device.bulk_transfer(0x81, 64, timeout=5)

    assert asyncio.run(main()) == b"authorized"


def test_a_wrong_token_is_refused_and_the_connection_closed(guarded: RunningServer) -> None:
    with pytest.raises(AuthenticationFailed, match="refused the token"):
        asyncio.run(list_devices("127.0.0.1", guarded.port, token="not the right one at all"))


def test_an_import_without_the_token_is_denied_with_an_error_status(
    guarded: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with WireClient(guarded.port) as client:
        assert client.import_("1-1").status == OpStatus.NA
        assert read_until_closed(client.sock) == b""
    assert [r.message for r in caplog.records if "denied" in r.message]


def test_a_denied_address_neither_sees_nor_imports_its_device(guarded: RunningServer) -> None:
    with WireClient(guarded.port, source="127.0.0.2") as other:
        assert "1-2" not in {d.busid for d in other.devlist()}
    with WireClient(guarded.port, source="127.0.0.2") as other:
        assert other.import_("1-2").status == OpStatus.NA
    with WireClient(guarded.port) as local:
        assert local.import_("1-2").status == OpStatus.OK


def test_a_client_flooding_connections_is_bounded_and_others_are_served() -> None:
    for running in policy_server(AccessPolicy(), Limits(max_connections_per_client=4)):
        flood = [socket.create_connection(("127.0.0.1", running.port), source_address=("127.0.0.3", 0))
                 for _ in range(10)]  # fmt: skip
        try:
            closed = 0
            for sock in flood:
                sock.settimeout(0.5)
                try:
                    if sock.recv(1) == b"":
                        closed += 1
                except TimeoutError:
                    pass
                except ConnectionResetError:
                    closed += 1
            assert closed == 6  # the four first stay open, the rest are dropped
            assert asyncio.run(list_devices("127.0.0.1", running.port))  # another address is served
        finally:
            for sock in flood:
                sock.close()


def test_config_file_sets_tokens_rules_and_limits(tmp_path: Path) -> None:
    config = tmp_path / "usbwire.toml"
    config.write_text(
        '[server]\nport = 3999\nmax_connections_per_client = 3\nallow = ["cidr:10.0.0.0/8"]\n'
        "resume_window = 12.5\nliveness_timeout = 3\nrescan_interval = 0.5\n"
        '[tokens]\nci = "0123456789abcdef0123"\n'
        '[[device]]\nmatch = "1209:0001"\nallow = ["token:ci", "cert:builder"]\n'
    )
    settings = load_config(config)
    assert settings["port"] == 3999 and settings["limits"].max_connections_per_client == 3
    assert (settings["limits"].resume_window, settings["limits"].liveness_timeout) == (12.5, 3.0)
    assert settings["rescan_interval"] == 0.5
    policy: AccessPolicy = settings["policy"]
    assert policy.tokens == {"ci": "0123456789abcdef0123"}
    assert policy.default == ("cidr:10.0.0.0/8",)
    (config.parent / "bad.toml").write_text("[server]\nprot = 1\n")
    with pytest.raises(Exception, match=r"unknown settings server\.prot"):
        load_config(config.parent / "bad.toml")


def test_a_client_that_never_asks_anything_is_dropped() -> None:
    for running in policy_server(AccessPolicy(), Limits(request_timeout=0.3)):
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as idle:
            idle.sendall(b"\x01\x11")  # half an OP header, then nothing
            assert read_until_closed(idle) == b""
        # An imported device with no traffic is not timed out.
        with WireClient(running.port) as client:
            assert client.import_("1-1").status == OpStatus.OK
            threading.Event().wait(0.6)
            client.control_out(0x00, 9, 1, 0)
            assert client.read_event() is not None
