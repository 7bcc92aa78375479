"""Import a remote device into the local Linux kernel through vhci-hcd's sysfs files.

Everything the ``usbip`` tool does on attach, detach and port, in the same files and formats
(so ``usbip port`` shows what ``usbwire attach`` did and the other way round): pick a free
port of the right root hub, hand the connected socket to the kernel, record the remote end
in ``/var/run/vhci_hcd/port<N>``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import selectors
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from usbwire.client.handshake import connect, import_socket
from usbwire.client.session import SessionRelay, import_resumable
from usbwire.errors import UsbwireError
from usbwire.protocol.constants import DEFAULT_PORT, Speed
from usbwire.protocol.pdu import DeviceInfo

__all__ = ["Vhci", "VhciError", "attach", "import_socket", "relay", "start_relay"]
from usbwire.sysfs import write as write_attribute

SYSFS = Path("/sys")
STATE_DIR = Path("/var/run/vhci_hcd")

PORT_FREE, PORT_NOT_ASSIGNED, PORT_USED, PORT_ERROR = 4, 5, 6, 7


class VhciError(UsbwireError):
    """The local vhci-hcd cannot do what was asked."""


@dataclass(frozen=True, slots=True)
class Port:
    """One line of vhci's ``status`` file."""

    hub: str
    number: int
    status: int
    speed: int
    devid: int
    sockfd: int
    local_busid: str

    @property
    def in_use(self) -> bool:
        return self.status in (PORT_NOT_ASSIGNED, PORT_USED, PORT_ERROR)


@dataclass(frozen=True, slots=True)
class Imported:
    """A port in use, with what ``usbip attach`` recorded about its remote end."""

    port: Port
    host: str | None
    tcp_port: str | None
    remote_busid: str | None


