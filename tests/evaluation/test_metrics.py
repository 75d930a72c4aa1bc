"""SI-SDR against known answers (Le Roux et al. 2019)."""

from __future__ import annotations

import numpy as np
import pytest

from mica.evaluation.metrics import si_sdr_db


def reference(n: int = 4000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n)


def orthogonal_noise(ref: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    """Zero-mean noise orthogonal to (zero-mean) ``ref`` with ``||ref||^2 / ||n||^2 = snr``."""
    r = ref - ref.mean()
    noise = np.random.default_rng(seed).standard_normal(ref.shape[0])
    noise -= noise.mean()
    noise -= (noise @ r) / (r @ r) * r
    return noise * np.sqrt((r @ r) / (noise @ noise) / 10 ** (snr_db / 10))


def test_identical_scaled_and_offset_copies_are_perfect() -> None:
    ref = reference()
    assert si_sdr_db(ref, ref) > 200.0
    assert si_sdr_db(0.01 * ref, ref) > 200.0
    assert si_sdr_db(-3.0 * ref + 0.5, ref) > 200.0
    assert si_sdr_db(ref.astype(np.float32), ref) > 100.0  # float32 rounding only


def test_exact_copy_is_inf() -> None:
    ref = np.array([1.0, -1.0, 2.0, -2.0])
    assert si_sdr_db(ref, ref) == float("inf")


@pytest.mark.parametrize("snr_db", [-10.0, 0.0, 6.0, 20.0])
@pytest.mark.parametrize("gain", [1.0, 0.2])
def test_known_noise_level(snr_db: float, gain: float) -> None:
    ref = reference()
    est = gain * (ref + orthogonal_noise(ref, snr_db))
    assert si_sdr_db(est, ref) == pytest.approx(snr_db, abs=1e-9)


def test_independent_noise_is_close_to_its_snr() -> None:
    ref = reference(160000)
    noise = np.random.default_rng(5).standard_normal(ref.shape[0]) * 10 ** (-10 / 20)
    assert si_sdr_db(ref + noise, ref) == pytest.approx(10.0, abs=0.1)


def test_orthogonal_estimate_is_minus_inf() -> None:
    ref = np.array([1.0, -1.0, 1.0, -1.0])
    est = np.array([1.0, 1.0, -1.0, -1.0])
    assert si_sdr_db(est, ref) == float("-inf")


def test_equals_correlation_form() -> None:
    # SI-SDR = 10 log10(rho^2 / (1 - rho^2)), rho the correlation coefficient
    ref = reference()
    est = ref + 0.5 * reference(seed=9) + 0.3
    rho = np.corrcoef(est, ref)[0, 1]
    expected = 10 * np.log10(rho**2 / (1 - rho**2))
    assert si_sdr_db(est, ref) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("est", "ref", "match"),
    [
        (np.zeros(5), np.ones(6), "same length"),
        (np.zeros((2, 5)), np.ones((2, 5)), "1-D"),
        (np.array([1.0, np.nan]), np.array([1.0, 2.0]), "non-finite"),
        (np.ones(5), np.full(5, 3.0), "no energy"),
    ],
)
def test_invalid_input(est: np.ndarray, ref: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        si_sdr_db(est, ref)
