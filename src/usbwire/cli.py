"""The ``usbwire`` command: parses arguments, calls the library, prints. Nothing else."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from ssl import SSLContext
from typing import Any

import usbwire
from usbwire import (
    DEFAULT_CONTROL_PATH,
    DEFAULT_PORT,
    AudioOptions,
    DeviceInfo,
    DiskOptions,
    Limits,
    ServeOptions,
    UsbwireError,
)
from usbwire.addresses import host_port
from usbwire.config import port_number
from usbwire.discovery import Found, survey
from usbwire.exports import RESCAN_INTERVAL_S
from usbwire.server.metrics import parse_address as parse_metrics_address

PROG = "usbwire"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except UsbwireError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"{PROG}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _port_type(*, listening: bool) -> Callable[[str], int]:
    """An argparse type for a TCP port (0, any free port, only to listen on)."""

    def port(text: str) -> int:
        try:
            return port_number(text, listening=listening)
        except UsbwireError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return port


_listening_port = _port_type(listening=True)
_remote_port = _port_type(listening=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="USB devices shared over TCP/IP (USB/IP, Linux-compatible)."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {usbwire.__version__}")
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.set_defaults(verbose=0)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        parents=[verbose],
        help="export devices to USB/IP clients",
        description="Export devices to USB/IP clients (Linux usbip attach, usbipd-win, usbwire).",
    )
    serve.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="ADDR",
        help="address to listen on (repeatable; default: every IPv4 and IPv6 address)",
    )
    serve.add_argument(
        "--port", type=_listening_port, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any free one)"
    )
    serve.add_argument(
        "--demo", action="store_true", help="export the built-in demo devices (the default with no --export)"
    )
    serve.add_argument(
        "--export",
        action="append",
        default=[],
        metavar="BUSID|VID:PID|all",
        help="share real devices that match (repeatable); devices plugged in later are picked up",
    )
    serve.add_argument(
        "--backend",
        choices=["libusb", "usbip-host"],
        default="libusb",
        help="how real devices are shared: libusb passthrough, or Linux's usbip-host (after 'usbwire bind')",
    )
    serve.add_argument(
        "--rescan-interval",
        type=float,
        default=RESCAN_INTERVAL_S,
        metavar="SECONDS",
        help="how often to look for real devices plugged in or out (default %(default)s)",
    )
    serve.add_argument(
        "--control",
        default=DEFAULT_CONTROL_PATH,
        metavar="PATH",
        help=f"control socket for 'usbwire status' (default {DEFAULT_CONTROL_PATH}; 'none': no socket)",
    )
    serve.add_argument("--max-in-flight", type=int, default=Limits().max_in_flight, help="URBs in flight per client")
    serve.add_argument(
        "--resume-window",
        type=float,
        default=Limits().resume_window,
        metavar="SECONDS",
        help="how long an import waits for a usbwire client to resume after its link broke (0: no sessions)",
    )
    serve.add_argument(
        "--liveness-timeout",
        type=float,
        default=Limits().liveness_timeout,
        metavar="SECONDS",
        help="silence after which a session's link counts as dead",
    )
    serve.add_argument("--tls-cert", metavar="PEM", help="serve over TLS 1.3 with this certificate (chain)")
    serve.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    serve.add_argument("--client-ca", metavar="PEM", help="require client certificates signed by this CA (mTLS)")
    serve.add_argument("--config", metavar="TOML", help="settings file (see usbwire.config); flags override it")
    serve.add_argument("--user", help="drop root and run as this user once the sockets are bound")
    serve.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST default 127.0.0.1); needs usbwire[metrics]",
    )
    serve.add_argument(
        "--advertise",
        nargs="?",
        const="",
        metavar="NAME",
        help="announce this server on the local network (multicast DNS) as NAME (default: the host name), "
        "for 'usbwire discover'; needs usbwire[discovery]",
    )
    serve.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="event loop (auto: uvloop when installed, it is faster)",
    )
    audio = serve.add_argument_group("emulated headset (USB Audio: speaker and microphone, 48 kHz 16-bit stereo)")
    audio.add_argument("--audio", action="store_true", help="also export the headset (at the next free busid)")
    source = audio.add_mutually_exclusive_group()
    source.add_argument("--mic-tone", type=int, metavar="HZ", help="the microphone plays a sine tone (default 1000)")
    source.add_argument("--mic-wav", metavar="FILE", help="the microphone plays a 16-bit WAV file, round and round")
    audio.add_argument(
        "--speaker-out",
        metavar="PATH",
        help="write what clients play to the speaker to PATH: WAV, or raw s16le stereo if PATH ends in .raw",
    )
    _webcam_arguments(serve)
    disks = serve.add_argument_group("emulated disks (USB mass storage: SCSI over Bulk-Only, 512-byte blocks)")
    disks.add_argument(
        "--disk",
        dest="disks",
        action="append",
        type=DiskOptions,
        metavar="IMAGE",
        help="export this image file or block device as a USB disk (repeatable; with no --export, "
        "the demo devices only with --demo)",
    )
    disks.add_argument(
        "--disk-ro",
        dest="disks",
        action="append",
        type=lambda image: DiskOptions(image, read_only=True),
        metavar="IMAGE",
        help="the same, write-protected",
    )
    fleet_flags = serve.add_argument_group("fleet mode (needs usbwire[fleet])")
    fleet_flags.add_argument(
        "--fleet", metavar="etcd://HOST:PORT", help="register in this fleet; import devices only under its claims"
    )
    fleet_flags.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="label for this server's devices"
    )
    fleet_flags.add_argument("--fleet-name", metavar="NAME", help="this server's name in the fleet (default HOST:PORT)")
    fleet_flags.add_argument(
        "--fleet-address", metavar="HOST:PORT", help="where clients reach this server (default: where it listens)"
    )
    fleet_flags.add_argument(
        "--fleet-ttl", type=int, metavar="S", help="lease TTL (default 10): a dead server leaves the fleet after it"
    )
    serve.set_defaults(run=_serve)

    listing = commands.add_parser(
        "list",
        parents=[verbose],
        help="list the devices a server exports",
        description="List exportable devices.",
    )
    where = listing.add_mutually_exclusive_group(required=True)
    where.add_argument("-r", "--remote", metavar="HOST", help="list what server HOST exports")
    where.add_argument("-l", "--local", action="store_true", help="list this machine's USB devices")
    listing.add_argument("--port", type=_remote_port, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    _tls_arguments(listing)
    listing.set_defaults(run=_list)

    discover = commands.add_parser(
        "discover",
        parents=[verbose],
        help="find USB/IP servers on the local network and list their devices",
        description="Find servers that advertise themselves (usbwire serve --advertise) over multicast DNS, "
        "then list what each exports. Needs usbwire[discovery].",
    )
    discover.add_argument(
        "--timeout", type=float, default=2.0, metavar="S", help="how long to listen for servers (default 2)"
    )
    discover.add_argument(
        "--interface", action="append", metavar="ADDR", help="ask on the interface with this address (repeatable)"
    )
    discover.add_argument("--json", action="store_true", help="machine-readable output")
    _tls_arguments(discover)
    discover.set_defaults(run=_discover)

    status = commands.add_parser("status", parents=[verbose], help="show a running server's exports and clients")
    _control_argument(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=_status)

    export = commands.add_parser("export", parents=[verbose], help="export another emulated device on a running server")
    export.add_argument("device", help="device kind, e.g. loopback")
    export.add_argument("-b", "--busid", help="busid to use (default: the next free 1-N)")
    _control_argument(export)
    export.set_defaults(run=_export)

    unexport = commands.add_parser("unexport", parents=[verbose], help="stop exporting a device on a running server")
    unexport.add_argument("-b", "--busid", required=True)
    _control_argument(unexport)
    unexport.set_defaults(run=_unexport)
    attach = commands.add_parser(
        "attach", parents=[verbose], help="import a remote device into this machine's kernel (vhci-hcd)"
    )
    attach.add_argument("-r", "--remote", required=True, metavar="HOST", help="server exporting the device")
    attach.add_argument("-b", "--busid", required=True, help="the device's busid on the server")
    attach.add_argument(
        "-p", "--tcp-port", type=_remote_port, default=DEFAULT_PORT, help=f"server's TCP port (default {DEFAULT_PORT})"
    )
    attach.add_argument(
        "--persist",
        action="store_true",
        help="stay in the foreground and attach again whenever the import ends (Ctrl-C detaches)",
    )
    attach.add_argument(
        "--resume",
        action="store_true",
        help="hide short network drops from the kernel by resuming the session (usbwire servers; "
        "others are attached plainly)",
    )
    _tls_arguments(attach)
    attach.set_defaults(run=_attach)

    detach = commands.add_parser("detach", parents=[verbose], help="detach an imported device")
    detach.add_argument("-p", "--port", type=int, required=True, help="vhci port (see 'usbwire port')")
    detach.set_defaults(run=_detach)

    port = commands.add_parser("port", parents=[verbose], help="list devices imported into this machine")
    port.add_argument("--json", action="store_true", help="machine-readable output")
    port.set_defaults(run=_port)

    bind = commands.add_parser("bind", parents=[verbose], help="give a local device to Linux's usbip-host")
    bind.add_argument("-b", "--busid", required=True)
    bind.set_defaults(run=_bind)
    unbind = commands.add_parser("unbind", parents=[verbose], help="give a device back to its usual driver")
    unbind.add_argument("-b", "--busid", required=True)
    unbind.set_defaults(run=_unbind)

    certs = commands.add_parser("certs", parents=[verbose], help="create a CA and certificates for TLS")
    certs_commands = certs.add_subparsers(title="actions", metavar="ACTION", required=True)
    certs_init = certs_commands.add_parser("init", help="a new CA and the server's certificate")
    certs_init.add_argument("directory")
    certs_init.add_argument(
        "--server-name",
        action="append",
        required=True,
        metavar="NAME",
        help="host name or address (repeatable)",
    )
    certs_init.set_defaults(run=_certs_init)
    certs_client = certs_commands.add_parser("client", help="a client certificate signed by the CA")
    certs_client.add_argument("directory")
    certs_client.add_argument("name")
    certs_client.set_defaults(run=_certs_client)

    typing = commands.add_parser(
        "type", parents=[verbose], help="type text on an emulated keyboard of a running server"
    )
    typing.add_argument("text", help="text to type (US layout; \\n for Enter is a real newline)")
    typing.add_argument("-b", "--busid", help="which keyboard (default: the only one)")
    _control_argument(typing)
    typing.set_defaults(run=_type)

    mouse = commands.add_parser("mouse", parents=[verbose], help="move or click an emulated mouse")
    mouse.add_argument("dx", type=int, help="relative X movement")
    mouse.add_argument("dy", type=int, help="relative Y movement")
    mouse.add_argument("--wheel", type=int, default=0, help="wheel steps")
    mouse.add_argument("--click", action="store_true", help="click the left button after moving")
    mouse.add_argument("-b", "--busid", help="which mouse (default: the only one)")
    _control_argument(mouse)
    mouse.set_defaults(run=_mouse)
    _fleet_parser(commands, verbose)
    return parser


def _fleet_parser(commands: Any, verbose: argparse.ArgumentParser) -> None:
    fleet = commands.add_parser(
        "fleet",
        parents=[verbose],
        help="find, claim and release devices of a fleet (etcd)",
        description="Share devices of many servers among many clients through etcd leases.",
    )
    actions = fleet.add_subparsers(title="actions", metavar="ACTION", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--fleet",
        default=os.environ.get("USBWIRE_FLEET"),
        metavar="etcd://HOST:PORT",
        help="the fleet's etcd (default $USBWIRE_FLEET)",
    )
    wanting = argparse.ArgumentParser(add_help=False)
    wanting.add_argument(
        "--match",
        action="append",
        required=True,
        metavar="TERM",
        help="VID:PID, serial=S, product=P, busid=B, server=N or label=K=V (repeatable: all must hold)",
    )
    wanting.add_argument("--count", type=int, default=1, help="how many devices, all or none (default 1)")
    wanting.add_argument("--ttl", type=int, default=10, metavar="S", help="lease TTL: a dead client keeps devices S s")
    wanting.add_argument("--max-hold", type=float, metavar="S", help="the servers end the claim after S s")
    wanting.add_argument("--idle", type=float, metavar="S", help="the servers end the claim after S s without a URB")
    wanting.add_argument("--holder", metavar="NAME", help="name shown as the holder (default user@host:pid)")

    listing = actions.add_parser("list", parents=[verbose, where], help="every device, its server and holder")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=_fleet_list)

    claim = actions.add_parser(
        "claim",
        parents=[verbose, where, wanting],
        help="claim devices and hold them until Ctrl-C or release",
        description="Claim devices (queueing while none are free), print them, and hold them in the foreground "
        "until Ctrl-C, 'usbwire fleet release', or a server ends the claim.",
    )
    claim.add_argument("--no-wait", action="store_true", help="fail at once instead of queueing")
    claim.add_argument("--json", action="store_true", help="print the claim as one JSON line")
    claim.set_defaults(run=_fleet_claim)

    release = actions.add_parser("release", parents=[verbose, where], help="release claimed devices")
    release.add_argument("devices", nargs="*", metavar="SERVER/BUSID", help="devices to release")
    release.add_argument("--holder", metavar="NAME", help="release every device this holder claimed")
    release.set_defaults(run=_fleet_release)

    run = actions.add_parser(
        "run",
        parents=[verbose, where, wanting],
        help="claim, run a command, release",
        description="Claim devices, optionally attach them to this kernel, run COMMAND, and release them "
        "whatever happens. The command finds its devices in $USBWIRE_FLEET_DEVICES (JSON) and, for the first, "
        "$USBWIRE_HOST, $USBWIRE_PORT and $USBWIRE_BUSID.",
    )
    run.add_argument("--attach", action="store_true", help="attach the devices to this machine's kernel (vhci-hcd)")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command to run")
    run.set_defaults(run=_fleet_run)


def _token(args: argparse.Namespace) -> str | None:
    """The token from --token-file or $USBWIRE_TOKEN (never from the command line: ps shows it)."""
    import os

    if getattr(args, "token_file", None):
        try:
            with open(args.token_file) as stream:
                return stream.read().strip()
        except OSError as error:
            raise usbwire.UsbwireError(f"{args.token_file}: {error.strerror}") from None
    return os.environ.get("USBWIRE_TOKEN") or None


def _tls_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS (usbwire servers only; the kernel's usbipd speaks plain TCP)")
    group.add_argument("--tls", action="store_true", help="connect with TLS 1.3, checking the server's certificate")
    group.add_argument("--ca", metavar="PEM", help="CA that signed the server's certificate (default: the system's)")
    group.add_argument("--cert", metavar="PEM", help="client certificate, for servers that require one")
    group.add_argument("--key", metavar="PEM", help="the client certificate's key")
    group.add_argument("--token-file", metavar="FILE", help="prove this token to the server (or set $USBWIRE_TOKEN)")


def _client_tls(args: argparse.Namespace) -> SSLContext | None:
    if args.key and not args.cert:
        # Quietly connecting without the certificate the user meant to present (or in the
        # clear) would only show up as a refusal from the server.
        raise usbwire.UsbwireError("--key is the client certificate's key: give --cert too")
    if not (args.tls or args.ca or args.cert):
        return None
    return usbwire.client_tls_context(args.ca, args.cert, args.key)


def _control_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--control",
        default=DEFAULT_CONTROL_PATH,
        metavar="PATH",
        help="the server's control socket",
    )


def _webcam_arguments(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("webcam (an emulated USB Video Class camera, exported besides the rest)")
    group.add_argument("--webcam", action="store_true", help="export an emulated webcam at the next free busid")
    group.add_argument(
        "--format",
        action="append",
        choices=["yuyv", "mjpeg"],
        help="frame format to offer (repeatable; default: both, MJPEG only with Pillow installed)",
    )
    group.add_argument("--size", metavar="WxH", help="the one frame size to offer (default 160x120, 320x240, 640x480)")
    group.add_argument("--fps", type=int, metavar="N", help="the one frame rate to offer (default 30, 15, 10, 5)")
    group.add_argument(
        "--webcam-transfer", choices=["iso", "bulk"], default="iso", help="stream over iso (default) or bulk"
    )
    group.add_argument(
        "--webcam-speed",
        choices=["high", "full"],
        default="high",
        help="link speed (default high); only modes that fit its bandwidth are offered",
    )
    group.add_argument(
        "--webcam-image", metavar="FILE", help="send this image (JPEG, raw YUYV, or what Pillow reads), not a pattern"
    )


def _webcam(args: argparse.Namespace) -> usbwire.WebcamConfig | None:
    given = [f"--{name.replace('_', '-')}" for name in ("format", "size", "fps", "webcam_image") if getattr(args, name)]
    if not args.webcam:
        if given or args.webcam_transfer != "iso" or args.webcam_speed != "high":
            raise UsbwireError(f"{', '.join(given) or '--webcam-transfer, --webcam-speed'}: only with --webcam")
        return None
    return usbwire.WebcamConfig.parse(
        formats=args.format or (),
        size=args.size,
        fps=args.fps,
        transfer=args.webcam_transfer,
        speed=args.webcam_speed,
        image=args.webcam_image,
    )


def _serve(args: argparse.Namespace) -> int:
    if args.verbose == 0:
        logging.getLogger().setLevel(logging.INFO)
    settings = usbwire.load_config(args.config) if args.config else {}
    usbwire.run(usbwire.serve(ServeOptions(**{**settings, **_serve_flags(args, settings)})), loop=args.loop)
    return 0


def _serve_flags(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    """What the command line says; a flag left at its default leaves --config's setting alone."""
    flags: dict[str, Any] = {}
    if args.hosts:
        flags["hosts"] = tuple(args.hosts)
    if args.port != DEFAULT_PORT or "port" not in settings:
        flags["port"] = args.port
    if args.demo:
        flags["demo"] = True
    if args.export:
        flags["exports"] = tuple(args.export)
    webcam = _webcam(args)
    if webcam is not None:
        flags["webcam"] = webcam
    if args.disks:
        flags["disks"] = tuple(args.disks)
    if args.advertise is not None:
        flags["advertise"] = args.advertise
    if args.metrics is not None:
        try:
            flags["metrics"] = parse_metrics_address(args.metrics)
        except UsbwireError as error:
            raise UsbwireError(f"--metrics: {error}") from None
    if args.backend != "libusb" or "backend" not in settings:
        flags["backend"] = args.backend
    if args.rescan_interval != RESCAN_INTERVAL_S or "rescan_interval" not in settings:
        flags["rescan_interval"] = args.rescan_interval
    for name in ("tls_cert", "tls_key", "client_ca", "user"):
        if getattr(args, name):
            flags[name] = getattr(args, name)
    if args.control != DEFAULT_CONTROL_PATH or "control_path" not in settings:
        flags["control_path"] = None if args.control == "none" else args.control
    if (args.mic_tone is not None or args.mic_wav or args.speaker_out) and not args.audio:
        raise UsbwireError("--mic-tone, --mic-wav and --speaker-out describe the headset: add --audio")
    if args.audio:
        flags["audio"] = AudioOptions(args.mic_tone, args.mic_wav, args.speaker_out)
    if args.fleet or settings.get("fleet"):
        flags["fleet"] = _fleet_flags(args, settings.get("fleet"))
    elif args.label or args.fleet_name or args.fleet_address or args.fleet_ttl is not None:
        raise UsbwireError("--label, --fleet-name, --fleet-address and --fleet-ttl need --fleet")
    limits = settings.get("limits", Limits())
    changed = {
        name: getattr(args, name)
        for name in ("max_in_flight", "resume_window", "liveness_timeout")
        if getattr(args, name) != getattr(Limits(), name)
    }
    if changed:
        flags["limits"] = dataclasses.replace(limits, **changed)
    return flags


