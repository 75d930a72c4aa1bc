"""USB control of XMOS XVF-3000 arrays (ReSpeaker USB Mic Array v2.0) over pyusb.

The array's DSP parameters are read and written with vendor control transfers on endpoint 0
(protocol as published in the vendor's ``tuning.py``, see ``../shared/tools/README.md``):

* write: ``bmRequestType 0x40`` (out, vendor, device), ``bRequest 0``, ``wValue 0``,
  ``wIndex = parameter id``, payload ``<iii offset, value, 1`` for an int or
  ``<ifi offset, value, 0`` for a float;
* read: ``bmRequestType 0xC0`` (in, vendor, device), ``bRequest 0``,
  ``wValue = 0x80 | offset (| 0x40 for an int)``, ``wIndex = id``, 8 bytes ``<ii``:
  an int is the first word, a float is ``mantissa * 2 ** exponent``.

Every USB failure becomes a :class:`UsbError` subclass with a message a technician can act
on (timeout, stall, unplugged, permission, no backend); nothing here lets a ``usb.core``
exception escape, so a flaky array never takes the daemon down.
"""

from __future__ import annotations

import errno
import logging
import struct
from dataclasses import dataclass
from typing import Any

from mica.array_dsp.errors import MicaError

log = logging.getLogger(__name__)

XMOS_VENDOR_ID = 0x2886
XVF3000_PRODUCT_ID = 0x0018
DEFAULT_TIMEOUT_MS = 1000
"""Control transfer timeout; the array answers in well under 10 ms when it is healthy."""

_CTRL_OUT_VENDOR_DEVICE = 0x40
_CTRL_IN_VENDOR_DEVICE = 0xC0


class UsbError(MicaError):
    """A USB array cannot be reached or did not answer as expected."""


class UsbNotFoundError(UsbError):
    """No matching array is plugged in (or none at the requested bus/address)."""


class UsbTimeoutError(UsbError):
    """The array did not answer within the timeout."""


class UsbStallError(UsbError):
    """The array refused the request (endpoint stall): unknown parameter or firmware."""


class UsbDisconnectedError(UsbError):
    """The array went away (unplugged, reset, power)."""


class UsbPermissionError(UsbError):
    """The process may not open the device (udev rule missing)."""


class ParameterError(UsbError):
    """Unknown parameter name, read-only parameter, or value out of range."""


@dataclass(frozen=True)
class XvfParameter:
    """One tuning parameter: control id, offset, type, range, access and meaning."""

    name: str
    id: int
    offset: int
    type: str  # "int" or "float"
    min: float
    max: float
    writable: bool
    doc: str


def _p(name: str, pid: int, offset: int, kind: str, lo: float, hi: float, rw: bool,
       doc: str) -> XvfParameter:
    return XvfParameter(name, pid, offset, kind, lo, hi, rw, doc)


