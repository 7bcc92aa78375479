"""A small HID report-descriptor language, so descriptors read like the HID spec.

Each function returns the bytes of one short item; it picks the smallest data size that
holds the value (the spec allows 0, 1, 2 or 4 bytes) and refuses values that do not fit.
"""

from __future__ import annotations

import enum


class ItemType(enum.IntEnum):
    MAIN = 0
    GLOBAL = 1
    LOCAL = 2


def _item(tag: int, kind: ItemType, value: int | None, *, signed: bool = False) -> bytes:
    if value is None:
        return bytes([(tag << 4) | (kind << 2)])
    for size_code, size in ((1, 1), (2, 2), (3, 4)):
        low, high = (-(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1) if signed else (0, (1 << 8 * size) - 1)
        if low <= value <= high:
            return bytes([(tag << 4) | (kind << 2) | size_code]) + value.to_bytes(size, "little", signed=signed)
    raise ValueError(f"HID item value {value} does not fit 4 bytes")


# Main items: data flags (HID 1.11, 6.2.2.5)
DATA, CONSTANT = 0x00, 0x01
ARRAY, VARIABLE = 0x00, 0x02
ABSOLUTE, RELATIVE = 0x00, 0x04


def input_(flags: int) -> bytes:
    return _item(0x8, ItemType.MAIN, flags)


def output(flags: int) -> bytes:
    return _item(0x9, ItemType.MAIN, flags)


def collection(kind: int) -> bytes:
    """0x00 physical, 0x01 application, 0x02 logical."""
    return _item(0xA, ItemType.MAIN, kind)


def end_collection() -> bytes:
    return _item(0xC, ItemType.MAIN, None)


def usage_page(page: int) -> bytes:
    return _item(0x0, ItemType.GLOBAL, page)


def logical_minimum(value: int) -> bytes:
    return _item(0x1, ItemType.GLOBAL, value, signed=True)


def logical_maximum(value: int) -> bytes:
    return _item(0x2, ItemType.GLOBAL, value, signed=True)


def report_size(bits: int) -> bytes:
    return _item(0x7, ItemType.GLOBAL, bits)


def report_count(count: int) -> bytes:
    return _item(0x9, ItemType.GLOBAL, count)


def usage(value: int) -> bytes:
    return _item(0x0, ItemType.LOCAL, value)


def usage_minimum(value: int) -> bytes:
    return _item(0x1, ItemType.LOCAL, value)


def usage_maximum(value: int) -> bytes:
    return _item(0x2, ItemType.LOCAL, value)


GENERIC_DESKTOP, KEYBOARD_PAGE, LED_PAGE, BUTTON_PAGE = 0x01, 0x07, 0x08, 0x09
MOUSE, KEYBOARD, POINTER = 0x02, 0x06, 0x01
X, Y, WHEEL = 0x30, 0x31, 0x38
APPLICATION, PHYSICAL = 0x01, 0x00

# The boot keyboard of HID 1.11 appendix B.1: modifiers, reserved byte, 5 LEDs, 6 keys.
BOOT_KEYBOARD = b"".join(
    [
        usage_page(GENERIC_DESKTOP),
        usage(KEYBOARD),
        collection(APPLICATION),
        usage_page(KEYBOARD_PAGE),
        usage_minimum(0xE0),
        usage_maximum(0xE7),
        logical_minimum(0),
        logical_maximum(1),
        report_size(1),
        report_count(8),
        input_(DATA | VARIABLE | ABSOLUTE),
        report_count(1),
        report_size(8),
        input_(CONSTANT),
        report_count(5),
        report_size(1),
        usage_page(LED_PAGE),
        usage_minimum(1),
        usage_maximum(5),
        output(DATA | VARIABLE | ABSOLUTE),
        report_count(1),
        report_size(3),
        output(CONSTANT),
        report_count(6),
        report_size(8),
        logical_minimum(0),
        logical_maximum(0xFF),
        usage_page(KEYBOARD_PAGE),
        usage_minimum(0),
        usage_maximum(0xFF),
        input_(DATA | ARRAY),
        end_collection(),
    ]
)

# The boot mouse of appendix B.2 plus a wheel byte (boot-protocol hosts read the first three).
BOOT_MOUSE = b"".join(
    [
        usage_page(GENERIC_DESKTOP),
        usage(MOUSE),
        collection(APPLICATION),
        usage(POINTER),
        collection(PHYSICAL),
        usage_page(BUTTON_PAGE),
        usage_minimum(1),
        usage_maximum(3),
        logical_minimum(0),
        logical_maximum(1),
        report_count(3),
        report_size(1),
        input_(DATA | VARIABLE | ABSOLUTE),
        report_count(1),
        report_size(5),
        input_(CONSTANT),
        usage_page(GENERIC_DESKTOP),
        usage(X),
        usage(Y),
        usage(WHEEL),
        logical_minimum(-127),
        logical_maximum(127),
        report_size(8),
        report_count(3),
        input_(DATA | VARIABLE | RELATIVE),
        end_collection(),
        end_collection(),
    ]
)
