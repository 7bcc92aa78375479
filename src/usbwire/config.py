"""``usbwire serve --config FILE``: the server's settings as TOML, security included.

[server]
hosts = ["0.0.0.0"]          # default: every address
port = 3240
export = ["046d:c52b"]       # real devices to share; none: the demo devices
backend = "libusb"           # or "usbip-host"
rescan_interval = 2.0        # seconds between looks for devices plugged in or out
demo = false
advertise = "lab bench 3"   # announce on the local network (true: as the host name); see discover
metrics = "127.0.0.1:9240"   # Prometheus metrics at http://127.0.0.1:9240/metrics
tls_cert = "/etc/usbwire/server.pem"
tls_key = "/etc/usbwire/server.key"
client_ca = "/etc/usbwire/ca.pem"   # require client certificates (mTLS)
user = "usbwire"             # drop root after binding (emulated devices only need none)
max_in_flight = 256          # URBs per connection before the server stops reading
max_transfer = 16777216      # bytes per URB
max_connections_per_client = 16
allow = ["any"]              # who may use devices no [[device]] rule names

[tokens]                     # name = secret; clients prove them with `--token-file`
laptop = "a long random string"

[[device]]
match = "1-1"                # busid or VID:PID
allow = ["cidr:192.168.1.0/24", "cert:ci-runner", "token:laptop"]

[[disk]]                     # a disk image exported as a USB disk (repeatable, like --disk)
image = "/srv/usbwire/stick.img"
read_only = false

[fleet]                      # fleet mode (usbwire[fleet]); see usbwire.fleet
url = "etcd://etcd1:2379"
name = "rack-a-3"            # default HOSTNAME:PORT
address = "rack-a-3.lab:3240"  # where clients reach this server; default where it listens
ttl = 10
labels = { rack = "a", board = "imx8" }
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from usbwire.errors import UsbwireError
from usbwire.server.access import AccessPolicy
from usbwire.server.metrics import parse_address as parse_metrics_address
from usbwire.server.server import Limits
from usbwire.service import DiskOptions

_SERVER_KEYS = {
    "hosts", "port", "export", "backend", "demo", "tls_cert", "tls_key", "client_ca", "user", "max_in_flight",
    "max_transfer", "max_connections_per_client", "allow", "control", "resume_window", "liveness_timeout",
    "rescan_interval", "advertise", "metrics",
}  # fmt: skip


def load(path: str | Path) -> dict[str, Any]:
    """The settings of ``path`` as ServeOptions keyword arguments (unknown keys are errors)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsbwireError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as error:
        raise UsbwireError(f"{path}: {error}") from None
    unknown = set(data) - {"server", "tokens", "device", "disk", "fleet"}
    server = data.get("server", {})
    unknown |= {f"server.{key}" for key in set(server) - _SERVER_KEYS}
    if unknown:
        raise UsbwireError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
    tokens = {str(name): str(secret) for name, secret in data.get("tokens", {}).items()}
    if any(len(secret) < 16 for secret in tokens.values()):
        raise UsbwireError(f"{path}: tokens must be at least 16 characters")
    rules = [(str(rule["match"]), [str(p) for p in rule.get("allow", [])]) for rule in data.get("device", [])]
    defaults = Limits()
    options: dict[str, Any] = {
        "policy": AccessPolicy.build(rules, server.get("allow", ["any"]), tokens),
        "limits": Limits(
            max_in_flight=int(server.get("max_in_flight", defaults.max_in_flight)),
            max_transfer=int(server.get("max_transfer", defaults.max_transfer)),
            max_connections_per_client=int(
                server.get("max_connections_per_client", defaults.max_connections_per_client)
            ),
            resume_window=float(server.get("resume_window", defaults.resume_window)),
            liveness_timeout=float(server.get("liveness_timeout", defaults.liveness_timeout)),
        ),
    }
    for key in ("backend", "demo", "tls_cert", "tls_key", "client_ca", "user"):
        if key in server:
            options[key] = server[key]
    if "port" in server:
        try:
            options["port"] = port_number(server["port"], listening=True)
        except UsbwireError as error:
            raise UsbwireError(f"{path}: server.port: {error}") from None
    if "advertise" in server:
        advertise = server["advertise"]
        if not isinstance(advertise, bool | str):
            raise UsbwireError(f"{path}: server.advertise must be a name, true or false")
        options["advertise"] = ("" if advertise else None) if isinstance(advertise, bool) else advertise
    if "metrics" in server:
        try:
            options["metrics"] = parse_metrics_address(str(server["metrics"]))
        except UsbwireError as error:
            raise UsbwireError(f"{path}: server.metrics: {error}") from None
    if "rescan_interval" in server:
        options["rescan_interval"] = float(server["rescan_interval"])
    if "hosts" in server:
        options["hosts"] = tuple(server["hosts"])
    if "export" in server:
        options["exports"] = tuple(server["export"])
    if "control" in server:
        options["control_path"] = server["control"] or None
    if "fleet" in data:
        options["fleet"] = _fleet(data["fleet"], path)
    if "disk" in data:
        options["disks"] = tuple(_disk(table, path) for table in data["disk"])
    return options


def _disk(table: Any, path: str | Path) -> DiskOptions:
    if not isinstance(table, dict) or not isinstance(table.get("image"), str):
        raise UsbwireError(f'{path}: each [[disk]] needs image = "PATH"')
    unknown = set(table) - {"image", "read_only"}
    if unknown:
        raise UsbwireError(f"{path}: unknown settings {', '.join(f'disk.{key}' for key in sorted(unknown))}")
    read_only = table.get("read_only", False)
    if not isinstance(read_only, bool):
        raise UsbwireError(f"{path}: disk.read_only must be true or false")
    return DiskOptions(table["image"], read_only=read_only)


def port_number(value: object, *, listening: bool) -> int:
    """A TCP port as a user gave it (command line or file). Without this check, 99999 would
    quietly become 34463 on its way through getaddrinfo. 0, any free port, only to listen on."""
    try:
        port = int(str(value))
    except ValueError:
        raise UsbwireError(f"{value!r} is not a port number") from None
    lowest = 0 if listening else 1
    if not lowest <= port <= 65535:
        raise UsbwireError(f"port {port} is outside {lowest}-65535")
    return port


def _fleet(table: dict[str, Any], path: str | Path) -> Any:
    from usbwire.fleet.member import DEFAULT_TTL_S, FleetOptions

    unknown = set(table) - {"url", "name", "address", "ttl", "labels"}
    if unknown:
        raise UsbwireError(f"{path}: unknown settings {', '.join(sorted(f'fleet.{key}' for key in unknown))}")
    if "url" not in table:
        raise UsbwireError(f'{path}: [fleet] needs url = "etcd://HOST:PORT"')
    return FleetOptions(
        url=str(table["url"]),
        name=str(table["name"]) if "name" in table else None,
        address=str(table["address"]) if "address" in table else None,
        labels={str(k): str(v) for k, v in dict(table.get("labels", {})).items()},
        ttl_s=int(table.get("ttl", DEFAULT_TTL_S)),
    )
