"""Host side, build path: assemble the lab's kernel + initramfs, cached by content.

The initramfs holds busybox, the USB/IP and device class modules of Debian's kernel in
dependency order, Debian's ``usbip``/``usbipd`` with the shared libraries ``ldd`` names,
and the guest scripts in ``guest/``. Only the first run pays for the download and build:
the archive is cached under a key made of the kernel version and a hash of every byte
that goes into it, so changing a module list, a script or a host binary rebuilds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import debian
from .cpio import Archive
from .errors import LabUnavailable
from .kernelimage import bootable_kernel

# Bump when the archive layout changes in a way the hashed inputs do not show.
_LAYOUT_VERSION = "1"

_UNUSED_ARCHIVE_S = 14 * 24 * 3600
_GUEST_DIR = Path(__file__).with_name("guest")

# Modules the lab loads at boot, in any order (dependencies are resolved from
# modules.dep). Grouped by purpose; all are modules in Debian's amd64 kernel.
REQUIRED_MODULES: tuple[str, ...] = (
    # QEMU's qemu-xhci controller first, so its buses are usb1/usb2 and its devices get
    # busids like 1-1, whatever vhci-hcd (16 buses) registers later.
    "xhci-pci",
    # class drivers of QEMU's USB devices
    "usb-storage",
    "sd_mod",
    "usbhid",
    "hid-generic",
    "cdc-acm",
    "ftdi_sio",
    "snd-usb-audio",
    "uvcvideo",
    # 9p shares (scratch dir and the host's root), virtio transport and network
    "9p",
    "9pnet_virtio",
    "virtio_pci",
    "virtio_net",
    # USB/IP: client (vhci-hcd) and server (usbip-host)
    "usbip-core",
    "vhci-hcd",
    "usbip-host",
    # what the guest kernel submits to a device, transfer flags included (usbmon.py)
    "usbmon",
)
# Loaded when this kernel has them; useful but no lab feature depends on them.
OPTIONAL_MODULES: tuple[str, ...] = (
    "uas",
    "usbip-vudc",
    "evdev",
    "crc32c_generic",  # ext4 asks for crc32c and there is no modprobe to fetch it
    "ext4",
)
DEFAULT_BINARIES: tuple[str, ...] = ("busybox", "usbip", "usbipd")
# Copied when present: usbip prints vendor/product names from it.
OPTIONAL_FILES: tuple[str, ...] = ("/usr/share/misc/usb.ids",)


@dataclass(frozen=True, slots=True)
class InitramfsSpec:
    """What goes into the guest besides the fixed init scripts.

    Use :meth:`with_binaries` to bring more Debian programs (they must be installed on
    the host; their libraries come along), e.g. ``spec.with_binaries("mkfs.ext4")``.
    Programs run in the chroot of the host's root need nothing here.
    """

    modules: tuple[str, ...] = REQUIRED_MODULES
    optional_modules: tuple[str, ...] = OPTIONAL_MODULES
    binaries: tuple[str, ...] = DEFAULT_BINARIES
    files: tuple[str, ...] = ()
    optional_files: tuple[str, ...] = field(default=OPTIONAL_FILES)

    def with_binaries(self, *names: str) -> InitramfsSpec:
        """Return a spec that also installs these host programs (names or paths)."""
        return replace(self, binaries=self.binaries + names)

    def with_files(self, *paths: str) -> InitramfsSpec:
        """Return a spec that also copies these host files or directories verbatim."""
        return replace(self, files=self.files + paths)

    def with_modules(self, *names: str) -> InitramfsSpec:
        """Return a spec that also loads these kernel modules (and their dependencies)."""
        return replace(self, modules=self.modules + names)


@dataclass(frozen=True, slots=True)
class BootArtifacts:
    """A kernel and an initramfs that boot together."""

    kernel: Path  # an ELF vmlinux (PVH boot) when possible, else the bzImage
    initramfs: Path
    release: str  # the guest's uname -r


def default_cache_dir() -> Path:
    """``$USBWIRE_LAB_CACHE``, else ``~/.cache/usbwire-lab``."""
    configured = os.environ.get("USBWIRE_LAB_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "usbwire-lab"


def build(spec: InitramfsSpec | None = None, cache: Path | None = None) -> BootArtifacts:
    """Return boot artifacts for ``spec``, downloading and building only on a cache miss.

    Raises:
        LabUnavailable: a package, tool, module or binary is missing on this host.
    """
    spec = spec or InitramfsSpec()
    cache = cache or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".lock"):
        package = debian.resolve_kernel_package()
        tree = debian.unpack_kernel(debian.download(package, cache), package, cache)
        archive = _assemble(spec, tree)
        key = _cache_key(tree, archive)
        target = cache / f"initramfs-{tree.release}-{key}.cpio"
        if target.exists():
            target.touch()  # recently used: spared by _prune
        else:
            partial = target.with_suffix(".partial")
            with partial.open("wb") as out:
                archive.write(out)
            partial.rename(target)
        config = tree.vmlinuz.with_name(tree.vmlinuz.name.replace("vmlinuz", "config", 1))
        kernel = bootable_kernel(tree.vmlinuz, config)
        _prune(cache, tree)
    return BootArtifacts(kernel, target, tree.release)


def _prune(cache: Path, current: debian.KernelTree) -> None:
    """Drop what a superseded kernel left (~550 MB each) and archives unused for 2 weeks.

    Debian replaces the kernel package every few point releases; without this a CI
    machine's cache would grow by one kernel each time.
    """
    keep_root = current.modules.parents[2]  # .../kernel-<package>_<version>
    for old in cache.glob("kernel-*"):
        if old != keep_root:
            shutil.rmtree(old, ignore_errors=True)
    for deb in (cache / "debs").glob("linux-image-*.deb"):
        if not deb.name.startswith(f"{current.package.name}_"):
            deb.unlink(missing_ok=True)
    for partial in cache.glob("initramfs-*.partial"):  # a build killed halfway
        partial.unlink(missing_ok=True)
    stale = time.time() - _UNUSED_ARCHIVE_S
    for archive in cache.glob("initramfs-*.cpio"):
        if archive.stat().st_mtime < stale or current.release not in archive.name:
            archive.unlink(missing_ok=True)


def module_load_order(modules_dir: Path, wanted: Iterable[str], optional: Iterable[str] = ()) -> list[str]:
    """Resolve module names to ``modules.dep`` paths, every dependency before its user.

    Names compare as the kernel does (``-`` and ``_`` are the same). Built-in modules
    are dropped: there is nothing to load.

    Raises:
        LabUnavailable: a wanted module is neither a module nor built in.
    """
    deps = _read_modules_dep(modules_dir / "modules.dep")
    builtin = {_module_name(line) for line in _lines(modules_dir / "modules.builtin")}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps[_module_name(path)][1]:
            visit(dep)
        order.append(path)

    for name, required in [(n, True) for n in wanted] + [(n, False) for n in optional]:
        key = _module_name(name)
        if key in deps:
            visit(deps[key][0])
        elif required and key not in builtin:
            raise LabUnavailable(f"kernel module {name} is not in {modules_dir.name}")
    return order


def _assemble(spec: InitramfsSpec, tree: debian.KernelTree) -> Archive:
    archive = Archive()
    for directory in ("/proc", "/sys", "/dev", "/run", "/tmp", "/host", "/root", "/mnt"):
        archive.add_dir(directory)
    archive.add_dir("/tmp", 0o1777)
    archive.add_symlink("/var/run", "/run")
    archive.add_char_device("/dev/console", 5, 1)
    archive.add_file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    archive.add_file("/etc/group", b"root:x:0:\n")
    for script, guest_path in (
        ("init.sh", "/init"),
        ("agent.sh", "/bin/lab-agent"),
        ("run.sh", "/bin/lab-run"),
    ):
        archive.add_file(guest_path, (_GUEST_DIR / script).read_bytes(), 0o755)

    load_order = module_load_order(tree.modules, spec.modules, spec.optional_modules)
    guest_modules = f"/lib/modules/{tree.release}"
    guest_paths = []
    for rel in load_order:
        data = (tree.modules / rel).read_bytes()
        if rel.endswith(".xz"):  # busybox insmod takes plain ELF objects only
            data = lzma.decompress(data)
        guest_paths.append(f"{guest_modules}/{rel.removesuffix('.xz')}")
        archive.add_file(guest_paths[-1], data)
    archive.add_file("/etc/lab/modules", "".join(f"{p}\n" for p in guest_paths).encode())

    for name in spec.binaries:
        _add_binary(archive, name)
    for path in spec.files:
        _add_host_path(archive, Path(path))
    for path in spec.optional_files:
        if Path(path).exists():
            _add_host_path(archive, Path(path))
    return archive


def _add_binary(archive: Archive, name: str) -> None:
    host = Path(name) if name.startswith("/") else None
    found = str(host) if host else debian.which(name)
    if found is None or not Path(found).is_file():
        raise LabUnavailable(f"{name} not found on the host (see tests/lab/apt-packages.txt)")
    if Path(found).name == "busybox":
        _add_busybox(archive, Path(found))
        return
    archive.add_file(found, Path(found).read_bytes(), 0o755)
    for library in shared_libraries(Path(found)):
        archive.add_file(library, Path(library).read_bytes(), 0o755)


def _add_busybox(archive: Archive, host_binary: Path) -> None:
    archive.add_file("/bin/busybox", host_binary.read_bytes(), 0o755)
    listing = subprocess.run([str(host_binary), "--list-full"], capture_output=True, text=True, check=True)
    for applet in listing.stdout.split():
        guest_path = "/" + applet
        if guest_path not in archive:
            archive.add_symlink(guest_path, "/bin/busybox")
    for library in shared_libraries(host_binary):  # empty for busybox-static
        archive.add_file(library, Path(library).read_bytes(), 0o755)


def shared_libraries(binary: Path) -> list[str]:
    """Paths of the shared objects ``ldd`` says ``binary`` loads, interpreter included.

    Returns the names the dynamic loader looks for (often symlinks); the caller copies
    the files they resolve to under those names.
    """
    done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if done.returncode != 0:  # "not a dynamic executable": static, nothing to copy
        return []
    libraries = []
    for line in done.stdout.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libraries.append(match.group(1))
    return libraries


def _add_host_path(archive: Archive, path: Path) -> None:
    if not path.exists():
        raise LabUnavailable(f"{path} not found on the host")
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file():
                archive.add_file(str(child), child.read_bytes(), child.stat().st_mode & 0o777)
    else:
        archive.add_file(str(path), path.read_bytes(), path.stat().st_mode & 0o777)


def _cache_key(tree: debian.KernelTree, archive: Archive) -> str:
    digest = hashlib.sha256(f"{_LAYOUT_VERSION}\n{tree.package}\n".encode())
    digest.update(_archive_digest(archive))
    return digest.hexdigest()[:16]


def _archive_digest(archive: Archive) -> bytes:
    hasher = _HashSink()
    archive.write(hasher)
    return hasher.sha.digest()


class _HashSink:
    """Feeds the archive bytes to sha256 instead of a file: the key is what we'd write."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()

    def write(self, data: bytes, /) -> None:
        self.sha.update(data)


def _read_modules_dep(path: Path) -> dict[str, tuple[str, list[str]]]:
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in _lines(path):
        module, _, rest = line.partition(":")
        deps[_module_name(module)] = (module, rest.split())
    return deps


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


def _lines(path: Path) -> Iterator[str]:
    if path.exists():
        yield from (line for line in path.read_text().splitlines() if line.strip())


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise builds across processes (pytest-xdist workers share the cache)."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
