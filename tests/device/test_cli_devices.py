"""``mica devices`` against real ALSA PCMs (the fakemic plugin) and an emulated USB array."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mica.device.cli import main
from mica.device.cli_devices import list_usb_arrays, probe_pcm
from tests.device.xvf_emulator import FakeXvfBackend
from tests.fixtures_alsa import FakeAlsa


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["devices", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_lists_each_pcm_with_what_it_accepts(fake_alsa: FakeAlsa,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # a PCM whose file is gone by the time it is probed: the open fails, the row says why
    broken = fake_alsa.add_pcm_from_samples("gone6", np.zeros((6, 160)), 48000, "S32_LE")
    (fake_alsa.dir / f"{broken}.raw").unlink()
    report = _json(capsys, "--timeout-s", "1.5")
    rows = {r["name"]: r for r in report["alsa"]}
    assert report["alsa_error"] is None
    assert "null" not in rows
    assert rows["mic4"] == {"name": "mic4", "channels": [4], "formats": ["S16_LE"],
                            "rates_hz": [16000], "rate_range": False, "error": None}
    assert (rows["mic8"]["channels"], rows["mic8"]["formats"]) == ([8], ["S32_LE"])
    assert rows["gone6"]["error"] and rows["gone6"]["channels"] == []
    # fifo4 opens a FIFO nobody writes: the open blocks, the probe gives up, the rest go on
    assert "no answer within 1.5 s" in rows["fifo4"]["error"]
    # no USB array on this machine (and maybe no libusb): none listed, never a crash
    assert report["usb"] == []


def test_table(fake_alsa: FakeAlsa, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "--timeout-s", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["PCM", "CHANNELS", "FORMATS", "RATES_HZ"]
    assert any(line.split() == ["mic8", "8", "S32_LE", "16000"] for line in lines)
    assert any(line.startswith("fifo4") and "error: no answer" in line for line in lines)
    assert any(line.startswith("USB arrays") for line in lines)


def test_probe_of_an_unknown_pcm_reports_the_error(fake_alsa: FakeAlsa) -> None:
    info = probe_pcm("no_such_pcm_x", timeout_s=2.0)
    assert info.channels == [] and "no_such_pcm_x" in (info.error or "")


def test_known_usb_array_is_listed_by_vid_pid() -> None:
    arrays, error = list_usb_arrays(FakeXvfBackend())
    assert error is None
    assert [(a.vendor_id, a.product_id, a.location) for a in arrays] == [("2886", "0018",
                                                                           "1:7")]
