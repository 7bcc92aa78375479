"""Wire benchmarks on loopback: URB rate and latency, bulk throughput, server CPU per URB.

Every server serves device 1-1 over one connection; the C load generator imports it itself.
Rows (each measured for every server, servers taking turns within each repetition):

* ``ctrl-N``: control IN GET_DESCRIPTOR(device, 18 bytes), N URBs in flight.
* ``bulk-N``: 64-byte bulk OUT then bulk IN on the loopback, alternating, N URBs in flight
  (an OUT+IN pair is 2 URBs; each IN is submitted after the OUT it reads back).
* ``bulk-16k`` / ``bulk-64k``: the same with 16 KiB / 64 KiB transfers, 8 in flight; MB/s
  counts payload bytes both ways (OUT bytes + IN bytes), 10^6 bytes per MB.
* ``cpu``: control GET_DESCRIPTOR, 64 in flight, sent in writes of exactly 32 URBs; the value is
  the server's utime+stime (/proc/PID/stat) over the run divided by the URBs it answered.

Pinning: the server on SERVER_CPU; with 1 URB in flight the client on the same core, otherwise
on CLIENT_CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench._loadgen import Load
from bench._measure import client_cpu, measure, pinning
from bench._model import GoalResult, Row, SectionResult, ratio_goal
from bench._registry import Context, section
from bench._servers import LEAN_PYTHON, MAIN_BUSID

INFLIGHT = (1, 8, 32, 64)
CPU_INFLIGHT = 64
CPU_BATCH = 32


@dataclass(frozen=True, slots=True)
class Spec:
    key: str
    label: str
    metric: str
    load: Load
    value: str
    higher_is_better: bool = True


def specs(ctx: Context) -> list[Spec]:
    """Every row of the wire section, in report order."""
    o = ctx.options
    w, d = o.warmup_s, o.duration_s
    rows: list[Spec] = []
    for n in INFLIGHT:
        load = Load("ctrl", n, client_cpu=client_cpu(ctx, n), warmup_s=w, duration_s=d)
        rows.append(Spec(f"ctrl-{n}", f"control GET_DESCRIPTOR, {n} in flight", "URB/s", load, "urbs_per_s"))
    for n in INFLIGHT:
        load = Load("bulk", n, size=64, client_cpu=client_cpu(ctx, n), warmup_s=w, duration_s=d)
        rows.append(Spec(f"bulk-{n}", f"bulk 64 B OUT/IN, {n} in flight", "URB/s", load, "urbs_per_s"))
    for size in (16, 64):
        load = Load("bulk", 8, size=size * 1024, client_cpu=client_cpu(ctx, 8), warmup_s=w, duration_s=d)
        rows.append(Spec(f"bulk-{size}k", f"bulk {size} KiB OUT/IN, 8 in flight", "MB/s", load, "mb_per_s"))
    cpu_load = Load(
        "ctrl",
        CPU_INFLIGHT,
        batch=CPU_BATCH,
        client_cpu=ctx.options.client_cpu,
        warmup_s=o.warmup_s,
        duration_s=max(1.0, o.duration_s * 3),  # clock ticks are 10 ms: a longer run, finer figure
    )
    label = f"server CPU per URB: control, {CPU_INFLIGHT} in flight, {CPU_BATCH} URBs per write"
    rows.append(Spec("cpu", label, "us CPU/URB", cpu_load, "cpu_us_per_urb", higher_is_better=False))
    return rows


@section("wire", "Wire: URB rate, latency, throughput and CPU per URB (one connection, loopback)", order=10)
def wire(ctx: Context) -> SectionResult:
    result = SectionResult("wire", "")
    row_specs = specs(ctx)
    for spec in row_specs:
        row = Row(spec.key, spec.label, spec.metric, pinning(ctx, spec.load), spec.higher_is_better)
        if spec.key == "cpu":
            row.extras_shown = ("urbs_per_s",)
        elif spec.metric == "MB/s":
            row.extras_shown = ("p50_us", "p99_us")
        result.rows.append(row)
    for rep in range(ctx.options.reps):
        ctx.log(f"wire: repetition {rep + 1}/{ctx.options.reps}")
        for spec, row in zip(row_specs, result.rows, strict=True):
            for server in ctx.rotation(rep):
                measure(ctx, server, row, spec.load, [MAIN_BUSID], value=spec.value)
    result.goals = goals(ctx, result)
    if ctx.server(LEAN_PYTHON.key) is not None:
        result.notes.append(lean_note(result))
    result.notes.append(
        "bulk rows: OUT and IN alternate and each counts as one URB (an OUT+IN pair is 2 URBs); "
        "throughput counts payload bytes in both directions."
    )
    return result


RATE_GOALS = (
    ("ctrl-1", 0.80, "URB rate, control, 1 in flight, one core"),
    ("bulk-1", 0.80, "URB rate, bulk 64 B, 1 in flight, one core"),
    ("ctrl-32", 0.95, "URB rate, control, 32 in flight, client other core"),
    ("ctrl-64", 0.95, "URB rate, control, 64 in flight, client other core"),
    ("bulk-32", 0.95, "URB rate, bulk 64 B, 32 in flight, client other core"),
    ("bulk-64", 0.95, "URB rate, bulk 64 B, 64 in flight, client other core"),
    ("bulk-64k", 0.70, "bulk 64 KiB throughput, 8 in flight"),
)
CPU_GOAL = 0.6  # server CPU per URB at most this much of C's


def usbwire_keys(ctx: Context) -> list[str]:
    return [s.spec.key for s in ctx.servers if s.spec.kind == "usbwire"]


def ratio_goals(result: SectionResult, key: str, rows: frozenset[str] | None = None) -> list[tuple[str, GoalResult]]:
    """The rate and CPU goals checked for server ``key`` (on ``rows`` only, if given), each
    with its row's key."""
    bounds: list[tuple[str, str, float | None, float | None]] = [
        (row_key, f"{text} vs C", bound, None) for row_key, bound, text in RATE_GOALS
    ]
    bounds.append(("cpu", "server CPU per URB, 32 per write, vs C", None, CPU_GOAL))
    return [
        (row_key, ratio_goal(result.row(row_key), key, "c", goal=goal, at_least=at_least, at_most=at_most))
        for row_key, goal, at_least, at_most in bounds
        if rows is None or row_key in rows
    ]


