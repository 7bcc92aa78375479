"""Runs the C load generator against a set of targets and returns its JSON result."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class LoadError(RuntimeError):
    """The load generator failed (server refused, stalled or closed); the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """One device to import: the load generator opens one connection per target."""

    host: str
    port: int
    busid: str

    def spec(self) -> str:
        return f"{self.host}:{self.port}:{self.busid}"


@dataclass(frozen=True, slots=True)
class Load:
    """What the load generator does on each connection.

    ``mode`` is ``ctrl`` (GET_DESCRIPTOR(device) on ep 0) or ``bulk`` (``size``-byte OUT then
    IN on ep 1, each URB counted). ``batch`` > 1 sends URBs in writes of exactly that many.
    ``count`` replaces the warm-up + duration window with a fixed number of URBs. ``nice``
    runs it under ``nice -n`` (negative: higher priority, needs root).
    """

    mode: str
    inflight: int
    size: int = 64
    batch: int = 1
    client_cpu: int | None = None
    warmup_s: float = 0.2
    duration_s: float = 1.0
    count: int | None = None
    progress_every: int = 0
    nice: int = 0

    def argv(self, loadgen: Path, targets: Sequence[Target]) -> list[str]:
        argv = ["nice", "-n", str(self.nice)] if self.nice else []
        argv += [str(loadgen), "-m", self.mode, "-s", str(self.size), "-n", str(self.inflight)]
        argv += ["-b", str(self.batch), "-w", str(self.warmup_s), "-d", str(self.duration_s)]
        if self.count is not None:
            argv += ["-c", str(self.count)]
        if self.client_cpu is not None:
            argv += ["-p", str(self.client_cpu)]
        if self.progress_every:
            argv += ["-P", str(self.progress_every)]
        for target in targets:
            argv += ["-t", target.spec()]
        return argv


def run_load(
    loadgen: Path,
    targets: Sequence[Target],
    load: Load,
    *,
    timeout_s: float,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run one load and wait for it.

    Args:
        loadgen: the compiled load generator.
        targets: one connection per target.
        load: what to send.
        timeout_s: kill the load generator after this long.
        on_progress: called with the URB count of every "progress N" line (``progress_every``).

    Returns:
        The load generator's JSON result (``urbs_per_s``, ``mb_per_s``, ``p50_us``, ``p99_us``,
        ``total_urbs``, ``errors``, ...).

    Raises:
        LoadError: it exited non-zero, printed no result or timed out.
    """
    process = subprocess.Popen(load.argv(loadgen, targets), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    problems: list[str] = []
    try:
        assert process.stderr is not None and process.stdout is not None
        if on_progress is not None:
            for line in process.stderr:
                if line.startswith("progress "):
                    on_progress(int(line.split()[1]))
                else:
                    problems.append(line.strip())
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise LoadError(f"load generator still running after {timeout_s:.0f} s") from None
    problems += [line for line in stderr.splitlines() if line and not line.startswith("progress ")]
    if process.returncode != 0 or not stdout.strip():
        detail = "; ".join(problems[-3:]) or f"exit status {process.returncode}"
        raise LoadError(detail)
    result: dict[str, Any] = json.loads(stdout)
    return result