def _fleet_flags(args: argparse.Namespace, configured: Any) -> Any:
    """The fleet options of --config, with what the command line says on top."""
    from usbwire.fleet import FleetOptions

    fleet = configured or FleetOptions(args.fleet)
    changes: dict[str, Any] = {}
    if args.fleet:
        changes["url"] = args.fleet
    if args.label:
        changes["labels"] = FleetOptions.parse_labels(args.label)
    if args.fleet_name:
        changes["name"] = args.fleet_name
    if args.fleet_address:
        changes["address"] = args.fleet_address
    if args.fleet_ttl is not None:
        changes["ttl_s"] = args.fleet_ttl
    return dataclasses.replace(fleet, **changes)


def _list(args: argparse.Namespace) -> int:
    if args.local:
        return _list_local(args)
    devices = asyncio.run(usbwire.list_devices(args.remote, args.port, ssl=_client_tls(args), token=_token(args)))
    if args.json:
        print(json.dumps([_device_json(d) for d in devices], indent=2))
        return 0
    if not devices:
        print(f"{PROG}: info: no exportable devices found on {args.remote}", file=sys.stderr)
        return 0
    print("Exportable USB devices")
    print("======================")
    print(f" - {args.remote}")
    _print_devices(devices)
    return 0


def _print_devices(devices: Sequence[DeviceInfo]) -> None:
    """Devices as ``usbip list -r`` prints them, under their server's line."""
    ids = usbwire.load_usb_ids()
    for device in devices:
        print(f"{device.busid:>11}: {ids.product_text(device.idVendor, device.idProduct)}")
        print(f"{'':>11}: {device.path}")
        print(f"{'':>11}: {ids.class_text(device.bDeviceClass, device.bDeviceSubClass, device.bDeviceProtocol)}")
        for number, interface in enumerate(device.interfaces):
            text = ids.class_text(
                interface.bInterfaceClass,
                interface.bInterfaceSubClass,
                interface.bInterfaceProtocol,
            )
            print(f"{'':>11}: {number:2d} - {text}")
        print()


