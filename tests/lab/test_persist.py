"""``usbwire attach --persist`` keeps a device attached through cut connections and restarts."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.conftest import RunningServer, running_server

from .scenarios import imported_listing
from .session import Lab

pytestmark = pytest.mark.lab

LOOPBACK_IDS = (0x1209, 0x0001)


def server_on(port: int) -> contextlib.AbstractContextManager[RunningServer]:
    return running_server(port=port)


def cut_import(running: RunningServer) -> None:
    def cut() -> None:
        for connection in list(running.server._connections):
            if connection.busid == "1-1" and connection.transport is not None:
                connection.transport.abort()

    running.call(cut)


def test_persistent_attach_survives_a_cut_and_a_server_restart(lab: Lab) -> None:
    with server_on(0) as first:
        port = first.port
        with lab.vm() as vm:
            keeper = vm.start_chroot_command(
                f"exec {vm.python} -m usbwire attach --persist -r 10.0.2.2 -p {port} -b 1-1"
            )
            vm.wait_for_usb(*LOOPBACK_IDS, timeout_s=30)
            status = vm.chroot_run(f"{vm.python} -m usbwire port", check=True).out
            assert f"usbip://10.0.2.2:{port}/1-1: attached" in status, status

            for _ in range(2):  # two cuts, as a flaky link would make
                cut_import(first)
                cut = time.monotonic()
                vm.wait_for_usb(*LOOPBACK_IDS, present=False, timeout_s=10)
                vm.wait_for_usb(*LOOPBACK_IDS, timeout_s=10)
                assert time.monotonic() - cut < 6.0

            # The server goes away and comes back on the same port: the device follows.
            asyncio.run_coroutine_threadsafe(first.server.close(), first.loop).result(10)
            vm.wait_for_usb(*LOOPBACK_IDS, present=False, timeout_s=10)
            status = vm.chroot_run(f"{vm.python} -m usbwire port", check=True).out
            assert "reconnecting" in status, status
            with server_on(port):
                vm.wait_for_usb(*LOOPBACK_IDS, timeout_s=15)
                assert "usbip://" in imported_listing(vm)
            keeper.kill()
