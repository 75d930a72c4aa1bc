"""Mic delay corrections and inter-device offset/drift in ``mica calibrate``, on the corpus
4-mic recording (a talker in a diffuse noise field) with a delay error or a second,
drifting device made by the test."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from mica.array_dsp.steering import far_field_delays_s
from mica.calibration.calfile import ChannelCorrector, load_calibration
from mica.calibration.delays import estimate_mic_delays
from mica.calibration.procedure import calibrate_samples
from mica.device.cli import main

SPEECH = "speechbrain_4mic_speech_-0.82918_0.55279_-0.082918"
AZIMUTH_DEG, ELEVATION_DEG = 146.3, -4.8  # from the file name's unit DOA vector


def _recording(corpus_dir: Path, noise_scale: float = 0.1
               ) -> tuple[np.ndarray, int, np.ndarray]:
    """The talker plus the diffuse noise (0.1: about as loud as the talker)."""
    import json

    mc = corpus_dir / "multichannel"
    talk, fs = sf.read(mc / f"{SPEECH}.wav", always_2d=True)
    noise, _ = sf.read(mc / "speechbrain_4mic_noise_diffuse.wav", always_2d=True)
    geometry = np.asarray(json.loads((mc / f"{SPEECH}.json").read_text())["geometry_m"])
    x = (talk + noise_scale * noise).T
    return x / np.abs(x).max() * 0.5, fs, geometry


def _delay(x: np.ndarray, delay_s: float, fs: int) -> np.ndarray:
    """``x`` delayed by ``delay_s`` (exact band-limited fractional delay, circular)."""
    f = np.fft.rfftfreq(x.size, 1.0 / fs)
    return np.fft.irfft(np.fft.rfft(x) * np.exp(-2j * np.pi * f * delay_s), x.size)


@pytest.mark.parametrize("late_us", [40.0, -75.0])
def test_a_late_mic_gets_a_delay_correction_that_removes_it(corpus_dir: Path,
                                                             late_us: float) -> None:
    """At a good SNR (noise ~10 dB under the talker; at 0 dB they are off by up to 10 %)."""
    x, fs, geometry = _recording(corpus_dir, 0.03)
    x = x[:, : 5 * fs].copy()
    x[2] = _delay(x[2], late_us * 1e-6, fs)
    rep = calibrate_samples(x, fs, geometry, [0, 1, 2, 3], azimuth_deg=AZIMUTH_DEG,
                            elevation_deg=ELEVATION_DEG)
    d = np.array(rep.calibration.delay_s) * 1e6
    others = np.delete(d, 2)
    # every other mic is delayed by the error relative to mic 2 (only differences matter)
    assert np.all(np.abs(others - d[2] - late_us) < 3.0), d
    assert rep.calibration.mic_channels is None  # the order is untouched
    assert any("corrections written" in line for line in rep.summary)
    # measurably better: the residual after applying the correction is small
    before = estimate_mic_delays(x, fs, geometry, AZIMUTH_DEG, ELEVATION_DEG)
    fixed = ChannelCorrector(np.ones(4), np.array(rep.calibration.delay_s), fs).process(
        x.astype(np.float32))
    after = estimate_mic_delays(fixed, fs, geometry, AZIMUTH_DEG, ELEVATION_DEG)
    assert after.rms_us < 0.2 * before.rms_us and after.rms_us < 3.0
    assert not after.written


def test_clean_array_gets_no_delay_correction(corpus_dir: Path) -> None:
    x, fs, geometry = _recording(corpus_dir)
    rep = calibrate_samples(x[:, : 5 * fs], fs, geometry, [0, 1, 2, 3],
                            azimuth_deg=AZIMUTH_DEG, elevation_deg=ELEVATION_DEG)
    assert rep.calibration.delay_s == (0.0,) * 4
    assert any("none written" in line for line in rep.summary)


def test_delays_against_a_played_sweep(corpus_dir: Path) -> None:
    """A log sweep played from the talker's direction, 1234 samples of play-to-record
    latency, room noise (the corpus diffuse noise) at 20 dB SNR; mic 1 is 60 us late."""
    _, fs, geometry = _recording(corpus_dir)
    t = np.arange(3 * fs) / fs
    sweep = scipy.signal.chirp(t, 100.0, t[-1], 7000.0, method="logarithmic")
    sweep *= scipy.signal.windows.tukey(sweep.size, 0.05)
    tau = far_field_delays_s(geometry, AZIMUTH_DEG, ELEVATION_DEG)
    tau[1] += 60e-6
    n = 4 * fs
    x = np.stack([_delay(np.r_[np.zeros(1234), sweep, np.zeros(n - 1234 - sweep.size)],
                         float(tau[m]), fs) for m in range(4)])
    noise, _ = sf.read(corpus_dir / "multichannel" / "speechbrain_4mic_noise_diffuse.wav",
                       always_2d=True)
    noise = noise.T[:, :n]
    x += noise * np.std(x) / np.std(noise) * 10 ** (-20 / 20)
    est = estimate_mic_delays(x, fs, geometry, AZIMUTH_DEG, ELEVATION_DEG, played=sweep)
    assert est.method == "played" and est.written
    d = est.correction_s * 1e6
    assert np.all(np.abs(np.delete(d, 1) - d[1] - 60.0) < 5.0), d


def _two_devices(corpus_dir: Path, ppm: int, late_samples: int
                 ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Mics 0-1 on the reference device; mics 2-3 on a second device whose clock runs
    ``ppm`` fast and which started ``late_samples`` later."""
    x, fs, geometry = _recording(corpus_dir)
    fr = Fraction(1_000_000 + ppm, 1_000_000)
    b = scipy.signal.resample_poly(np.c_[x[2:], np.zeros((2, 100))], fr.numerator,
                                   fr.denominator, axis=1)[:, late_samples:]
    return x[:2], b, fs, geometry


