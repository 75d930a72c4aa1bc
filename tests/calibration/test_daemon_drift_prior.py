"""The daemon takes a calibration's nominal device drift as the prior of its drift estimate:
two fake ALSA devices, the second 200 ppm fast; with the calibrated 200 ppm the estimate
starts there (before any measurement) instead of at 0."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf

from mica.calibration.calfile import Calibration, DeviceOffset, save_calibration
from mica.device.config import parse_config
from mica.device.service import Service
from tests.fixtures_alsa import FakeAlsa

SPEECH = "multichannel/speechbrain_4mic_speech_-0.82918_0.55279_-0.082918"


def _first_estimate(cfg_doc: dict, tmp_path: Path, device: str) -> dict:
    """Run the daemon until the device's compensator exists; its first drift status."""
    service = Service(parse_config(cfg_doc, tmp_path))
    service.start()
    try:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            status = service.telemetry(0)["drift"][device]
            if status.get("lock") not in (None, "waiting"):
                return status
            time.sleep(0.05)
    finally:
        service.stop(timeout_s=2.0)
    raise AssertionError(f"device {device} never started: {status}")


def test_calibrated_drift_is_the_prior(fake_alsa: FakeAlsa, corpus_dir: Path,
                                       tmp_path: Path) -> None:
    audio, fs = sf.read(corpus_dir / f"{SPEECH}.wav", dtype="float32")
    (tmp_path / "geom.json").write_text((corpus_dir / f"{SPEECH}.json").read_text())
    half_b = scipy.signal.resample_poly(audio[:, 2:].astype(np.float64), 5001, 5000, axis=0)
    a = fake_alsa.add_pcm_from_samples("calprior_a", audio[:, :2].T, fs, ppm=0.0)
    b = fake_alsa.add_pcm_from_samples("calprior_b", half_b.T, fs, ppm=200.0)
    cal = tmp_path / "cal.json"
    save_calibration(Calibration(n_mics=4, devices=(DeviceOffset("dev0.wav"),
                                                    DeviceOffset("dev1.wav", -0.002, 200.0))),
                     cal)
    doc = {"capture": {"source": "alsa", "fs_hz": fs, "period_frames": 160,
                       "devices": [{"alsa_device": a, "channels": 2, "geometry_rows": [0, 1],
                                    "reference": True},
                                   {"alsa_device": b, "channels": 2,
                                    "geometry_rows": [2, 3]}]},
           "array": {"geometry_file": str(tmp_path / "geom.json"),
                     "calibration_file": str(cal)},
           "mqtt": {"enabled": False}, "governor": {"enabled": False},
           "drift": {"alsa_prior": False}}
    with_prior = _first_estimate(doc, tmp_path, b)
    assert with_prior["measurements"] == 0
    assert with_prior["drift_ppm"] == 200.0  # matched by position (the file names differ)
    # without a calibration the estimate starts at 0 (DriftSettings.prior_ppm): covered by
    # tests/device/test_multi_capture.py, not started a second time here
