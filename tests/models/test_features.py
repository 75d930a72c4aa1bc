"""The feature sets of :mod:`mica.models.features`: sizes, kinds, and the harmonic feature."""

from __future__ import annotations

import numpy as np
import pytest

from mica.array_dsp.stft import stft_reference
from mica.models.features import (
    FEATURE_KINDS,
    band_centres,
    erb_weights,
    feats_per_band,
    features_reference,
    harmonic_lags,
    harmonic_reference,
    parabolic_offset,
)

FS_HZ = 16000


def _power(x: np.ndarray) -> np.ndarray:
    """``(n_frames, 161)`` float64 power spectra of the mono float signal ``x`` (the first
    frames, whose window still reaches before sample 0, dropped)."""
    spec = stft_reference(x[None].astype(np.float32), 160)[:, 0].astype(np.complex128)
    return np.abs(spec[5:]) ** 2


def _voiced(f0_hz: float, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """A harmonic complex (every harmonic below 7 kHz, amplitudes ``1 / sqrt(h)``, random
    phases) with white noise 40 dB below it."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FS_HZ)) / FS_HZ
    x = sum(np.sin(2 * np.pi * f0_hz * h * t + rng.uniform(0, 2 * np.pi)) / np.sqrt(h)
            for h in range(1, int(7000 / f0_hz)))
    return x + 0.01 * rng.standard_normal(t.shape[0])


def test_feature_kinds_nest_and_a_wrong_kind_is_named() -> None:
    assert [feats_per_band(k) for k in FEATURE_KINDS] == [2, 5, 6]
    spectra = stft_reference(np.random.default_rng(0).standard_normal((2, 3200))
                             .astype(np.float32), 160).transpose(1, 0, 2)
    w = erb_weights()
    feats = {k: features_reference(spectra, w, k) for k in FEATURE_KINDS}
    for k in FEATURE_KINDS:
        assert feats[k].shape == (20, 2 * 32 * feats_per_band(k))
        assert np.all(np.isfinite(feats[k]))
    # Each set starts with the one before it (a smaller model's inputs come first).
    np.testing.assert_array_equal(feats["harm"][:, :feats["ext"].shape[1]], feats["ext"])
    with pytest.raises(ValueError, match="'pitch'"):
        feats_per_band("pitch")


def test_parabolic_offset_finds_the_vertex_and_stays_within_half_a_sample() -> None:
    def y(x: float) -> float:
        return 2.0 - 3.0 * (x - 0.3) ** 2

    assert parabolic_offset(y(-1.0), y(0.0), y(1.0)) == pytest.approx(0.3)
    assert parabolic_offset(0.0, 1.0, 0.99) == pytest.approx(0.5, abs=0.01)
    assert parabolic_offset(0.0, 1.0, 1.5) == 0.5  # vertex at 1.5: clipped to half a sample
    assert parabolic_offset(0.0, 1.0, 5.0) == 0.0  # convex: no maximum
    assert parabolic_offset(1.0, 0.0, 1.0) == 0.0  # a minimum: no offset
    assert parabolic_offset(1.0, 1.0, 1.0) == 0.0  # flat


@pytest.mark.parametrize("f0_hz", [160.0, 230.0])
def test_harmonic_feature_tells_voiced_frames_from_noise(f0_hz: float) -> None:
    """Bands from 500 Hz to 4 kHz: a harmonic complex correlates at its pitch lag (measured
    0.65 at 160 Hz, 0.76 at 230 Hz), white noise hardly (0.09-0.11: the best of 129 lags)."""
    w = erb_weights().astype(np.float64)
    centre_hz = band_centres(161, FS_HZ, 32) * FS_HZ / 320
    speech_bands = (centre_hz >= 500) & (centre_hz <= 4000)
    voiced = harmonic_reference(_power(_voiced(f0_hz)), w)[:, speech_bands].mean()
    noise = harmonic_reference(
        _power(np.random.default_rng(1).standard_normal(FS_HZ)), w)[:, speech_bands].mean()
    assert voiced >= 0.55
    assert noise <= 0.2
    assert voiced - noise >= 0.4


def test_harmonic_feature_of_silence_is_zero_and_lags_stop_at_half_the_frame() -> None:
    w = erb_weights().astype(np.float64)
    np.testing.assert_array_equal(harmonic_reference(np.zeros((4, 161)), w), 0.0)
    lags = harmonic_lags(161)
    assert lags[0] == 32 and lags[-1] == 160  # 500 Hz .. 100 Hz; 160 = N / 2
    assert harmonic_lags(129)[-1] == 128  # a shorter frame: at most N / 2
