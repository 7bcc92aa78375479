"""What every emulated device shares: descriptors, chapter 9 requests, endpoint state.

A device subclass declares its descriptors and overrides the hooks it needs
(``class_request``, ``handle_in``, ``handle_out``...). It never sees a socket, a seqnum or a
PDU, so it can be driven by a plain ``asyncio.run`` in a test.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence

from usbwire.devices.descriptors import (
    Configuration,
    DescriptorSet,
    DescriptorType,
    DeviceDescriptor,
    Endpoint,
    Interface,
)
from usbwire.devices.iso import IsoClock, IsoCompletion, service_interval, wait_until
from usbwire.devices.requests import Feature, Recipient, RequestType, Setup, StandardRequest
from usbwire.errors import Stall
from usbwire.protocol.constants import Direction, Speed, TransferType
from usbwire.protocol.pdu import IsoPacket


class Device:
    """An emulated USB device in its addressed or configured state."""

    def __init__(self, descriptor: DeviceDescriptor, speed: Speed = Speed.HIGH) -> None:
        self.descriptor = descriptor
        self.speed = speed
        self.descriptors = DescriptorSet(descriptor, speed)
        self.descriptors.all_strings()
        self.configuration: Configuration | None = None
        self.alternates: dict[int, int] = {}
        self.halted: set[int] = set()
        self.remote_wakeup = False
        self._endpoints: dict[int, Endpoint] = {}
        self._iso_clocks: dict[int, IsoClock] = {}
        # Raw SETUP packet of a standard GET_DESCRIPTOR to the device -> its answer.
        self._descriptor_answers: dict[bytes, bytes] = {}

    # -- state -------------------------------------------------------------------------------

    def endpoint(self, number: int, direction: Direction) -> Endpoint | None:
        """The endpoint of the active configuration and alternate settings, if any."""
        return self._endpoints.get(number | (0x80 if direction == _IN else 0))

    def interface(self, number: int) -> Interface | None:
        if self.configuration is None:
            return None
        wanted = self.alternates.get(number, 0)
        for interface in self.configuration.alternates(number):
            if interface.alternate == wanted:
                return interface
        return None

    def _rebuild_endpoints(self) -> None:
        self._endpoints = {}
        # A new alternate setting is a new stream: its schedule starts afresh.
        self._iso_clocks = {}
        if self.configuration is None:
            return
        for number in self.configuration.interface_numbers:
            interface = self.interface(number)
            assert interface is not None
            for endpoint in interface.endpoints:
                self._endpoints[endpoint.address] = endpoint

    def set_configuration(self, value: int) -> None:
        if value == 0:
            self.configuration = None
        else:
            for config in self.descriptor.configurations:
                if config.value == value:
                    self.configuration = config
                    break
            else:
                raise Stall(f"no configuration {value}")
        self.alternates = {}
        self.halted.clear()
        self._rebuild_endpoints()
        self.on_configuration(self.configuration)

    def set_interface(self, number: int, alternate: int) -> None:
        if self.configuration is None:
            raise Stall("SET_INTERFACE while unconfigured")
        if not any(i.alternate == alternate for i in self.configuration.alternates(number)):
            raise Stall(f"interface {number} has no alternate setting {alternate}")
        self.alternates[number] = alternate
        for address in [a for a in self.halted if a not in self._endpoints]:
            self.halted.discard(address)
        self._rebuild_endpoints()
        for endpoint in self.interface(number).endpoints:  # type: ignore[union-attr]
            self.halted.discard(endpoint.address)
        self.on_interface(number, alternate)

    def halt(self, endpoint: Endpoint) -> None:
        """Stall ``endpoint`` until the host clears the halt (as a real device would)."""
        self.halted.add(endpoint.address)

    # -- transfers, as the backend calls them ---------------------------------------------------

    async def control(self, setup: Setup, data: bytes) -> bytes:
        """Answer one control transfer; raises Stall to refuse it."""
        # Plain bit tests rather than Setup's properties: this runs for every control URB.
        if setup.request_type & 0x60 == RequestType.STANDARD << 5:
            return _shaped(setup, self.standard_request(setup, data))
        return _shaped(setup, await self.class_request(setup, data))

    def control_now(self, setup: bytes, data: bytes) -> bytes | None:
        """:meth:`control` of the raw SETUP packet ``setup`` for a request answered without
        waiting (every standard one), or None, having done nothing, for one that may have to
        wait (class and vendor requests)."""
        answer = self._descriptor_answers.get(setup)
        if answer is not None:
            return answer
        if setup[0] & 0x60 != RequestType.STANDARD << 5:
            return None
        parsed = Setup.from_bytes(setup)
        answer = _shaped(parsed, self.standard_request(parsed, data))
        # The DescriptorSet's bytes never change while the device exists, so neither do these
        # answers; a bounded few are kept, as a host asks for the same ones again and again.
        if (
            setup[0] == _GET_DEVICE_DESCRIPTOR[0]
            and setup[1] == _GET_DEVICE_DESCRIPTOR[1]
            and setup[3] in _FIXED
            and len(self._descriptor_answers) < _MAX_DESCRIPTOR_ANSWERS
        ):
            self._descriptor_answers[setup] = answer
        return answer

    async def transfer(self, endpoint: Endpoint, data: bytes, length: int) -> bytes:
        """A bulk or interrupt transfer: OUT hands ``data`` over, IN returns up to ``length``."""
        if endpoint.address in self.halted:
            raise Stall(f"endpoint 0x{endpoint.address:02x} is halted")
        if endpoint.direction == _OUT:
            await self.handle_out(endpoint, data)
            return b""
        return await self.handle_in(endpoint, length)

    def transfer_now(self, address: int, data: bytes, length: int) -> bytes | None:
        """:meth:`transfer` on the endpoint at ``address`` if it completes without waiting,
        else None, having done nothing: also for an endpoint that is not there or is
        isochronous, which the backend's full path answers."""
        endpoint = self._endpoints.get(address)
        if endpoint is None or endpoint.transfer is _ISOCHRONOUS:
            return None
        if self.halted and address in self.halted:
            raise Stall(f"endpoint 0x{address:02x} is halted")
        if address & 0x80:
            return self.in_now(endpoint, length)
        return b"" if self.out_now(endpoint, data) else None

    async def isochronous(self, endpoint: Endpoint, data: bytes, packets: Sequence[IsoPacket]) -> IsoCompletion:
        """An iso transfer, paced like the bus: it completes when its packets' slots have passed
        (see :class:`IsoClock`, also for the frame a URB without ``URB_ISO_ASAP`` names).

        OUT hands each packet's bytes to :meth:`iso_out` at once; IN asks :meth:`iso_in` for the
        packets when their slots are over, as a device fills them during those (micro)frames.
        """
        if endpoint.address in self.halted:
            raise Stall(f"endpoint 0x{endpoint.address:02x} is halted")
        clock = self._iso_clocks.get(endpoint.address)
        if clock is None:
            clock = self._iso_clocks[endpoint.address] = IsoClock(service_interval(endpoint, self.speed))
        slot = clock.reserve(len(packets), asyncio.get_running_loop().time())
        try:
            if endpoint.direction == Direction.OUT:
                await self.iso_out(endpoint, [data[p.offset : p.offset + p.length] for p in packets])
                await wait_until(slot.deadline)
                done = tuple(IsoPacket(p.offset, p.length, p.length) for p in packets)
                return IsoCompletion(slot.start_frame, done)
            await wait_until(slot.deadline)
            produced = await self.iso_in(endpoint, [p.length for p in packets])
        except asyncio.CancelledError:
            clock.restart()
            raise
        results = []
        chunks = []
        for packet, payload in zip(packets, produced, strict=True):
            if isinstance(payload, int):
                results.append(IsoPacket(packet.offset, packet.length, 0, payload))
                continue
            kept = payload[: packet.length]
            chunks.append(kept)
            results.append(IsoPacket(packet.offset, packet.length, len(kept)))
        return IsoCompletion(slot.start_frame, tuple(results), b"".join(chunks))

    # -- hooks for subclasses ---------------------------------------------------------------

    async def class_request(self, setup: Setup, data: bytes) -> bytes | None:
        """Class and vendor requests. Return IN data, or None to acknowledge."""
        raise Stall(f"unsupported request {setup}")

    def descriptor_request(self, setup: Setup) -> bytes | None:
        """Class-specific GET_DESCRIPTOR (e.g. a HID report descriptor); None stalls."""
        return None

    async def handle_out(self, endpoint: Endpoint, data: bytes) -> None:
        """OUT data, taken when the device can; a device that never has to wait need only
        implement :meth:`out_now`."""
        if not self.out_now(endpoint, data):
            raise Stall(f"endpoint 0x{endpoint.address:02x} takes no data")

    async def handle_in(self, endpoint: Endpoint, length: int) -> bytes:
        """IN data, once the device has some; a device that never has to wait need only
        implement :meth:`in_now`."""
        ready = self.in_now(endpoint, length)
        if ready is None:
            raise Stall(f"endpoint 0x{endpoint.address:02x} has no data")
        return ready

    def out_now(self, endpoint: Endpoint, data: bytes) -> bool:
        """Take OUT ``data`` if that needs no waiting (the server's fast lane); False leaves
        the transfer to :meth:`handle_out`. A device that overrides this builds its
        ``handle_out`` on it, so that both agree."""
        return False

    def in_now(self, endpoint: Endpoint, length: int) -> bytes | None:
        """IN data that is ready now, else None (the transfer then goes to :meth:`handle_in`)."""
        return None

    async def iso_in(self, endpoint: Endpoint, lengths: Sequence[int]) -> Sequence[bytes | int]:
        """One payload per requested packet (at most its length), or a negative errno for a
        packet the device failed (reported in that packet's status, the URB goes on)."""
        raise Stall(f"endpoint 0x{endpoint.address:02x} streams nothing")

    async def iso_out(self, endpoint: Endpoint, packets: Sequence[bytes]) -> None:
        """Each packet's bytes, in bus order."""
        raise Stall(f"endpoint 0x{endpoint.address:02x} takes no stream")

    def on_configuration(self, configuration: Configuration | None) -> None:
        """Called after SET_CONFIGURATION."""

    def on_interface(self, number: int, alternate: int) -> None:
        """Called after SET_INTERFACE."""

    def on_clear_halt(self, endpoint: Endpoint) -> None:
        """Called after the host cleared a halt: reset the endpoint's state."""

    def reset(self) -> None:
        """A USB reset: back to the default, unconfigured state."""
        self.set_configuration(0)

    async def close(self) -> None:
        """The import ended: make every accepted write durable, release resources."""

    # -- chapter 9 ---------------------------------------------------------------------------

    def standard_request(self, setup: Setup, data: bytes) -> bytes | None:
        handler = _STANDARD.get((setup.request, setup.request_type >> 7))
        if handler is None:
            raise Stall(f"unsupported standard request {setup}")
        return handler(self, setup)

    def _get_status(self, setup: Setup) -> bytes:
        if setup.recipient == Recipient.DEVICE:
            config = self.configuration or self.descriptor.configurations[0]
            status = (1 if config.self_powered else 0) | (2 if self.remote_wakeup else 0)
        elif setup.recipient == Recipient.INTERFACE:
            if self.interface(setup.index & 0xFF) is None:
                raise Stall(f"no interface {setup.index}")
            status = 0
        elif setup.recipient == Recipient.ENDPOINT:
            status = 1 if self._addressed_endpoint(setup.index) in self.halted else 0
        else:
            raise Stall(f"GET_STATUS for recipient {setup.recipient}")
        return struct.pack("<H", status)

    def _addressed_endpoint(self, index: int) -> int:
        address = index & 0x8F
        if address & 0x0F and address not in self._endpoints:
            raise Stall(f"no endpoint 0x{address:02x}")
        return address

    def _feature(self, setup: Setup, on: bool) -> None:
        if setup.recipient == Recipient.ENDPOINT and setup.value == Feature.ENDPOINT_HALT:
            address = self._addressed_endpoint(setup.index)
            if address & 0x0F == 0:
                return  # endpoint 0 halts only for the request that failed
            endpoint = self._endpoints[address]
            if on:
                self.halted.add(address)
            else:
                self.halted.discard(address)
                self.on_clear_halt(endpoint)
        elif setup.recipient == Recipient.DEVICE and setup.value == Feature.DEVICE_REMOTE_WAKEUP:
            self.remote_wakeup = on
        else:
            raise Stall(f"unsupported feature request {setup}")

    def _get_descriptor(self, setup: Setup) -> bytes:
        kind, index = setup.value >> 8, setup.value & 0xFF
        answer: bytes | None
        if setup.recipient != Recipient.DEVICE:
            answer = self.descriptor_request(setup)
        elif kind == DescriptorType.DEVICE:
            answer = self.descriptors.device()
        elif kind == DescriptorType.CONFIGURATION:
            if index >= len(self.descriptor.configurations):
                raise Stall(f"no configuration index {index}")
            answer = self.descriptors.configuration(index)
        elif kind == DescriptorType.STRING:
            answer = self.descriptors.string(index)
        elif kind == DescriptorType.DEVICE_QUALIFIER:
            answer = self.descriptors.device_qualifier()
        elif kind == DescriptorType.BOS:
            answer = self.descriptors.bos()
        else:
            answer = self.descriptor_request(setup)
        if answer is None:
            raise Stall(f"no descriptor for {setup}")
        return answer

    def _get_configuration(self, setup: Setup) -> bytes:
        return bytes([self.configuration.value if self.configuration else 0])

    def _set_configuration(self, setup: Setup) -> None:
        self.set_configuration(setup.value & 0xFF)

    def _get_interface(self, setup: Setup) -> bytes:
        if self.interface(setup.index & 0xFF) is None:
            raise Stall(f"no interface {setup.index}")
        return bytes([self.alternates.get(setup.index & 0xFF, 0)])

    def _set_interface(self, setup: Setup) -> None:
        self.set_interface(setup.index & 0xFF, setup.value & 0xFF)

    def _set_address(self, setup: Setup) -> None:
        # vhci completes SET_ADDRESS itself; a stray one is harmless to acknowledge.
        return None


