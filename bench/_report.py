"""Turns section results into the printed tables and the JSON file."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Sequence
from typing import Any

from bench._model import GoalResult, Row, SectionResult
from bench._registry import Options
from bench._servers import ServerSpec

LABEL_WIDTH = 44
METRIC_WIDTH = 11
PIN_WIDTH = 38
CELL_WIDTH = 21
REFERENCE = "c"


def _number(value: float, metric: str) -> str:
    if metric in ("URB/s",):
        return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"
    if metric == "MB/s":
        return f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    if metric == "MiB":
        return f"{value:+.2f}"
    if metric == "fds":
        return f"{value:+.0f}"
    return f"{value:.2f}"


def _latency(us: float) -> str:
    return f"{us:.1f}" if us < 100 else f"{us:.0f}"


def _extras(row: Row, key: str) -> str:
    parts = []
    shown = row.extras_shown
    if shown == ("p50_us", "p99_us"):
        p50, p99 = row.median_extra(key, "p50_us"), row.median_extra(key, "p99_us")
        cpu = row.median_extra(key, "cpu_us_per_urb")
        if p50 is None or p99 is None:
            return ""
        return f"{_latency(p50)}/{_latency(p99)}" + (f"; {cpu:.1f}" if cpu is not None else "")
    for name in shown:
        value = row.median_extra(key, name)
        if value is None:
            continue
        if name == "urbs_per_s":
            parts.append(f"@{value / 1000:.1f}k URB/s")
        elif name == "seconds":
            parts.append(f"{value:.0f} s")
        elif name.endswith("_mib"):
            parts.append(f"{value:.1f}")
        else:
            parts.append(f"{value:.0f}")
    return " / ".join(parts)


def _extras_heading(row: Row) -> str:
    headings = {
        ("p50_us", "p99_us"): "p50/p99;cpu",
        ("urbs_per_s",): "load",
        ("rss_start_mib", "rss_end_mib"): "MiB start/end",
        ("fd_before", "fd_max"): "before/max",
        ("seconds",): "run time",
    }
    return headings.get(row.extras_shown, "")


def _cell(row: Row, key: str) -> tuple[str, str]:
    if key in row.unavailable:
        return "n/a", ""
    value = row.median(key)
    if value is None:
        return ("failed" if key in row.failures else "-"), ""
    errors = any(s is not None and s.extras.get("errors", 0) > 0 for s in row.samples.get(key, []))
    text = _number(value, row.metric) + ("!" if errors else "")
    if row.compare and key != REFERENCE:
        ratio = row.ratio(key, REFERENCE)
        if ratio is not None:
            text = f"{text:>8} {ratio:5.2f}x"
    return text, _extras(row, key)


def format_section(result: SectionResult, servers: Sequence[ServerSpec]) -> str:
    """The section's table: one line per row (value, ratio to C) and one of latency/extras."""
    lines = [f"== {result.title} ==", ""]
    if result.rows:
        head = f"{'row':{LABEL_WIDTH}} {'metric':{METRIC_WIDTH}} {'pinning':{PIN_WIDTH}}"
        head += "".join(f" {s.label[:CELL_WIDTH]:>{CELL_WIDTH}}" for s in servers)
        lines += [head, "-" * len(head)]
    reasons: list[str] = []
    any_errors = False
    for row in result.rows:
        cells = [_cell(row, s.key) for s in servers]
        line = f"{row.label[:LABEL_WIDTH]:{LABEL_WIDTH}} {row.metric:{METRIC_WIDTH}} "
        line += f"{row.pinning[:PIN_WIDTH]:{PIN_WIDTH}}"
        lines.append(line + "".join(f" {main:>{CELL_WIDTH}}" for main, _ in cells))
        if any(extra for _, extra in cells):
            extra_line = f"{'':{LABEL_WIDTH}} {_extras_heading(row):{METRIC_WIDTH}} {'':{PIN_WIDTH}}"
            lines.append(extra_line + "".join(f" {extra:>{CELL_WIDTH}}" for _, extra in cells))
        for s in servers:
            if s.key in row.unavailable:
                reasons.append(f"{row.key}, {s.label}: n/a: {row.unavailable[s.key]}")
            elif s.key in row.failures:
                reasons.append(f"{row.key}, {s.label}: a repetition failed: {row.failures[s.key]}")
        any_errors = any_errors or any("!" in main for main, _ in cells)
    if result.rows:
        lines.append("")
    others = sorted(
        s.extras["others_cpu_pct"]
        for row in result.rows
        for samples in row.samples.values()
        for s in samples
        if s is not None and "others_cpu_pct" in s.extras
    )
    if others:
        median = others[len(others) // 2]
        cores = os.cpu_count() or 1
        lines.append(
            f"other processes on the machine used {median:.0f}% of a core during the median measurement "
            f"(max {others[-1]:.0f}%, of {100 * cores}%)"
        )
    if any(row.extras_shown == ("p50_us", "p99_us") for row in result.rows):
        lines.append(
            "p50/p99;cpu: latency percentiles in us, then the server's CPU time per URB in us "
            "(utime+stime over the run / URBs)"
        )
    if any_errors:
        lines.append("! the load generator counted errors (bad status, length or loopback data) in that row")
    lines += reasons + result.notes
    return "\n".join(lines).rstrip() + "\n"


def format_goals(goals: Sequence[GoalResult], servers: Sequence[ServerSpec]) -> str:
    """One line per goal, one PASS/MISS column per usbwire server."""
    judged = [s for s in servers if any(g.server == s.key for g in goals)]
    if not goals:
        return ""
    width = max(len(g.goal) for g in goals) + 2
    target_width = max(len(g.target) for g in goals) + 2
    cell = 34
    head = f"{'goal':{width}}{'target':{target_width}}" + "".join(f"{s.label:{cell}}" for s in judged)
    lines = [
        "== Goals (ratios: median of per-repetition paired ratios, same run) ==",
        "",
        head,
        "-" * len(head),
    ]
    order: list[str] = []
    for g in goals:
        if g.goal not in order:
            order.append(g.goal)
    footnotes: list[str] = []
    for text in order:
        mine = {g.server: g for g in goals if g.goal == text}
        target = next(iter(mine.values())).target
        cells = []
        for s in judged:
            found = mine.get(s.key)
            if found is None:
                cells.append(f"{'-':{cell}}")
                continue
            verdict = f"{found.verdict} {found.shown}"
            if found.shortfall and len(verdict) + len(found.shortfall) + 3 <= cell:
                verdict += f" ({found.shortfall})"
            elif found.shortfall:
                footnotes.append(f"{text}, {s.label}: {found.shortfall}")
            cells.append(f"{verdict:{cell}}")
        lines.append(f"{text:{width}}{target:{target_width}}" + "".join(cells).rstrip())
    misses = [g for g in goals if g.passed is False]
    passes = sum(g.passed is True for g in goals)
    unknown = sum(g.passed is None for g in goals)
    lines += ["", f"{passes} PASS, {len(misses)} MISS, {unknown} n/a", *footnotes]
    return "\n".join(lines) + "\n"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _command_output(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def load_average() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages: other work competing for the cores."""
    return os.getloadavg()


def environment() -> dict[str, Any]:
    """What the figures depend on: CPU, kernel, Python, packages, compiler, source revision."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    commit = _command_output(["git", "-C", here, "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"])
    return {
        "load_average_end": load_average(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "usbwire": _version("usbwire"),
        "uvloop": _version("uvloop"),
        "usbip": _version("usbip"),
        "gcc": _command_output(["gcc", "--version"]),
        "commit": (commit or "?") + ("+dirty" if dirty else ""),
    }


def to_json(
    options: Options, servers: Sequence[ServerSpec], results: Sequence[SectionResult], seconds: float
) -> dict[str, Any]:
    """The whole run as JSON: environment, options, servers, every sample, goals."""
    return {
        "environment": environment(),
        "options": dataclasses.asdict(options),
        "seconds": round(seconds, 1),
        "servers": [{"key": s.key, "label": s.label, "kind": s.kind, "loop": s.loop} for s in servers],
        "sections": [r.to_json() for r in results],
        "goals": [g.to_json() for r in results for g in r.goals],
    }
