"""The usbwire kernel lab: Debian's Linux kernel in QEMU (TCG) as a USB/IP peer for tests.

The guest runs the kernel's own USB/IP client (vhci-hcd + ``usbip attach``) and server
(usbip-host + ``usbipd``), QEMU-emulated USB devices, and, through a chroot of the
host's root shared read-only, the host's Python and this checkout on the guest kernel.
See ``tests/lab/README.md``.
"""
