"""Every emulated device comes back after the guest re-enumerates it, both ways."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import RunningServer, start_server

from .scenarios import KernelClient, kernel_client
from .session import Lab

pytestmark = pytest.mark.lab

# busid on the demo server -> (VID:PID, the guest driver that must bind to interface 0)
DEMO = {
    "1-1": ((0x1209, 0x0001), None),  # vendor class: no driver
    "1-2": ((0x1209, 0x0003), "usbhid"),
    "1-3": ((0x1209, 0x0004), "usbhid"),
    "1-4": ((0x1209, 0x0005), "cdc_acm"),
    "1-5": ((0x1209, 0x0002), "usb-storage"),
}


@pytest.fixture
def host_server() -> Iterator[RunningServer]:
    yield from start_server()


def assert_enumerated(client: KernelClient, local: str, driver: str | None) -> None:
    vm = client.vm
    # Configured, and (for a class device) its driver bound again.
    check = f'[ "$(cat /sys/bus/usb/devices/{local}/bConfigurationValue)" = 1 ]'
    if driver:
        check += f' && [ "$(basename $(readlink /sys/bus/usb/devices/{local}:1.0/driver))" = {driver} ]'
    vm.run(f"for i in $(seq 100); do {check} && exit 0; sleep 0.1; done; exit 1", 30, check=True)


def test_every_demo_device_survives_reauthorization_and_detach_attach(lab: Lab, host_server: RunningServer) -> None:
    with kernel_client(lab) as client:
        for busid, (ids, driver) in DEMO.items():
            local = client.attach(host_server.port, busid, wait_for=ids)
            assert_enumerated(client, local, driver)

            client.vm.run(f"echo 0 > /sys/bus/usb/devices/{local}/authorized", check=True)
            client.vm.run(f"echo 1 > /sys/bus/usb/devices/{local}/authorized", check=True)
            assert_enumerated(client, local, driver)

            port = int(client.imported().out.split("Port ")[1].split(":")[0])
            assert client.detach(port).ok
            client.vm.wait_for_usb(*ids, present=False)
            local = client.attach(host_server.port, busid, wait_for=ids)
            assert_enumerated(client, local, driver)
            port = int(client.imported().out.split("Port ")[1].split(":")[0])
            assert client.detach(port).ok
            client.vm.wait_for_usb(*ids, present=False)
        errors = [line for line in client.vm.dmesg().splitlines() if "error" in line.lower() and "usb" in line]
        assert not errors, "\n".join(errors)
