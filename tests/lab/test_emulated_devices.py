"""usbwire's emulated devices used by the real kernel's drivers through usbip attach."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer, start_server
from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.cdc import Serial
from usbwire.devices.hid import Keyboard, Led

from .scenarios import KernelClient, kernel_client
from .session import Lab
from .vm import VM, GuestCommand

pytestmark = pytest.mark.lab

KEYBOARD, SERIAL = "1-2", "1-4"
GUEST_TOOL = Path(__file__).with_name("guest_devices.py")
# Linux input key codes (include/uapi/linux/input-event-codes.h)
KEY_H, KEY_I, KEY_1, KEY_ENTER, KEY_LEFTSHIFT, KEY_SPACE = 35, 23, 2, 28, 42, 57


@pytest.fixture
def host_server() -> Iterator[RunningServer]:
    yield from start_server()


def device(server: RunningServer, busid: str) -> Any:
    export = server.server.registry.get(busid)
    assert isinstance(export, EmulatedExport)
    return export.device


def wait_ready(vm: VM, command: GuestCommand, timeout_s: float = 20.0) -> None:
    """Wait until the guest tool has opened its device (it prints a "ready" line)."""
    out = vm.paths.commands / f"{command.id}.out"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if out.exists() and '"ready"' in out.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"guest tool not ready: {command.wait(1).describe()}")


def guest_tool(vm: VM, *args: str, timeout_s: float = 60.0) -> dict[str, Any]:
    import json

    result = vm.chroot_run(f"python3 {GUEST_TOOL} {' '.join(args)}", timeout_s)
    assert result.out.strip(), result.describe()
    parsed: dict[str, Any] = json.loads(result.out.strip().splitlines()[-1])
    return parsed


def typed_keys(client: KernelClient, server: RunningServer, busid: str, text: str) -> list[list[int]]:
    vm = client.vm
    keyboard = device(server, KEYBOARD)
    shifted = sum(1 for c in text if c.isupper() or c in '!@#$%^&*()_+{}|:"~<>?')
    expected_events = 2 * len(text) + 2 * shifted
    reader = vm.start_chroot_command(f"python3 {GUEST_TOOL} keys --busid {busid} --count {expected_events}")
    wait_ready(vm, reader)
    server.call(lambda: keyboard.type_text(text))
    result = reader.wait(30)
    import json

    parsed = json.loads(result.out.strip().splitlines()[-1])
    assert parsed["ok"], result.describe()
    events: list[list[int]] = parsed["events"]
    return events


def test_typed_text_arrives_as_key_events_and_leds_come_back(lab: Lab, host_server: RunningServer) -> None:
    with kernel_client(lab) as client:
        busid = client.attach(host_server.port, KEYBOARD, wait_for=(0x1209, 0x0003))
        events = typed_keys(client, host_server, busid, "Hi1\n")
        assert events == [
            [KEY_LEFTSHIFT, 1], [KEY_H, 1], [KEY_LEFTSHIFT, 0], [KEY_H, 0],
            [KEY_I, 1], [KEY_I, 0],
            [KEY_1, 1], [KEY_1, 0],
            [KEY_ENTER, 1], [KEY_ENTER, 0],
        ]  # fmt: skip
        keyboard: Keyboard = device(host_server, KEYBOARD)
        changed = asyncio.run_coroutine_threadsafe(keyboard.leds_changed(), host_server.loop)
        assert guest_tool(client.vm, "led", "--busid", busid, "--caps")["ok"]
        assert changed.result(timeout=20) & Led.CAPS_LOCK

        # Re-enumeration: deauthorize and authorize again, then type once more.
        client.vm.run(f"echo 0 > /sys/bus/usb/devices/{busid}/authorized", check=True)
        client.vm.run(f"echo 1 > /sys/bus/usb/devices/{busid}/authorized", check=True)
        assert typed_keys(client, host_server, busid, " ") == [[KEY_SPACE, 1], [KEY_SPACE, 0]]


def test_a_mebibyte_through_the_serial_port_and_back(lab: Lab, host_server: RunningServer) -> None:
    serial: Serial = device(host_server, SERIAL)

    async def echo() -> None:
        while True:
            serial.write(await serial.read())

    echoing = asyncio.run_coroutine_threadsafe(echo(), host_server.loop)
    try:
        with kernel_client(lab) as client:
            busid = client.attach(host_server.port, SERIAL, wait_for=(0x1209, 0x0005))
            result = guest_tool(client.vm, "serial", "--busid", busid, "--size", str(1 << 20), timeout_s=120)
            assert result["ok"], result
            assert result["sent"] == result["received"]
            # Detach and attach again: the port works after a fresh enumeration.
            imported = client.imported().out
            vhci_port = int(imported.split("Port ")[1].split(":")[0])
            assert client.detach(vhci_port).ok
            client.vm.wait_for_usb(0x1209, 0x0005, present=False)
            busid = client.attach(host_server.port, SERIAL, wait_for=(0x1209, 0x0005))
            again = guest_tool(client.vm, "serial", "--busid", busid, "--size", "65536")
            assert again["ok"], again
    finally:
        echoing.cancel()
