"""Delay-and-sum: kernel vs numpy reference, and the physics of the beam."""

from __future__ import annotations

import numpy as np
import pytest

from mica.array_dsp.das import das_kernel, das_reference, delay_and_sum
from mica.array_dsp.errors import MicaError
from mica.array_dsp.steering import rfft_freqs_hz, steering_vectors

CHANNELS = (1, 2, 4, 8)
BINS = (33, 65, 81, 129, 161, 257)  # rfft of 64, 128, 160, 256, 320, 512
SQUARE_4 = np.array([[-0.05, -0.05, 0], [-0.05, 0.05, 0], [0.05, -0.05, 0], [0.05, 0.05, 0]])


def random_complex(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@pytest.mark.parametrize("n_ch", CHANNELS)
@pytest.mark.parametrize("n_bins", BINS)
def test_kernel_matches_reference(n_ch: int, n_bins: int) -> None:
    spec = random_complex((n_ch, n_bins), seed=n_ch)
    weights = random_complex((n_bins, n_ch), seed=n_bins)
    out = np.empty(n_bins, np.complex64)
    das_kernel(spec, weights, out)
    np.testing.assert_allclose(out, das_reference(spec, weights), rtol=1e-5, atol=1e-6)


def test_wrapper_reuses_output_and_allocates_when_asked() -> None:
    spec = random_complex((4, 161), 0)
    weights = random_complex((161, 4), 1)
    out = np.empty(161, np.complex64)
    assert delay_and_sum(spec, weights, out) is out
    np.testing.assert_allclose(delay_and_sum(spec, weights), out)


def test_one_channel_with_unit_weights_is_identity() -> None:
    spec = random_complex((1, 65), 3)
    np.testing.assert_array_equal(delay_and_sum(spec, np.ones((65, 1), np.complex64)), spec[0])


@pytest.mark.parametrize(
    ("spec", "weights", "out", "match"),
    [
        (np.zeros((4, 9), np.complex128), np.zeros((9, 4), np.complex64), None,
         "spec: .*complex64"),
        (np.zeros((4, 9), np.complex64), np.zeros((4, 9), np.complex64), None, "weights: .*shape"),
        (np.zeros(9, np.complex64), np.zeros((9, 4), np.complex64), None, "spec: .*shape"),
        (np.zeros((4, 9), np.complex64), np.zeros((9, 4), np.complex64),
         np.zeros(8, np.complex64), "out: .*shape"),
        (np.zeros((4, 9), np.complex64), np.zeros((9, 4), np.complex64),
         np.zeros(18, np.complex64)[::2], "out: .*C-contiguous"),
    ],
)
def test_wrapper_rejects_bad_input(
    spec: np.ndarray, weights: np.ndarray, out: np.ndarray | None, match: str
) -> None:
    with pytest.raises(MicaError, match=match):
        delay_and_sum(spec, weights, out)


def beam_power_gain(look_az: float, source_az: float, n_fft: int = 320) -> np.ndarray:
    """``(n_bins,)`` power response of DAS steered to ``look_az`` for a plane wave from
    ``source_az`` (both in the x-y plane), from a simulated multichannel spectrum."""
    source = random_complex((n_fft // 2 + 1,), seed=7)
    w_source = steering_vectors(SQUARE_4, source_az, 0.0, 16000, n_fft, reference_channel=0)
    spec = np.ascontiguousarray((w_source * source[:, None]).T)  # X[m, k] = S[k] w[k, m]
    w_look = steering_vectors(SQUARE_4, look_az, 0.0, 16000, n_fft, reference_channel=0)
    return np.abs(delay_and_sum(spec, w_look)) ** 2 / np.abs(source) ** 2


@pytest.mark.parametrize("look_az", [0.0, 33.7, 146.3, -90.0])
def test_look_direction_passes_with_unit_gain(look_az: float) -> None:
    np.testing.assert_allclose(beam_power_gain(look_az, look_az), 1.0, rtol=1e-5)


@pytest.mark.parametrize("source_az", [90.0, 180.0, -135.0])
def test_other_directions_are_attenuated_at_high_frequencies(source_az: float) -> None:
    gain = beam_power_gain(0.0, source_az)
    freqs = rfft_freqs_hz(320, 16000)
    low = gain[freqs < 300].mean()
    high = gain[(freqs >= 2000) & (freqs < 8000)].mean()
    assert low > 10 ** (-1.5 / 10)  # a 10 cm array barely separates directions below 300 Hz
    assert high < 10 ** (-3 / 10)  # measured 2-8 kHz: -3.7, -3.4, -6.7 dB (90, 180, -135 deg)
    assert gain.max() <= 1.0 + 1e-5  # DAS never amplifies a single plane wave
