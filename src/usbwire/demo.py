"""The built-in demo devices, served when no device is configured."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.base import Device
from usbwire.devices.cdc import Serial
from usbwire.devices.hid import Button, Keyboard, Mouse
from usbwire.devices.loopback import Loopback
from usbwire.devices.msc import scratch_disk
from usbwire.devices.uac import Headset
from usbwire.devices.uvc import Webcam
from usbwire.errors import ControlError
from usbwire.server.control import ControlServer
from usbwire.server.registry import Registry

# kind -> (factory, description); the demo set grows with the device classes.
DEVICE_KINDS: dict[str, tuple[Callable[[], Device], str]] = {
    "loopback": (Loopback, "vendor-class bulk loopback"),
    "disk": (scratch_disk, "mass storage (SCSI, Bulk-Only) on a 64 MiB scratch image"),
    "keyboard": (Keyboard, "HID boot keyboard"),
    "mouse": (Mouse, "HID boot mouse"),
    "serial": (Serial, "CDC-ACM serial port"),
    "headset": (Headset, "USB Audio speaker and microphone (a 1 kHz test tone)"),
    "webcam": (Webcam, "USB Video Class webcam (YUYV; MJPEG too with Pillow)"),
}
# Order fixes the busids (1-1, 1-2, ...): never reorder, only append.
DEMO_SET = ("loopback", "keyboard", "mouse", "serial", "disk")


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
        busid = params.get("busid")
        if busid and str(busid) in registry:
            raise ControlError(f"busid {busid} is already exported")
        export = export_device(registry, DEVICE_KINDS[kind][0](), str(busid) if busid else None)
        return {"busid": export.busid, "device": kind}

    control.commands["export"] = export
    control.commands["type"] = _typer(registry)
    control.commands["mouse"] = _mover(registry)


def export_device(registry: Registry, device: Device, busid: str | None = None) -> EmulatedExport:
    """Export ``device`` at ``busid`` (default: the first free one on bus 1, after the demo set)."""
    busid = busid or _free_busid(registry)
    busnum, _, devnum = busid.partition("-")
    export = EmulatedExport(
        device,
        busid=busid,
        busnum=int(busnum) if busnum.isdigit() else 1,
        devnum=int(devnum) + 1 if devnum.isdigit() else 2,
    )
    registry.add(export)
    return export


def find_device(registry: Registry, kind: type[Device], busid: str | None) -> Device:
    """The emulated device of ``kind`` at ``busid``, or the only one there is."""
    found = [
        export.device
        for export in registry
        if isinstance(export, EmulatedExport)
        and isinstance(export.device, kind)
        and (busid is None or export.busid == busid)
    ]
    name = kind.__name__.lower()
    if not found:
        raise ControlError(f"no emulated {name} is exported" + (f" at {busid}" if busid else ""))
    if len(found) > 1:
        raise ControlError(f"several {name}s are exported: choose one with --busid")
    return found[0]


def _typer(registry: Registry) -> Callable[[dict[str, Any]], Any]:
    async def type_text(params: dict[str, Any]) -> Any:
        keyboard = find_device(registry, Keyboard, params.get("busid"))
        assert isinstance(keyboard, Keyboard)
        try:
            reports = keyboard.type_text(str(params["text"]))
        except ValueError as error:
            raise ControlError(str(error)) from None
        return {"reports": reports, "leds": int(keyboard.leds)}

    return type_text


def _mover(registry: Registry) -> Callable[[dict[str, Any]], Any]:
    async def move(params: dict[str, Any]) -> Any:
        mouse = find_device(registry, Mouse, params.get("busid"))
        assert isinstance(mouse, Mouse)
        reports = mouse.move(int(params.get("dx", 0)), int(params.get("dy", 0)), int(params.get("wheel", 0)))
        if params.get("click"):
            reports += mouse.click(Button.LEFT)
        return {"reports": reports}

    return move


def _free_busid(registry: Registry) -> str:
    n = 1
    while f"1-{n}" in registry:
        n += 1
    return f"1-{n}"
