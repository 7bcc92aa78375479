"""What a benchmark section produces: rows of per-repetition samples per server, and goals.

Ratios between two servers are always *paired*: for each repetition, this server's value over
the other's value measured in the same repetition (the servers take turns within it), then the
median of those per-repetition ratios. That cancels most of the drift a shared VM has.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Sample:
    """One measurement of one server in one repetition."""

    value: float
    extras: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class Row:
    """One benchmark figure for every server.

    Attributes:
        key: stable id used by goals and the JSON output (``ctrl-1``, ``bulk-64k``...).
        label: what the row measures, for the table.
        metric: unit of ``Sample.value`` (``URB/s``, ``MB/s``, ``us CPU/URB``).
        pinning: which cores server and client ran on.
        higher_is_better: False for costs (CPU per URB).
        samples: server key -> one entry per repetition (None: that repetition failed).
        unavailable: server key -> why the server cannot run this row.
        failures: server key -> the last error of a repetition that failed.
        extras_shown: which ``Sample.extras`` the table prints under the value.
        compare: print ratios to the C server (False for absolute figures such as RSS growth).
    """

    key: str
    label: str
    metric: str
    pinning: str
    higher_is_better: bool = True
    samples: dict[str, list[Sample | None]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    extras_shown: tuple[str, ...] = ("p50_us", "p99_us")
    compare: bool = True

    def add(self, server: str, sample: Sample | None) -> None:
        self.samples.setdefault(server, []).append(sample)

    def values(self, server: str) -> list[float]:
        return [s.value for s in self.samples.get(server, []) if s is not None]

    def median(self, server: str) -> float | None:
        values = self.values(server)
        return statistics.median(values) if values else None

    def median_extra(self, server: str, name: str) -> float | None:
        values = [s.extras[name] for s in self.samples.get(server, []) if s is not None and name in s.extras]
        return statistics.median(values) if values else None

    def ratio(self, server: str, reference: str) -> float | None:
        """Median over repetitions of value(server) / value(reference), paired by repetition."""
        mine = self.samples.get(server, [])
        theirs = self.samples.get(reference, [])
        ratios = [
            a.value / b.value
            for a, b in zip(mine, theirs, strict=False)
            if a is not None and b is not None and b.value > 0
        ]
        return statistics.median(ratios) if ratios else None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "metric": self.metric,
            "pinning": self.pinning,
            "higher_is_better": self.higher_is_better,
            "unavailable": self.unavailable,
            "failures": self.failures,
            "samples": {
                server: [None if s is None else {"value": s.value, **s.extras} for s in samples]
                for server, samples in self.samples.items()
            },
            "median": {server: self.median(server) for server in self.samples},
        }


@dataclass(slots=True)
class GoalResult:
    """One goal checked for one server: PASS, MISS, or n/a when it could not be measured."""

    goal: str
    target: str
    server: str
    measured: float | None
    passed: bool | None
    shown: str
    shortfall: str = ""

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else "PASS" if self.passed else "MISS"

    def to_json(self) -> dict[str, Any]:
        return {
            "goal": self.goal,
            "target": self.target,
            "server": self.server,
            "measured": self.measured,
            "verdict": self.verdict,
            "shown": self.shown,
            "shortfall": self.shortfall,
        }


@dataclass(slots=True)
class SectionResult:
    """Everything one section measured."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    goals: list[GoalResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def row(self, key: str) -> Row:
        for row in self.rows:
            if row.key == key:
                return row
        raise KeyError(key)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "seconds": round(self.seconds, 1),
            "rows": [row.to_json() for row in self.rows],
            "goals": [goal.to_json() for goal in self.goals],
            "notes": self.notes,
            "data": self.data,
        }


def ratio_goal(
    row: Row,
    server: str,
    reference: str,
    *,
    goal: str,
    at_least: float | None = None,
    at_most: float | None = None,
) -> GoalResult:
    """Check value(server)/value(reference) (paired median) against a bound.

    Args:
        row: the row both servers ran.
        server: the server judged.
        reference: the server it is compared with.
        goal: the goal's text.
        at_least: the ratio must be >= this.
        at_most: the ratio must be <= this.

    Returns:
        The verdict; n/a when either server has no value.
    """
    ratio = row.ratio(server, reference)
    target = f">= {at_least:.2f}x" if at_least is not None else f"<= {at_most:.2f}x"
    if ratio is None:
        return GoalResult(goal, target, server, None, None, "n/a")
    passed = (at_least is None or ratio >= at_least) and (at_most is None or ratio <= at_most)
    shortfall = ""
    if not passed:
        bound = at_least if at_least is not None and ratio < at_least else at_most
        assert bound is not None
        shortfall = f"{(ratio - bound) / bound * 100:+.0f}% vs target"
    return GoalResult(goal, target, server, ratio, passed, f"{ratio:.2f}x", shortfall)