def _discover(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise UsbwireError("--timeout must be more than 0 seconds")
    if not args.json:
        print(f"{PROG}: info: listening for servers for {args.timeout:g} s...", file=sys.stderr)
    found = asyncio.run(survey(args.timeout, args.interface, ssl=_client_tls(args), token=_token(args)))
    if args.json:
        print(json.dumps([_found_json(entry) for entry in found], indent=2))
        return 0
    if not found:
        print(f"{PROG}: info: no USB/IP server answered", file=sys.stderr)
        return 0
    print("USB/IP servers on the local network")
    print("===================================")
    for entry in found:
        server = entry.server
        what = ", ".join(filter(None, [server.implementation, "TLS" if server.tls else None]))
        address = entry.address or server.addresses[0]
        print(f" - {server.name} at {host_port(address, server.port)}" + (f" ({what})" if what else ""))
        if entry.devices:
            _print_devices(entry.devices)
            continue
        print(f"{'':>11}  " + (f"devices not listed: {entry.error}" if entry.error else "no exportable devices"))
        print()
    return 0


def _found_json(found: Found) -> dict[str, Any]:
    server = found.server
    return {
        "name": server.name,
        "addresses": list(server.addresses),
        "address": found.address,
        "port": server.port,
        "tls": server.tls,
        "implementation": server.implementation,
        "devices": None if found.devices is None else [_device_json(device) for device in found.devices],
        "error": found.error,
    }


def _device_json(device: DeviceInfo) -> dict[str, Any]:
    ids = usbwire.load_usb_ids()
    return {
        "busid": device.busid,
        "path": device.path,
        "busnum": device.busnum,
        "devnum": device.devnum,
        "speed": device.speed.name.lower(),
        "vendor_id": f"{device.idVendor:04x}",
        "product_id": f"{device.idProduct:04x}",
        "vendor": ids.vendors.get(device.idVendor),
        "product": ids.products.get((device.idVendor, device.idProduct)),
        "bcd_device": f"{device.bcdDevice:04x}",
        "class": [device.bDeviceClass, device.bDeviceSubClass, device.bDeviceProtocol],
        "configuration": device.bConfigurationValue,
        "num_configurations": device.bNumConfigurations,
        "interfaces": [[i.bInterfaceClass, i.bInterfaceSubClass, i.bInterfaceProtocol] for i in device.interfaces],
    }


def _status(args: argparse.Namespace) -> int:
    status = usbwire.control_request(args.control, "status")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"listening on {', '.join(status['listening'])}")
    stats = status["stats"]
    print(
        f"connections so far {stats['connections']}, imports {stats['imports']}"
        f" ({sum(stats['refused_imports'].values())} refused), replies {stats['replies']}, "
        f"protocol errors {stats['protocol_errors']}"
    )
    print("exports:")
    for export in status["exports"]:
        holder = f"imported by {export['imported_by']}" if export["imported_by"] else "available"
        print(f"  {export['busid']:>8}  {export['vid_pid']}  {export['speed']:<6} {holder}")
    if status["connections"]:
        print("connections:")
        for conn in status["connections"]:
            print(
                f"  {conn['peer']}  {conn['state']}  busid={conn['busid']}  "
                f"urbs={conn['urbs']}  in flight={conn['in_flight']}"
            )
    return 0


