"""A blocking wrapper of :class:`RemoteDevice` for code that is not asyncio (pyusb, scripts).

The device's event loop runs in a thread of its own; each call waits for its result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from usbwire.client.device import IsoResult, RemoteDevice, open_device
from usbwire.protocol.constants import DEFAULT_PORT
from usbwire.protocol.descriptors import ConfigurationDescriptor, DeviceDescriptor, EndpointTable
from usbwire.protocol.pdu import DeviceInfo

T = TypeVar("T")


class SyncDevice:
    """Blocking calls on an imported device; ``with SyncDevice.connect(...) as dev:``."""

    def __init__(self, device: RemoteDevice, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self._device = device
        self._loop = loop
        self._thread = thread

    @classmethod
    def connect(cls, host: str, busid: str, *, port: int = DEFAULT_PORT, timeout: float = 10.0) -> SyncDevice:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"usbwire {host} {busid}", daemon=True)
        thread.start()
        try:
            future = asyncio.run_coroutine_threadsafe(open_device(host, busid, port=port, timeout=timeout), loop)
            device = future.result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        return cls(device, loop, thread)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def info(self) -> DeviceInfo:
        return self._device.info

    @property
    def device_descriptor(self) -> DeviceDescriptor:
        assert self._device.device_descriptor is not None
        return self._device.device_descriptor

    @property
    def endpoints(self) -> EndpointTable:
        return self._device.endpoints

    def configuration_descriptor(self, index: int) -> ConfigurationDescriptor:
        return self._call(self._device.configuration_descriptor(index))

    def string(self, index: int, langid: int = 0x0409) -> str:
        return self._call(self._device.string(index, langid))

    def control_transfer(
        self,
        request_type: int,
        request: int,
        value: int,
        index: int,
        data_or_length: bytes | int = 0,
        timeout: float | None = None,
    ) -> bytes | int:
        return self._call(self._device.control_transfer(request_type, request, value, index, data_or_length, timeout))

    def bulk_transfer(self, endpoint: int, data_or_length: bytes | int, timeout: float | None = None) -> bytes | int:
        return self._call(self._device.bulk_transfer(endpoint, data_or_length, timeout))

    def interrupt_transfer(
        self, endpoint: int, data_or_length: bytes | int, timeout: float | None = None
    ) -> bytes | int:
        return self._call(self._device.interrupt_transfer(endpoint, data_or_length, timeout))

    def iso_transfer(
        self, endpoint: int, packets: Sequence[int] | Sequence[bytes], timeout: float | None = None
    ) -> IsoResult:
        return self._call(self._device.iso_transfer(endpoint, packets, timeout))

    def set_configuration(self, value: int) -> None:
        self._call(self._device.set_configuration(value))

    def set_interface(self, interface: int, alternate: int) -> None:
        self._call(self._device.set_interface(interface, alternate))

    def clear_halt(self, endpoint: int) -> None:
        self._call(self._device.clear_halt(endpoint))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._device.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