# Enum members the per-URB paths use, as module globals: looking one up on its class costs
# ~70 ns on Python 3.11, several times a URB.
_IN, _OUT, _ISOCHRONOUS = Direction.IN, Direction.OUT, TransferType.ISOCHRONOUS
_GET_DEVICE_DESCRIPTOR = (0x80, StandardRequest.GET_DESCRIPTOR)
# Descriptor types answered from the DescriptorSet alone (not descriptor_request).
_FIXED = frozenset(
    {
        DescriptorType.DEVICE,
        DescriptorType.CONFIGURATION,
        DescriptorType.STRING,
        DescriptorType.DEVICE_QUALIFIER,
        DescriptorType.BOS,
    }
)
_MAX_DESCRIPTOR_ANSWERS = 64


def _shaped(setup: Setup, result: bytes | None) -> bytes:
    """A request's answer as the data stage carries it: at most wLength bytes, IN only."""
    if result is None or not setup.request_type & 0x80:
        return b""
    return result[: setup.length]


def _clear_feature(device: Device, setup: Setup) -> None:
    device._feature(setup, on=False)


def _set_feature(device: Device, setup: Setup) -> None:
    device._feature(setup, on=True)


_STANDARD: dict[tuple[int, int], Callable[[Device, Setup], bytes | None]] = {
    (StandardRequest.GET_STATUS, Direction.IN): Device._get_status,
    (StandardRequest.CLEAR_FEATURE, Direction.OUT): _clear_feature,
    (StandardRequest.SET_FEATURE, Direction.OUT): _set_feature,
    (StandardRequest.SET_ADDRESS, Direction.OUT): Device._set_address,
    (StandardRequest.GET_DESCRIPTOR, Direction.IN): Device._get_descriptor,
    (StandardRequest.GET_CONFIGURATION, Direction.IN): Device._get_configuration,
    (StandardRequest.SET_CONFIGURATION, Direction.OUT): Device._set_configuration,
    (StandardRequest.GET_INTERFACE, Direction.IN): Device._get_interface,
    (StandardRequest.SET_INTERFACE, Direction.OUT): Device._set_interface,
}


def endpoint_type(device: Device, number: int, direction: Direction) -> TransferType | None:
    if number == 0:
        return TransferType.CONTROL
    endpoint = device.endpoint(number, direction)
    return endpoint.transfer if endpoint else None
