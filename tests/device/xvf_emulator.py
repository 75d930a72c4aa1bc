"""An emulated ReSpeaker USB Mic Array (XMOS XVF-3000) at the pyusb backend boundary.

:class:`FakeXvfBackend` is a ``usb.backend.IBackend``: pass it as ``backend=`` to
``usb.core.find`` (and so to :func:`mica.device.usb_xmos.find_arrays`). It answers the vendor
control transfers of the parameter protocol from its own register file and can inject the
failures a real array shows: ``timeout`` (the libusb timeout error), ``stall`` (EPIPE) and
``unplug`` (the device vanishes: ENODEV on every call, gone from enumeration).
"""

from __future__ import annotations

import errno
import math
import struct
from dataclasses import dataclass, field

import usb.backend
import usb.core

from mica.device.usb_xmos import PARAMETERS, XMOS_VENDOR_ID, XVF3000_PRODUCT_ID


@dataclass
class _Descriptor:
    bus: int = 1
    address: int = 7
    bLength: int = 18
    bDescriptorType: int = 1
    bcdUSB: int = 0x0200
    bDeviceClass: int = 0
    bDeviceSubClass: int = 0
    bDeviceProtocol: int = 0
    bMaxPacketSize0: int = 64
    idVendor: int = XMOS_VENDOR_ID
    idProduct: int = XVF3000_PRODUCT_ID
    bcdDevice: int = 0x0300
    iManufacturer: int = 0
    iProduct: int = 0
    iSerialNumber: int = 0
    bNumConfigurations: int = 1
    port_number: int = 1
    port_numbers: tuple = (1,)
    speed: int = 2


@dataclass
class FakeXvf:
    """The emulated device's state: registers keyed by (id, offset)."""

    bus: int = 1
    address: int = 7
    registers: dict = field(default_factory=dict)
    version: int = 3
    writes: list = field(default_factory=list)

    def __post_init__(self) -> None:
        defaults = {"AGCONOFF": 1, "AGCMAXGAIN": 31.6, "AGCGAIN": 1.0, "DOAANGLE": 123,
                    "VOICEACTIVITY": 1, "SPEECHDETECTED": 0, "AECFREEZEONOFF": 0,
                    "GAMMAVAD_SR": 1.5, "RT60": 0.42}
        for p in PARAMETERS.values():
            self.registers.setdefault((p.id, p.offset), defaults.get(p.name, 0 if p.type == "int"
                                                                    else 0.5))


class FakeXvfBackend(usb.backend.IBackend):
    """pyusb backend with emulated XVF-3000 arrays; set ``fault`` to inject failures."""

    def __init__(self, devices: list[FakeXvf] | None = None) -> None:
        self.devices = [FakeXvf()] if devices is None else devices
        self.fault: str | None = None  # None, "timeout", "stall", "unplug"
        self.transfers = 0

    # enumeration -----------------------------------------------------------------------
    def enumerate_devices(self):
        if self.fault == "unplug":
            return iter(())
        return iter(list(self.devices))

    def get_device_descriptor(self, dev: FakeXvf) -> _Descriptor:
        return _Descriptor(bus=dev.bus, address=dev.address)

    def open_device(self, dev: FakeXvf) -> FakeXvf:
        if self.fault == "unplug":
            raise usb.core.USBError("No such device (it may have been disconnected)", -4,
                                    errno.ENODEV)
        return dev

    def close_device(self, dev_handle: FakeXvf) -> None:
        pass

    # control transfers ---------------------------------------------------------------
    def ctrl_transfer(self, dev_handle, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        self.transfers += 1
        if self.fault == "timeout":
            raise usb.core.USBTimeoutError("Operation timed out", -7, errno.ETIMEDOUT)
        if self.fault == "stall":
            raise usb.core.USBError("Pipe error", -9, errno.EPIPE)
        if self.fault == "unplug":
            raise usb.core.USBError("No such device (it may have been disconnected)", -4,
                                    errno.ENODEV)
        dev: FakeXvf = dev_handle
        if bRequest != 0:
            raise usb.core.USBError("Pipe error", -9, errno.EPIPE)
        if bmRequestType == 0x40:
            raw = bytes(data)
            offset, value, kind = struct.unpack("<iii", raw)
            if kind == 0:
                value = struct.unpack("<ifi", raw)[1]
            if (wIndex, offset) not in dev.registers:
                raise usb.core.USBError("Pipe error", -9, errno.EPIPE)
            dev.registers[(wIndex, offset)] = value
            dev.writes.append((wIndex, offset, value))
            return len(raw)
        if bmRequestType == 0xC0:
            if wValue == 0x80 and wIndex == 0:
                data[0] = dev.version
                return 1
            if not wValue & 0x80:
                raise usb.core.USBError("Pipe error", -9, errno.EPIPE)
            offset = wValue & 0x3F
            key = (wIndex, offset)
            if key not in dev.registers:
                raise usb.core.USBError("Pipe error", -9, errno.EPIPE)
            value = dev.registers[key]
            if wValue & 0x40:
                payload = struct.pack("<ii", int(value), 0)
            else:
                frac, exp = math.frexp(float(value))
                payload = struct.pack("<ii", int(round(frac * 2**30)), exp - 30)
            n = min(len(data), len(payload))
            for i in range(n):
                data[i] = payload[i]
            return n
        raise usb.core.USBError("Pipe error", -9, errno.EPIPE)
