"""One measurement: run the load generator against one server and read the server's CPU time."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from bench._loadgen import Load, LoadError, run_load
from bench._model import Row, Sample
from bench._proc import CLOCK_TICKS_PER_S, cpu_seconds, machine_busy_seconds
from bench._registry import Context
from bench._servers import RunningServer

EXTRAS = ("p50_us", "p99_us", "p999_us", "urbs_per_s", "mb_per_s", "errors", "urbs_per_write", "total_urbs")


def pinning(ctx: Context, load: Load) -> str:
    """How server and client were pinned, as printed next to every figure."""
    server = ctx.options.server_cpu
    client = load.client_cpu
    where = "same core" if client == server else "other core"
    return f"server cpu{server}, client cpu{client} ({where})"


def client_cpu(ctx: Context, inflight: int) -> int:
    """1 URB in flight: client on the server's core; more: on the other core."""
    return ctx.options.server_cpu if inflight == 1 else ctx.options.client_cpu


def measure(
    ctx: Context, server: RunningServer, row: Row, load: Load, busids: Sequence[str], *, value: str
) -> Sample | None:
    """Run ``load`` on ``server``'s devices and add the sample to ``row``.

    Args:
        ctx: the run.
        server: the server measured.
        row: where the sample goes (a server listed in ``row.unavailable``, or whose spec
            leaves the row out, is skipped).
        load: what the load generator does.
        busids: the devices to import, one connection each.
        value: which result field is the row's value (``urbs_per_s``, ``mb_per_s`` or
            ``cpu_us_per_urb``).

    Returns:
        The sample, or None when the server cannot run the row or the run failed (the
        failure is logged, and recorded as the row's reason if no repetition succeeds).
    """
    key = server.spec.key
    if key in row.unavailable:
        return None
    if server.spec.rows is not None and row.key not in server.spec.rows:
        return None
    if row.key in server.spec.limits:
        row.unavailable[key] = server.spec.limits[row.key]
        return None
    if ctx.options.nice:
        load = dataclasses.replace(load, nice=ctx.options.nice)
    timeout = load.warmup_s + load.duration_s + 60
    try:
        cpu_before, busy_before, wall_before = (
            cpu_seconds(server.pid),
            machine_busy_seconds(),
            time.monotonic(),
        )
        result = run_load(ctx.binaries.loadgen, server.targets(busids), load, timeout_s=timeout)
        cpu_after, busy_after, wall = cpu_seconds(server.pid), machine_busy_seconds(), time.monotonic()
    except (LoadError, OSError) as error:
        ctx.log(f"  {server.spec.label}: {row.key} failed: {error}")
        if not server.alive():
            ctx.log(f"  {server.spec.label} died: {server.log_tail()}")
        row.add(key, None)
        row.failures[key] = str(error)
        return None
    extras = {name: float(result[name]) for name in EXTRAS}
    extras["cpu_us_per_urb"] = (cpu_after - cpu_before) * 1e6 / max(1, int(result["total_urbs"]))
    extras["cpu_ticks"] = round((cpu_after - cpu_before) * CLOCK_TICKS_PER_S)
    # What the rest of the machine took meanwhile (other processes, other sessions' tests):
    # all busy CPU time minus this server's and the load generator's, in % of one core.
    others = (busy_after - busy_before) - (cpu_after - cpu_before) - float(result["cpu_s"])
    extras["others_cpu_pct"] = max(0.0, 100 * others / (wall - wall_before))
    sample = Sample(extras[value] if value in extras else float(result[value]), extras)
    row.add(key, sample)
    if ctx.options.verbose:
        ctx.log(
            f"  {server.spec.label:18} {row.key:10} {sample.value:12.1f} {row.metric}"
            f"  p50 {extras['p50_us']:.1f} p99 {extras['p99_us']:.1f} us"
            f"  cpu {extras['cpu_us_per_urb']:.2f} us/URB  errors {extras['errors']:.0f}"
            f"  others {extras['others_cpu_pct']:.0f}%"
        )
    return sample
