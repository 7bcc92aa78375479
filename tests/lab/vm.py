"""Host side: one throwaway QEMU/TCG guest running Debian's kernel, driven like a shell.

```python
with lab.vm(usb=[storage(img)], forwards={0: 3240}) as vm:
    vm.run("usbip bind -b 1-1", check=True)
    port = vm.host_port(3240)
    vm.chroot_run("python3 -m usbwire --help")   # the host's Python on the guest kernel
    vm.unplug("usbdev0"); vm.plug("usbdev0")     # QEMU monitor (QMP)
```

Commands are shell text run by busybox ``sh`` in the guest (or by the host's ``/bin/sh``
in the chroot of the host's root). Every command has a timeout after which it is killed,
and the whole VM has a hard timeout after which QEMU is killed, so a hang fails a test
instead of stalling CI. Errors carry the guest's kernel log.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from .control import ControlChannel
from .errors import BootTimeout, CommandFailed, CommandTimeout, GuestError, LabError, LabWarning, VMDied
from .initramfs import BootArtifacts
from .qmp import Qmp, QmpError
from .usbdevices import UsbDevice

GUEST_IP = "10.0.2.15"
HOST_FROM_GUEST = "10.0.2.2"  # QEMU user networking maps this to the host's 127.0.0.1
BOOT_ATTEMPTS = 2  # a guest that hangs while booting is booted once more (VM.start)

# Kernel arguments. The i8042 ones skip probing a PS/2 controller nobody uses (slow
# under TCG); mitigations cost a lot in an emulated CPU and protect nothing here.
_KERNEL_ARGS = (
    "console=ttyS0",
    "panic=-1",  # a panic reboots, and -no-reboot turns that into QEMU exiting
    "mitigations=off",
    "i8042.noaux",
    "i8042.nokbd",
    "i8042.nopnp",
    "random.trust_cpu=on",
    "tsc=reliable",
)


@dataclass(frozen=True, slots=True)
class Result:
    """What a guest command did. ``out``/``err`` are decoded as UTF-8 (with replacement)."""

    command: str
    out: str
    err: str
    code: int

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.code == 0

    def describe(self) -> str:
        """A multi-line summary for assertion messages."""
        return (
            f"$ {self.command}\n[exit {self.code}]\n"
            f"--- stdout ---\n{self.out.rstrip()}\n--- stderr ---\n{self.err.rstrip()}"
        )


@dataclass(frozen=True, slots=True)
class ChrootSetup:
    """How the chroot into the host's root is prepared for ``VM.chroot_run``.

    ``keep`` lists host paths under ``/tmp`` that must stay visible although the chroot's
    ``/tmp`` is a tmpfs (a checkout or virtualenv living there).
    """

    repo: Path
    python: str
    keep: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class VMConfig:
    """Everything that makes one VM different from another."""

    usb: tuple[UsbDevice, ...] = ()
    forwards: tuple[tuple[int, int], ...] = ()  # (host port or 0 for any free one, guest port)
    cpus: int = 1
    memory_mb: int = 1024
    hostroot: bool = True
    boot_timeout_s: float = 60.0
    hard_timeout_s: float = 120.0
    extra_qemu_args: tuple[str, ...] = ()
    extra_kernel_args: tuple[str, ...] = ()


@dataclass(slots=True)
class _Plugged:
    device: UsbDevice
    id: str
    port: int


@dataclass(slots=True)
class _Paths:
    scratch: Path
    console: Path = field(init=False)
    qemu_log: Path = field(init=False)
    dmesg: Path = field(init=False)
    commands: Path = field(init=False)

    def __post_init__(self) -> None:
        self.console = self.scratch / "console.log"
        self.qemu_log = self.scratch / "qemu.log"
        self.dmesg = self.scratch / "dmesg.txt"
        self.commands = self.scratch / "cmd"


class GuestCommand:
    """A command started in the guest; :meth:`wait` collects its :class:`Result`."""

    def __init__(self, vm: VM, command_id: int, command: str) -> None:
        self._vm = vm
        self.id = command_id
        self.command = command

    def wait(self, timeout_s: float = 30.0, *, check: bool = False) -> Result:
        """Wait for the command; kill it if ``timeout_s`` passes first.

        Raises:
            CommandTimeout: the command did not finish in time (it has been killed).
            VMDied: QEMU exited while we waited.
            CommandFailed: ``check`` is true and the exit status is not 0.
        """
        cpu_before = self._vm.cpu_seconds()
        code = self._vm._control().wait_done(self.id, timeout_s)
        if code is None:
            if not self._vm.alive:
                raise VMDied(
                    f"QEMU exited while running {self.command!r}: {self._vm.exit_reason()}",
                    self._vm.dmesg(),
                )
            # Who worked while we waited, and whether the agent ever started the command, tell
            # a guest busy elsewhere from a stalled one (idle vCPUs) and from a stalled host.
            spent = _cpu_spent(cpu_before, self._vm.cpu_seconds())
            started = "started" if self._file(".out").exists() else "never started by the agent"
            # Where it hangs, before the kill ends it: a command stuck on a disk or a journal
            # is in uninterruptible sleep, and its kernel stack names what it waits for.
            log, stacks = self._vm._log_and_blocked_tasks()
            self.kill()
            raise CommandTimeout(
                f"guest command timed out after {timeout_s:g} s ({started})\n{self._result(-9).describe()}"
                f"\n--- CPU seconds spent while waiting ---\n{spent}"
                f"\n--- guest tasks in uninterruptible sleep (sysrq w) ---\n{stacks or '(none)'}",
                log,
            )
        result = self._result(code)
        if check and not result.ok:
            raise CommandFailed(f"guest command failed\n{result.describe()}", self._vm.dmesg())
        return result

    @property
    def finished(self) -> bool:
        """Whether the command has exited (:meth:`wait` still collects its result)."""
        return self._vm._control().finished(self.id)

    def output_so_far(self) -> str:
        """What the command has written to stdout until now (it may still be running)."""
        return _read_text(self._file(".out"))

    def errors_so_far(self) -> str:
        """What the command has written to stderr until now."""
        return _read_text(self._file(".err"))

    def wait_for_output(self, text: str, timeout_s: float = 20.0) -> None:
        """Wait until stdout contains ``text``: e.g. a guest tool saying it is ready.

        Raises:
            GuestError: ``text`` did not appear within ``timeout_s`` (the command is killed).
        """
        deadline = time.monotonic() + timeout_s
        while text not in self.output_so_far():
            if time.monotonic() > deadline:
                self.kill()
                raise GuestError(
                    f"{text!r} did not appear in {timeout_s:g} s\n{self._result(-9).describe()}",
                    self._vm.dmesg(),
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the command's process group (no-op when it has already finished)."""
        if self._vm._control().send("kill", self.id):
            self._vm._control().wait_killed(self.id, 5.0)

    def _result(self, code: int) -> Result:
        return Result(self.command, _read_text(self._file(".out")), _read_text(self._file(".err")), code)

    def _file(self, suffix: str) -> Path:
        return self._vm.paths.commands / f"{self.id}{suffix}"


