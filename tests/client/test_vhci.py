"""vhci sysfs bookkeeping on a file tree laid out like the kernel's (the lab covers the kernel)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from usbwire.client.vhci import PORT_FREE, PORT_USED, Vhci, VhciError
from usbwire.protocol import DeviceInfo, Speed

HEADER = "hub port sta spd dev      sockfd local_busid\n"


def port_line(hub: str, number: int, status: int = PORT_FREE) -> str:
    if status == PORT_USED:
        return f"{hub}  {number:04d} {status:03d} 003 00010002 000003 3-1\n"
    return f"{hub}  {number:04d} {status:03d} 000 00000000 000000 0-0\n"


def make_vhci(tmp_path: Path, used: set[int] = frozenset()) -> Vhci:  # type: ignore[assignment]
    root = tmp_path / "sys/devices/platform/vhci_hcd.0"
    root.mkdir(parents=True)
    lines = [port_line("hs" if n < 2 else "ss", n, PORT_USED if n in used else PORT_FREE) for n in range(4)]
    (root / "status").write_text(HEADER + "".join(lines))
    (root / "attach").write_text("")
    (root / "detach").write_text("")
    return Vhci(sysfs=tmp_path / "sys", state_dir=tmp_path / "run/vhci_hcd")


def device(speed: Speed) -> DeviceInfo:
    return DeviceInfo(path="/x", busid="1-1", busnum=1, devnum=2, speed=speed, idVendor=1, idProduct=2, bcdDevice=0)


def test_parses_every_port_of_the_status_table(tmp_path: Path) -> None:
    vhci = make_vhci(tmp_path, used={1})
    ports = vhci.ports()
    assert [(p.hub, p.number, p.in_use) for p in ports] == [
        ("hs", 0, False), ("hs", 1, True), ("ss", 2, False), ("ss", 3, False),
    ]  # fmt: skip
    assert ports[1].devid == 0x00010002 and ports[1].local_busid == "3-1"


@pytest.mark.parametrize(
    ("speed", "expected"),
    [(Speed.LOW, 0), (Speed.FULL, 0), (Speed.HIGH, 0), (Speed.SUPER, 2), (Speed.SUPER_PLUS, 2)],
)
def test_attach_writes_port_fd_devid_speed_on_the_matching_hub(tmp_path: Path, speed: Speed, expected: int) -> None:
    vhci = make_vhci(tmp_path)
    left, right = socket.socketpair()
    with left, right:
        assert vhci.attach(left, device(speed)) == expected
        written = (vhci.root / "attach").read_text()
        assert written == f"{expected} {left.fileno()} {(1 << 16) | 2} {int(speed)}"


def test_no_free_port_is_a_clear_error(tmp_path: Path) -> None:
    vhci = make_vhci(tmp_path, used={0, 1})
    left, right = socket.socketpair()
    with left, right, pytest.raises(VhciError, match="no free high-speed vhci port"):
        vhci.attach(left, device(Speed.HIGH))


def test_state_file_is_what_usbip_port_reads(tmp_path: Path) -> None:
    vhci = make_vhci(tmp_path, used={1})
    vhci.record(1, "server.example", 3240, "1-4")
    assert (vhci.state_dir / "port1").read_text() == "server.example 3240 1-4\n"
    assert oct(vhci.state_dir.stat().st_mode & 0o777) == "0o700"
    (imported,) = vhci.imported()
    assert (imported.port.number, imported.host, imported.tcp_port, imported.remote_busid) == (
        1, "server.example", "3240", "1-4",
    )  # fmt: skip


def test_detach_of_a_free_port_says_so_and_removes_the_state_file(tmp_path: Path) -> None:
    vhci = make_vhci(tmp_path, used={1})
    vhci.record(0, "h", 3240, "1-1")
    assert vhci.detach(0) is False
    assert not (vhci.state_dir / "port0").exists()
    assert vhci.detach(1) is True
    assert (vhci.root / "detach").read_text() == "1"
    with pytest.raises(VhciError, match="invalid port"):
        vhci.detach(99)


def test_missing_vhci_is_reported(tmp_path: Path) -> None:
    with pytest.raises(VhciError, match="vhci_hcd is not loaded"):
        Vhci(sysfs=tmp_path).ports()
