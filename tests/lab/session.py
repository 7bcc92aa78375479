"""Host side: the ``Lab`` a test session gets, i.e. checked host tools + boot artifacts + a VM factory.

Creating a ``Lab`` is the expensive, once-per-session part (download, unpack, build);
:meth:`Lab.vm` is then cheap to call per test. The lab also remembers the VMs it started
so that a failing test can be reported with the kernel logs of the guests it used.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import debian
from .errors import LabUnavailable
from .initramfs import BootArtifacts, InitramfsSpec, build
from .usbdevices import UsbDevice
from .vm import VM, ChrootSetup, VMConfig, forwards_from, qemu_binary

REPO = Path(__file__).resolve().parents[2]
# Host programs the lab itself runs (besides QEMU); apt-packages.txt installs them.
REQUIRED_HOST_TOOLS = ("busybox", "usbip", "usbipd", "depmod", "dpkg-deb")

_REGISTRY: list[VM] = []  # every VM of the process, for failure reports
_REGISTRY_LOCK = threading.Lock()


class Lab:
    """Boots throwaway guests of Debian's kernel for one test session."""

    def __init__(self, artifacts: BootArtifacts, chroot: ChrootSetup, spec: InitramfsSpec | None = None) -> None:
        self.artifacts = artifacts
        self.chroot = chroot
        self._lock = threading.Lock()
        self._specs: dict[InitramfsSpec, BootArtifacts] = {spec or InitramfsSpec(): artifacts}

    @classmethod
    def create(cls, spec: InitramfsSpec | None = None) -> Lab:
        """Check the host and build (or reuse) the boot artifacts.

        Raises:
            LabUnavailable: with a one-line reason when this host cannot run the lab.
        """
        tools = (qemu_binary(), *REQUIRED_HOST_TOOLS)
        missing = [tool for tool in tools if debian.which(tool) is None]
        if missing:
            raise LabUnavailable(
                f"missing host tools {', '.join(missing)} (apt-get install $(cat tests/lab/apt-packages.txt))"
            )
        return cls(build(spec), default_chroot(), spec)

    def vm(
        self,
        usb: Sequence[UsbDevice] = (),
        forwards: Mapping[int, int] | Sequence[int] | None = None,
        *,
        cpus: int = 1,
        memory_mb: int = 1024,
        hostroot: bool = True,
        boot_timeout_s: float = 60.0,
        hard_timeout_s: float = 120.0,
        spec: InitramfsSpec | None = None,
        extra_qemu_args: Sequence[str] = (),
        extra_kernel_args: Sequence[str] = (),
    ) -> VM:
        """Describe a guest; ``with`` boots it and powers it off.

        Args:
            usb: QEMU USB devices on the guest's xHCI (see ``usbdevices``), ids
                ``usbdev0``, ``usbdev1``... unless given.
            forwards: ``{host_port: guest_port}`` TCP forwards from 127.0.0.1 (host port 0
                picks a free one), or a list of guest ports; see :meth:`VM.host_port`.
            cpus: vCPUs (TCG); 1 boots fastest.
            memory_mb: guest RAM.
            hostroot: share the host's root read-only for :meth:`VM.chroot_run`.
            boot_timeout_s: how long the guest may take to come up.
            hard_timeout_s: QEMU is killed after this long, whatever happens.
            spec: a different initramfs content (e.g. more binaries); built and cached.
            extra_qemu_args: appended to QEMU's command line.
            extra_kernel_args: appended to the kernel command line.

        Returns:
            An unstarted :class:`VM`.

        Raises:
            LabUnavailable: ``spec`` cannot be built on this host.
        """
        artifacts = self._artifacts(spec) if spec is not None else self.artifacts
        config = VMConfig(
            usb=tuple(usb),
            forwards=forwards_from(forwards),
            cpus=cpus,
            memory_mb=memory_mb,
            hostroot=hostroot,
            boot_timeout_s=boot_timeout_s,
            hard_timeout_s=hard_timeout_s,
            extra_qemu_args=tuple(extra_qemu_args),
            extra_kernel_args=tuple(extra_kernel_args),
        )
        machine = VM(config, artifacts, self.chroot)
        with _REGISTRY_LOCK:
            _REGISTRY.append(machine)
        return machine

    def _artifacts(self, spec: InitramfsSpec) -> BootArtifacts:
        with self._lock:
            if spec not in self._specs:
                self._specs[spec] = build(spec)
            return self._specs[spec]


def vm_mark() -> int:
    """A mark for :func:`vms_to_report`: how many VMs this process has created so far."""
    with _REGISTRY_LOCK:
        return len(_REGISTRY)


def vms_to_report(mark: int) -> list[VM]:
    """The VMs a test may have used: created after ``mark``, or still running (fixtures)."""
    with _REGISTRY_LOCK:
        return [m for i, m in enumerate(_REGISTRY) if i >= mark or m.alive]


def default_chroot(repo: Path = REPO) -> ChrootSetup:
    """Chroot settings for this checkout: its ``.venv`` Python if there is one.

    Paths under ``/tmp`` (a CI checkout or a venv there) are kept visible in the chroot,
    whose ``/tmp`` is otherwise a fresh tmpfs.
    """
    venv_python = repo / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    candidates = {str(repo), str(Path(python).parent.parent), str(Path(sys.prefix))}
    keep = tuple(sorted(path for path in candidates if path.startswith("/tmp/")))
    return ChrootSetup(repo=repo, python=python, keep=keep)