def _export(args: argparse.Namespace) -> int:
    result = usbwire.control_request(args.control, "export", device=args.device, busid=args.busid)
    print(f"exported {result['device']} as {result['busid']}")
    return 0


def _unexport(args: argparse.Namespace) -> int:
    usbwire.control_request(args.control, "unexport", busid=args.busid)
    print(f"unexported {args.busid}")
    return 0


def _type(args: argparse.Namespace) -> int:
    result = usbwire.control_request(args.control, "type", text=args.text, busid=args.busid)
    print(f"queued {result['reports']} reports")
    return 0


def _mouse(args: argparse.Namespace) -> int:
    result = usbwire.control_request(
        args.control, "mouse", dx=args.dx, dy=args.dy, wheel=args.wheel, click=args.click, busid=args.busid
    )
    print(f"queued {result['reports']} reports")
    return 0


def _attach(args: argparse.Namespace) -> int:
    if args.persist:
        return _attach_persistent(args)
    port = usbwire.vhci_attach(
        args.remote, args.busid, args.tcp_port, tls=_client_tls(args), token=_token(args), resume=args.resume
    )
    print(f"attached {args.remote}:{args.tcp_port}/{args.busid} on port {port}")
    return 0


def _attach_persistent(args: argparse.Namespace) -> int:
    import signal

    def report(line: str) -> None:
        print(f"{args.remote}:{args.tcp_port}/{args.busid}: {line}", flush=True)

    keeper = usbwire.Persistent(
        args.remote,
        args.busid,
        args.tcp_port,
        tls=_client_tls(args),
        token=_token(args),
        resume=args.resume,
        report=report,
    )
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: keeper.stop.set())
    keeper.run()
    return 0


