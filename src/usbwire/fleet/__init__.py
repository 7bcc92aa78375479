"""Fleet mode: many servers and clients share devices through etcd leases.

Servers register their exports (:mod:`~usbwire.fleet.registration`) and import a device only
for the holder of its claim (:mod:`~usbwire.fleet.enforcement`); clients find, claim and
release devices (:mod:`~usbwire.fleet.claims`). The key schema is in :mod:`~usbwire.fleet.keys`.
Importing this package needs nothing optional: the etcd client (``usbwire[fleet]``) is loaded
when a connection to etcd is made.
"""

from usbwire.fleet.claims import Claimed, FleetClient, FleetDevice, Snapshot, read_snapshot, release_claims
from usbwire.fleet.etcd import Etcd, EtcdUnavailable
from usbwire.fleet.keys import ClaimRecord, DeviceRecord, FleetError, Match
from usbwire.fleet.member import FleetMember, FleetOptions
from usbwire.fleet.run import run

__all__ = [
    "ClaimRecord",
    "Claimed",
    "DeviceRecord",
    "Etcd",
    "EtcdUnavailable",
    "FleetClient",
    "FleetDevice",
    "FleetError",
    "FleetMember",
    "FleetOptions",
    "Match",
    "Snapshot",
    "read_snapshot",
    "release_claims",
    "run",
]
