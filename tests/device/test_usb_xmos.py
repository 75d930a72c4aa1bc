"""XMOS XVF-3000 control over pyusb against an emulated array at the backend boundary: reads,
writes, and timeouts, stalls and unplugging reported as clear errors (never a traceback)."""

from __future__ import annotations

import io
import struct

import pytest

from mica.device.cli_calibration import usb_main
from mica.device.usb_xmos import (
    PARAMETERS,
    ParameterError,
    UsbDisconnectedError,
    UsbNotFoundError,
    UsbStallError,
    UsbTimeoutError,
    find_arrays,
    open_array,
)
from tests.device.xvf_emulator import FakeXvf, FakeXvfBackend


def _usb(backend: FakeXvfBackend, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = usb_main(list(argv), backend=backend, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_parameter_table_has_the_documented_entries() -> None:
    for name, (pid, offset) in {"DOAANGLE": (21, 0), "AGCONOFF": (19, 0),
                                "AECFREEZEONOFF": (18, 7), "VOICEACTIVITY": (19, 32),
                                "SPEECHDETECTED": (19, 22)}.items():
        assert (PARAMETERS[name].id, PARAMETERS[name].offset) == (pid, offset)
    assert len(PARAMETERS) == 40 and not PARAMETERS["DOAANGLE"].writable


def test_find_read_write_over_the_emulated_array() -> None:
    backend = FakeXvfBackend()
    arrays = find_arrays(backend)
    assert [a.location for a in arrays] == ["1:7"]
    arr = arrays[0]
    assert arr.read("DOAANGLE") == 123 and arr.read("voiceactivity") == 1
    assert arr.read("AGCMAXGAIN") == pytest.approx(31.6, rel=1e-6)
    arr.write("AGCONOFF", 0)
    arr.write("AGCMAXGAIN", 10.5)
    assert arr.read("AGCONOFF") == 0 and arr.read("AGCMAXGAIN") == pytest.approx(10.5)
    dev = backend.devices[0]
    assert dev.writes[-1] == (19, 1, pytest.approx(10.5))
    assert arr.status() == {"doa_deg": 123, "voice": 1, "speech": 0}
    assert arr.version() == 3
    arr.disable_onboard_processing()
    assert arr.read("AGCONOFF") == 0 and arr.read("STATNOISEONOFF") == 0


def test_wire_format_of_a_float_write() -> None:
    backend = FakeXvfBackend()
    open_array(backend).write("GAMMAVAD_SR", 2.0)
    assert backend.devices[0].registers[(19, 39)] == pytest.approx(2.0)
    assert struct.pack("<ifi", 39, 2.0, 0)[8:] == b"\0\0\0\0"  # type word 0 = float


def test_bad_names_and_values_are_parameter_errors() -> None:
    arr = open_array(FakeXvfBackend())
    with pytest.raises(ParameterError, match="read-only"):
        arr.write("DOAANGLE", 10)
    with pytest.raises(ParameterError, match="outside"):
        arr.write("HPFONOFF", 7)
    with pytest.raises(ParameterError, match="not an integer"):
        arr.write("AGCONOFF", "0.5")
    with pytest.raises(ParameterError, match="unknown parameter"):
        arr.read("NOPE")


@pytest.mark.parametrize("fault, error, words", [
    ("timeout", UsbTimeoutError, "did not answer in time"),
    ("stall", UsbStallError, "stalled"),
    ("unplug", UsbDisconnectedError, "unplugged"),
])
def test_faults_become_clear_errors(fault: str, error: type, words: str) -> None:
    backend = FakeXvfBackend()
    arr = open_array(backend)
    assert arr.read("DOAANGLE") == 123
    backend.fault = fault
    with pytest.raises(error, match=words):
        arr.read("DOAANGLE")
    with pytest.raises(error):
        arr.write("AGCONOFF", 1)
    arr.close()  # never raises, even on a vanished device
    backend.fault = None
    assert arr.read("DOAANGLE") == 123  # it recovers when the fault clears


def test_cli_get_set_list() -> None:
    backend = FakeXvfBackend()
    rc, out, err = _usb(backend, "get", "DOAANGLE", "agcmaxgain")
    assert rc == 0 and out.splitlines() == ["DOAANGLE 123", "AGCMAXGAIN 31.6"] and not err
    rc, out, _ = _usb(backend, "set", "AGCONOFF", "0")
    assert rc == 0 and out.strip() == "AGCONOFF 0"
    assert backend.devices[0].registers[(19, 0)] == 0
    rc, out, _ = _usb(backend, "list")
    assert rc == 0 and "1:7  2886:0018" in out and "protocol version 3" in out
    rc, out, _ = _usb(backend, "get")
    assert rc == 0 and len(out.splitlines()) == len(PARAMETERS)
    rc, out, _ = _usb(backend, "params")
    assert rc == 0 and "DOAANGLE" in out


@pytest.mark.parametrize("fault, words", [("timeout", "timeout"), ("stall", "stalled"),
                                          ("unplug", "no XMOS array")])
def test_cli_reports_faults_without_crashing(fault: str, words: str) -> None:
    backend = FakeXvfBackend()
    backend.fault = fault
    rc, out, err = _usb(backend, "get", "DOAANGLE")
    assert rc == 1 and out == "" and words in err and "Traceback" not in err
    rc, out, err = _usb(backend, "set", "AGCONOFF", "1")
    assert rc == 1 and words in err


def test_cli_usage_errors_and_no_device() -> None:
    rc, _, err = _usb(FakeXvfBackend(), "set", "DOAANGLE", "5")
    assert rc == 2 and "read-only" in err
    rc, _, err = _usb(FakeXvfBackend(), "get", "BOGUS")
    assert rc == 2 and "unknown parameter" in err
    rc, out, _ = _usb(FakeXvfBackend(devices=[]), "list")
    assert rc == 0 and "no XMOS USB array found" in out
    rc, _, err = _usb(FakeXvfBackend(devices=[]), "get", "DOAANGLE")
    assert rc == 1 and "no XMOS array" in err


def test_several_arrays_need_a_location() -> None:
    backend = FakeXvfBackend([FakeXvf(bus=1, address=7), FakeXvf(bus=2, address=3)])
    with pytest.raises(UsbNotFoundError, match="--device"):
        open_array(backend)
    backend.devices[1].registers[(21, 0)] = 270
    assert open_array(backend, "2:3").read("DOAANGLE") == 270
    rc, out, _ = _usb(backend, "--device", "2:3", "get", "DOAANGLE")
    assert rc == 0 and out.strip() == "DOAANGLE 270"
