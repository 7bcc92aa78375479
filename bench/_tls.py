"""TLS cost: the same usbwire server and the same Python client, plain TCP against TLS 1.3.

The C load generator speaks no TLS, so this section drives both servers with usbwire's own
asyncio client (pinned to the other core). Absolute rates are therefore the Python client's;
the ratio TLS / plain, paired per repetition, is what the section is for.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench._model import Row, Sample, SectionResult
from bench._proc import listening_process
from bench._registry import Context, section
from bench._servers import usbwire_serve_args

PLAIN, TLS = "usbwire-plain", "usbwire-tls"
CONTROL_IN_FLIGHT, BULK_IN_FLIGHT, BULK_SIZE = 32, 8, 65536


@contextmanager
def _server(server_cpu: int, tls: tuple[Path, Path] | None) -> Iterator[int]:
    extra = ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else []
    argv = [sys.executable, *usbwire_serve_args("uvloop", "none", *extra)]
    with listening_process(["taskset", "-c", str(server_cpu), *argv], "usbwire") as port:
        yield port


async def _control_rate(port: int, context: ssl.SSLContext | None, seconds: float) -> float:
    from usbwire.client import connect

    async with connect("127.0.0.1", "1-1", port=port, ssl=context) as device:
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await device.control_transfer(0x80, 6, 0x0100, 0, 18)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONTROL_IN_FLIGHT)))
        return done / (time.perf_counter() - start)


async def _bulk_rate(port: int, context: ssl.SSLContext | None, seconds: float) -> float:
    from usbwire.client import connect

    payload = os.urandom(BULK_SIZE)
    async with connect("127.0.0.1", "1-1", port=port, ssl=context) as device:
        await device.set_configuration(1)
        moved = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal moved
            while time.perf_counter() < deadline:
                await device.bulk_transfer(0x01, payload)
                back = await device.bulk_transfer(0x81, BULK_SIZE, timeout=10)
                moved += 2 * len(back) if isinstance(back, bytes) else 0

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(BULK_IN_FLIGHT // 2)))
        return moved / (time.perf_counter() - start) / 1e6


@section("tls", "TLS 1.3 against plain TCP (usbwire server, usbwire Python client)", order=60)
def tls_cost(ctx: Context) -> SectionResult:
    import trustme

    result = SectionResult("tls", "TLS 1.3 against plain TCP")
    pinning = f"server cpu{ctx.options.server_cpu}, Python client cpu{ctx.options.client_cpu}"
    control = Row("tls-ctrl-32", "control GET_DESCRIPTOR, 32 in flight", "URB/s", pinning, compare=False)
    bulk = Row("tls-bulk-64k", "bulk 64 KiB OUT/IN, 8 in flight", "MB/s", pinning, compare=False)
    result.rows += [control, bulk]
    seconds = 1.0 if ctx.options.quick else 3.0
    with tempfile.TemporaryDirectory() as scratch:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        pem = Path(scratch) / "server.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
        context = ssl.create_default_context()
        ca.configure_trust(context)
        previous = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {ctx.options.client_cpu})
        try:
            with _server(ctx.options.server_cpu, None) as plain, _server(ctx.options.server_cpu, (pem, pem)) as tls:
                for rep in range(ctx.options.reps):
                    order = [(PLAIN, plain, None), (TLS, tls, context)]
                    for key, port, tls_context in order if rep % 2 == 0 else reversed(order):
                        control.add(key, Sample(asyncio.run(_control_rate(port, tls_context, seconds))))
                        bulk.add(key, Sample(asyncio.run(_bulk_rate(port, tls_context, seconds))))
        finally:
            os.sched_setaffinity(0, previous)
    for row in (control, bulk):
        ratios = [
            t.value / p.value
            for t, p in zip(row.samples.get(TLS, []), row.samples.get(PLAIN, []), strict=False)
            if t is not None and p is not None and p.value
        ]
        plain_median, tls_median = row.median(PLAIN), row.median(TLS)
        if ratios and plain_median and tls_median:
            result.notes.append(
                f"{row.key}: plain {plain_median:,.0f}, TLS {tls_median:,.0f} {row.metric}; "
                f"TLS / plain = {statistics.median(ratios):.2f}x"
            )
    return result
