"""Server processes: one run for a block, and its cost read from /proc (CPU time, resident
memory, open descriptors)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread, live or exited), in seconds.

    Args:
        pid: the process to read.

    Returns:
        CPU time; the kernel counts it in clock ticks (usually 10 ms).

    Raises:
        OSError: the process is gone.
    """
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        text = stat.read()
    # comm may contain spaces and parentheses: the fields after it start past the last ")".
    fields = text[text.rindex(")") + 2 :].split()
    # proc(5): field 14 is utime and 15 stime; fields[0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def rss_bytes(pid: int) -> int:
    """VmRSS of the process.

    Args:
        pid: the process to read.

    Returns:
        Resident set size in bytes.

    Raises:
        OSError: the process is gone.
        ValueError: /proc/PID/status has no VmRSS line (a zombie).
    """
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"process {pid} has no VmRSS")


def fd_count(pid: int) -> int:
    """How many file descriptors the process has open.

    Args:
        pid: the process to read.

    Returns:
        The number of entries in /proc/PID/fd.

    Raises:
        OSError: the process is gone or belongs to someone else.
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


def machine_busy_seconds() -> float:
    """CPU time every core spent busy since boot (all processes, /proc/stat), in seconds.

    Returns:
        user + nice + system + irq + softirq + steal over all CPUs.

    Raises:
        OSError: /proc is not mounted.
    """
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()
    # proc(5): cpu user nice system idle iowait irq softirq steal guest guest_nice
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS_PER_S


@contextmanager
def listening_process(argv: Sequence[str], what: str) -> Iterator[int]:
    """Run ``argv``, a server that says ``listening on 127.0.0.1:PORT`` on stderr, for the
    block; yields PORT."""
    process = subprocess.Popen(list(argv), stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        port = 0
        for line in process.stderr:
            if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                port = int(match[1])
                break
        if not port:
            raise RuntimeError(f"{what} did not start (exit {process.wait(10)})")
        yield port
    finally:
        process.terminate()
        process.wait(10)
