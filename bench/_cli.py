"""``python -m bench``: build the C programs, start the servers pinned, run the sections, report."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import _disk, _lab, _profile, _scale, _tls, _wire  # noqa: F401  (importing registers the sections)
from bench._build import BENCH_DIR, BuildError, build
from bench._model import SectionResult
from bench._registry import SECTIONS, Context, Options
from bench._report import format_goals, format_section, load_average, to_json
from bench._servers import (
    C_SERVER,
    LEAN_PYTHON,
    USBWIRE_ASYNCIO,
    USBWIRE_UVLOOP,
    RunningServer,
    ServerError,
    ServerSpec,
    ensure_usbip_installed,
    usbip_spec,
)

SERVER_KEYS = ("c", "usbwire-asyncio", "usbwire-uvloop", "usbip", "lean-python")
LOAD_WARNING = 0.5


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="usbwire benchmarks: URB rate, latency, throughput, CPU per URB, scale and soak, "
        "against a minimal C server (the limit) and the PyPI usbip package, one load generator for all.",
    )
    p.add_argument("--quick", action="store_true", help="2 short repetitions, no soak (about 1.5 minutes)")
    p.add_argument("--reps", type=int, help="repetitions (servers take turns in each; default 3, --quick 2)")
    p.add_argument("--duration", type=float, help="measured seconds per figure (default 1.0, --quick 0.4)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each figure (default 0.25, --quick 0.1)")
    p.add_argument("--out", type=Path, help="JSON results file (default bench/results/bench-TIME.json)")
    p.add_argument("--sections", help="comma-separated sections to run (see --list); default: all of the run")
    p.add_argument("--list", action="store_true", help="list the registered sections and exit")
    servers = ",".join(SERVER_KEYS)
    p.add_argument("--servers", default=servers, help=f"servers to compare (default {servers})")
    p.add_argument("--no-install", action="store_true", help="do not pip install the PyPI usbip package if missing")
    p.add_argument("--server-cpu", type=int, default=0, help="core every server is pinned to (default 0)")
    p.add_argument("--client-cpu", type=int, default=1, help="the load generator's core when >1 URB is in flight")
    p.add_argument("--no-soak", action="store_true", help="skip the 10M-URB soak of the full run")
    p.add_argument("--soak-urbs", type=int, default=10_000_000, help="URBs of the soak (default 10,000,000)")
    p.add_argument("--soak-servers", default="usbwire-uvloop", help="servers to soak (default usbwire-uvloop)")
    p.add_argument("--scale-conns", default="1,16,128", help="connection counts of the scale rows")
    p.add_argument("--profile-seconds", type=float, default=5.0, help="load duration of the profile section")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run servers and load generator under nice -n N (e.g. -5 on a shared machine; <0 needs root)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print every measurement as it is taken")
    return p


def _sections(args: argparse.Namespace) -> list[str]:
    if args.sections:
        names = _csv(args.sections)
        unknown = [n for n in names if n not in SECTIONS]
        if unknown:
            raise SystemExit(f"bench: unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
        return [n for n in SECTIONS if n in names]  # registry order
    names = [s.name for s in SECTIONS.values() if (s.quick if args.quick else s.full)]
    return [n for n in names if not (n == "soak" and args.no_soak)]


def _options(args: argparse.Namespace) -> Options:
    cpus = os.cpu_count() or 1
    client = args.client_cpu if cpus > 1 else args.server_cpu
    return Options(
        quick=args.quick,
        reps=args.reps or (2 if args.quick else 3),
        warmup_s=args.warmup if args.warmup is not None else (0.1 if args.quick else 0.25),
        duration_s=args.duration or (0.4 if args.quick else 1.0),
        server_cpu=args.server_cpu,
        client_cpu=client,
        soak_urbs=args.soak_urbs,
        soak_servers=tuple(_csv(args.soak_servers)),
        scale_conns=tuple(int(n) for n in _csv(args.scale_conns)),
        profile_s=args.profile_seconds,
        verbose=args.verbose,
        nice=args.nice,
    )


def _specs(keys: Sequence[str], install: bool, log: list[str]) -> list[ServerSpec]:
    known = {s.key: s for s in (C_SERVER, USBWIRE_ASYNCIO, USBWIRE_UVLOOP, LEAN_PYTHON)}
    specs: list[ServerSpec] = []
    for key in keys:
        if key == "usbip":
            problem = ensure_usbip_installed(install)
            if problem:
                log.append(f"PyPI usbip left out: {problem}")
                continue
            specs.append(usbip_spec())
        elif key in known:
            specs.append(known[key])
        else:
            raise SystemExit(f"bench: unknown server {key!r} (known: {', '.join(SERVER_KEYS)})")
    if "c" not in keys:
        raise SystemExit("bench: the C server is the reference of every ratio: keep it in --servers")
    return specs


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list:
        for s in SECTIONS.values():
            when = "quick+full" if s.quick and s.full else "full" if s.full else "opt-in"
            print(f"{s.name:10} {when:11} {s.title}")
        return 0
    if shutil.which("taskset") is None:
        log("bench: taskset not found (util-linux)")
        return 1
    options = _options(args)
    names = _sections(args)
    try:
        binaries = build()
    except BuildError as error:
        log(f"bench: {error}")
        return 1
    notes: list[str] = []
    specs = _specs(_csv(args.servers), not args.no_install, notes)
    for note in notes:
        log(note)
    devices = max((SECTIONS[n].scale_devices(options) for n in names), default=0)
    started = time.monotonic()
    load_before = load_average()
    servers: list[RunningServer] = []
    results: list[SectionResult] = []
    try:
        for spec in specs:
            log(f"starting {spec.label} on cpu{options.server_cpu} ({devices} scale devices)")
            servers.append(
                RunningServer(spec, binaries, cpu=options.server_cpu, scale_devices=devices, nice=options.nice)
            )
        ctx = Context(options, binaries, servers, log)
        for name in names:
            section = SECTIONS[name]
            t0 = time.monotonic()
            result = section.run(ctx)
            result.title = result.title or section.title
            result.seconds = time.monotonic() - t0
            ctx.results[name] = result
            results.append(result)
            log(f"{name}: done in {result.seconds:.0f} s")
    except ServerError as error:
        log(f"bench: {error}")
        return 1
    finally:
        for server in servers:
            server.stop()
    seconds = time.monotonic() - started
    load_after = load_average()
    print()
    averages = f"load average {load_before[0]:.2f} at start, {load_after[0]:.2f} at end"
    print(f"machine: {os.cpu_count()} CPUs; {averages}")
    if max(load_before[0], load_after[0]) > LOAD_WARNING:
        print("  other processes were competing for the cores: figures are noisier than on an idle machine")
    print()
    for result in results:
        print(format_section(result, specs))
    goals = [g for r in results for g in r.goals]
    if goals:
        print(format_goals(goals, specs))
    for note in notes:
        print(note)
    out = args.out or BENCH_DIR / "results" / time.strftime("bench-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    document = to_json(options, specs, results, seconds)
    document["environment"]["load_average_before"] = load_before
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"total {seconds:.0f} s; results written to {out}")
    return 0
