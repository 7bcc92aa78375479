"""``usbwire serve``: a server, its control socket and its exports, until a signal stops it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from usbwire import demo, discovery, tls
from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.cdc import Serial
from usbwire.devices.cdc.pty import PtyBridge
from usbwire.devices.msc import MassStorage
from usbwire.devices.uac import Headset, ToneSource, WavSource, open_sink
from usbwire.devices.uvc import Webcam, WebcamConfig
from usbwire.errors import UsbwireError
from usbwire.exports import RESCAN_INTERVAL_S, ExportRules, RealDevices
from usbwire.protocol.constants import DEFAULT_PORT
from usbwire.server import metrics
from usbwire.server.access import AccessPolicy
from usbwire.server.control import DEFAULT_CONTROL_PATH, ControlServer
from usbwire.server.server import Limits, Server

if TYPE_CHECKING:
    from usbwire.fleet.member import FleetOptions

log = logging.getLogger("usbwire")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AudioOptions:
    """The emulated headset: a test tone or a WAV file for its microphone, a file for its speaker."""

    mic_tone: int | None = None
    mic_wav: str | None = None
    speaker_out: str | None = None

    DEFAULT_TONE = 1000

    def device(self) -> Headset:
        if self.mic_tone is not None and self.mic_wav is not None:
            raise UsbwireError("the microphone plays either a tone or a WAV file, not both")
        mic = WavSource(self.mic_wav) if self.mic_wav else ToneSource(self.mic_tone or self.DEFAULT_TONE)
        if self.speaker_out is None:
            log.info("headset: what the client plays to the speaker is discarded (--speaker-out PATH keeps it)")
        return Headset(mic=mic, speaker=open_sink(self.speaker_out) if self.speaker_out else None)


@dataclass(frozen=True, slots=True)
class DiskOptions:
    """A disk image (or block device) to export as an emulated USB disk."""

    image: str
    read_only: bool = False

    def device(self) -> MassStorage:
        try:
            return MassStorage(self.image, read_only=self.read_only)
        except FileNotFoundError:
            raise UsbwireError(f"{self.image}: no such disk image (make one: truncate -s 1G {self.image})") from None
        except ValueError as error:
            raise UsbwireError(str(error)) from None


@dataclass(frozen=True, slots=True)
class ServeOptions:
    hosts: Sequence[str] | None = None
    port: int = DEFAULT_PORT
    control_path: str | None = DEFAULT_CONTROL_PATH
    demo: bool = False
    # Real devices to share (busids, VID:PIDs or "all") and how.
    exports: tuple[str, ...] = ()
    backend: str = "libusb"
    # Seconds between looks for real devices plugged in or out.
    rescan_interval: float = RESCAN_INTERVAL_S
    # TLS: certificate and key of the server, and the CA whose clients it accepts (mTLS).
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    # Who may see and import what (see usbwire.server.access), and the user to run as.
    policy: AccessPolicy = field(default_factory=AccessPolicy)
    user: str | None = None
    limits: Limits = field(default_factory=Limits)
    # Emulated devices served besides the demo set or the real devices.
    audio: AudioOptions | None = None
    # An emulated webcam to export besides everything else (at the next free busid).
    webcam: WebcamConfig | None = None
    # Disk images exported as USB disks (after everything else, in order). Devices of their
    # own: with disks and no real devices, the demo set is served only if asked for.
    disks: tuple[DiskOptions, ...] = ()
    # Announce the server on the local network under this name ("": the host name; None: not
    # at all), for usbwire.discovery.
    advertise: str | None = None
    # Serve Prometheus metrics at http://HOST:PORT/metrics (see usbwire.server.metrics).
    metrics: tuple[str, int] | None = None
    # Register in a fleet (etcd) and import devices only under its claims.
    fleet: FleetOptions | None = None


def run(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """``asyncio.run`` on the chosen event loop; ``auto`` takes uvloop when it is installed."""
    if loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise UsbwireError("uvloop is not installed (pip install 'usbwire[speed]')") from None
        else:
            return uvloop.run(main)
    return asyncio.run(main)


async def serve(options: ServeOptions, started: asyncio.Event | None = None) -> None:
    if (options.client_ca or options.tls_key) and not options.tls_cert:
        # Serving in the clear while the user believes client certificates are checked would
        # be worse than not starting.
        raise UsbwireError("a client CA or a TLS key needs TLS: give --tls-cert (and --tls-key) too")
    # Opened first, so a missing WAV file fails before anything is exported.
    headset = options.audio.device() if options.audio is not None else None
    # First, so a webcam that cannot be (a mode the link cannot carry, a bad image) stops the start.
    webcam = Webcam(options.webcam) if options.webcam is not None else None
    # Likewise a disk image that is missing, locked by another program or not a disk.
    disks = [disk.device() for disk in options.disks]
    advertised_name = None if options.advertise is None else options.advertise or socket.gethostname()
    if advertised_name is not None:
        discovery.check_name(advertised_name)
    if options.metrics is not None:
        metrics.ensure_installed()
    server = Server(limits=options.limits, policy=options.policy)
    # Before anything starts: a signal during the start then ends in the clean stop below
    # (goodbyes sent, images synced) once the start is done, instead of killing the process.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    rules = ExportRules.parse(options.exports)
    real = RealDevices(server.registry, rules, options.backend, options.rescan_interval) if rules else None
    if options.demo or not (rules or disks):
        if not options.demo:
            log.info("no devices configured: serving the demo devices")
        for export in demo.demo_exports():
            server.registry.add(export)
    if real is not None:
        await real.start()
    # After the real devices, so their busids are taken; the headset first, so with the demo
    # set it is 1-6 and the webcam 1-7 (or 1-6 alone) every time.
    if headset is not None:
        export = demo.export_device(server.registry, headset)
        log.info("headset (speaker and microphone) at busid %s", export.busid)
    if webcam is not None:
        export = demo.export_device(server.registry, webcam)
        log.info("webcam at %s: %s", export.busid, webcam.describe())
    for disk in disks:
        export = demo.export_device(server.registry, disk)
        assert disk.image is not None
        access = "read-only" if disk.image.read_only else "read-write"
        log.info("disk %s (%d MiB, %s) at %s", disk.image.path, disk.image.size >> 20, access, export.busid)
    context = None
    if options.tls_cert:
        context = tls.server_context(options.tls_cert, options.tls_key or options.tls_cert, options.client_ca)
        log.info("TLS 1.3%s", " with client certificates" if options.client_ca else "")
    await server.start(list(options.hosts) if options.hosts else None, options.port, ssl=context)
    from usbwire import __version__  # (the package imports this module before it defines that)

    endpoint = None
    if options.metrics is not None:
        endpoint = metrics.MetricsEndpoint(server, *options.metrics, version=__version__)
        await endpoint.start()
    advertiser = None
    if advertised_name is not None:
        advertiser = discovery.Advertiser(
            advertised_name, server.addresses, tls=context is not None, version=__version__
        )
        await advertiser.start()
    member = None
    if options.fleet is not None:
        from usbwire.fleet.member import FleetMember  # needs the optional etcd client

        member = FleetMember(server, options.fleet)
        await member.start()
    control = None
    if options.control_path:
        control = ControlServer(server, options.control_path)
        demo.add_export_command(control, server.registry)
        await control.start()
    if options.user:
        drop_privileges(options.user)
    bridges = [PtyBridge(device, name=busid) for busid, device in _serial_ports(server)]
    for bridge in bridges:
        bridge.start()
        log.info("serial port %s is bridged to %s", bridge.serial_name, bridge.path)
    if started is not None:
        started.set()
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        for bridge in bridges:
            bridge.close()
        if advertiser is not None:
            await advertiser.close()
        if endpoint is not None:
            await endpoint.close()
        if control is not None:
            await control.close()
        if member is not None:
            await member.aclose()
        await server.close()
        if real is not None:
            await real.close()
        for exported in server.registry:
            await exported.close()


def _serial_ports(server: Server) -> list[tuple[str, Serial]]:
    return [
        (export.busid, export.device)
        for export in server.registry
        if isinstance(export, EmulatedExport) and isinstance(export.device, Serial)
    ]


def drop_privileges(user: str) -> None:
    """After the sockets are bound, go on as ``user``: emulated devices need no root."""
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UsbwireError(f"no user {user!r}") from None
    if os.geteuid() != 0:
        raise UsbwireError("--user needs the server to start as root")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("running as %s", user)
