"""Many connections at once, and ten million URBs through one connection.

* ``scale-N``: N concurrent connections, each importing its own device (2-1 .. 2-N), each
  keeping one control GET_DESCRIPTOR in flight; the value is the total URB rate. Client on the
  other core.
* ``soak``: 10 million URBs (64-byte bulk OUT/IN, 64 in flight, client on the other core)
  through one connection while the server's VmRSS and open descriptors are sampled every 100,000
  URBs. RSS growth = last sample - first sample (taken after the first 100,000 URBs, so
  one-time warm-up allocations don't count; RSS before the connection is reported too).
  A 100,000-URB connection runs first, so start-up and first-connection allocations (memory,
  descriptors) are not counted as growth. fd growth = spread of the samples during the run +
  descriptors left open after the close compared with before it.
  At ~40k URB/s this takes 4-5 minutes per server: it is in the full run only, not --quick.
"""

from __future__ import annotations

import dataclasses
import time

from bench._loadgen import Load, LoadError, run_load
from bench._measure import measure, pinning
from bench._model import GoalResult, Row, Sample, SectionResult
from bench._proc import fd_count, rss_bytes
from bench._registry import Context, Options, section
from bench._wire import faster_than_usbip, usbwire_keys

MIB = 1024 * 1024
SOAK_INFLIGHT = 64
SOAK_PROGRESS = 100_000


def _scale_devices(options: Options) -> int:
    return max(options.scale_conns, default=0)


@section("scale", "Scale: concurrent connections, one device each", scale_devices=_scale_devices, order=20)
def scale(ctx: Context) -> SectionResult:
    result = SectionResult("scale", "")
    loads = {}
    for conns in ctx.options.scale_conns:
        load = Load(
            "ctrl",
            1,
            client_cpu=ctx.options.client_cpu,
            warmup_s=ctx.options.warmup_s,
            duration_s=ctx.options.duration_s,
        )
        loads[conns] = load
        label = f"{conns} connection{'s' if conns > 1 else ''} x 1 control URB in flight"
        result.rows.append(Row(f"scale-{conns}", label, "URB/s", pinning(ctx, load)))
    for rep in range(ctx.options.reps):
        ctx.log(f"scale: repetition {rep + 1}/{ctx.options.reps}")
        for conns, row in zip(ctx.options.scale_conns, result.rows, strict=True):
            busids = [f"2-{n}" for n in range(1, conns + 1)]
            for server in ctx.rotation(rep):
                measure(ctx, server, row, loads[conns], busids, value="urbs_per_s")
    if ctx.server("usbip") is not None:
        for key in usbwire_keys(ctx):
            result.goals.append(faster_than_usbip(result.rows, key, "faster than PyPI usbip on every scale row"))
    return result


