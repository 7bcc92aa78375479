"""``usbwire fleet run``: claim devices, optionally attach them to this kernel, run a command, release.

The command learns its devices from the environment: ``USBWIRE_FLEET_DEVICES`` (JSON, one
object per device as ``fleet claim --json`` prints it) and, for the first device,
``USBWIRE_HOST``, ``USBWIRE_PORT`` and ``USBWIRE_BUSID`` (``BUSID#TOKEN``). Release happens
in a ``finally``; if this process is killed outright, the lease lapses instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Sequence

from usbwire.client import vhci
from usbwire.errors import ImportRefused
from usbwire.fleet.claims import Claimed, FleetClient
from usbwire.fleet.keys import Match
from usbwire.protocol.constants import OpStatus

log = logging.getLogger("usbwire.fleet")

# The previous holder's import may still be closing when our claim starts: the server answers
# "busy" until the device's close has finished.
ATTACH_BUSY_WAIT_S = 5.0
ENUMERATION_WAIT_S = 20.0


def command_environment(claimed: Sequence[Claimed], ports: Sequence[int] = ()) -> dict[str, str]:
    """What ``fleet run`` adds to the command's environment."""
    first = claimed[0]
    env = {
        "USBWIRE_FLEET_DEVICES": json.dumps([c.to_json() for c in claimed]),
        "USBWIRE_HOST": first.device.host,
        "USBWIRE_PORT": str(first.device.port),
        "USBWIRE_BUSID": first.busid,
    }
    if ports:
        env["USBWIRE_VHCI_PORTS"] = " ".join(str(p) for p in ports)
    return env


def attach(claimed: Claimed) -> int:
    """Import ``claimed`` into this machine's kernel (vhci-hcd); the vhci port.

    Raises:
        ImportRefused: the server refused (other than briefly busy).
        VhciError: vhci-hcd is missing or has no free port.
    """
    deadline = time.monotonic() + ATTACH_BUSY_WAIT_S
    while True:
        try:
            return vhci.attach(
                claimed.device.host, claimed.busid, claimed.device.port, recorded_busid=claimed.device.busid
            )
        except ImportRefused as error:
            if error.status != OpStatus.DEV_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.1)  # polling the server: it does not tell us when the device is free


def wait_enumerated(port: int, timeout_s: float = ENUMERATION_WAIT_S) -> str:
    """The local busid of the device on vhci ``port``, once the kernel has enumerated it.

    The attach returns as soon as vhci has the socket; the kernel reads the descriptors and
    creates the device afterwards. A command started before that would not find its device.

    Raises:
        VhciError: the device did not appear in time.
    """
    machine = vhci.Vhci()
    deadline = time.monotonic() + timeout_s
    while True:
        for item in machine.imported():
            busid = item.port.local_busid
            if item.port.number == port and busid != "0-0" and "idProduct" in machine.local_device(busid):
                return busid
        if time.monotonic() > deadline:
            raise vhci.VhciError(f"the device on vhci port {port} did not enumerate within {timeout_s:g} s")
        time.sleep(0.05)  # polling the kernel: sysfs has no event to wait on here


async def run(
    fleet: FleetClient,
    match: Match,
    command: Sequence[str],
    *,
    count: int = 1,
    attach_devices: bool = False,
    max_hold_s: float | None = None,
    idle_s: float | None = None,
    waiting: Callable[[int], None] | None = None,
) -> int:
    """Claim, attach, run ``command`` to its end, detach, release; the command's exit status.

    Raises:
        FleetError: the claim failed.
        ImportRefused, VhciError: attaching failed, or the device did not enumerate (the claim is
            released all the same).
    """
    claimed = await fleet.claim(match, count, max_hold_s=max_hold_s, idle_s=idle_s, waiting=waiting)
    ports: list[int] = []
    try:
        if attach_devices:
            for item in claimed:
                ports.append(await asyncio.to_thread(attach, item))
                local = await asyncio.to_thread(wait_enumerated, ports[-1])
                log.info("attached %s on vhci port %d as %s", item.device.id, ports[-1], local)
        env = {**os.environ, **command_environment(claimed, ports)}
        process = await asyncio.create_subprocess_exec(*command, env=env)
        try:
            return await process.wait()
        finally:
            if process.returncode is None:
                process.terminate()
                await process.wait()
    finally:
        for port in ports:
            await asyncio.to_thread(vhci.Vhci().detach, port)
        await fleet.release(claimed)
