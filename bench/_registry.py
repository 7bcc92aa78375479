"""The registry of benchmark sections: the one place a new benchmark plugs in.

A section is a function ``run(ctx) -> SectionResult`` registered under a name::

    @section("kernel-lab", "Guest dd through vhci", quick=False, order=40)
    def kernel_lab(ctx: Context) -> SectionResult:
        row = Row("dd-write", "guest dd write, 64 MiB O_DIRECT", "MB/s", "VM vCPUs unpinned")
        for rep in range(ctx.options.reps):
            for server in ctx.rotation(rep):       # servers take turns inside a repetition
                row.add(server.spec.key, Sample(measure_dd(server)))
        return SectionResult("kernel-lab", "...", rows=[row])

It gets the running servers (``ctx.servers``, started pinned before any section runs), the C
binaries, and the options; the report prints its rows (value and paired ratio to the C server
per server) and its goals with the rest, and the JSON output carries everything.
``python -m bench --sections NAME,...`` runs a subset; ``--list`` shows what is registered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from bench._build import Binaries
from bench._model import SectionResult
from bench._servers import RunningServer

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Options:
    """How the whole run was asked for (see ``python -m bench --help``)."""

    quick: bool
    reps: int
    warmup_s: float
    duration_s: float
    server_cpu: int
    client_cpu: int
    soak_urbs: int
    soak_servers: tuple[str, ...]
    scale_conns: tuple[int, ...]
    profile_s: float
    verbose: bool
    nice: int = 0


@dataclass(slots=True)
class Context:
    """What a section gets: options, binaries, running servers, and a progress logger."""

    options: Options
    binaries: Binaries
    servers: list[RunningServer]
    log: Callable[[str], None]
    results: dict[str, SectionResult] = field(default_factory=dict)

    def rotation(self, rep: int) -> list[RunningServer]:
        """The servers in the order they take turns in repetition ``rep`` (rotated each time)."""
        return rotated(self.servers, rep)

    def server(self, key: str) -> RunningServer | None:
        return next((s for s in self.servers if s.spec.key == key), None)


def rotated(items: Sequence[T], rep: int) -> list[T]:
    """``items`` in the order they take turns in repetition ``rep``: rotated by one each time,
    so that no server always runs first (or right after the same other one)."""
    n = len(items)
    return [items[(i + rep) % n] for i in range(n)]


SectionRun = Callable[[Context], SectionResult]


@dataclass(frozen=True, slots=True)
class Section:
    """A registered benchmark.

    Attributes:
        name: what ``--sections`` selects it by.
        title: heading in the report.
        run: the benchmark itself.
        quick: part of ``--quick``.
        full: part of a plain run (False: only when named in ``--sections``).
        scale_devices: devices 2-1 .. 2-N each server must export before it runs.
        order: position in the run and the report.
    """

    name: str
    title: str
    run: SectionRun
    quick: bool
    full: bool
    scale_devices: Callable[[Options], int]
    order: int


SECTIONS: dict[str, Section] = {}


def section(
    name: str,
    title: str,
    *,
    quick: bool = True,
    full: bool = True,
    scale_devices: Callable[[Options], int] = lambda options: 0,
    order: int = 50,
) -> Callable[[SectionRun], SectionRun]:
    """Register a section; ``order`` places it in the run and the report (wire 10, scale 20,
    soak 30, profile 90).

    Args:
        name: unique name.
        title: heading.
        quick: run it under ``--quick``.
        full: run it by default (without ``--quick``).
        scale_devices: how many extra devices it needs exported.
        order: sections run and print in increasing order.

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        ValueError: the name is taken.
    """

    def register(run: SectionRun) -> SectionRun:
        if name in SECTIONS:
            raise ValueError(f"benchmark section {name!r} is registered twice")
        SECTIONS[name] = Section(name, title, run, quick, full, scale_devices, order)
        ordered = sorted(SECTIONS.values(), key=lambda s: s.order)
        SECTIONS.clear()
        SECTIONS.update((s.name, s) for s in ordered)
        return run

    return register