@section("soak", "Soak: 10 million URBs through one connection", quick=False, order=30)
def soak(ctx: Context) -> SectionResult:
    count = ctx.options.soak_urbs
    result = SectionResult("soak", "")
    load = Load(
        "bulk",
        SOAK_INFLIGHT,
        size=64,
        nice=ctx.options.nice,
        client_cpu=ctx.options.client_cpu,
        count=count,
        progress_every=SOAK_PROGRESS,
    )
    where = pinning(ctx, load)
    millions = f"{count / 1e6:g}M"
    result.title = f"Soak: {millions} URBs through one connection (bulk 64 B OUT/IN, {SOAK_INFLIGHT} in flight)"
    rss = Row(
        "soak-rss",
        f"RSS growth over {millions} URBs",
        "MiB",
        where,
        higher_is_better=False,
        extras_shown=("rss_start_mib", "rss_end_mib"),
        compare=False,
    )
    fds = Row(
        "soak-fd",
        f"open fd growth over {millions} URBs",
        "fds",
        where,
        higher_is_better=False,
        extras_shown=("fd_before", "fd_max"),
        compare=False,
    )
    rate = Row(
        "soak-rate",
        f"URB rate over {millions} URBs",
        "URB/s",
        where,
        extras_shown=("seconds",),
        compare=False,
    )
    result.rows += [rss, fds, rate]
    for server in ctx.servers:
        if server.spec.key not in ctx.options.soak_servers:
            continue  # "-" in the table: only --soak-servers are soaked
        ctx.log(f"soak: {millions} URBs through {server.spec.label}")
        pid = server.pid
        # One short connection first: what a server allocates once, on its first connection
        # or lazily after start-up, is not growth. Then the baseline, with no connection open.
        warm = dataclasses.replace(load, count=SOAK_PROGRESS, progress_every=0)
        try:
            run_load(ctx.binaries.loadgen, server.targets(["1-1"]), warm, timeout_s=120)
        except (LoadError, OSError) as error:
            ctx.log(f"  {server.spec.label}: soak warm-up failed: {error}")
        time.sleep(0.5)
        rss_before, fd_before = rss_bytes(pid), fd_count(pid)
        trace: list[tuple[int, int, int]] = []

        def sample(urbs: int, pid: int = pid, trace: list[tuple[int, int, int]] = trace) -> None:
            # The line for the last URBs races with the load generator closing its connection.
            if urbs < count:
                trace.append((urbs, rss_bytes(pid), fd_count(pid)))

        started = time.monotonic()
        try:
            outcome = run_load(ctx.binaries.loadgen, server.targets(["1-1"]), load, timeout_s=3600, on_progress=sample)
        except (LoadError, OSError) as error:
            ctx.log(f"  {server.spec.label}: soak failed: {error}")
            for row in result.rows:
                row.failures[server.spec.key] = str(error)
            continue
        seconds = time.monotonic() - started
        time.sleep(0.5)  # let the server see the close and drop the connection
        fd_after = fd_count(pid)
        if not trace:
            continue
        first_rss, last_rss = trace[0][1], trace[-1][1]
        growth = (last_rss - first_rss) / MIB
        fd_values = [fd for _, _, fd in trace]
        fd_growth = max(fd_values) - min(fd_values) + max(0, fd_after - fd_before)
        rss_extras = {
            "rss_before_mib": rss_before / MIB,
            "rss_start_mib": first_rss / MIB,
            "rss_end_mib": last_rss / MIB,
            "rss_max_mib": max(r for _, r, _ in trace) / MIB,
            "growth_from_before_mib": (last_rss - rss_before) / MIB,
        }
        rss.add(server.spec.key, Sample(growth, rss_extras))
        fds.add(
            server.spec.key,
            Sample(
                float(fd_growth),
                {
                    "fd_before": float(fd_before),
                    "fd_max": float(max(fd_values)),
                    "fd_after": float(fd_after),
                },
            ),
        )
        rate.add(
            server.spec.key,
            Sample(
                float(outcome["urbs_per_s"]),
                {
                    "seconds": seconds,
                    "errors": float(outcome["errors"]),
                },
            ),
        )
        result.data[server.spec.key] = {"trace": [{"urbs": u, "rss": r, "fds": f} for u, r, f in trace]}
        result.goals.append(_absolute_goal(rss, server.spec.key, f"RSS growth over {millions} URBs", 5.0, "MiB"))
        result.goals.append(_absolute_goal(fds, server.spec.key, f"no fd growth over {millions} URBs", 0.0, "fds"))
    result.notes.append(f"'-': not soaked (--soak-servers {','.join(ctx.options.soak_servers)})")
    if count < 10_000_000:
        result.notes.append(f"soak shortened to {count:,} URBs by --soak-urbs: the goal is for 10M")
    return result


def _absolute_goal(row: Row, key: str, goal: str, limit: float, unit: str) -> GoalResult:
    value = row.median(key)
    strict = limit > 0  # RSS: < limit; fds: == 0
    target = f"< {limit:g} {unit}" if strict else f"= {limit:g} {unit}"
    if value is None:
        return GoalResult(goal, target, key, None, None, "n/a")
    passed = value < limit if strict else value <= limit
    shown = f"{value:+.2f} {unit}" if unit == "MiB" else f"{value:+.0f} {unit}"
    shortfall = "" if passed else f"over by {value - limit:.2f} {unit}"
    return GoalResult(goal, target, key, value, passed, shown, shortfall)