@pytest.mark.parametrize("how", ["split", "files"])
def test_device_offset_and_drift(corpus_dir: Path, tmp_path: Path, how: str,
                                 capsys: pytest.CaptureFixture) -> None:
    a, b, fs, geometry = _two_devices(corpus_dir, 80, 37)
    n = min(a.shape[1], b.shape[1])
    array = corpus_dir / "multichannel" / f"{SPEECH}.json"
    if how == "split":
        sf.write(tmp_path / "both.wav", np.r_[a[:, :n], b[:, :n]].T, fs)
        rec = [str(tmp_path / "both.wav"), "--device-split", "2,2"]
        names = ["device0", "device1"]
    else:
        sf.write(tmp_path / "dev0.wav", a.T, fs)
        sf.write(tmp_path / "dev1.wav", b.T, fs)
        rec = [str(tmp_path / "dev0.wav"), str(tmp_path / "dev1.wav")]
        names = ["dev0.wav", "dev1.wav"]
    out = tmp_path / "cal.json"
    rc = main(["calibrate", *rec, "--array", str(array), "--azimuth", str(AZIMUTH_DEG),
               "--elevation", str(ELEVATION_DEG), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    cal = load_calibration(out)
    assert [d.name for d in cal.devices] == names
    assert cal.devices[0].drift_ppm == 0.0 and cal.devices[0].offset_s == 0.0
    assert cal.devices[1].drift_ppm == pytest.approx(80.0, abs=3.0)
    # device sample -37 lines up with reference sample 0 (the acoustic delay kept out)
    assert cal.devices[1].offset_s * fs == pytest.approx(-37.0, abs=1.0)
    assert f"device {names[1]}: drift +" in text and "ppm against" in text
    # aligned onto one clock, the rest of the procedure still works across the devices
    assert cal.mic_channels is None and "matches the profile" in text
    assert np.all(np.abs(cal.gain_db) < 0.5) and cal.delay_s == (0.0,) * 4
