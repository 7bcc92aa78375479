"""Compiles the benchmark's C programs (reference echo server, load generator) with gcc."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
SOURCE_DIR = BENCH_DIR / "c"
BUILD_DIR = BENCH_DIR / "build"
CFLAGS = ("-O2", "-g", "-Wall", "-Wextra", "-std=gnu11")
PROGRAMS = ("echo_server", "loadgen")


class BuildError(RuntimeError):
    """gcc is missing or failed; the message carries its output."""


@dataclass(frozen=True, slots=True)
class Binaries:
    """Paths of the compiled programs."""

    echo_server: Path
    loadgen: Path


def build(build_dir: Path = BUILD_DIR, *, force: bool = False) -> Binaries:
    """Compile every program whose sources are newer than its binary.

    Args:
        build_dir: where the binaries go (created if missing).
        force: compile even when the binaries look current.

    Returns:
        The binaries' paths.

    Raises:
        BuildError: gcc is not installed or a compilation failed.
    """
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise BuildError("gcc not found (apt-get install gcc libc6-dev)")
    build_dir.mkdir(parents=True, exist_ok=True)
    header = SOURCE_DIR / "usbip_wire.h"
    for name in PROGRAMS:
        source = SOURCE_DIR / f"{name}.c"
        output = build_dir / name
        newest = max(source.stat().st_mtime, header.stat().st_mtime)
        if not force and output.exists() and output.stat().st_mtime >= newest:
            continue
        result = subprocess.run(
            [gcc, *CFLAGS, "-o", str(output), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BuildError(f"compiling {source.name} failed:\n{result.stderr.strip()}")
    return Binaries(echo_server=build_dir / "echo_server", loadgen=build_dir / "loadgen")
