"""Writing Linux sysfs attribute files the way the kernel's parsers expect."""

from __future__ import annotations

import os
from pathlib import Path


def write(path: Path, text: str) -> None:
    """One write() and no trailing newline: usbip-host and vhci compare the buffer verbatim."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
