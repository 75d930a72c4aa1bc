"""``mica calibrate --live`` through real ALSA: the fakemic plugin plays a corpus 4-mic
recording (a talker plus a diffuse noise field) whose channels 1 and 2 the test swapped and
whose channel 0 it made 6 dB quiet; the calibration file written from 5 s of live capture
puts both right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mica.calibration.calfile import load_calibration
from mica.calibration.delays import MIN_DELAY_US
from mica.device.cli import main
from tests.fixtures_alsa import FakeAlsa

SPEECH = "speechbrain_4mic_speech_-0.82918_0.55279_-0.082918"
AZIMUTH_DEG, ELEVATION_DEG = 146.3, -4.8  # from the file name's unit DOA vector


def _talker_in_diffuse_noise(corpus_dir: Path) -> tuple[np.ndarray, int]:
    mc = corpus_dir / "multichannel"
    talk, fs = sf.read(mc / f"{SPEECH}.wav", always_2d=True)
    noise, _ = sf.read(mc / "speechbrain_4mic_noise_diffuse.wav", always_2d=True)
    x = (talk + 0.1 * noise).T  # the talker about as loud as the fan
    return x / np.abs(x).max() * 0.5, fs


def test_live_calibration_undoes_swap_and_gain(corpus_dir: Path, fake_alsa: FakeAlsa,
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    x, fs = _talker_in_diffuse_noise(corpus_dir)
    played = x[[0, 2, 1, 3]].copy()  # channels 1 and 2 swapped
    played[0] *= 10 ** (-6 / 20)  # channel 0 (mic 0) 6 dB quiet
    fake_alsa.add_pcm_from_samples("calmic4", played, fs, "S16_LE", loop=True)
    geometry = corpus_dir / "multichannel" / f"{SPEECH}.json"
    config = tmp_path / "mica.toml"
    config.write_text(f'[capture]\nsource = "alsa"\nalsa_device = "calmic4"\nchannels = 4\n'
                      f'fs_hz = {fs}\nformat = "S16_LE"\nperiod_frames = 160\n'
                      f'[array]\ngeometry_file = "{geometry}"\n', encoding="utf-8")
    out = tmp_path / "cal.json"
    rc = main(["calibrate", "--live", "--seconds", "5", "--config", str(config),
               "--azimuth", str(AZIMUTH_DEG), "--elevation", str(ELEVATION_DEG),
               "--save-recording", str(tmp_path / "live.wav"), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "recording 5 s from calmic4" in text and "DIFFERS from the profile" in text
    recorded, fs_rec = sf.read(tmp_path / "live.wav", always_2d=True)
    assert fs_rec == fs and recorded.shape[1] == 4 and recorded.shape[0] >= 5 * fs - 160
    cal = load_calibration(out)
    assert list(cal.mic_channels) == [0, 2, 1, 3]  # the swap undone
    assert cal.gain_db[0] == pytest.approx(6.02, abs=0.5)
    assert np.all(np.abs(np.array(cal.gain_db[1:])) < 0.5)
    assert cal.excluded_mics == () and cal.measurements["order_confidence"] > 0.5
    assert cal.delay_s == (0.0,) * 4  # no mic delay error in the recording: none written
    assert max(abs(v) for v in cal.measurements["delay_residual_us"]) < MIN_DELAY_US
    assert json.loads(out.read_text())["recording"] == str(tmp_path / "live.wav")


def test_live_needs_a_capture_device(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    geometry = tmp_path / "g.json"
    geometry.write_text('{"geometry_m": [[0, 0, 0], [0.05, 0, 0]]}', encoding="utf-8")
    rc = main(["calibrate", "--live", "--array", str(geometry)])
    assert rc == 2 and "--live needs the capture device" in capsys.readouterr().err
    rc = main(["calibrate", "--board", "respeaker-4mic-hat"])
    assert rc == 2 and "give a recording or --live" in capsys.readouterr().err


def test_live_two_devices_measures_the_drift(corpus_dir: Path, fake_alsa: FakeAlsa,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    """Two fake ALSA devices from [[capture.devices]], recorded at once: the second's clock
    200 ppm fast (its half rendered at that clock and paced 200 ppm fast, as in
    tests/device/test_multi_capture.py). A third device, the loudspeaker's playback
    loopback (``role = "reference"``, no microphones), is left out of the calibration."""
    import scipy.signal

    x, fs = _talker_in_diffuse_noise(corpus_dir)
    half_b = scipy.signal.resample_poly(x[2:], 5001, 5000, axis=1)
    a = fake_alsa.add_pcm_from_samples("caldev_a", x[:2], fs, "S16_LE", loop=True)
    b = fake_alsa.add_pcm_from_samples("caldev_b", half_b, fs, "S16_LE", loop=True, ppm=200.0)
    loop = fake_alsa.add_pcm_from_samples("caldev_loop", x[:1], fs, "S16_LE", loop=True)
    geometry = corpus_dir / "multichannel" / f"{SPEECH}.json"
    config = tmp_path / "mica.toml"
    config.write_text(f'[capture]\nsource = "alsa"\nfs_hz = {fs}\nperiod_frames = 160\n'
                      f'[[capture.devices]]\nalsa_device = "{a}"\nchannels = 2\n'
                      f'geometry_rows = [0, 1]\nreference = true\n'
                      f'[[capture.devices]]\nalsa_device = "{b}"\nchannels = 2\n'
                      f'geometry_rows = [2, 3]\n'
                      f'[[capture.devices]]\nalsa_device = "{loop}"\nchannels = 1\n'
                      f'role = "reference"\n[echo]\nenabled = true\n'
                      f'[array]\ngeometry_file = "{geometry}"\n', encoding="utf-8")
    out = tmp_path / "cal.json"
    rc = main(["calibrate", "--live", "--seconds", "6", "--config", str(config),
               "--azimuth", str(AZIMUTH_DEG), "--elevation", str(ELEVATION_DEG),
               "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert f"recording 6 s from {a}, {b}" in text and f"device {b}: drift +" in text
    cal = load_calibration(out)
    assert [d.name for d in cal.devices] == [a, b]
    # 6 s is short for the estimator (the summary says so): within 20 ppm of 200
    assert cal.devices[1].drift_ppm == pytest.approx(200.0, abs=20.0)
    assert np.all(np.abs(cal.gain_db) < 0.5) and cal.excluded_mics == ()