class Vhci:
    """The vhci-hcd controllers of this machine (or of a sysfs tree given for tests)."""

    def __init__(self, sysfs: Path = SYSFS, state_dir: Path = STATE_DIR) -> None:
        self.sysfs = sysfs
        self.state_dir = state_dir
        self.root = sysfs / "devices/platform/vhci_hcd.0"

    def check(self) -> None:
        if not (self.root / "attach").exists():
            raise VhciError("vhci_hcd is not loaded (modprobe vhci-hcd)")

    def ports(self) -> list[Port]:
        self.check()
        ports = []
        for status_file in sorted(self.root.glob("status*"), key=_status_order):
            for line in status_file.read_text().splitlines()[1:]:
                ports.append(_parse_port(line))
        return ports

    def free_port(self, speed: Speed) -> list[Port]:
        """Free ports of the root hub that suits ``speed``, in the order usbip tries them."""
        hub = "ss" if speed >= Speed.SUPER else "hs"
        return [p for p in self.ports() if p.hub == hub and p.status == PORT_FREE]

    def attach(self, sock: socket.socket, device: DeviceInfo) -> int:
        """Hand ``sock`` (connected, past OP_REP_IMPORT) to the kernel; returns the port."""
        speed = device.speed
        if not Speed.LOW <= speed <= Speed.SUPER_PLUS:
            raise VhciError(f"the server reports speed {int(speed)}, which vhci cannot attach")
        candidates = self.free_port(speed)
        if not candidates:
            hub = "SuperSpeed" if speed >= Speed.SUPER else "high-speed"
            raise VhciError(f"no free {hub} vhci port")
        for port in candidates:
            message = f"{port.number} {sock.fileno()} {device.devid} {int(speed)}"
            try:
                write_attribute(self.root / "attach", message)
            except OSError as error:
                if error.errno == errno.EBUSY:
                    continue  # taken by another attach meanwhile: try the next one
                raise _sysfs_error(error, "attach") from None
            return port.number
        raise VhciError("every free vhci port was taken while attaching")

    def record(self, port: int, host: str, tcp_port: int, busid: str) -> None:
        """Write the state file ``usbip port`` reads, exactly as ``usbip attach`` does."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.state_dir / f"port{port}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(fd, "w") as state:
            state.write(f"{host} {tcp_port} {busid}\n")

    def detach(self, port: int) -> bool:
        """Detach ``port``; returns False if it was already free."""
        ports = {p.number: p for p in self.ports()}
        if port not in ports:
            raise VhciError(f"invalid port {port} (this machine has ports 0-{len(ports) - 1})")
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / f"port{port}").unlink()
        with contextlib.suppress(OSError):
            self.state_dir.rmdir()
        if not ports[port].in_use:
            return False
        try:
            write_attribute(self.root / "detach", str(port))
        except OSError as error:
            raise _sysfs_error(error, "detach") from None
        return True

    def imported(self) -> list[Imported]:
        result = []
        for port in self.ports():
            if port.status not in (PORT_USED, PORT_ERROR):
                continue
            host = tcp_port = busid = None
            with contextlib.suppress(OSError, ValueError):
                host, tcp_port, busid = (self.state_dir / f"port{port.number}").read_text().split()
            result.append(Imported(port, host, tcp_port, busid))
        return result

    def local_device(self, busid: str) -> dict[str, str]:
        """idVendor, idProduct and speed of the virtual device the kernel created."""
        base = self.sysfs / "bus/usb/devices" / busid
        values = {}
        for name in ("idVendor", "idProduct", "speed"):
            with contextlib.suppress(OSError):
                values[name] = (base / name).read_text().strip()
        return values

    def local_speed(self, busid: str) -> Speed:
        return Speed.from_sysfs(self.local_device(busid).get("speed", ""))


def _status_order(path: Path) -> int:
    suffix = path.name.partition(".")[2]
    return int(suffix) if suffix.isdigit() else 0


def _parse_port(line: str) -> Port:
    fields = line.split()
    if len(fields) < 7:
        raise VhciError(f"unexpected vhci status line {line!r}")
    hub, number, status, speed, devid, sockfd, busid = fields[:7]
    return Port(hub, int(number), int(status), int(speed), int(devid, 16), int(sockfd), busid)


def _sysfs_error(error: OSError, what: str) -> VhciError:
    if error.errno in (errno.EACCES, errno.EPERM):
        return VhciError(f"{what} needs root (permission denied on vhci's sysfs files)")
    return VhciError(f"vhci {what} failed: {os.strerror(error.errno or 0)}")


def attach(
    host: str,
    busid: str,
    tcp_port: int = DEFAULT_PORT,
    vhci: Vhci | None = None,
    tls: ssl.SSLContext | None = None,
    token: str | None = None,
    resume: bool = False,
    on_session_state: Callable[[int, str, str], None] | None = None,
    recorded_busid: str | None = None,
) -> int:
    """``usbip attach`` in Python: returns the vhci port the device is on.

    With ``tls``, or with ``resume`` when the server grants a resumable session, the kernel gets
    one end of a socketpair and a relay process (which outlives this call, and ends when the
    port is detached or the server is gone for good) carries the URB stream: vhci only takes a
    plain socket, and only the relay can keep it open across a broken connection.
    ``on_session_state(port, state, detail)`` hears, in the relay process, when a session is
    being resumed and when it was. ``recorded_busid`` is what ``usbip port`` shows instead of
    ``busid``: a fleet's IMPORT busid carries its claim token, which has no place there.
    """
    vhci = vhci or Vhci()
    vhci.check()
    if os.geteuid() != 0:
        raise VhciError("attaching a device needs root")
    if resume:
        sock, device, ticket = import_resumable(host, busid, tcp_port, tls=tls, token=token)
    else:
        (sock, device), ticket = import_socket(host, busid, tcp_port, tls=tls, token=token), None
    if tls is None and ticket is None:
        try:
            port = vhci.attach(sock, device)
        finally:
            # The kernel holds its own reference now; close ours, never shut it down.
            sock.close()
    else:
        kernel_end, relay_end = socket.socketpair()
        try:
            port = vhci.attach(kernel_end, device)
        except BaseException:
            relay_end.close()
            sock.close()
            raise
        finally:
            kernel_end.close()
        if ticket is None:
            start_relay(functools.partial(relay, sock, relay_end), sock, relay_end)
        else:
            reconnect = functools.partial(connect, host, tcp_port, tls=tls, token=token)
            relay_state = functools.partial(on_session_state, port) if on_session_state else lambda *_: None
            session_relay = SessionRelay(sock, relay_end, ticket, reconnect, on_state=relay_state)
            start_relay(session_relay.run, sock, relay_end)
    vhci.record(port, host, tcp_port, recorded_busid or busid)
    return port


def start_relay(run: Callable[[], None], *sockets: socket.socket) -> int:
    """Fork a process that runs ``run`` (a relay over ``sockets``, closed here); returns its pid."""
    pid = os.fork()
    if pid:
        for sock in sockets:
            sock.close()
        return pid
    # The child: detached from the terminal, so it outlives `usbwire attach`.
    try:
        os.setsid()
        for signum in (signal.SIGINT, signal.SIGTERM):
            # `attach --persist` catches these to detach; the relay just ends (the port with it).
            signal.signal(signum, signal.SIG_DFL)
        run()
    finally:
        os._exit(0)


def relay(network: socket.socket, local: socket.socket) -> None:
    """Copy until one side ends; a TLS socket's already-decrypted bytes go first."""
    selector = selectors.DefaultSelector()
    selector.register(network, selectors.EVENT_READ, local)
    selector.register(local, selectors.EVENT_READ, network)
    try:
        while True:
            pending = network.pending() if isinstance(network, ssl.SSLSocket) else 0
            ready = [(network, local)] if pending else [(k.fileobj, k.data) for k, _ in selector.select()]
            for source, target in ready:
                assert isinstance(source, socket.socket)
                data = source.recv(max(pending, 262144))
                if not data:
                    return
                target.sendall(data)
    except OSError:
        return
    finally:
        selector.close()
        network.close()
        local.close()