def _detach(args: argparse.Namespace) -> int:
    if usbwire.Vhci().detach(args.port):
        print(f"port {args.port} is now detached")
    else:
        print(f"port {args.port} is already detached")
    return 0


def _port(args: argparse.Namespace) -> int:
    vhci = usbwire.Vhci()
    imported = vhci.imported()
    if args.json:
        rows = []
        for item in imported:
            local = vhci.local_device(item.port.local_busid)
            rows.append(
                {
                    "port": item.port.number,
                    "status": "in use" if item.port.status == 6 else "error",
                    "local_busid": item.port.local_busid,
                    "vid_pid": f"{local.get('idVendor', '?')}:{local.get('idProduct', '?')}",
                    "remote": f"usbip://{item.host}:{item.tcp_port}/{item.remote_busid}" if item.host else None,
                    "remote_devid": f"{item.port.devid:08x}",
                }
            )
        print(json.dumps(rows, indent=2))
        return 0
    ids = usbwire.load_usb_ids()
    persistent = usbwire.persistent_states(vhci)
    print("Imported USB devices")
    print("====================")
    for item in imported:
        port = item.port
        local = vhci.local_device(port.local_busid)
        status = "Port in Use" if port.status == 6 else "Port Error"
        print(f"Port {port.number:02d}: <{status}> at {vhci.local_speed(port.local_busid).text}")
        vendor, product = int(local.get("idVendor", "0"), 16), int(local.get("idProduct", "0"), 16)
        print(f"       {ids.product_text(vendor, product)}")
        if item.host is not None:
            print(f"{port.local_busid:>10} -> usbip://{item.host}:{item.tcp_port}/{item.remote_busid}")
        else:
            print(f"{port.local_busid:>10} -> unknown host, remote port and remote busid")
        print(f"{'':>10} -> remote bus/dev {(port.devid >> 16) & 0xFF:03d}/{port.devid & 0xFF:03d}")
    if persistent:
        print("Kept attached (usbwire attach --persist)")
        print("===============================================")
        for state in persistent:
            where = f"usbip://{state['host']}:{state['tcp_port']}/{state['busid']}"
            detail = f" ({state['detail']})" if state.get("detail") else ""
            print(f"  {where}: {state['state']}{detail}")
    return 0