def goals(ctx: Context, result: SectionResult) -> list[GoalResult]:
    """The issue's goals for every usbwire server, from paired per-repetition ratios."""
    out: list[GoalResult] = []
    for key in usbwire_keys(ctx):
        out += [goal for _, goal in ratio_goals(result, key)]
        if ctx.server("usbip") is not None:
            out.append(faster_than_usbip(result.rows, key, "faster than PyPI usbip on every wire row"))
    return out


def lean_note(result: SectionResult) -> str:
    """Where the lean Python server stands on the goals of the rows it runs: what the
    interpreter and event loop cost before usbwire adds anything."""
    shown: list[str] = []
    missed: list[str] = []
    for row_key, goal in ratio_goals(result, LEAN_PYTHON.key, LEAN_PYTHON.rows):
        if goal.passed is None:
            continue
        shown.append(f"{row_key} {goal.shown}")
        if not goal.passed:
            missed.append(f"{row_key} ({goal.target})")
    text = (
        f"{LEAN_PYTHON.label}: bench/_lean_server.py, one Protocol answering from the bytes with no "
        f"device model, the least a Python server does per URB; vs C: {', '.join(shown) or 'n/a'}."
    )
    if missed:
        text += f" It misses {', '.join(missed)} itself: here those goals are past CPython, whatever the design."
    return text


def faster_than_usbip(rows: list[Row], key: str, goal: str) -> GoalResult:
    """One verdict over many rows: usbwire must beat PyPI usbip on each row usbip could run.

    Args:
        rows: the rows to check (rows usbip could not run are skipped).
        key: the usbwire server judged.
        goal: the goal's text.

    Returns:
        PASS when every ratio (rate: usbwire/usbip > 1; cost: < 1) holds; the measured value
        is the worst ratio, as a speed-up (>1 is faster).
    """
    worst: tuple[float, str] | None = None
    misses: list[str] = []
    for row in rows:
        ratio = row.ratio(key, "usbip")
        if ratio is None:
            continue
        speedup = ratio if row.higher_is_better else 1 / ratio
        if speedup <= 1.0:
            misses.append(f"{row.key} {speedup:.2f}x")
        if worst is None or speedup < worst[0]:
            worst = (speedup, row.key)
    if worst is None:
        return GoalResult(goal, "> 1.00x on each row", key, None, None, "n/a")
    shown = f"worst {worst[0]:.2f}x ({worst[1]})"
    return GoalResult(goal, "> 1.00x on each row", key, worst[0], not misses, shown, ", ".join(misses))