class VM:
    """One QEMU guest. Use it as a context manager: entering boots, leaving powers off."""

    def __init__(
        self,
        config: VMConfig,
        artifacts: BootArtifacts,
        chroot: ChrootSetup,
    ) -> None:
        self.config = config
        self.artifacts = artifacts
        self.chroot = chroot
        self.paths = _Paths(Path(tempfile.mkdtemp(prefix="usbwire-lab-", dir="/tmp")))
        self.release = ""
        self.boot_seconds = 0.0
        self.final_dmesg: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: ControlChannel | None = None
        self._qmp: Qmp | None = None
        self._watchdog: threading.Timer | None = None
        self._hard_killed = False
        self._hard_timeout_s = config.hard_timeout_s
        self._ids = itertools.count(1)
        self._forwards = _resolve_forwards(config.forwards)
        self._plugged = _assign_usb(config.usb)

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> VM:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> VM:
        """Boot the guest and wait for its agent.

        Raises:
            BootTimeout: the agent did not report ready within ``boot_timeout_s``, on each of
                ``BOOT_ATTEMPTS`` boots.
            VMDied: QEMU exited during boot (bad arguments, panic, failed init step).
        """
        began = time.monotonic()
        self.paths.commands.mkdir()
        self._write_lab_conf()
        try:
            for attempt in range(1, BOOT_ATTEMPTS + 1):
                self._spawn()
                try:
                    self._await_ready()
                    break
                except BootTimeout:
                    if attempt == BOOT_ATTEMPTS:
                        raise
                    # Rarely, the TCG guest's kernel stops early, before anything of ours runs
                    # in it (once in CI so far, after "sched_clock: Marking stable", among some
                    # 200 boots). No test is about that: boot afresh, and say so.
                    last = _read_text(self.paths.console).strip().rpartition("\n")[2]
                    hung = f"the guest hung while booting ({last!r}); booting it again"
                    warnings.warn(LabWarning(hung), stacklevel=2)
                    self._stop(graceful=False)
        except BaseException:
            self.close()
            raise
        self.boot_seconds = time.monotonic() - began
        return self

    def close(self) -> None:
        """Power the guest off (killing QEMU if it does not comply) and clean up."""
        self._stop(graceful=True)
        if self.final_dmesg is None:
            self.final_dmesg = self._saved_log()
        if not os.environ.get("USBWIRE_LAB_KEEP"):
            shutil.rmtree(self.paths.scratch, ignore_errors=True)

    def _stop(self, *, graceful: bool) -> None:
        """End QEMU: asked to power off first if ``graceful`` (the agent saves dmesg), else killed."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if graceful and self._channel is not None and self._channel.send("poweroff"):
                _wait_exit(proc, 15.0)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self._watchdog is not None:
            self._watchdog.cancel()
        for channel in (self._channel, self._qmp):
            if channel is not None:
                channel.close()

    @property
    def alive(self) -> bool:
        """True while QEMU runs and the agent channel is open."""
        return (
            self._proc is not None
            and self._proc.poll() is None
            and self._channel is not None
            and not self._channel.closed
        )

    def exit_reason(self) -> str:
        """Why QEMU is gone, for error messages."""
        if self._hard_killed:
            return f"killed by the VM's hard timeout ({self._hard_timeout_s:g} s)"
        code = None if self._proc is None else self._proc.poll()
        qemu_log = _read_text(self.paths.qemu_log).strip()
        return f"exit status {code}" + (f"; qemu said: {qemu_log[-500:]}" if qemu_log else "")

    # -- commands ----------------------------------------------------------------------

    def run(self, command: str, timeout_s: float = 30.0, *, check: bool = False) -> Result:
        """Run shell text with busybox ``sh`` in the guest (cwd ``/``, stdin empty).

        Raises:
            CommandTimeout: the command did not finish in time (it has been killed).
            VMDied: QEMU exited while the command ran.
            CommandFailed: ``check`` is true and the exit status is not 0.
        """
        return self.start_command(command).wait(timeout_s, check=check)

    def start_command(self, command: str) -> GuestCommand:
        """Start shell text in the guest without waiting; see :meth:`GuestCommand.wait`.

        Raises:
            VMDied: the guest is not running.
        """
        return self._submit(command, command)

    def chroot_run(self, command: str, timeout_s: float = 60.0, *, check: bool = False) -> Result:
        """Run shell text with the host's ``/bin/sh`` inside the chroot of the host's root.

        The command starts in the repository root, with ``python3`` on ``PATH`` being the
        interpreter chosen for the lab (the repo's ``.venv`` if any) and ``<repo>/src`` on
        ``PYTHONPATH``; it runs on the guest kernel, so it sees the guest's USB devices.

        Raises:
            LabError: the VM was started with ``hostroot=False``.
            CommandTimeout: the command did not finish in time (it has been killed).
            VMDied: QEMU exited while the command ran.
            CommandFailed: ``check`` is true and the exit status is not 0.
        """
        return self.start_chroot_command(command).wait(timeout_s, check=check)

    def start_chroot_command(self, command: str) -> GuestCommand:
        """Start :meth:`chroot_run` text without waiting.

        Raises:
            LabError: the VM was started with ``hostroot=False``.
            VMDied: the guest is not running.
        """
        if not self.config.hostroot:
            raise LabError("chroot_run needs a VM started with hostroot=True")
        command_id = next(self._ids)
        inner = self.paths.commands / f"{command_id}.chroot.sh"
        inner.write_text(f"cd {shlex.quote(str(self.chroot.repo))} || exit 125\n{command}\n")
        env = " ".join(f"{key}={shlex.quote(value)}" for key, value in self._chroot_env())
        return self._submit(
            f"exec chroot /host /usr/bin/env -i {env} /bin/sh {shlex.quote(str(inner))}",
            command,
            command_id,
        )

    @property
    def python(self) -> str:
        """The interpreter ``python3`` means in :meth:`chroot_run`."""
        return self.chroot.python

    # -- USB and the monitor -------------------------------------------------------------

    def find_usb(self, vid: int, pid: int) -> list[str]:
        """Busids of the guest's USB devices with these ids (any bus, vhci included).

        Raises:
            GuestError: the guest command failed.
        """
        script = _FIND_USB.format(ids=f"{vid:04x}:{pid:04x}")
        return self.run(script, 10.0, check=True).out.split()

    def wait_for_usb(self, vid: int, pid: int, timeout_s: float = 20.0, *, present: bool = True) -> str:
        """Wait until a device with these ids is (or, ``present=False``, is no longer) there.

        Returns:
            The device's busid (e.g. ``"1-1"``), or ``""`` when waiting for removal.

        Raises:
            GuestError: the state was not reached within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.find_usb(vid, pid)
            if bool(found) == present:
                return found[0] if found else ""
            if time.monotonic() > deadline:
                state = "appear" if present else "go away"
                raise GuestError(
                    f"USB device {vid:04x}:{pid:04x} did not {state} in {timeout_s:.0f} s",
                    self.dmesg(),
                )
            time.sleep(0.2)

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command (``device_del``, ``query-usb``...) and return its result.

        Raises:
            QmpError: QEMU refused the command.
        """
        return self._monitor().execute(command, **arguments)

    def monitor(self, command_line: str) -> str:
        """Run a human monitor (HMP) command, e.g. ``info usb``, and return its output.

        Raises:
            QmpError: QEMU refused the command.
        """
        return self._monitor().hmp(command_line)

    def unplug(self, device_id: str, timeout_s: float = 10.0) -> None:
        """Hot-unplug a USB device (``device_del``) and wait until QEMU has removed it.

        Raises:
            QmpError: unknown id, or QEMU did not confirm in time.
        """
        self.qmp("device_del", id=device_id)
        self._monitor().wait_event(
            "DEVICE_DELETED",
            timeout_s,
            lambda event: event.get("data", {}).get("device") == device_id,
        )

    def plug(self, device_id: str) -> None:
        """Plug a device from this VM's ``usb=`` list back in, on its original port.

        Raises:
            QmpError: unknown id, or QEMU refused the device.
        """
        plugged = next((p for p in self._plugged if p.id == device_id), None)
        if plugged is None:
            raise QmpError(f"{device_id} is not one of this VM's USB devices")
        output = self.monitor(f"device_add {plugged.device.device_arg(plugged.id, plugged.port)}")
        if output.strip():  # HMP reports errors as text, not as a QMP error
            raise QmpError(f"device_add {device_id}: {output.strip()}")

    # -- network -------------------------------------------------------------------------

    def host_port(self, guest_port: int) -> int:
        """The host port (on 127.0.0.1) forwarded to ``guest_port``.

        Raises:
            KeyError: no forward to that guest port was configured.
        """
        for host, guest in self._forwards:
            if guest == guest_port:
                return host
        raise KeyError(f"no host port forwards to guest port {guest_port}")

    # -- logs ----------------------------------------------------------------------------

    def dmesg(self) -> str:
        """The guest's kernel log: live while the guest runs, else as saved at power-off."""
        if self.alive:
            with contextlib.suppress(LabError):
                command = self._submit("dmesg", "dmesg")
                code = self._control().wait_done(command.id, 10.0)
                if code == 0:
                    return command.output_so_far()
        return self.final_dmesg if self.final_dmesg is not None else self._saved_log()

    def blocked_tasks(self) -> str:
        """The kernel's report of the guest's tasks in uninterruptible sleep, with their stacks
        (sysrq w): its heading alone when none is stuck, empty if the guest cannot be asked."""
        return self._log_and_blocked_tasks()[1]

    def _log_and_blocked_tasks(self) -> tuple[str, str]:
        """The kernel log before a fresh sysrq w report, and the report: read once, and each
        shown once by a caller that shows both."""
        if not self.alive:
            return self.dmesg(), ""
        with contextlib.suppress(LabError):
            command = self._submit("echo w >/proc/sysrq-trigger", "sysrq w")
            self._control().wait_done(command.id, 10.0)
        lines = self.dmesg().splitlines()
        # The newest report starts with this line; only tasks in D state follow it.
        starts = [i for i, line in enumerate(lines) if "Show Blocked State" in line]
        start = starts[-1] if starts else len(lines)
        return "\n".join(lines[:start]), "\n".join(lines[start:])

    def dmesg_since_ready(self) -> str:
        """The kernel log from the moment the guest was ready: what the test itself caused.

        Boot messages are dropped (a note says how many) since they are the same every time.
        """
        ready = 0.0 if self._channel is None else self._channel.ready_uptime_s
        lines = self.dmesg().splitlines()
        first = next((i for i, line in enumerate(lines) if _kernel_time(line) >= ready), len(lines))
        note = [f"({first} boot lines before t={ready:.2f} s omitted)"] if first else []
        return "\n".join(note + lines[first:])

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each thread of QEMU (``CPU 0/TCG``... are the vCPUs) and
        of this process (the tests' servers and relays), by thread name; and the host's idle
        time, for a diagnosis of waits that time out."""
        seconds = _thread_cpu_seconds(os.getpid(), "tests: ")
        if self._proc is not None:
            seconds.update(_thread_cpu_seconds(self._proc.pid, "qemu: "))
        with contextlib.suppress(OSError, ValueError, IndexError):
            cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()
            seconds["host idle (all cores)"] = int(cpu[4]) / _CLOCK_TICKS
        return seconds

    # -- internals -----------------------------------------------------------------------

    def _submit(self, script: str, shown: str, command_id: int | None = None) -> GuestCommand:
        if not self.alive:
            raise VMDied(f"cannot run {shown!r}: {self.exit_reason()}", self.dmesg())
        command_id = next(self._ids) if command_id is None else command_id
        (self.paths.commands / f"{command_id}.sh").write_text(script + "\n")
        if not self._control().send("run", command_id):
            raise VMDied(f"cannot run {shown!r}: {self.exit_reason()}", self.dmesg())
        return GuestCommand(self, command_id, shown)

    def _control(self) -> ControlChannel:
        assert self._channel is not None, "VM not started"
        return self._channel

    def _monitor(self) -> Qmp:
        if self._qmp is None:
            raise QmpError("VM not started")
        return self._qmp

    def _chroot_env(self) -> list[tuple[str, str]]:
        venv_bin = str(Path(self.chroot.python).parent)
        path = f"/tmp/.lab-bin:{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return [
            ("PATH", path),
            ("HOME", "/tmp"),
            ("LANG", "C.UTF-8"),
            ("PYTHONPATH", str(self.chroot.repo / "src")),
            ("PYTHONDONTWRITEBYTECODE", "1"),
            ("PYTHONUNBUFFERED", "1"),
            ("LAB_SCRATCH", str(self.paths.scratch)),
            ("LAB_REPO", str(self.chroot.repo)),
            *self.chroot.env,
        ]

    def _write_lab_conf(self) -> None:
        keep = [p for p in self.chroot.keep if p != str(self.paths.scratch)]
        lines = [
            f"LAB_HOSTROOT={1 if self.config.hostroot else 0}",
            f"LAB_KEEP={shlex.quote(' '.join(keep))}",
            f"LAB_PYTHON={shlex.quote(self.chroot.python)}",
        ]
        (self.paths.scratch / "lab.conf").write_text("\n".join(lines) + "\n")

    def _spawn(self) -> None:
        # QEMU connects to sockets we already listen on, so nothing it says is lost and
        # a QEMU that dies at startup is noticed by accept() rather than by a timeout.
        listeners = {name: _listen(self.paths.scratch / f"{name}.sock") for name in ("ctl", "qmp")}
        argv = self._qemu_argv()
        with self.paths.qemu_log.open("wb") as log:
            self._proc = subprocess.Popen(
                _die_with_parent(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.set_hard_timeout(self.config.hard_timeout_s)
        try:
            ctl = _accept(listeners["ctl"], self._proc, 20.0)
            qmp = _accept(listeners["qmp"], self._proc, 20.0)
        finally:
            for listener in listeners.values():
                listener.close()
        if ctl is None or qmp is None:
            raise VMDied(f"QEMU did not start: {self.exit_reason()}\n$ {shlex.join(argv)}")
        self._channel = ControlChannel(ctl)
        self._qmp = Qmp(qmp)

    def _await_ready(self) -> None:
        release = self._control().wait_ready(self.config.boot_timeout_s)
        if release is not None:
            self.release = release
            return
        if self._proc is not None and self._proc.poll() is not None:
            raise VMDied(f"the guest died during boot: {self.exit_reason()}", self._saved_log())
        raise BootTimeout(
            f"the guest agent was not ready within {self.config.boot_timeout_s:.0f} s",
            self._saved_log(),
        )

    def set_hard_timeout(self, timeout_s: float) -> None:
        """Kill QEMU ``timeout_s`` from now (replacing the current deadline).

        For scenarios that knowingly run longer than ``hard_timeout_s``, and for tests.
        """
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._hard_timeout_s = timeout_s
        self._watchdog = threading.Timer(timeout_s, self._hard_kill)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _hard_kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._hard_killed = True
            self._proc.send_signal(signal.SIGKILL)

    def _saved_log(self) -> str:
        """dmesg as the agent saved it at power-off, else the serial console log."""
        saved = _read_text(self.paths.dmesg)
        return saved if saved else _read_text(self.paths.console)

    def _qemu_argv(self) -> list[str]:
        config = self.config
        scratch = str(self.paths.scratch)
        kernel_args = [*_KERNEL_ARGS, f"lab.scratch={scratch}", *config.extra_kernel_args]
        hostfwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in self._forwards)
        usb_ports = max(4, max((p.port for p in self._plugged), default=0))
        argv = [
            qemu_binary(),
            "-accel", "tcg",  # KVM guests hang on the project's machines (vm-lab.md)
            "-name", "usbwire-lab,debug-threads=on",  # vCPU threads named: see cpu_seconds()
            "-machine", "q35",
            "-cpu", "max",  # lets the host's Python/wheels use whatever ISA they were built for
            "-smp", str(config.cpus),
            "-m", str(config.memory_mb),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(self.artifacts.kernel),
            "-initrd", str(self.artifacts.initramfs),
            "-append", " ".join(kernel_args),
            "-chardev", f"file,id=console,path={self.paths.console}",
            "-serial", "chardev:console",  # ttyS0: kernel console
            "-chardev", f"socket,id=ctl,path={self.paths.scratch / 'ctl.sock'}",
            "-serial", "chardev:ctl",  # ttyS1: the agent's control channel
            "-chardev", f"socket,id=qmp,path={self.paths.scratch / 'qmp.sock'}",
            "-mon", "chardev=qmp,mode=control",
            "-netdev", f"user,id=net0{hostfwd}",
            "-device", "virtio-net-pci,netdev=net0,romfile=",  # no iPXE ROM: we never netboot
            "-fsdev", f"local,id=scratch,path={scratch},security_model=none",
            "-device", "virtio-9p-pci,fsdev=scratch,mount_tag=scratch",
            "-device", f"qemu-xhci,id=xhci,p2={usb_ports},p3={usb_ports}",
        ]  # fmt: skip
        if config.hostroot:
            argv += [
                "-fsdev",
                "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device",
                "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
            ]
        for plugged in self._plugged:
            argv += plugged.device.backend_args(plugged.id)
            argv += ["-device", plugged.device.device_arg(plugged.id, plugged.port)]
        return argv + list(config.extra_qemu_args)


# Shell builtins only: with 18 vhci root hubs, two `cat`s per device were some 80 processes,
# the likely reason one search took over 10 s on a TCG guest busy starting a Python client.
_FIND_USB = """\
for d in /sys/bus/usb/devices/*; do
    [ -f "$d/idVendor" ] || continue
    read -r vendor < "$d/idVendor" && read -r product < "$d/idProduct" || continue
    [ "$vendor:$product" = "{ids}" ] && echo "${{d##*/}}"