def _list_local(args: argparse.Namespace) -> int:
    ids = usbwire.load_usb_ids()
    devices = [d for d in usbwire.local_devices() if not d.is_hub]
    rows = []
    for device in devices:
        vendor, product = device.vid_pid
        rows.append(
            {
                "busid": device.busid,
                "vid_pid": f"{vendor:04x}:{product:04x}",
                "vendor": ids.vendors.get(vendor),
                "product": ids.products.get((vendor, product)),
                "driver": device.driver,
                "exported": device.driver == "usbip-host",
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    # One scan of sysfs for both outputs: a device plugged in between two scans would not pair.
    for row, device in zip(rows, devices, strict=True):
        vendor, product = device.vid_pid
        print(f" - busid {row['busid']} ({row['vid_pid']})")
        print(f"   {ids.product_text(vendor, product)}")
        print(f"   driver: {row['driver'] or 'none'}{'  (exported via usbip-host)' if row['exported'] else ''}")
        print()
    return 0


def _bind(args: argparse.Namespace) -> int:
    usbwire.bind(args.busid)
    print(f"bind device on busid {args.busid}: complete")
    return 0


def _unbind(args: argparse.Namespace) -> int:
    usbwire.unbind(args.busid)
    print(f"unbind device on busid {args.busid}: complete")
    return 0


def _certs_init(args: argparse.Namespace) -> int:
    for name in usbwire.certs_init(args.directory, tuple(args.server_name)):
        print(f"wrote {args.directory}/{name}")
    return 0


def _certs_client(args: argparse.Namespace) -> int:
    for name in usbwire.certs_client(args.directory, args.name):
        print(f"wrote {args.directory}/{name}")
    return 0


def _fleet_url(args: argparse.Namespace) -> str:
    if not args.fleet:
        raise UsbwireError("which fleet? give --fleet etcd://HOST:PORT or set $USBWIRE_FLEET")
    return str(args.fleet)


def _fleet_client(args: argparse.Namespace) -> Any:
    from usbwire import fleet

    return fleet.FleetClient(_fleet_url(args), holder=args.holder, ttl_s=args.ttl)


def _fleet_list(args: argparse.Namespace) -> int:
    from usbwire import fleet

    async def read() -> fleet.Snapshot:
        async with fleet.FleetClient(_fleet_url(args)) as client:
            return await client.snapshot()

    snapshot = asyncio.run(read())
    rows = snapshot.listing()
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=2))
        return 0
    if not rows:
        print(f"{PROG}: info: no devices in the fleet", file=sys.stderr)
        return 0
    print(f"{'DEVICE':<28} {'ADDRESS':<22} {'VID:PID':<9} {'PRODUCT':<24} {'SERIAL':<12} HOLDER")
    for row in rows:
        d = row.device
        labels = " ".join(f"{k}={v}" for k, v in sorted(d.labels.items()))
        print(
            f"{d.id:<28} {d.address:<22} {d.vid_pid:<9} {d.product[:24]:<24} {d.serial[:12]:<12} "
            f"{row.holder or '-'}{'  ' + labels if labels else ''}"
        )
    if snapshot.queue:
        print(f"{len(snapshot.queue)} client(s) waiting")
    return 0


