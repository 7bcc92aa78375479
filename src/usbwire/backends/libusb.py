"""Real devices through libusb (python-libusb1): every URB becomes a libusb transfer.

libusb's event handling runs inside the asyncio loop: its file descriptors are watched with
``add_reader``/``add_writer`` and its timeouts with ``call_later``, so completions arrive as
loop callbacks without a thread or a busy loop. This works wherever libusb has pollable
descriptors (Linux, the BSDs, macOS).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import usb1

from usbwire.backends.base import ExportedDevice, Urb, UrbResult
from usbwire.backends.usbip_host import on_vhci
from usbwire.protocol.constants import Direction, Errno, Speed, TransferType, UrbFlag
from usbwire.protocol.descriptors import (
    ConfigurationDescriptor,
    EndpointDescriptor,
    EndpointTable,
    InterfaceDescriptor,
)
from usbwire.protocol.pdu import DeviceInfo, InterfaceInfo, IsoPacket

log = logging.getLogger("usbwire.libusb")

_STATUS = {
    usb1.TRANSFER_COMPLETED: 0,
    usb1.TRANSFER_ERROR: -Errno.EPROTO,
    usb1.TRANSFER_TIMED_OUT: -Errno.ETIMEDOUT,
    usb1.TRANSFER_CANCELLED: -Errno.ECONNRESET,
    usb1.TRANSFER_STALL: -Errno.EPIPE,
    usb1.TRANSFER_NO_DEVICE: -Errno.ENODEV,
    usb1.TRANSFER_OVERFLOW: -Errno.EOVERFLOW,
}
_SPEED = {1: Speed.LOW, 2: Speed.FULL, 3: Speed.HIGH, 4: Speed.SUPER, 5: Speed.SUPER_PLUS}

# bmRequestType, bRequest of the requests the kernel's stub runs through the host's USB
# stack instead of sending them raw, so host-side state (configuration, toggles) stays right.
SET_CONFIGURATION = (0x00, 9)
SET_INTERFACE = (0x01, 11)
CLEAR_HALT = (0x02, 1)
PORT_RESET = (0x23, 3)
_SPECIAL = {SET_CONFIGURATION, SET_INTERFACE, CLEAR_HALT, PORT_RESET}


def busid_of(device: usb1.USBDevice) -> str:
    """The busid Linux gives the device (``bus-port.port...``), from its port path."""
    ports = device.getPortNumberList() or [device.getDeviceAddress()]
    return f"{device.getBusNumber()}-{'.'.join(str(p) for p in ports)}"


class LoopIntegration:
    """Drives a libusb context's events from an asyncio loop."""

    def __init__(self, context: usb1.USBContext, loop: asyncio.AbstractEventLoop) -> None:
        self.context = context
        self.loop = loop
        self._loop_thread = threading.get_ident()
        self._fds: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._running = True
        try:
            pollfds = context.getPollFDList()
        except NotImplementedError:
            # Windows' libusb has no pollable descriptors: handle events in a thread of
            # its own, which blocks in libusb (no busy loop) and wakes for each event.
            self._thread = threading.Thread(target=self._event_thread, name="libusb events", daemon=True)
            self._thread.start()
            return
        for fd, events in pollfds:
            self._added(fd, events, None)
        # Keep references: libusb calls back through these ctypes wrappers.
        context.setPollFDNotifiers(self._added, self._removed)
        self._arm_timer()

    def _event_thread(self) -> None:
        while self._running:
            try:
                self.context.handleEventsTimeout(0.5)
            except usb1.USBError as error:
                log.warning("libusb event handling failed: %s", error)

    def _added(self, fd: int, events: int, user_data: Any) -> None:
        import select

        if threading.get_ident() != self._loop_thread:
            # A handle opened in a worker thread: the loop changes its own watches.
            self.loop.call_soon_threadsafe(self._added, fd, events, user_data)
            return
        if events & select.POLLIN:
            self.loop.add_reader(fd, self.handle_events)
        if events & select.POLLOUT:
            self.loop.add_writer(fd, self.handle_events)
        self._fds.add(fd)

    def _removed(self, fd: int, user_data: Any) -> None:
        # Always on the loop's thread (handles are closed there): libusb closes the descriptor
        # right after this returns, and a removal the loop made later could hit whatever
        # socket the loop had opened under the same number meanwhile.
        self.loop.remove_reader(fd)
        self.loop.remove_writer(fd)
        self._fds.discard(fd)

    def handle_events(self) -> None:
        try:
            self.context.handleEventsTimeout(0)
        except usb1.USBError as error:
            log.warning("libusb event handling failed: %s", error)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        timeout = self.context.getNextTimeout()
        if timeout is not None:
            self._timer = self.loop.call_later(max(timeout, 0.0), self.handle_events)

    def close(self) -> None:
        self._running = False
        if self._thread is not None:
            self.context.interruptEventHandler()
            self._thread.join(timeout=2)
        if self._timer is not None:
            self._timer.cancel()
        for fd in list(self._fds):
            self._removed(fd, None)


