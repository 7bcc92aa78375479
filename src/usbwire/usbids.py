"""Vendor, product and class names from the usb.ids database, when the machine has one."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

SEARCH_PATHS = (
    "/usr/share/hwdata/usb.ids",
    "/usr/share/misc/usb.ids",
    "/var/lib/usbutils/usb.ids",
    "/usr/share/usb.ids",
)


@dataclass
class UsbIds:
    vendors: dict[int, str] = field(default_factory=dict)
    products: dict[tuple[int, int], str] = field(default_factory=dict)
    classes: dict[tuple[int, ...], str] = field(default_factory=dict)

    def product_text(self, vendor_id: int, product_id: int) -> str:
        """As ``usbip list`` prints it: ``Vendor : Product (vvvv:pppp)``."""
        vendor = self.vendors.get(vendor_id, "unknown vendor")
        product = self.products.get((vendor_id, product_id), "unknown product")
        return f"{vendor} : {product} ({vendor_id:04x}:{product_id:04x})"

    def class_text(self, cls: int, subclass: int, protocol: int) -> str:
        if cls == subclass == protocol == 0:
            return "(Defined at Interface level) (00/00/00)"
        names = (
            self.classes.get((cls,), "unknown class"),
            self.classes.get((cls, subclass), "unknown subclass"),
            self.classes.get((cls, subclass, protocol), "unknown protocol"),
        )
        return f"{' / '.join(names)} ({cls:02x}/{subclass:02x}/{protocol:02x})"


def parse(text: str) -> UsbIds:
    ids = UsbIds()
    vendor: int | None = None
    cls: list[int] = []
    section = "vendors"
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        depth = len(line) - len(line.lstrip("\t"))
        body = line.lstrip("\t")
        key, _, name = body.partition("  ")
        if depth == 0:
            if key.startswith("C "):
                section = "classes"
                cls = [int(key[2:], 16)]
                ids.classes[tuple(cls)] = name
            elif len(key) == 4 and _is_hex(key):
                section = "vendors"
                vendor = int(key, 16)
                ids.vendors[vendor] = name
            else:
                section = "other"
        elif section == "vendors" and depth == 1 and vendor is not None and _is_hex(key):
            ids.products[vendor, int(key, 16)] = name
        elif section == "classes" and _is_hex(key) and 1 <= depth <= 2:
            cls = [*cls[:depth], int(key, 16)]
            ids.classes[tuple(cls)] = name
    return ids


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


@functools.cache
def load() -> UsbIds:
    """The machine's usb.ids, or an empty database (names print as unknown)."""
    for candidate in SEARCH_PATHS:
        path = Path(candidate)
        if path.is_file():
            return parse(path.read_text(encoding="utf-8", errors="replace"))
    return UsbIds()