# ids, offsets, types, ranges and access from the vendor's public parameter table; the
# one-line descriptions are ours.
PARAMETERS: dict[str, XvfParameter] = {p.name: p for p in (
    _p("AECFREEZEONOFF", 18, 7, "int", 0, 1, True, "echo canceller adaptation: 0 on, 1 frozen"),
    _p("AECNORM", 18, 19, "float", 0.25, 16, True, "limit on the echo canceller filter norm"),
    _p("AECPATHCHANGE", 18, 25, "int", 0, 1, False, "echo path change detected (1)"),
    _p("RT60", 18, 26, "float", 0.25, 0.9, False, "current reverberation time estimate (s)"),
    _p("HPFONOFF", 18, 27, "int", 0, 3, True,
       "mic high-pass filter: 0 off, 1 70 Hz, 2 125 Hz, 3 180 Hz"),
    _p("RT60ONOFF", 18, 28, "int", 0, 1, True, "RT60 estimation for echo suppression"),
    _p("AECSILENCELEVEL", 18, 30, "float", 1e-9, 1, True,
       "far-end silence threshold (power, default 1e-8 = -80 dBov)"),
    _p("AECSILENCEMODE", 18, 31, "int", 0, 1, False, "far end silent (1) or active (0)"),
    _p("AGCONOFF", 19, 0, "int", 0, 1, True, "automatic gain control on the processed stream"),
    _p("AGCMAXGAIN", 19, 1, "float", 1, 1000, True, "AGC maximum gain (factor; 31.6 = 30 dB)"),
    _p("AGCDESIREDLEVEL", 19, 2, "float", 1e-8, 0.99, True,
       "AGC target power (default 0.005 = -23 dBov)"),
    _p("AGCGAIN", 19, 3, "float", 1, 1000, True, "current AGC gain (factor)"),
    _p("AGCTIME", 19, 4, "float", 0.1, 1, True, "AGC ramp time constant (s)"),
    _p("CNIONOFF", 19, 5, "int", 0, 1, True, "comfort noise insertion"),
    _p("FREEZEONOFF", 19, 6, "int", 0, 1, True, "beamformer adaptation: 0 on, 1 frozen"),
    _p("STATNOISEONOFF", 19, 8, "int", 0, 1, True, "stationary noise suppression"),
    _p("GAMMA_NS", 19, 9, "float", 0, 3, True, "stationary noise over-subtraction"),
    _p("MIN_NS", 19, 10, "float", 0, 1, True, "stationary noise gain floor (0.15 = -16 dB)"),
    _p("NONSTATNOISEONOFF", 19, 11, "int", 0, 1, True, "non-stationary noise suppression"),
    _p("GAMMA_NN", 19, 12, "float", 0, 3, True, "non-stationary noise over-subtraction"),
    _p("MIN_NN", 19, 13, "float", 0, 1, True, "non-stationary noise gain floor (0.3 = -10 dB)"),
    _p("ECHOONOFF", 19, 14, "int", 0, 1, True, "echo suppression"),
    _p("GAMMA_E", 19, 15, "float", 0, 3, True, "echo over-subtraction (direct and early)"),
    _p("GAMMA_ETAIL", 19, 16, "float", 0, 3, True, "echo over-subtraction (tail)"),
    _p("GAMMA_ENL", 19, 17, "float", 0, 5, True, "non-linear echo over-subtraction"),
    _p("NLATTENONOFF", 19, 18, "int", 0, 1, True, "non-linear echo attenuation"),
    _p("NLAEC_MODE", 19, 20, "int", 0, 2, True,
       "non-linear echo canceller training: 0 off, 1 phase 1, 2 phase 2"),
    _p("SPEECHDETECTED", 19, 22, "int", 0, 1, False, "speech detected (1)"),
    _p("FSBUPDATED", 19, 23, "int", 0, 1, False, "fixed beamformer updated (1)"),
    _p("FSBPATHCHANGE", 19, 24, "int", 0, 1, False, "fixed beamformer path change (1)"),
    _p("TRANSIENTONOFF", 19, 29, "int", 0, 1, True, "transient echo suppression"),
    _p("VOICEACTIVITY", 19, 32, "int", 0, 1, False, "voice activity (1)"),
    _p("STATNOISEONOFF_SR", 19, 33, "int", 0, 1, True, "stationary noise suppression (ASR)"),
    _p("NONSTATNOISEONOFF_SR", 19, 34, "int", 0, 1, True,
       "non-stationary noise suppression (ASR)"),
    _p("GAMMA_NS_SR", 19, 35, "float", 0, 3, True, "stationary over-subtraction (ASR, 1.0)"),
    _p("GAMMA_NN_SR", 19, 36, "float", 0, 3, True, "non-stationary over-subtraction (ASR, 1.1)"),
    _p("MIN_NS_SR", 19, 37, "float", 0, 1, True, "stationary gain floor (ASR, 0.15)"),
    _p("MIN_NN_SR", 19, 38, "float", 0, 1, True, "non-stationary gain floor (ASR, 0.3)"),
    _p("GAMMAVAD_SR", 19, 39, "float", 0, 1000, True, "VAD threshold (factor; 1.5 = 3.5 dB)"),
    _p("DOAANGLE", 21, 0, "int", 0, 359, False,
       "direction of arrival (deg, the board's own frame)"),
)}

