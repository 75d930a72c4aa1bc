"""Multi-device capture through real ALSA: two fake devices with their own clocks."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from mica.device.config import parse_config
from mica.device.service import Service

SPEECH = "multichannel/speechbrain_4mic_speech_-0.82918_0.55279_-0.082918"


def _two_device_config(tmp_path: Path, dev_a: str, dev_b: str, prior: bool) -> dict:
    return {
        "capture": {"source": "alsa", "fs_hz": 16000, "period_frames": 160,
                    "devices": [
                        {"alsa_device": dev_a, "channels": 2, "geometry_rows": [0, 1],
                         "reference": True},
                        {"alsa_device": dev_b, "channels": 2, "geometry_rows": [2, 3]}]},
        "array": {"geometry_file": str(tmp_path / "geom.json")},
        "mqtt": {"enabled": False},
        "governor": {"enabled": False},
        "drift": {"alsa_prior": prior},
    }


def test_daemon_drift_converges_on_two_fake_alsa_devices(fake_alsa, corpus_dir: Path,
                                                          tmp_path: Path) -> None:
    """Two fakemic devices play the two halves of a real 4-mic recording, one at +0 ppm and
    one at +200 ppm (its half rendered at its clock); the daemon (signal only: no ALSA
    prior) reports 200 ppm within 5 ppm after 14 s, and the timestamp-based rate agrees
    roughly."""
    audio, fs = sf.read(corpus_dir / f"{SPEECH}.wav", dtype="float32")
    (tmp_path / "geom.json").write_text((corpus_dir / f"{SPEECH}.json").read_text())
    # A device whose crystal runs 200 ppm fast samples the same sound 5001 times where the
    # reference samples it 5000 times: its half of the recording is rendered at that rate,
    # and the plugin paces it 200 ppm fast, so in wall time both devices hear one room.
    half_b = scipy.signal.resample_poly(audio[:, 2:].astype(np.float64), 5001, 5000, axis=0)
    a = fake_alsa.add_pcm_from_samples("drift_a", audio[:, :2].T, fs, ppm=0.0)
    b = fake_alsa.add_pcm_from_samples("drift_b", half_b.T, fs, ppm=200.0)
    cfg = parse_config(_two_device_config(tmp_path, a, b, prior=False), tmp_path)
    service = Service(cfg)
    service.start()
    history = []
    try:
        t_end = time.monotonic() + 14.0
        while time.monotonic() < t_end:
            time.sleep(1.0)
            drift = service.telemetry(0)["drift"]
            history.append(drift[b])
    finally:
        service.stop(timeout_s=2.0)
    assert service.fault is None
    last = history[-1]
    assert drift[a]["reference"] is True
    assert last["lock"] in ("tracking", "locked"), history
    # the content is exactly 200 ppm fast (5001 / 5000): the signal-only estimate
    assert abs(last["drift_ppm"] - 200.0) < 5.0, history
    # what the devices' own ALSA timestamps say (the plugin's pacing is not exact, and a
    # loaded machine adds jitter): only roughly the same
    measured = last["prior_ppm"]
    assert measured is not None and abs(measured - 200.0) < 150.0, history
    assert service.blocks_total > 1000
    assert np.isfinite(last["offset_samples"])


@pytest.mark.parametrize("bad, message", [
    ({"geometry_rows": [0, 0]}, "geometry_rows together"),
    ({"geometry_rows": [0]}, "1 row(s) for 2 microphone channel(s)"),
    ({"mic_channels": [0, 5], "geometry_rows": [0, 1]}, "channel 5 does not exist"),
])
def test_capture_devices_config_problems(tmp_path: Path, bad: dict, message: str) -> None:
    from mica.array_dsp.errors import ConfigError

    data = {"capture": {"devices": [
        {"alsa_device": "x", "channels": 2, **bad},
        {"alsa_device": "y", "channels": 2, "geometry_rows": [2, 3]}]}}
    if bad.get("geometry_rows") == [0]:
        data["capture"]["devices"][1]["geometry_rows"] = [1, 2]
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path)
    assert any(message in p for p in info.value.problems), info.value.problems


def test_capture_devices_config_loads(tmp_path: Path) -> None:
    cfg = parse_config({"capture": {"devices": [
        {"alsa_device": "x", "channels": 4, "mic_channels": [1, 3], "geometry_rows": [0, 2]},
        {"alsa_device": "y", "channels": 1, "geometry_rows": [1], "reference": True}]},
        "drift": {"update_s": 0.5}}, tmp_path)
    assert cfg.capture.devices[1].reference and cfg.capture.devices[0].mic_channels == [1, 3]
    assert cfg.drift.update_s == 0.5
    assert len(cfg.config_hash) == 12


def test_aligner_look_direction_uses_the_farthest_reference_channel() -> None:
    """``set_look_direction``: each device's talker delay behind the reference's analysis
    channel, and the reference channel farthest from it (with the talker's delay there)
    for the offset's look-direction mask; ``mask=False`` (auto steering) drops the mask."""
    from mica.array_dsp.steering import far_field_delays_s
    from mica.device.multi_capture import DeviceAligner

    geometry = np.array([[0.0, 0, 0], [0.02, 0, 0], [0.0, 0.06, 0], [0.1, 0, 0], [0, 0.1, 0]])
    aligner = DeviceAligner(["a", "b"], [[0, 1, 2], [3, 4]], 0, 16000, 160)
    comp = aligner.start(1)
    aligner.set_look_direction(geometry, 30.0, 10.0)
    tau = far_field_delays_s(geometry, 30.0, 10.0, reference_channel=0) * 16000
    assert aligner._aux == (2, pytest.approx(tau[2]))
    assert comp.aux_delay_samples == pytest.approx(tau[2])
    assert comp.expected_delay_samples == pytest.approx(tau[3])
    aligner.set_look_direction(geometry, 30.0, 10.0, mask=False)
    assert aligner._aux is None and comp.aux_delay_samples is None
    assert comp.expected_delay_samples == pytest.approx(tau[3])
    one = DeviceAligner(["a", "b"], [[0], [1]], 0, 16000, 160)
    one.set_look_direction(geometry[:2], 0.0)
    assert one._aux is None  # a one-channel reference device: no mask
