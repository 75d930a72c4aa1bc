"""SI-SDR against known answers (Le Roux et al. 2019)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mica.evaluation.metrics import echo_convergence_s, si_sdr_db


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


def speechlike(seconds: float = 3.0, fs_hz: int = 16000, seed: int = 3) -> np.ndarray:
    """Amplitude-modulated harmonic tone bursts: PESQ/STOI need speech-like activity."""
    t = np.arange(int(seconds * fs_hz)) / fs_hz
    rng = np.random.default_rng(seed)
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / fs_hz
    x = sum(np.sin(k * phase) / k for k in range(1, 20))
    env = (np.sin(2 * np.pi * 3 * t) > -0.2).astype(float)
    return 0.1 * x * env + 1e-3 * rng.standard_normal(t.size)


def test_pesq_of_identical_signals_is_the_ceiling() -> None:
    from mica.evaluation.metrics import pesq_wb

    x = speechlike()
    assert pesq_wb(x, x) == pytest.approx(4.64, abs=0.05)
    noisy = x + 0.05 * np.random.default_rng(9).standard_normal(x.size)
    assert pesq_wb(noisy, x) < 2.5


def test_stoi_of_identical_signals_is_one_and_drops_with_noise() -> None:
    from mica.evaluation.metrics import stoi_score

    x = speechlike()
    assert stoi_score(x, x) == pytest.approx(1.0, abs=1e-6)
    noisy = x + 0.2 * np.random.default_rng(9).standard_normal(x.size)
    assert stoi_score(noisy, x) < 0.8


def test_pesq_stoi_reject_mismatched_lengths() -> None:
    from mica.evaluation.metrics import pesq_wb, stoi_score

    with pytest.raises(ValueError):
        pesq_wb(np.zeros(100), np.zeros(101))
    with pytest.raises(ValueError):
        stoi_score(np.zeros(100), np.zeros(101))


def test_si_sdr_of_independent_noise_is_very_low() -> None:
    ref = reference()
    noise = np.random.default_rng(42).standard_normal(ref.size)
    assert si_sdr_db(noise, ref) < -15.0


def test_word_error_rate_counts_edits() -> None:
    from mica.evaluation.metrics import word_error_rate

    assert word_error_rate("Hello, world!", "hello world") == 0.0
    assert word_error_rate("hello there world", "hello world") == pytest.approx(0.5)
    assert word_error_rate("", "a b c d") == 1.0
    with pytest.raises(ValueError):
        word_error_rate("x", "")


def test_pocketsphinx_transcribes_clean_corpus_speech(corpus_dir: Path) -> None:
    from mica.evaluation.metrics import transcribe, word_error_rate
    from mica.evaluation.scenarios import read_mono_16k

    x = read_mono_16k(corpus_dir / "speech" / "arctic_aew_a0001.wav")
    text = (corpus_dir / "speech" / "arctic_aew_a0001.txt").read_text()
    assert word_error_rate(transcribe(x), text) < 0.5


def test_dnsmos_prefers_clean_speech(corpus_dir: Path) -> None:
    from mica.evaluation.metrics import dnsmos
    from mica.evaluation.scenarios import read_mono_16k

    x = read_mono_16k(corpus_dir / "speech" / "arctic_aew_a0001.wav")
    noisy = x + 0.1 * np.random.default_rng(0).standard_normal(x.size).astype(np.float32)
    assert dnsmos(x)["ovrl"] > dnsmos(noisy)["ovrl"] + 0.5


def test_wake_word_engines_fire_on_the_phrase_only() -> None:
    from mica.evaluation.metrics import WAKE_ENGINES, wake_word_detected
    from mica.evaluation.scenarios import synthesize

    pad = np.zeros(16000, np.float32)
    phrase = np.concatenate([pad, synthesize("okay nabu", "en-us", 160), pad])
    other = np.concatenate([pad, synthesize("the weather is nice today", "en-us", 160), pad])
    for engine in WAKE_ENGINES:
        assert wake_word_detected(phrase, "okay_nabu", engine), engine
        assert not wake_word_detected(other, "okay_nabu", engine), engine


def test_echo_convergence_is_when_the_next_second_is_cancelled() -> None:
    """A residual that drops from the echo's level to -30 dB at 0.4 s after the onset
    converges at 0.4 s; a 50 ms burst of uncancelled echo at 1.0 s moves it past the
    burst (one energy ratio over the hold: the burst cannot hide); never below 20 dB: nan."""
    fs, onset = 16000, 1600
    rng = np.random.default_rng(0)
    echo = rng.standard_normal(4 * fs)
    echo[:onset] = 0.0
    residual = echo.copy()
    residual[onset + int(0.4 * fs):] *= 10 ** (-30 / 20)
    assert echo_convergence_s(echo, residual, onset, fs) == pytest.approx(0.4)
    burst = residual.copy()
    a = onset + fs
    burst[a : a + 800] = echo[a : a + 800]
    t = echo_convergence_s(echo, burst, onset, fs)
    assert t == pytest.approx(1.05)
    assert np.isnan(echo_convergence_s(echo, echo * 0.2, onset, fs))  # 14 dB only
    with pytest.raises(ValueError, match="onset_sample"):
        echo_convergence_s(echo, residual, len(echo), fs)