ONBOARD_PROCESSING_OFF = {"AGCONOFF": 0, "STATNOISEONOFF": 0, "NONSTATNOISEONOFF": 0,
                          "ECHOONOFF": 0, "TRANSIENTONOFF": 0, "CNIONOFF": 0,
                          "STATNOISEONOFF_SR": 0, "NONSTATNOISEONOFF_SR": 0}
"""What ``disable_onboard_processing`` writes: the board's own AGC, noise and echo
suppression off, for when mica does the processing on the raw channels."""

STATUS_PARAMETERS = ("DOAANGLE", "VOICEACTIVITY", "SPEECHDETECTED")
"""The on-board detections mica can publish in telemetry."""


def parameter(name: str) -> XvfParameter:
    """The parameter called ``name`` (case-insensitive), or :class:`ParameterError`."""
    try:
        return PARAMETERS[name.upper()]
    except KeyError as err:
        raise ParameterError(f"unknown parameter {name!r}; known: "
                             f"{', '.join(sorted(PARAMETERS))}") from err


def _translate(err: Exception, what: str) -> UsbError:
    """A pyusb/backend exception as the matching :class:`UsbError`."""
    import usb.core

    code = getattr(err, "errno", None)
    backend_code = getattr(err, "backend_error_code", None)
    if isinstance(err, usb.core.USBTimeoutError) or code == errno.ETIMEDOUT \
            or backend_code == -7:
        return UsbTimeoutError(f"{what}: the array did not answer in time (timeout); check the "
                               "cable and power, or the firmware is busy")
    if code == errno.EPIPE or backend_code == -9:
        return UsbStallError(f"{what}: the array stalled the request (not supported by this "
                             "firmware, or a bad parameter)")
    if code in (errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN) or backend_code == -4:
        return UsbDisconnectedError(f"{what}: the array is gone (unplugged or reset)")
    if code in (errno.EACCES, errno.EPERM) or backend_code == -3:
        return UsbPermissionError(f"{what}: permission denied; add a udev rule, e.g. "
                                  'SUBSYSTEM=="usb", ATTR{idVendor}=="2886", MODE="0664", '
                                  'GROUP="audio"')
    return UsbError(f"{what}: USB error: {err}")


