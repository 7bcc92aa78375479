"""``usbwire attach --persist``: keep a remote device attached through drops and restarts.

The loop attaches, watches the vhci port once a second, and when the import ends (network
cut, server restart, device unplugged on the server) attaches again with a capped backoff.
Its state is written next to ``usbip``'s own port files so ``usbwire port`` can show it:
attached, resuming (a session hides a drop), reconnecting, or waiting for the device to come back.

With ``resume`` each import is a resumable session (client/session.py): short drops are
hidden by the relay and never end the import, so this loop only acts on longer outages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

from usbwire.client.remote import ServerUnreachable
from usbwire.client.vhci import PORT_FREE, Vhci, VhciError, attach
from usbwire.errors import ImportRefused, UsbwireError
from usbwire.protocol.constants import DEFAULT_PORT, OpStatus

log = logging.getLogger("usbwire.client")

CHECK_PERIOD = 1.0
# Capped low: a connection attempt is cheap, and a device should be back soon after its path.
BACKOFF = (0.5, 1.0, 2.0)


@dataclass
class Persistent:
    host: str
    busid: str
    tcp_port: int = DEFAULT_PORT
    tls: ssl.SSLContext | None = None
    token: str | None = None
    resume: bool = False  # resumable sessions: short drops never reach the kernel
    vhci: Vhci | None = None
    report: Callable[[str], None] = lambda line: None

    def __post_init__(self) -> None:
        self.vhci = self.vhci or Vhci()
        self.stop = threading.Event()
        self.state = "starting"
        self.port: int | None = None

    @property
    def state_file(self) -> str:
        name = f"usbwire-persist-{self.host}-{self.tcp_port}-{self.busid}".replace("/", "_")
        assert self.vhci is not None
        return os.path.join(self.vhci.state_dir, name)

    def _set(self, state: str, detail: str = "") -> None:
        if state != self.state:
            self.report(f"{state}{': ' + detail if detail else ''}")
        self.state = state
        assert self.vhci is not None
        self.vhci.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        record = {"state": state, "detail": detail, "port": self.port, "host": self.host,
                  "tcp_port": self.tcp_port, "busid": self.busid, "pid": os.getpid()}  # fmt: skip
        with open(self.state_file, "w") as out:
            json.dump(record, out)

    def run(self) -> None:
        """Until ``stop`` is set: attach, watch, attach again."""
        attempt = 0
        try:
            while not self.stop.is_set():
                try:
                    self.port = attach(
                        self.host,
                        self.busid,
                        self.tcp_port,
                        self.vhci,
                        self.tls,
                        self.token,
                        self.resume,
                        self._session_state,
                    )
                except ImportRefused as refused:
                    waiting = refused.status in (OpStatus.NODEV, OpStatus.DEV_BUSY)
                    self._set("waiting for device" if waiting else "reconnecting", str(refused))
                except VhciError as error:
                    if "root" in str(error) or "not loaded" in str(error):
                        raise  # no retry will fix these
                    self._set("reconnecting", str(error))
                except (ServerUnreachable, OSError, UsbwireError) as error:
                    self._set("reconnecting", str(error))
                else:
                    attempt = 0
                    self._set("attached", f"port {self.port}")
                    self._watch()
                    if self.stop.is_set():
                        break
                    self._set("reconnecting", "the import ended")
                    continue
                self.stop.wait(BACKOFF[min(attempt, len(BACKOFF) - 1)])
                attempt += 1
        finally:
            self._finish()

    def _session_state(self, port: int, state: str, detail: str) -> None:
        # Runs in the relay process (a fork of this one): it writes the same state file.
        self.port = port
        self._set(state, detail)

    def _watch(self) -> None:
        assert self.vhci is not None and self.port is not None
        while not self.stop.wait(CHECK_PERIOD):
            port = next((p for p in self.vhci.ports() if p.number == self.port), None)
            if port is None or port.status == PORT_FREE:
                return

    def _finish(self) -> None:
        assert self.vhci is not None
        if self.port is not None and self.state == "attached":
            with contextlib.suppress(UsbwireError, OSError):
                self.vhci.detach(self.port)
        with contextlib.suppress(OSError):
            os.unlink(self.state_file)


def persistent_states(vhci: Vhci | None = None) -> list[dict[str, object]]:
    """What every running ``attach --persist`` last reported."""
    vhci = vhci or Vhci()
    states = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(vhci.state_dir)):
            if name.startswith("usbwire-persist-"):
                with contextlib.suppress(OSError, ValueError), open(os.path.join(vhci.state_dir, name)) as record:
                    states.append(json.load(record))
    return states
