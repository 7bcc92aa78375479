"""Host side, fetch path: get Debian's kernel package and unpack it into the lab cache.

The lab boots the kernel Debian ships (``linux-image-amd64``'s dependency) because that is
the kernel users run ``usbip`` with: USB/IP, xHCI and the class drivers are all modules
in it. Everything here talks to apt only through ``apt-cache``/``apt-get download``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import LabUnavailable

KERNEL_METAPACKAGE = "linux-image-amd64"

_APT_TIMEOUT_S = 600  # a 70 MB kernel package on a slow mirror

# Host tools live in sbin, which a non-root PATH often lacks.
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class Package:
    """A Debian binary package at one exact version."""

    name: str
    version: str


@dataclass(frozen=True, slots=True)
class KernelTree:
    """An unpacked kernel package with a fresh ``modules.dep``."""

    release: str  # uname -r of the guest, e.g. "6.1.0-56-amd64"
    vmlinuz: Path
    modules: Path  # .../lib/modules/<release>
    package: Package


def which(tool: str) -> str | None:
    """Find a host tool, looking in the sbin directories too."""
    path = os.environ.get("PATH", "")
    return shutil.which(tool, path=f"{path}:{_SBIN_PATH}")


def resolve_kernel_package(metapackage: str = KERNEL_METAPACKAGE) -> Package:
    """Return the versioned image package the metapackage currently depends on.

    Empty package lists (a fresh container) are filled by one ``apt-get update`` when we
    are root.

    Raises:
        LabUnavailable: apt knows no such package.
    """
    try:
        depends = _apt_show_field(metapackage, "Depends")
    except LabUnavailable:
        if not _apt_update():
            raise
        depends = _apt_show_field(metapackage, "Depends")
    match = re.search(r"(linux-image-[^\s,|()]+)", depends)
    if match is None:
        raise LabUnavailable(f"cannot find the kernel image in {metapackage}'s Depends: {depends!r}")
    name = match.group(1)
    return Package(name, _apt_show_field(name, "Version"))


def download(package: Package, cache: Path) -> Path:
    """Return the cached ``.deb`` of ``package``, fetching it with ``apt-get download``.

    A stale package index (the version was superseded on the mirror) is fixed by one
    ``apt-get update`` when we are root, since CI machines keep their lists for a while.

    Raises:
        LabUnavailable: the package cannot be downloaded.
    """
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = _cached_deb(debs, package)
    if found is not None:
        return found
    error = _apt_get_download(package, debs)
    if error and _apt_update():
        error = _apt_get_download(package, debs)
    found = _cached_deb(debs, package)
    if found is None:
        last = error.strip().splitlines()[-1:] or ["no .deb appeared"]
        raise LabUnavailable(f"apt-get download {package.name}={package.version} failed: {last[0]}")
    return found


def unpack_kernel(deb: Path, package: Package, cache: Path) -> KernelTree:
    """Unpack a kernel ``.deb`` once and run ``depmod -b`` on it.

    Debian generates ``modules.dep`` in the package's postinst, so the ``.deb`` lacks it;
    ``depmod -b`` builds it for our private tree.

    Raises:
        LabUnavailable: ``dpkg-deb`` or ``depmod`` is missing or fails.
    """
    root = cache / f"kernel-{package.name}_{package.version}"
    if not (root / ".complete").exists():
        _unpack_fresh(deb, root)
    vmlinuz = next(iter(sorted((root / "boot").glob("vmlinuz-*"))), None)
    if vmlinuz is None:
        raise LabUnavailable(f"{deb.name} holds no /boot/vmlinuz-*")
    release = vmlinuz.name.removeprefix("vmlinuz-")
    return KernelTree(release, vmlinuz, root / "lib" / "modules" / release, package)


def _unpack_fresh(deb: Path, root: Path) -> None:
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    staging.mkdir(parents=True)
    _run_tool(["dpkg-deb", "-x", str(deb), str(staging)])
    releases = [p.name for p in (staging / "lib" / "modules").iterdir()]
    for release in releases:
        _run_tool(["depmod", "-b", str(staging), release])
    (staging / ".complete").touch()
    staging.rename(root)


def _run_tool(argv: list[str]) -> None:
    tool = which(argv[0])
    if tool is None:
        raise LabUnavailable(f"{argv[0]} not found on the host (see tests/lab/apt-packages.txt)")
    done = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LabUnavailable(f"{' '.join(argv)} failed: {done.stderr.strip()[-300:]}")


def _apt_show_field(package: str, field: str) -> str:
    tool = which("apt-cache")
    if tool is None:
        raise LabUnavailable("apt-cache not found: the lab needs a Debian host")
    done = subprocess.run([tool, "show", "--no-all-versions", package], capture_output=True, text=True, check=False)
    match = re.search(rf"^{field}: (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise LabUnavailable(f"apt does not know {package} (run apt-get update?)")
    return match.group(1)


def _apt_get_download(package: Package, dest: Path) -> str:
    """Download into ``dest``; return "" on success, else apt's complaint."""
    tool = which("apt-get")
    if tool is None:
        raise LabUnavailable("apt-get not found: the lab needs a Debian host")
    try:
        done = subprocess.run(
            [tool, "download", "-q", f"{package.name}={package.version}"],
            cwd=dest,
            capture_output=True,
            text=True,
            check=False,
            timeout=_APT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return f"no answer from the package mirror in {_APT_TIMEOUT_S} s"
    return "" if done.returncode == 0 else done.stderr or done.stdout


def _apt_update() -> bool:
    """Refresh apt's package lists if we may (root); True when that succeeded."""
    tool = which("apt-get")
    if tool is None or os.geteuid() != 0:
        return False
    try:
        done = subprocess.run([tool, "update", "-qq"], capture_output=True, check=False, timeout=_APT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _cached_deb(debs: Path, package: Package) -> Path | None:
    # apt-get download names files name_version_arch.deb with ':' escaped as %3a.
    version = package.version.replace(":", "%3a")
    return next(iter(sorted(debs.glob(f"{package.name}_{version}_*.deb"))), None)
