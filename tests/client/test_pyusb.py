"""Plain pyusb code driving a device of a usbwire server through usbwire's pyusb backend."""

from __future__ import annotations

import array
from collections.abc import Iterator

import pytest
import usb.core
import usb.util

from tests.conftest import RunningServer
from usbwire.client.pyusb import UsbipBackend, get_backend


@pytest.fixture
def backend(server: RunningServer) -> Iterator[UsbipBackend]:
    backend = get_backend("127.0.0.1", server.port, busid="1-1")
    yield backend
    backend.close()


def test_find_reads_descriptors_and_strings(backend: UsbipBackend) -> None:
    device = usb.core.find(idVendor=0x1209, idProduct=0x0001, backend=backend)
    assert device is not None
    assert usb.util.get_string(device, device.iProduct) == "Bulk loopback"
    config = device[0]
    interface = config[(0, 0)]
    assert interface.bInterfaceClass == 0xFF
    assert sorted(e.bEndpointAddress for e in interface) == [0x01, 0x81]


def test_bulk_loopback_with_plain_pyusb_calls(backend: UsbipBackend) -> None:
    device = usb.core.find(idVendor=0x1209, backend=backend)
    assert device is not None
    device.set_configuration()
    assert device.get_active_configuration().bConfigurationValue == 1
    assert device.write(0x01, b"through pyusb") == 13
    assert bytes(device.read(0x81, 64)) == b"through pyusb"
    buffer = array.array("B", bytes(64))
    device.write(0x01, b"into a buffer")
    assert device.read(0x81, buffer) == 13 and bytes(buffer[:13]) == b"into a buffer"


def test_control_transfers_and_stalls_map_to_pyusb(backend: UsbipBackend) -> None:
    device = usb.core.find(idVendor=0x1209, backend=backend)
    assert device is not None
    device.set_configuration()
    assert device.ctrl_transfer(0x40, 0x01, 0, 0, b"stash") == 5
    assert bytes(device.ctrl_transfer(0xC0, 0x02, 0, 0, 16)) == b"stash"
    with pytest.raises(usb.core.USBError) as caught:
        device.ctrl_transfer(0xC0, 0x7F, 0, 0, 1)
    assert caught.value.errno == 32


def test_read_timeout_is_pyusbs_timeout_error(backend: UsbipBackend) -> None:
    device = usb.core.find(idVendor=0x1209, backend=backend)
    assert device is not None
    device.set_configuration()
    with pytest.raises(usb.core.USBTimeoutError):
        device.read(0x81, 64, timeout=200)