def _configuration(config: usb1.USBConfiguration) -> ConfigurationDescriptor:
    interfaces = []
    for interface in config:
        for setting in interface:
            endpoints = tuple(
                EndpointDescriptor(
                    7,
                    5,
                    e.getAddress(),
                    e.getAttributes(),
                    e.getMaxPacketSize(),
                    e.getInterval(),
                    b"".join(e.getExtra() or ()),
                )
                for e in setting
            )
            interfaces.append(
                InterfaceDescriptor(
                    9,
                    4,
                    setting.getNumber(),
                    setting.getAlternateSetting(),
                    setting.getNumEndpoints(),
                    setting.getClass(),
                    setting.getSubClass(),
                    setting.getProtocol(),
                    setting.getDescriptor(),
                    endpoints=endpoints,
                )
            )
    return ConfigurationDescriptor(
        9, 2, 0, config.getNumInterfaces(), config.getConfigurationValue(),
        config.getDescriptor(), config.getAttributes(), config.getMaxPower(), interfaces=tuple(interfaces),
    )  # fmt: skip


class LibusbExport(ExportedDevice):
    """One real device, opened and claimed while a client imports it."""

    def __init__(
        self, device: usb1.USBDevice, context: usb1.USBContext, gone: Callable[[], None] = lambda: None
    ) -> None:
        self.device = device
        self.context = context
        # Called when a transfer finds the device unplugged, so the export goes at once.
        self.gone = gone
        # Set by the manager when the device is gone: run once the export is closed.
        self.retired: Callable[[], None] | None = None
        self.busid = busid_of(device)
        self.handle: usb1.USBDeviceHandle | None = None
        self.endpoints = EndpointTable()
        for config in device:
            self.endpoints.add(_configuration(config))
        self._claimed: list[int] = []
        self._detached: set[int] = set()
        # Clear while a reconfiguration or reset runs in its thread: as with the kernel's stub,
        # whose receiving thread does these in line, no other URB reaches the device meanwhile.
        self._settled = asyncio.Event()
        self._settled.set()
        self._info = self._read_info()

    def _read_info(self) -> DeviceInfo:
        device = self.device
        first = next(iter(self.endpoints.configurations.values()), None)
        interfaces = tuple(
            InterfaceInfo(i.bInterfaceClass, i.bInterfaceSubClass, i.bInterfaceProtocol)
            for i in (first.interfaces if first else ())
            if i.bAlternateSetting == 0
        )
        path = f"/sys/bus/usb/devices/{self.busid}"
        return DeviceInfo(
            path=os.path.realpath(path) if os.path.exists(path) else path,
            busid=self.busid,
            busnum=device.getBusNumber(),
            devnum=device.getDeviceAddress(),
            speed=_SPEED.get(device.getDeviceSpeed(), Speed.HIGH),
            idVendor=device.getVendorID(),
            idProduct=device.getProductID(),
            bcdDevice=device.getbcdDevice(),
            bDeviceClass=device.getDeviceClass(),
            bDeviceSubClass=device.getDeviceSubClass(),
            bDeviceProtocol=device.getDeviceProtocol(),
            bConfigurationValue=0,
            bNumConfigurations=device.getNumConfigurations(),
            bNumInterfaces=len(interfaces),
            interfaces=interfaces,
        )

    @property
    def info(self) -> DeviceInfo:
        return self._info

    def endpoint_type(self, ep: int, direction: Direction) -> TransferType | None:
        return self.endpoints.transfer_type(ep, direction)

    # Opening, claiming, configuring and resetting a device wait for the kernel (a reset takes
    # a re-enumeration, detaching a driver its unbinding): they run in a worker thread, so the
    # loop goes on serving every other device and client meanwhile. Only closing the handle,
    # which is quick, stays on the loop.

    async def open(self) -> None:
        self.handle = handle = await asyncio.to_thread(self.device.open)
        try:
            value = await asyncio.to_thread(handle.getConfiguration)
        except usb1.USBError:
            value = 0
        await asyncio.to_thread(self._claim, self._interfaces(value))
        self.endpoints.set_configuration(value)

    def _interfaces(self, configuration: int) -> list[int]:
        chosen = self.endpoints.configurations.get(configuration) if configuration else None
        return sorted({i.bInterfaceNumber for i in chosen.interfaces}) if chosen else []

    def _claim(self, numbers: list[int]) -> None:
        assert self.handle is not None
        for number in numbers:
            try:
                # Detach by hand rather than libusb's auto-detach, which would give the
                # interface back to its kernel driver on every release (and make a later
                # SET_CONFIGURATION fail with BUSY).
                if self.handle.kernelDriverActive(number):
                    self.handle.detachKernelDriver(number)
                    self._detached.add(number)
                self.handle.claimInterface(number)
                self._claimed.append(number)
            except usb1.USBError as error:
                log.warning("%s: cannot claim interface %d: %s", self.busid, number, error)

    def _release_all(self) -> None:
        assert self.handle is not None
        for number in self._claimed:
            with contextlib.suppress(usb1.USBError):
                self.handle.releaseInterface(number)
        self._claimed = []

    def _reattach_drivers(self) -> None:
        assert self.handle is not None
        for number in sorted(self._detached):
            with contextlib.suppress(usb1.USBError):
                self.handle.attachKernelDriver(number)
        self._detached.clear()

    def _give_back(self) -> None:
        self._release_all()
        self._reattach_drivers()

    def _reconfigure(self, value: int, numbers: list[int]) -> None:
        assert self.handle is not None
        self._release_all()
        self.handle.setConfiguration(value)
        self._claim(numbers)

    async def submit(self, urb: Urb) -> UrbResult:
        if not self._settled.is_set():
            await self._settled.wait()
        if self.handle is None:
            return UrbResult(status=-Errno.ENODEV)
        if urb.transfer_type == TransferType.CONTROL and (urb.setup[0], urb.setup[1]) in _SPECIAL:
            special = await self._special(urb)
            if special is not None:
                return special
        transfer = self.handle.getTransfer(iso_packets=len(urb.iso_packets))
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        loop_thread = threading.get_ident()

        def finish() -> None:
            if not done.done():
                done.set_result(None)

        def completed(_: usb1.USBTransfer) -> None:
            # On the loop's thread with pollable descriptors; on libusb's event thread where
            # the platform has none (Windows).
            if threading.get_ident() == loop_thread:
                finish()
            else:
                loop.call_soon_threadsafe(finish)

        self._fill(transfer, urb, completed)
        try:
            transfer.submit()
        except usb1.USBErrorNoDevice:
            return UrbResult(status=-Errno.ENODEV)
        except usb1.USBError as error:
            log.warning("%s: submit failed: %s", self.busid, error)
            return UrbResult(status=-Errno.EPROTO)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            # UNLINK: cancel at libusb and wait until the transfer is really finished.
            with contextlib.suppress(usb1.USBError):
                transfer.cancel()
            await done
            raise
        result = self._result(transfer, urb)
        if result.status == -Errno.ENODEV:
            self.gone()
        return result

    def _fill(self, transfer: usb1.USBTransfer, urb: Urb, callback: Callable[[usb1.USBTransfer], None]) -> None:
        address = urb.ep | (0x80 if urb.direction == Direction.IN else 0)
        buffer: int | bytes = urb.length if urb.direction == Direction.IN else urb.data
        if urb.transfer_type == TransferType.CONTROL:
            request_type, request = urb.setup[0], urb.setup[1]
            value = int.from_bytes(urb.setup[2:4], "little")
            index = int.from_bytes(urb.setup[4:6], "little")
            transfer.setControl(request_type, request, value, index, buffer, callback=callback)
        elif urb.transfer_type == TransferType.BULK:
            transfer.setBulk(address, buffer, callback=callback)
            # The kernel's stub keeps URB_ZERO_PACKET on bulk OUT only; some devices need
            # the zero-length packet to see the end of a transfer that fills its last packet.
            transfer.setAddZeroPacket(urb.direction == Direction.OUT and bool(urb.flags & UrbFlag.ZERO_PACKET))
        elif urb.transfer_type == TransferType.INTERRUPT:
            transfer.setInterrupt(address, buffer, callback=callback)
        else:
            lengths = [p.length for p in urb.iso_packets]
            transfer.setIsochronous(address, buffer, callback=callback, iso_transfer_length_list=lengths)

    def _result(self, transfer: usb1.USBTransfer, urb: Urb) -> UrbResult:
        status = _STATUS.get(transfer.getStatus(), -Errno.EPROTO)
        if urb.transfer_type == TransferType.ISOCHRONOUS:
            packets = []
            data = bytearray()
            errors = 0
            for submitted, result in zip(urb.iso_packets, transfer.getISOSetupList(), strict=True):
                packet_status = _STATUS.get(result["status"], -Errno.EPROTO)
                errors += packet_status != 0
                packets.append(IsoPacket(submitted.offset, submitted.length, result["actual_length"], packet_status))
            if urb.direction == Direction.IN:
                for _, chunk in transfer.iterISO():
                    data += chunk
            return UrbResult(status=status, data=bytes(data), iso_packets=tuple(packets), error_count=errors)
        actual = transfer.getActualLength()
        if urb.direction == Direction.OUT:
            return UrbResult(status=status, actual_length=actual)
        received = bytes(transfer.getBuffer()[:actual])
        if not status and actual < urb.length and urb.flags & UrbFlag.SHORT_NOT_OK:
            status = -Errno.EREMOTEIO
        return UrbResult(status=status, data=received)

    async def _special(self, urb: Urb) -> UrbResult | None:
        """Run the requests the kernel's stub intercepts through libusb's own calls."""
        handle = self.handle
        assert handle is not None
        kind = (urb.setup[0], urb.setup[1])
        self._settled.clear()
        running = asyncio.ensure_future(self._run_special(handle, kind, urb))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            # An UNLINK cannot stop the kernel halfway through a reconfiguration: it finishes
            # (and the endpoint table follows it) before the URB is given up.
            await asyncio.wait({running})
            raise
        finally:
            self._settled.set()

    async def _run_special(self, handle: usb1.USBDeviceHandle, kind: tuple[int, int], urb: Urb) -> UrbResult | None:
        value = int.from_bytes(urb.setup[2:4], "little")
        index = int.from_bytes(urb.setup[4:6], "little")
        try:
            if kind == SET_CONFIGURATION:
                active = self.endpoints.active
                if active is None or active.bConfigurationValue != value:
                    await asyncio.to_thread(self._reconfigure, value, self._interfaces(value))
                    self.endpoints.set_configuration(value)
                # The same configuration again (what every host does after enumerating):
                # nothing to change on the host side, and usbfs would refuse it while the
                # interfaces are claimed.
            elif kind == SET_INTERFACE:
                await asyncio.to_thread(handle.setInterfaceAltSetting, index, value)
                self.endpoints.set_interface(index, value)
            elif kind == CLEAR_HALT and value == 0:
                await asyncio.to_thread(handle.clearHalt, index & 0x8F)
            elif kind == PORT_RESET and value == 4:
                await asyncio.to_thread(handle.resetDevice)
            else:
                return None
        except usb1.USBErrorNoDevice:
            return UrbResult(status=-Errno.ENODEV)
        except usb1.USBError as error:
            # Like the stub: if the host's call fails, let the device answer the raw request.
            log.info("%s: %s failed (%s); sending the request as is", self.busid, kind, error)
            return None
        return UrbResult()

    async def reset(self) -> None:
        if self.handle is not None:
            with contextlib.suppress(usb1.USBError):
                await asyncio.to_thread(self.handle.resetDevice)

    async def close(self) -> None:
        if self.handle is not None:
            await asyncio.to_thread(self._give_back)
            with contextlib.suppress(usb1.USBError):
                self.handle.close()  # on the loop's thread: see LoopIntegration._removed
            self.handle = None
        if self.retired is not None:
            # The device left while imported: its libusb context may go only now that the
            # handle is closed (closing it first would free what the handle still uses).
            retired, self.retired = self.retired, None
            retired()


