"""``mica calibrate`` end to end: a corpus recording with channels swapped and one mic 6 dB
quiet gives a calibration file that puts them right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mica.calibration.calfile import load_calibration
from mica.device.cli import main

SPEECH = "speechbrain_4mic_speech_-0.82918_0.55279_-0.082918"


def test_calibrate_writes_order_gain_and_summary(corpus_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    mc = corpus_dir / "multichannel"
    perm = [2, 0, 1, 3]
    talk, fs = sf.read(mc / f"{SPEECH}.wav", always_2d=True)
    noise, _ = sf.read(mc / "speechbrain_4mic_noise_diffuse.wav", always_2d=True)
    talk, noise = talk[:, perm].copy(), noise[:, perm].copy()
    talk[:, 1] *= 0.5  # channel 1 carries mic 0: it is 6 dB quiet
    noise[:, 1] *= 0.5
    sf.write(tmp_path / "talk.wav", talk, fs)
    sf.write(tmp_path / "noise.wav", noise, fs)
    out = tmp_path / "cal.json"
    rc = main(["calibrate", str(tmp_path / "talk.wav"), "--array", str(mc / f"{SPEECH}.json"),
               "--noise", str(tmp_path / "noise.wav"), "--azimuth", "146.3",
               "--elevation", "-4.8", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "DIFFERS from the profile" in text and "dead mics: none" in text
    cal = load_calibration(out)
    assert list(cal.mic_channels) == [1, 2, 0, 3]
    assert cal.gain_db[0] == pytest.approx(6.02, abs=0.5)
    assert np.all(np.abs(np.array(cal.gain_db[1:])) < 0.5)
    assert cal.excluded_mics == () and cal.measurements["order_confidence"] > 0.9