done
true
"""


def qemu_binary() -> str:
    """``$USBWIRE_LAB_QEMU`` if set (another QEMU build), else Debian's ``qemu-system-x86_64``."""
    return os.environ.get("USBWIRE_LAB_QEMU") or "qemu-system-x86_64"


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers and forwards)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent(argv: list[str]) -> list[str]:
    """Make QEMU get SIGKILL if the thread that started it dies (e.g. pytest is killed).

    The watchdog thread lives in our process, so without this a killed test run would
    leave guests running. util-linux's setpriv sets the signal and execs QEMU.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *argv] if setpriv else argv


def _resolve_forwards(forwards: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(host or free_tcp_port(), guest) for host, guest in forwards]


def _assign_usb(devices: Sequence[UsbDevice]) -> list[_Plugged]:
    plugged = []
    taken = {d.port for d in devices if d.port is not None}
    free_ports = (port for port in itertools.count(1) if port not in taken)
    for index, device in enumerate(devices):
        port = device.port if device.port is not None else next(free_ports)
        plugged.append(_Plugged(device, device.id or f"usbdev{index}", port))
    ids = [p.id for p in plugged]
    if len(set(ids)) != len(ids):
        raise LabError(f"duplicate USB device ids: {ids}")
    return plugged


def forwards_from(mapping: Mapping[int, int] | Sequence[int] | None) -> tuple[tuple[int, int], ...]:
    """Normalise ``forwards=``: ``{host: guest}`` (host 0 = pick a free port) or ``[guest]``."""
    if mapping is None:
        return ()
    if isinstance(mapping, Mapping):
        return tuple((int(host), int(guest)) for host, guest in mapping.items())
    return tuple((0, int(guest)) for guest in mapping)


def _listen(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink(missing_ok=True)  # left by the boot before, when a hung one is retried
    listener.bind(str(path))
    listener.listen(1)
    return listener


def _accept(listener: socket.socket, proc: subprocess.Popen[bytes], timeout_s: float) -> socket.socket | None:
    deadline = time.monotonic() + timeout_s
    listener.settimeout(0.1)
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        return conn
    return None


def _wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout_s)


def _kernel_time(line: str) -> float:
    """The printk timestamp of a kernel log line; -1 for lines without one."""
    if not line.startswith("["):
        return -1.0
    try:
        return float(line[1:].split("]", 1)[0])
    except ValueError:
        return -1.0


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _thread_cpu_seconds(pid: int, prefix: str) -> dict[str, float]:
    """utime + stime of each thread of ``pid``, summed by thread name."""
    seconds: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                # The name is in parentheses and may hold spaces: the fields follow the last ")".
                stat = (task / "stat").read_text()
                name = stat[stat.index("(") + 1 : stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2 :].split()
                used = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
                seconds[prefix + name] = seconds.get(prefix + name, 0.0) + used
    return seconds


def _cpu_spent(before: Mapping[str, float], after: Mapping[str, float]) -> str:
    """What :meth:`VM.cpu_seconds` grew by between two readings, busiest first."""
    spent = {name: used - before.get(name, 0.0) for name, used in after.items()}
    busiest = sorted(spent.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {used:.1f}" for name, used in busiest if used >= 0.05) or "(none)"