def _fleet_claim(args: argparse.Namespace) -> int:
    import signal

    from usbwire import fleet

    async def claim_and_hold() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with _fleet_client(args) as client:
            claimed = await client.claim(
                fleet.Match.parse(args.match),
                args.count,
                max_hold_s=args.max_hold,
                idle_s=args.idle,
                wait=not args.no_wait,
                waiting=_report_waiting,
            )
            if args.json:
                print(json.dumps([c.to_json() for c in claimed]), flush=True)
            else:
                for c in claimed:
                    print(f"{c.device.id}  usbip attach -r {c.device.host} -p {c.device.port} -b {c.busid}", flush=True)
            async for ended in client.hold(claimed, stop):
                print(f"{PROG}: info: the claim on {ended.device.id} ended", file=sys.stderr, flush=True)

    asyncio.run(claim_and_hold())
    return 0


def _report_waiting(ahead: int) -> None:
    print(f"{PROG}: info: waiting for a device ({ahead} ahead in the queue)", file=sys.stderr, flush=True)


def _fleet_release(args: argparse.Namespace) -> int:
    from usbwire import fleet

    if not args.devices and not args.holder:
        raise UsbwireError("name the devices (SERVER/BUSID) or --holder")
    released = asyncio.run(fleet.release_claims(_fleet_url(args), args.devices, args.holder))
    for device in released:
        print(f"released {device}")
    return 0


def _fleet_run(args: argparse.Namespace) -> int:
    import signal

    from usbwire import fleet

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsbwireError("no command to run (usbwire fleet run --match ... -- COMMAND)")

    async def run() -> int:
        # SIGTERM (a CI job cancelled) ends the command and releases, as Ctrl-C does.
        main = asyncio.current_task()
        assert main is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
        async with _fleet_client(args) as client:
            return await fleet.run(
                client,
                fleet.Match.parse(args.match),
                command,
                count=args.count,
                attach_devices=args.attach,
                max_hold_s=args.max_hold,
                idle_s=args.idle,
                waiting=_report_waiting,
            )

    try:
        return asyncio.run(run())
    except asyncio.CancelledError:
        return 128 + signal.SIGTERM
