"""Closing asyncio streams, for both roles."""

from __future__ import annotations

import asyncio
import contextlib

# How long a close waits for the transport (a TLS peer's close_notify) before giving up on it.
CLOSE_TIMEOUT = 1.0


async def close_stream(writer: asyncio.StreamWriter, timeout: float = CLOSE_TIMEOUT) -> None:
    """Close ``writer`` and wait for the transport to go. A connection that ended in an error
    (a reset) keeps it for whoever waits here; left unread, asyncio relies on a finalizer to
    forget it, and at interpreter exit reports it as "never retrieved" instead."""
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):  # the error was the caller's to report
        await asyncio.wait_for(writer.wait_closed(), timeout)
