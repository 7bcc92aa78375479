"""The guest kernel imports a disk from a usbwire server over mutual TLS, through the relay."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import trustme

from tests.conftest import start_server
from usbwire import server_tls_context
from usbwire.backends.emulated import EmulatedExport
from usbwire.devices.msc import PRODUCT_ID as DISK_PRODUCT_ID
from usbwire.devices.msc import VENDOR_ID, MassStorage

from .scenarios import block_device
from .session import Lab

pytestmark = pytest.mark.lab

SECTORS = 64


class Capture:
    """tshark on the loopback interface, for one TCP port."""

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.port = port
        self.process = subprocess.Popen(
            ["tshark", "-q", "-i", "lo", "-f", f"tcp port {port}", "-w", str(path)],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        for line in self.process.stderr:  # dumpcap says when packets start to be kept
            if "Capturing on" in line:
                break

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def frames(self, display_filter: str, *, as_usbip: bool = False) -> list[str]:
        """Frame numbers matching ``display_filter`` (with the port decoded as USB/IP if asked)."""
        decode = ["-d", f"tcp.port=={self.port},usbip"] if as_usbip else []
        result = subprocess.run(
            ["tshark", "-r", str(self.path), *decode, "-Y", display_filter, "-T", "fields", "-e", "frame.number"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return result.stdout.split()


class Tap:
    """A TCP relay on 127.0.0.1 that forwards to ``target`` and keeps every byte it carries."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    self._chunks.append(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def recorded(self) -> bytes:
        with self._lock:
            return b"".join(self._chunks)

    def close(self) -> None:
        self.listener.close()


def test_attach_over_mutual_tls_reads_the_disk(lab: Lab, tmp_path: Path) -> None:
    known = os.urandom(SECTORS * 512)
    image = tmp_path / "disk.img"
    with image.open("wb") as disk:
        disk.write(known)
        disk.truncate(16 << 20)
    ca = trustme.CA()
    ca.issue_cert("10.0.2.2").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    context = server_tls_context(tmp_path / "server.pem", tmp_path / "server.pem", tmp_path / "ca.pem")

    export = EmulatedExport(MassStorage(image), busid="5-1", busnum=5, devnum=2)
    servers = start_server(extra_exports=[export], demo=False, ssl=context)
    running = next(servers)
    # Everything between guest and server passes a recording relay: what an eavesdropper sees.
    tap = Tap(running.port)
    capture = Capture(tmp_path / "wire.pcap", tap.port)
    try:
        with lab.vm() as vm:
            # The guest sees the CA and its client certificate through the scratch share.
            share = Path(vm.paths.scratch)
            ca.cert_pem.write_to_path(str(share / "ca.pem"))
            ca.issue_cert("guest-client").private_key_and_cert_chain_pem.write_to_path(str(share / "client.pem"))
            tls = f"--tls --ca {share / 'ca.pem'} --cert {share / 'client.pem'} --key {share / 'client.pem'}"
            # Without a client certificate the server refuses.
            refused = vm.chroot_run(f"{vm.python} -m usbwire attach {tls.split(' --cert', maxsplit=1)[0]} -r 10.0.2.2"
                                    f" -p {tap.port} -b 5-1")  # fmt: skip
            assert refused.code == 1 and "client certificate" in refused.err, refused.describe()

            attached = vm.chroot_run(f"{vm.python} -m usbwire attach {tls} -r 10.0.2.2 -p {tap.port} -b 5-1")
            assert attached.ok, attached.describe()
            busid = vm.wait_for_usb(VENDOR_ID, DISK_PRODUCT_ID)
            block = block_device(vm, busid).removeprefix("/dev/")
            digest = vm.run(f"dd if=/dev/{block} bs=512 count={SECTORS} iflag=direct 2>/dev/null | sha256sum", 60)
            assert digest.out.split()[0] == hashlib.sha256(known).hexdigest()
            port = int(attached.out.rsplit("port ", 1)[1])
            assert vm.chroot_run(f"{vm.python} -m usbwire detach -p {port}").ok
            vm.wait_for_usb(VENDOR_ID, DISK_PRODUCT_ID, present=False)
        capture.stop()
        wire = tap.recorded()
        assert len(wire) > SECTORS * 512  # the disk's data did cross...
        assert known[:64] not in wire and known[-64:] not in wire  # ...but not in clear
        assert b"\x01\x11\x80\x03" not in wire  # nor an OP_REQ_IMPORT header
        assert b"5-1\x00" not in wire
        # Wireshark, told this port carries USB/IP, finds no OP header and no URB of our device
        # (its dissector labels any bytes on the port "usbip"; real PDUs carry these values).
        assert capture.frames("tls"), "the capture holds the TLS session"
        readable = 'usbip.version == 0x0111 || usbip.devid == 0x00050002 || usbip.busid contains "5-1"'
        assert capture.frames(readable, as_usbip=True) == []
    finally:
        capture.stop()
        tap.close()
        servers.close()