class XvfArray:
    """One XVF-3000 array: read and write its parameters.

    Args:
        device: a ``usb.core.Device`` (from :func:`find_arrays`).
        timeout_ms: per control transfer.
    """

    def __init__(self, device: Any, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        self.device = device
        self.timeout_ms = int(timeout_ms)

    @property
    def location(self) -> str:
        """``bus:address`` of the device (``?`` when the backend does not say)."""
        bus = getattr(self.device, "bus", None)
        addr = getattr(self.device, "address", None)
        return f"{bus if bus is not None else '?'}:{addr if addr is not None else '?'}"

    def _ctrl(self, what: str, *args: Any) -> Any:
        import usb.core

        try:
            return self.device.ctrl_transfer(*args, timeout=self.timeout_ms)
        except (usb.core.USBError, OSError, ValueError) as err:
            raise _translate(err, what) from err

    def read(self, name: str) -> int | float:
        """Current value of parameter ``name``."""
        p = parameter(name)
        w_value = 0x80 | p.offset | (0x40 if p.type == "int" else 0)
        data = self._ctrl(f"read {p.name}", _CTRL_IN_VENDOR_DEVICE, 0, w_value, p.id, 8)
        raw = bytes(data)
        if len(raw) != 8:
            raise UsbError(f"read {p.name}: expected 8 bytes, got {len(raw)}")
        mantissa, exponent = struct.unpack("<ii", raw)
        if p.type == "int":
            return int(mantissa)
        return float(mantissa) * 2.0 ** exponent

    def write(self, name: str, value: float | int | str) -> None:
        """Set parameter ``name`` (checked against its type, range and access)."""
        p = parameter(name)
        if not p.writable:
            raise ParameterError(f"{p.name} is read-only")
        try:
            number = int(value) if p.type == "int" else float(value)
        except (TypeError, ValueError) as err:
            kind = "an integer" if p.type == "int" else "a number"
            raise ParameterError(f"{p.name}: {value!r} is not {kind}") from err
        if p.type == "int" and isinstance(value, (float, str)) and float(value) != number:
            raise ParameterError(f"{p.name}: {value!r} is not an integer")
        if not p.min <= number <= p.max:
            raise ParameterError(f"{p.name}: {number} outside [{p.min:g}, {p.max:g}]")
        if p.type == "int":
            payload = struct.pack("<iii", p.offset, number, 1)
        else:
            payload = struct.pack("<ifi", p.offset, number, 0)
        self._ctrl(f"write {p.name}", _CTRL_OUT_VENDOR_DEVICE, 0, 0, p.id, payload)

    def read_all(self) -> dict[str, int | float]:
        """Every parameter's value (stops at the first USB error)."""
        return {name: self.read(name) for name in sorted(PARAMETERS)}

    def version(self) -> int:
        """The firmware's control protocol version byte."""
        data = self._ctrl("read version", _CTRL_IN_VENDOR_DEVICE, 0, 0x80, 0, 1)
        raw = bytes(data)
        if len(raw) != 1:
            raise UsbError(f"read version: expected 1 byte, got {len(raw)}")
        return raw[0]

    def status(self) -> dict[str, int]:
        """The on-board DOA and VAD (for telemetry): ``doa_deg``, ``voice``, ``speech``."""
        return {"doa_deg": int(self.read("DOAANGLE")), "voice": int(self.read("VOICEACTIVITY")),
                "speech": int(self.read("SPEECHDETECTED"))}

    def disable_onboard_processing(self) -> None:
        """Switch the board's AGC, noise and echo suppression off
        (:data:`ONBOARD_PROCESSING_OFF`)."""
        for name, value in ONBOARD_PROCESSING_OFF.items():
            self.write(name, value)

    def close(self) -> None:
        """Release the device (never raises)."""
        try:
            import usb.util

            usb.util.dispose_resources(self.device)
        except Exception as err:  # closing a vanished device is not an error
            log.debug("dispose_resources: %s", err)


def find_arrays(backend: Any = None, vendor_id: int = XMOS_VENDOR_ID,
                product_id: int = XVF3000_PRODUCT_ID,
                timeout_ms: int = DEFAULT_TIMEOUT_MS) -> list[XvfArray]:
    """Every plugged-in array with this VID:PID (empty list when none).

    ``backend``: a ``usb.backend.IBackend`` (default: libusb found by pyusb).

    Raises:
        UsbError: no libusb backend is installed, or enumeration failed.
    """
    try:
        import usb.core
    except ImportError as err:  # pragma: no cover - pyusb is a dependency
        raise UsbError("pyusb is not installed") from err
    try:
        found = usb.core.find(find_all=True, idVendor=vendor_id, idProduct=product_id,
                              backend=backend)
        devices = list(found) if found is not None else []
    except usb.core.NoBackendError as err:
        raise UsbError("no USB backend: install libusb-1.0 (apt-get install libusb-1.0-0)") \
            from err
    except (usb.core.USBError, OSError) as err:
        raise _translate(err, "enumerate USB devices") from err
    return [XvfArray(d, timeout_ms) for d in devices]


def open_array(backend: Any = None, location: str | None = None,
               timeout_ms: int = DEFAULT_TIMEOUT_MS) -> XvfArray:
    """The one array plugged in, or the one at ``location`` (``bus:address``).

    Raises:
        UsbNotFoundError: none plugged in, none at ``location``, or several and no location.
    """
    arrays = find_arrays(backend, timeout_ms=timeout_ms)
    if location:
        arrays = [a for a in arrays if a.location == location]
    if not arrays:
        where = f" at {location}" if location else ""
        raise UsbNotFoundError(f"no XMOS array ({XMOS_VENDOR_ID:04x}:{XVF3000_PRODUCT_ID:04x})"
                               f"{where} found; check `lsusb` and the cable")
    if len(arrays) > 1:
        where = ", ".join(a.location for a in arrays)
        raise UsbNotFoundError(f"{len(arrays)} arrays found ({where}): pick one with "
                               "--device BUS:ADDRESS")
    return arrays[0]