class _Scan:
    """One libusb context, the devices it found, its loop integration and the exports that use it."""

    def __init__(self) -> None:
        # Blocking, so run in a worker thread: listing reads every USB device's sysfs files,
        # and the kernel holds a hub's lock while it enumerates a new child. When that child
        # is one of this server's own devices imported on the same machine (vhci), its
        # enumeration waits for the server to answer: listing on the loop would deadlock.
        self.context = usb1.USBContext()
        self.context.open()
        self.present: dict[str, usb1.USBDevice] = {}
        try:
            for device in self.context.getDeviceIterator(skip_on_error=True):
                busid = busid_of(device)
                # Never exported: hubs, and devices this machine imports (as the kernel's
                # bind refuses them too; exporting an import of our own would be a loop).
                if device.getDeviceClass() != 0x09 and not on_vhci(f"/sys/bus/usb/devices/{busid}"):
                    self.present[busid] = device
        except BaseException:
            self.context.close()
            raise
        self.integration: LoopIntegration | None = None
        self.users: set[str] = set()

    def keep_for(self, busid: str, loop: asyncio.AbstractEventLoop) -> None:
        if self.integration is None:
            self.integration = LoopIntegration(self.context, loop)
        self.users.add(busid)

    def release(self, busid: str) -> None:
        self.users.discard(busid)
        if not self.users:
            self.close()

    def close(self) -> None:
        if self.integration is not None:
            self.integration.close()
            self.integration = None
        self.context.close()


