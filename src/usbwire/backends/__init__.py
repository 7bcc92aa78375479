"""Where URBs end up: emulated devices, libusb passthrough, the Linux usbip-host stub."""
