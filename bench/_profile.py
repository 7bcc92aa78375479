"""Where usbwire's server spends its time under the 32-in-flight control load (opt-in section).

Starts its own usbwire server (pinned like the others, ``--loop uvloop``) and loads it with
control GET_DESCRIPTOR, 32 URBs in flight, client on the other core:

* with py-spy, when installed (``pip install py-spy``): sampling with native frames at 499 Hz
  (it pauses the server for each sample, a small distortion); the top functions by own samples
  and by samples including callees, as shares of the samples where the server was not idle;
* always with cProfile (``python -m cProfile -m usbwire serve``): exact call counts, but it
  slows every Python call, so its percentages overstate the cost of many small calls.

Run it with ``python -m bench --sections profile``.
"""

from __future__ import annotations

import io
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench._loadgen import Load, Target, run_load
from bench._model import SectionResult
from bench._proc import cpu_seconds
from bench._registry import Context, section
from bench._servers import HOST, usbwire_serve_args

TOP = 25


def _start(argv: list[str], cpu: int, nice: int) -> tuple[subprocess.Popen[str], int]:
    niced = ["nice", "-n", str(nice)] if nice else []
    process = subprocess.Popen(
        ["taskset", "-c", str(cpu), *niced, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    for line in process.stderr:
        if "listening on " in line:
            port = int(line.rsplit(":", 1)[1])
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep draining
            return process, port
        if time.monotonic() > deadline:
            break
    process.kill()
    raise RuntimeError(f"profiled server did not start: {process.stderr.read()[-500:]}")


def _load(ctx: Context, seconds: float) -> Load:
    cpu = ctx.options.client_cpu
    return Load("ctrl", 32, client_cpu=cpu, warmup_s=0.2, duration_s=seconds, nice=ctx.options.nice)


def _py_spy() -> str | None:
    return shutil.which("py-spy") or next(
        (str(p) for p in [Path(sys.executable).parent / "py-spy"] if p.exists()), None
    )


IDLE_LEAVES = ("epoll_wait", "epoll_pwait", "poll (", "select (")


def _function(frame: str) -> str:
    """``name (file:line)`` -> ``name (file)``: lines of one function are summed."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})" if where else name


def collapsed_top(path: Path, top: int) -> str:
    """Summarise py-spy's collapsed stacks: own and inclusive share of the busy samples.

    Samples whose innermost frame is the event loop waiting in epoll are idle time and are
    left out, so the shares are of the time the server was working.

    Args:
        path: a ``py-spy record --format raw`` file ("frame;frame;... count" lines).
        top: how many functions to list.

    Returns:
        Two tables as text.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")]
        total += count
        if frames[-1].startswith(IDLE_LEAVES):
            idle += count
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    busy = max(1, total - idle)
    lines = [f"py-spy: {total} samples, {idle} idle in epoll, shares below are of the {busy} busy ones"]
    lines += [f"{'own %':>7}  function (file)"]
    lines += [f"{100 * n / busy:6.1f}%  {frame}" for frame, n in own.most_common(top)]
    # Frames on (nearly) every stack - main, the loop, data_received - say nothing: skipped.
    below = [(frame, n) for frame, n in inclusive.most_common() if n < 0.97 * busy][:top]
    lines += ["", f"{'incl %':>7}  function (file), frames on >97% of the stacks left out"]
    lines += [f"{100 * n / busy:6.1f}%  {frame}" for frame, n in below]
    return "\n".join(lines)


@section(
    "profile",
    "Profile of the usbwire server, control GET_DESCRIPTOR, 32 in flight",
    quick=False,
    full=False,
    order=90,
)
def profile(ctx: Context) -> SectionResult:
    result = SectionResult("profile", "")
    seconds = ctx.options.profile_s
    cpu = ctx.options.server_cpu
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        spy = _py_spy()
        if spy is None:
            result.notes.append("py-spy not installed (pip install py-spy): sampling profile skipped")
        else:
            ctx.log("profile: py-spy on usbwire (uvloop)")
            process, port = _start([sys.executable, *usbwire_serve_args("uvloop")], cpu, ctx.options.nice)
            raw = Path(tmp) / "py-spy.txt"
            try:
                spy_argv = [spy, "record", "--pid", str(process.pid), "--duration", str(round(seconds))]
                spy_argv += ["--rate", "499", "--format", "raw", "--output", str(raw), "--native"]
                recorder = subprocess.Popen(
                    spy_argv,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                time.sleep(0.5)
                cpu_before, wall_before = cpu_seconds(process.pid), time.monotonic()
                outcome = run_load(
                    ctx.binaries.loadgen,
                    [Target(HOST, port, "1-1")],
                    _load(ctx, seconds + 1),
                    timeout_s=seconds + 60,
                )
                busy = (cpu_seconds(process.pid) - cpu_before) / (time.monotonic() - wall_before)
                _, spy_err = recorder.communicate(timeout=60)
                if raw.exists():
                    text = collapsed_top(raw, TOP)
                    rate = outcome["urbs_per_s"]
                    text += f"\n(load {rate:.0f} URB/s; server busy {100 * busy:.0f}% of its core."
                    text += " Native frames (libc, libpython, uvloop's C) are included.)"
                    result.notes.append(text)
                    result.data["py_spy"] = text
                else:
                    result.notes.append(f"py-spy failed: {spy_err.strip()[-300:]}")
            finally:
                process.terminate()
                process.wait(timeout=10)
        ctx.log("profile: cProfile on usbwire (uvloop)")
        stats_file = Path(tmp) / "server.prof"
        process, port = _start(
            [sys.executable, "-m", "cProfile", "-o", str(stats_file), *usbwire_serve_args("uvloop")],
            cpu,
            ctx.options.nice,
        )
        try:
            outcome = run_load(
                ctx.binaries.loadgen, [Target(HOST, port, "1-1")], _load(ctx, seconds), timeout_s=seconds + 60
            )
        finally:
            process.send_signal(signal.SIGINT)  # usbwire shuts down cleanly; cProfile then writes
            process.wait(timeout=30)
        if stats_file.exists():
            out = io.StringIO()
            stats = pstats.Stats(str(stats_file), stream=out)
            stats.strip_dirs().sort_stats("tottime").print_stats(TOP)
            text = "\n".join(line for line in out.getvalue().splitlines() if line.strip())
            heading = f"cProfile (sorted by own time; load {outcome['urbs_per_s']:.0f} URB/s):"
            result.notes.append(f"{heading}\n{text}")
            result.data["cprofile"] = text
        else:
            result.notes.append("cProfile wrote no statistics (the server did not exit cleanly)")
    return result
