"""Text to HID keyboard usages (US layout): what a boot keyboard sends for each character."""

from __future__ import annotations

LEFT_CTRL, LEFT_SHIFT, LEFT_ALT, LEFT_GUI = 0x01, 0x02, 0x04, 0x08

ENTER, ESCAPE, BACKSPACE, TAB, SPACE = 0x28, 0x29, 0x2A, 0x2B, 0x2C

_UNSHIFTED = "-=[]\\;'`,./"
_SHIFTED = '_+{}|:"~<>?'
_PUNCTUATION_USAGES = (0x2D, 0x2E, 0x2F, 0x30, 0x31, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38)


def _table() -> dict[str, tuple[int, int]]:
    table: dict[str, tuple[int, int]] = {}
    for i, letter in enumerate("abcdefghijklmnopqrstuvwxyz"):
        table[letter] = (0, 0x04 + i)
        table[letter.upper()] = (LEFT_SHIFT, 0x04 + i)
    for i, digit in enumerate("1234567890"):
        table[digit] = (0, 0x1E + i)
    for i, symbol in enumerate("!@#$%^&*()"):
        table[symbol] = (LEFT_SHIFT, 0x1E + i)
    for plain, shifted, code in zip(_UNSHIFTED, _SHIFTED, _PUNCTUATION_USAGES, strict=True):
        table[plain] = (0, code)
        table[shifted] = (LEFT_SHIFT, code)
    table.update({"\n": (0, ENTER), "\t": (0, TAB), " ": (0, SPACE), "\b": (0, BACKSPACE), "\x1b": (0, ESCAPE)})
    return table


KEYS = _table()


def keystrokes(text: str) -> list[tuple[int, int]]:
    """(modifiers, usage) per character; raises ValueError for a character the layout lacks."""
    strokes = []
    for char in text:
        if char not in KEYS:
            raise ValueError(f"cannot type {char!r} on a US keyboard")
        strokes.append(KEYS[char])
    return strokes
