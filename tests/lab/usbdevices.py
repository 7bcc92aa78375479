"""Host side, VM configuration: QEMU-emulated USB devices to plug into the guest's xHCI.

These are the only "hardware" the lab has: to the guest kernel they are real USB
devices, which its drivers bind and ``usbip bind`` can export. Each device knows the
QEMU arguments for its backend (disk image, chardev, audio) and its own ``-device``
string, so the same text serves ``-device`` at boot and ``device_add`` for a replug.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# USB ids QEMU gives its emulated devices (hw/usb/dev-*.c).
QEMU_STORAGE_ID = (0x46F4, 0x0001)
QEMU_AUDIO_ID = (0x46F4, 0x0002)
QEMU_HID_ID = (0x0627, 0x0001)  # usb-kbd, usb-mouse and usb-tablet alike
QEMU_SERIAL_ID = (0x0403, 0x6001)  # FTDI FT232


@dataclass(frozen=True, slots=True)
class UsbDevice:
    """One emulated device; build them with the functions below, not directly.

    ``id`` names the device for the QEMU monitor (``device_del``); when ``None`` the VM
    assigns ``usbdev0``, ``usbdev1``... in plug order. ``port`` is the xHCI root port
    (1-based); by default devices take ports 1, 2, ... in order.
    """

    driver: str
    vid_pid: tuple[int, int]
    properties: tuple[tuple[str, str], ...] = ()
    id: str | None = None
    port: int | None = None
    image: Path | None = field(default=None)  # usb-storage only; usb-audio: the WAV it plays into
    readonly: bool = False

    def device_arg(self, dev_id: str, port: int) -> str:
        """The ``-device``/``device_add`` text placing this device on the lab's xHCI."""
        props = [self.driver, "bus=xhci.0", f"port={port}", f"id={dev_id}"]
        props += [f"{key}={value}" for key, value in self.backend_properties(dev_id)]
        props += [f"{key}={value}" for key, value in self.properties]
        return ",".join(props)

    def backend_args(self, dev_id: str) -> list[str]:
        """QEMU arguments creating the backend; it outlives an unplug, so replug reuses it."""
        if self.driver == "usb-storage":
            assert self.image is not None
            spec = (
                f'{{"driver":"raw","node-name":"{dev_id}-disk","read-only":'
                f"{'true' if self.readonly else 'false'},"
                f'"file":{{"driver":"file","filename":"{self.image}"}}}}'
            )
            return ["-blockdev", spec]
        if self.driver == "usb-serial":
            # QEMU plugs usb-serial in only once its chardev is open, which a null one never is.
            return ["-chardev", f"ringbuf,id={dev_id}-chr"]
        if self.driver == "usb-audio":
            backend = f"wav,path={self.image}" if self.image else "none"
            return ["-audiodev", f"{backend},id={dev_id}-snd"]
        return []

    def backend_properties(self, dev_id: str) -> list[tuple[str, str]]:
        """The ``-device`` properties that point at the backend made by ``backend_args``."""
        if self.driver == "usb-storage":
            return [("drive", f"{dev_id}-disk")]
        if self.driver == "usb-serial":
            return [("chardev", f"{dev_id}-chr")]
        if self.driver == "usb-audio":
            return [("audiodev", f"{dev_id}-snd")]
        return []


def storage(image: Path | str, *, readonly: bool = False, id: str | None = None, port: int | None = None) -> UsbDevice:
    """QEMU ``usb-storage`` (Bulk-Only mass storage, 46f4:0001) backed by a raw image."""
    path = Path(image).resolve()
    return UsbDevice("usb-storage", QEMU_STORAGE_ID, id=id, port=port, image=path, readonly=readonly)


def keyboard(*, id: str | None = None, port: int | None = None) -> UsbDevice:
    """QEMU ``usb-kbd``: a boot-protocol HID keyboard (0627:0001)."""
    return UsbDevice("usb-kbd", QEMU_HID_ID, id=id, port=port)


def mouse(*, id: str | None = None, port: int | None = None) -> UsbDevice:
    """QEMU ``usb-mouse``: a boot-protocol HID mouse (0627:0001)."""
    return UsbDevice("usb-mouse", QEMU_HID_ID, id=id, port=port)


def tablet(*, id: str | None = None, port: int | None = None) -> UsbDevice:
    """QEMU ``usb-tablet``: an absolute-pointer HID device (0627:0001)."""
    return UsbDevice("usb-tablet", QEMU_HID_ID, id=id, port=port)


def serial(*, id: str | None = None, port: int | None = None) -> UsbDevice:
    """QEMU ``usb-serial``: an FTDI FT232 (0403:6001) wired to an in-memory ring buffer chardev."""
    return UsbDevice("usb-serial", QEMU_SERIAL_ID, id=id, port=port)


def audio(*, wav: Path | None = None, id: str | None = None, port: int | None = None) -> UsbDevice:
    """QEMU ``usb-audio``: a USB Audio Class 1 speaker (46f4:0002), isochronous OUT.

    With ``wav``, what it is played is written to that file (complete once QEMU exits).
    """
    return UsbDevice("usb-audio", QEMU_AUDIO_ID, id=id, port=port, image=wav.resolve() if wav else None)
