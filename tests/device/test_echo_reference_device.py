"""The echo reference from a second ALSA device with its own clock (``[[capture.devices]]``
with ``role = "reference"``): config checks, the rate-only alignment (no acoustic offset
search: the starting offset from timestamps, the rate from the ALSA-timestamp fit), the
daemon cancelling echo against a loopback device running +150 ppm, and that device
vanishing mid-run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mica.array_dsp.errors import ConfigError
from mica.device.block import Block
from mica.device.config import parse_config
from mica.device.echo_stage import echo_enabled, n_reference_channels
from mica.device.multi_capture import DeviceAligner, _RateMeter, clock_reference_index

GEOMETRY = [[0.05, 0.0, 0.0], [0.0, 0.05, 0.0], [-0.05, 0.0, 0.0], [0.0, -0.05, 0.0]]
FS = 16000


def _devices(ref: dict | None = None, **mics: object) -> list[dict]:
    mic_dev = {"alsa_device": "mics", "channels": 4, "geometry_rows": [0, 1, 2, 3], **mics}
    return [mic_dev] + ([] if ref is None else [{"alsa_device": "loop", "channels": 2,
                                                  "role": "reference", **ref}])


# --------------------------------------------------------------------------- (a) config


def test_reference_device_config_loads(tmp_path: Path) -> None:
    """A reference-role device listed first is still not the clock; echo sees its channels."""
    devices = _devices({})
    cfg = parse_config({"capture": {"devices": [devices[1], devices[0]]},
                        "echo": {"enabled": True}}, tmp_path)
    assert [d.role for d in cfg.capture.devices] == ["reference", "mics"]
    assert clock_reference_index(cfg.capture.devices) == 1
    assert echo_enabled(cfg) and n_reference_channels(cfg) == 2
    default = parse_config({"capture": {"devices": _devices()}}, tmp_path)
    assert default.capture.devices[0].role == "mics" and n_reference_channels(default) == 0


@pytest.mark.parametrize(("data", "message"), [
    ({"capture": {"devices": _devices({"role": "loop"})}, "echo": {"enabled": True}},
     "capture.devices[1].role: must be one of ['mics', 'reference'], got 'loop'"),
    ({"capture": {"devices": _devices({"reference": True})}, "echo": {"enabled": True}},
     "capture.devices[1].reference: a role = \"reference\" (playback loopback) device cannot "
     "be the clock reference"),
    ({"capture": {"devices": _devices({"geometry_rows": [4, 5]})}, "echo": {"enabled": True}},
     "capture.devices[1].geometry_rows: a role = \"reference\" device has no microphones"),
    ({"capture": {"devices": _devices({"mic_channels": [0]})}, "echo": {"enabled": True}},
     "capture.devices[1].mic_channels: a role = \"reference\" device has no microphones"),
    ({"capture": {"devices": _devices({}) + [{"alsa_device": "loop2", "channels": 1,
                                             "role": "reference"}]},
      "echo": {"enabled": True}},
     "capture.devices[2].role: more than one device has role = \"reference\""),
    ({"capture": {"devices": _devices({})}},
     "capture.devices[1].role: a role = \"reference\" device feeds the echo canceller: set "
     "echo.enabled = true"),
    ({"capture": {"devices": _devices()}, "echo": {"enabled": True}},
     "echo.enabled: with capture.devices, needs a [[capture.devices]] table with role = "
     "\"reference\""),
    ({"capture": {"devices": _devices({})}, "array": {"reference_channels": [4]},
      "echo": {"enabled": True}},
     "array.reference_channels: with capture.devices, give the playback loopback as a "
     "[[capture.devices]] table with role = \"reference\""),
    ({"capture": {"devices": _devices({})[1:]}, "echo": {"enabled": True}},
     "capture.devices: no microphone device"),
])
def test_reference_device_config_errors_name_the_key(tmp_path: Path, data: dict,
                                                      message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, tmp_path)
    assert any(message in p for p in err.value.problems), err.value.problems


# --------------------------------------------------------------------------- (c) alignment


def _tones(t_s: np.ndarray, seed: int = 1) -> np.ndarray:
    """A band-limited test signal (30 tones, 100 Hz - 5 kHz) evaluated at any times."""
    rng = np.random.default_rng(seed)
    freqs = rng.uniform(100.0, 5000.0, 30)
    phases = rng.uniform(0, 2 * np.pi, 30)
    return (0.03 * np.sin(2 * np.pi * freqs[:, None] * t_s[None, :] + phases[:, None])
            .sum(axis=0)).astype(np.float32)


def _run_aligner(aligner: DeviceAligner, ref: np.ndarray, dev: np.ndarray, period: int
                 ) -> np.ndarray:
    """Push the rate-only device in chunks of ``period`` and align every reference block."""
    out = []
    pos = 0
    for k in range(ref.shape[1] // period):
        while aligner.needs_input(1) and pos < dev.shape[1]:
            aligner.push(1, dev[:, pos:pos + period])
            pos += period
        out.append(aligner.align(ref[:, k * period:(k + 1) * period]).copy())
    return np.concatenate(out, axis=1)


def _snr_db(clean: np.ndarray, test: np.ndarray) -> float:
    return 10 * math.log10(float(np.sum(clean**2)) / float(np.sum((clean - test) ** 2) + 1e-30))


def test_rate_only_alignment_follows_the_given_rate_and_offset() -> None:
    """A loopback device 150 ppm fast whose sample 37.25 was captured with the reference's
    first sample: started at that offset (the timestamps) and given the rate, its aligned
    output is the reference's timeline (> 40 dB SNR over 20 s, where the drift alone moves
    it 48 samples); at 0 ppm (no rate) it is off by far. Rate-only: nothing is searched, so
    its content (here a copy of the microphones' signal delayed by 300 samples, which an
    acoustic search would pull onto the mics) keeps its physical delay, and its rows follow
    the microphone rows."""
    eps, m0, period, seconds = 150e-6, 37.25, 160, 20.0
    n = int(seconds * FS)
    t_ref = np.arange(n) / FS
    mics = np.stack([_tones(t_ref), _tones(t_ref, 2)])
    n_dev = int(n * (1 + eps)) + 2000
    t_dev = (np.arange(n_dev) - m0) / (FS * (1 + eps))  # device sample m's physical time
    loop = _tones(t_dev)[None, :]                        # the playback at those times
    results = {}
    for rate in (150.0, 0.0):
        aligner = DeviceAligner(["mics", "loop"], [[0, 1], [2]], 0, FS, period,
                                rate_only=[False, True])
        comp = aligner.start(1, m0)
        aligner.set_rate(1, rate, 0.5)
        assert aligner.n_mics == 2 and comp.rate_only and comp.state == "rate_only"
        out = _run_aligner(aligner, mics, loop, period)
        assert np.array_equal(out[:2], mics[:, :out.shape[1]])
        status = aligner.status(1)
        assert status["lock"] == "rate_only" and status["role"] == "reference"
        assert status["drift_ppm"] == rate and status["drift_stderr_ppm"] == 0.5
        results[rate] = out[2]
    guard = 2000
    truth = mics[0, guard:results[150.0].size]
    snr = _snr_db(truth, results[150.0][guard:])
    snr_no_rate = _snr_db(truth[-FS:], results[0.0][-FS:])
    print(f"rate-only alignment: {snr:.1f} dB SNR with the rate, {snr_no_rate:.1f} dB "
          f"(last second) at 0 ppm")
    assert snr > 40.0
    assert snr_no_rate < 0.0

    # no offset search: a loopback that IS the mics' signal 300 samples late stays late
    late = np.concatenate([np.zeros((1, 300), np.float32), mics[:1]], axis=1)
    aligner = DeviceAligner(["mics", "loop"], [[0, 1], [2]], 0, FS, period,
                            rate_only=[False, True])
    aligner.start(1, 0.0)
    out = _run_aligner(aligner, mics[:, :8 * FS], late, period)
    length = out.shape[1]
    assert _snr_db(mics[0, :length - 300], out[2, 300:]) > 40.0  # late[k] = mics[k - 300]
    assert aligner.status(1)["offset_samples"] == pytest.approx(0.0, abs=1e-6)


def test_rate_only_devices_need_rows_after_the_mics_and_are_not_the_clock() -> None:
    with pytest.raises(ValueError, match="must come after"):
        DeviceAligner(["loop", "mics"], [[0], [1, 2]], 1, FS, 160, rate_only=[True, False])
    with pytest.raises(ValueError, match="clock reference cannot be"):
        DeviceAligner(["loop", "mics"], [[2], [0, 1]], 0, FS, 160, rate_only=[True, False])
    aligner = DeviceAligner(["a", "b"], [[0], [1]], 0, FS, 160)
    aligner.start(1)
    with pytest.raises(ValueError, match="not rate-only"):
        aligner.set_rate(1, 10.0, 1.0)
    # the look direction ignores the loopback device (it has no geometry)
    looped = DeviceAligner(["a", "b", "loop"], [[0, 1], [2], [3]], 0, FS, 160,
                           rate_only=[False, False, True])
    looped.set_look_direction(np.array(GEOMETRY[:3]), 30.0)
    assert set(looped._expected) == {"a", "b"}


def test_rate_meter_fit_measures_rate_and_its_error() -> None:
    """Least-squares rate of blocks with 20 us timestamp jitter: within 3 standard errors of
    the truth, the error about what the jitter implies, and none before the minimum span."""
    rng = np.random.default_rng(3)
    rate = 16000 * (1 + 150e-6)
    meter = _RateMeter()
    frames = 0
    for k in range(600):  # 6 s of 160-frame blocks
        t_ns = int(1e9 * (5.0 + frames / rate + rng.normal(0, 20e-6)))
        meter.add(Block(np.zeros((1, 160), np.float32), k, t_ns))
        frames += 160
        if k == 20:
            assert meter.fit(0.5) is None
    fit = meter.fit(0.5)
    assert fit is not None
    slope, sigma, span = fit
    expected_sigma = 20e-6 * rate / math.sqrt(600 * span**2 / 12)
    print(f"rate fit: {slope:.4f} (truth {rate:.4f}) +- {sigma:.4f} (jitter implies "
          f"{expected_sigma:.4f})")
    assert abs(slope - rate) < 3 * sigma
    assert 0.5 * expected_sigma < sigma < 2 * expected_sigma