async def _scan_in_thread() -> _Scan:
    pending = asyncio.get_running_loop().run_in_executor(None, _Scan)
    try:
        return await asyncio.shield(pending)
    except asyncio.CancelledError:
        # The thread cannot be stopped: its context is closed once the listing is done.
        pending.add_done_callback(_close_unused)
        raise


def _close_unused(listed: asyncio.Future[_Scan]) -> None:
    if not listed.cancelled() and listed.exception() is None:
        listed.result().close()


class LibusbManager:
    """Finds devices that match the export rules and follows them as they come and go.

    Every scan enumerates in a fresh libusb context: a context's device list only changes
    through hotplug events, which libusb gets from udev where it was built with udev
    support, and a machine without a running udevd (containers, minimal VMs) sends none.
    A context lives on as long as an export made from it.
    """

    def __init__(
        self,
        matches: Callable[[LibusbExport], bool],
        added: Callable[[LibusbExport], None],
        removed: Callable[[str], None],
        poll_interval: float = 2.0,
    ) -> None:
        self.matches = matches
        self.added = added
        self.removed = removed
        self.poll_interval = poll_interval
        self.exports: dict[str, LibusbExport] = {}
        self._scans: dict[str, _Scan] = {}
        self._poller: asyncio.Task[None] | None = None
        # Set when a transfer finds a device unplugged: look again now, not at the next poll.
        self._look_now = asyncio.Event()

    async def start(self) -> None:
        await self.rescan()
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._look_now.wait(), self.poll_interval)
            self._look_now.clear()
            try:
                await self.rescan()
            except usb1.USBError as error:
                log.warning("cannot list USB devices: %s", error)

    async def rescan(self) -> None:
        scan = await _scan_in_thread()
        try:
            present = scan.present
            for busid in list(self.exports):
                current = present.get(busid)
                if current is None or current.getDeviceAddress() != self.exports[busid].info.devnum:
                    gone = self.exports.pop(busid)
                    log.info("%s is gone", busid)
                    old_scan = self._scans.pop(busid)
                    if gone.handle is None:
                        old_scan.release(busid)
                    else:
                        gone.retired = functools.partial(old_scan.release, busid)
                    self.removed(busid)
            for busid, device in present.items():
                if busid in self.exports:
                    continue
                try:
                    export = LibusbExport(device, scan.context, self._look_now.set)
                except usb1.USBError as error:
                    log.debug("%s: cannot read descriptors: %s", busid, error)
                    continue
                if self.matches(export):
                    scan.keep_for(busid, asyncio.get_running_loop())
                    self._scans[busid] = scan
                    self.exports[busid] = export
                    self.added(export)
        finally:
            scan.present.clear()
            if not scan.users:
                scan.close()

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for busid, export in list(self.exports.items()):
            await export.close()
            self._scans.pop(busid).release(busid)
        self.exports.clear()
