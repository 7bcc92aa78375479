"""The built-in demo devices, served when no device is configured."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.base import Device
from usbwire.devices.loopback import Loopback
from usbwire.errors import ControlError
from usbwire.server.control import ControlServer
from usbwire.server.registry import Registry

# kind -> (factory, description); the demo set grows with the device classes.
DEVICE_KINDS: dict[str, tuple[Callable[[], Device], str]] = {
    "loopback": (Loopback, "vendor-class bulk loopback"),
}
DEMO_SET = ("loopback",)


def demo_exports() -> list[EmulatedExport]:
    """The demo set at stable busids 1-1, 1-2, ... (so clients can rely on them)."""
    return [
        EmulatedExport(DEVICE_KINDS[kind][0](), busid=f"1-{n}", busnum=1, devnum=n + 1)
        for n, kind in enumerate(DEMO_SET, start=1)
    ]


def add_export_command(control: ControlServer, registry: Registry) -> None:
    """``{"command": "export", "device": KIND, "busid": B}``: export a new emulated device."""

    async def export(params: dict[str, Any]) -> Any:
        kind = str(params["device"])
        if kind not in DEVICE_KINDS:
            raise ControlError(f"unknown device kind {kind!r} (known: {', '.join(DEVICE_KINDS)})")
        busid = str(params.get("busid") or _free_busid(registry))
        if busid in registry:
            raise ControlError(f"busid {busid} is already exported")
        busnum, _, devnum = busid.partition("-")
        device = EmulatedExport(
            DEVICE_KINDS[kind][0](),
            busid=busid,
            busnum=int(busnum) if busnum.isdigit() else 1,
            devnum=int(devnum) + 1 if devnum.isdigit() else 2,
        )
        registry.add(device)
        return {"busid": busid, "device": kind}

    control.commands["export"] = export


def _free_busid(registry: Registry) -> str:
    n = 1
    while f"1-{n}" in registry:
        n += 1
    return f"1-{n}"
