"""Drift compensation: the fractional resampler and the online drift estimator."""

from __future__ import annotations

import glob
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from mica.array_dsp.drift import (
    LOCKED,
    DriftCompensator,
    coherence_drift_kernel,
    coherence_drift_reference,
    coherent_sum_kernel,
    coherent_sum_reference,
    cross_spectrum_kernel,
    cross_spectrum_reference,
    gcc_phat,
    group_coherence_kernel,
    group_coherence_reference,
    talker_cross_spectrum_kernel,
    talker_cross_spectrum_reference,
    weighted_median,
)
from mica.array_dsp.resample import (
    FRAC_ONE,
    StreamingResampler,
    ppm_to_step_q,
    resample_kernel,
    resample_reference,
)

FS = 16000


def _bandlimited_sines(n: int, seed: int = 0, n_sines: int = 40):
    rng = np.random.default_rng(seed)
    f = rng.uniform(20, 0.8 * FS / 2, n_sines)
    ph = rng.uniform(0, 2 * np.pi, n_sines)

    def at(t: np.ndarray) -> np.ndarray:
        return (np.cos(2 * np.pi * f[:, None] * t / FS + ph[:, None]).sum(0) / n_sines)
    return at


def _resample(x: np.ndarray, step_q: int, n_out: int, block: int = 160) -> np.ndarray:
    r = StreamingResampler(x.shape[0])
    r.set_step_q(step_q)
    out = np.zeros((x.shape[0], n_out), np.float32)
    pushed = 0
    for k in range(0, n_out, block):
        m = min(block, n_out - k)
        while not r.available(m):
            r.push(np.ascontiguousarray(x[:, pushed:pushed + block]))
            pushed += block
        r.pull(out[:, k:k + m])
    return out


def _err_db(got: np.ndarray, want: np.ndarray) -> float:
    return float(10 * np.log10(np.sum((got - want) ** 2) / np.sum(want ** 2)))


@pytest.mark.parametrize("up, down", [(2000, 2001), (2001, 2000), (10000, 10001)])
def test_resampler_matches_scipy_and_exact_bandlimited_signal(up: int, down: int) -> None:
    """Stated error: <= -55 dB against scipy.signal.resample_poly (itself about -59 dB off
    the exact signal) and <= -65 dB against the exact band-limited signal (content below
    0.8 Nyquist), streamed in 160-sample blocks."""
    sig = _bandlimited_sines(24000)
    x = sig(np.arange(24000)).astype(np.float32)[None]
    ratio = down / up
    n_out = 20000
    got = _resample(x, round(ratio * FRAC_ONE), n_out)[0]
    ref = scipy.signal.resample_poly(x[0].astype(np.float64), up, down)[:n_out]
    exact = sig(np.arange(n_out) * ratio)
    inner = slice(1000, n_out - 1000)
    assert _err_db(got[inner], ref[inner]) < -55.0
    assert _err_db(got[inner], exact[inner]) < -65.0


def test_sine_resampled_by_known_ppm_has_expected_frequency() -> None:
    """1 kHz read with a +500 ppm step comes out at 1000.5 Hz (measured to 0.01 Hz)."""
    n = 4 * FS
    x = np.sin(2 * np.pi * 1000.0 * np.arange(n + 200) / FS).astype(np.float32)[None]
    y = _resample(x, ppm_to_step_q(500.0), n - 400)[0].astype(np.float64)
    y = y[1000:]
    t = np.arange(y.size) / FS
    spectrum = lambda f: abs(np.sum(y * np.exp(-2j * np.pi * f * t)))  # noqa: E731
    grid = np.arange(999.0, 1002.0, 0.005)
    peak = grid[int(np.argmax([spectrum(f) for f in grid]))]
    assert abs(peak - 1000.5) < 0.01


def test_resampler_kernel_equals_numpy_reference_across_channels() -> None:
    rng = np.random.default_rng(3)
    r = StreamingResampler(1)
    for n_ch in (1, 3, 6):
        buf = rng.standard_normal((n_ch, 600)).astype(np.float32)
        for step_q in (ppm_to_step_q(-300.0), ppm_to_step_q(0.0), ppm_to_step_q(731.0)):
            index, frac = 40, 123456789
            pos = np.array([index, frac], np.int64)
            out = np.zeros((n_ch, 400), np.float32)
            resample_kernel(buf, np.int64(0), pos, np.int64(step_q), r.table, out)
            ref, idx, fr = resample_reference(buf, 0, index, frac, step_q, r.table, 400)
            np.testing.assert_allclose(out, ref, atol=2e-5)
            assert (int(pos[0]), int(pos[1])) == (idx, fr)


def test_days_of_position_stay_exact() -> None:
    """Jump the fixed-point accumulator 30 days ahead (4.1e10 samples): the position is
    exactly start + n * step, and the output equals that of the same input read at a small
    index, bit for bit: nothing accumulates in floating point."""
    step_q = ppm_to_step_q(123.456)
    n_jump = 30 * 86400 * FS
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4000)).astype(np.float32)

    far = StreamingResampler(2)
    far.set_step_q(step_q)
    far.advance(n_jump)
    assert far.position_q == n_jump * step_q  # exact integer arithmetic
    base = far.position_q >> 32
    frac = far.position_q & (FRAC_ONE - 1)
    # feed input so that absolute index `base` holds x[:, 100]
    far.reset(0)
    far.advance(0)
    near = StreamingResampler(2)
    near.set_step_q(step_q)
    near.set_position_q(100 * FRAC_ONE + frac)
    near.push(x)
    out_near = np.zeros((2, 3000), np.float32)
    near.pull(out_near)

    far2 = StreamingResampler(2)
    far2.set_step_q(step_q)
    far2.reset(0)
    far2.skip_input(0)
    # position the far reader at (base, frac) with input whose absolute start is base - 100
    far2._buf_start = base - 100  # noqa: SLF001 - test drives the absolute index directly
    far2._fill = 0  # noqa: SLF001
    far2.set_position_q(base * FRAC_ONE + frac)
    far2.push(x)
    out_far = np.zeros((2, 3000), np.float32)
    far2.pull(out_far)
    np.testing.assert_array_equal(out_far, out_near)
    assert far2.position_q - (base * FRAC_ONE + frac) == 3000 * step_q


def test_cross_spectrum_and_coherent_sum_kernels_equal_references() -> None:
    rng = np.random.default_rng(7)
    for n_frames, n_bins in ((1, 9), (5, 513)):
        a = (rng.standard_normal((n_frames, n_bins)) + 1j * rng.standard_normal(
            (n_frames, n_bins))).astype(np.complex64)
        b = (rng.standard_normal((n_frames, n_bins)) + 1j * rng.standard_normal(
            (n_frames, n_bins))).astype(np.complex64)
        phi = np.zeros(n_bins, np.complex128)
        paa = np.zeros(n_bins)
        pbb = np.zeros(n_bins)
        cross_spectrum_kernel(a, b, phi, paa, pbb)
        for got, want in zip((phi, paa, pbb), cross_spectrum_reference(a, b), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        omega = np.linspace(0, np.pi, n_bins)
        lags = np.linspace(-3, 3, 13)
        out = np.zeros(13)
        coherent_sum_kernel(phi, omega, lags, out)
        np.testing.assert_allclose(out, coherent_sum_reference(phi, omega, lags), rtol=1e-9,
                                   atol=1e-6)


def test_gcc_phat_finds_an_integer_offset() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal(20000)
    lag, ratio = gcc_phat(x[1000:17000], x[1237:17237], 500)
    assert abs(lag + 237) < 0.05 and ratio > 3  # other[n - 237] lines up with ref[n]


def _speech(corpus: Path, seconds: float) -> np.ndarray:
    files = sorted(glob.glob(str(corpus / "speech" / "librispeech_*.wav")))[:8]
    return np.concatenate([sf.read(f)[0] for f in files])[: int(seconds * FS)]


def _two_devices(speech: np.ndarray, ppm: int, snr_db: float, offset: int, seed: int = 1):
    """Reference mic and a second device's mic 2 samples later, white noise at ``snr_db``,
    the second one sampled ``ppm`` fast and started ``offset`` samples late."""
    rng = np.random.default_rng(seed)
    b = np.concatenate([np.zeros(2), speech])[: speech.size]
    scale = np.sqrt(np.mean(speech ** 2) / 10 ** (snr_db / 10))
    a = speech + scale * rng.standard_normal(speech.size)
    b = b + scale * rng.standard_normal(speech.size)
    fr = Fraction(1_000_000 + ppm, 1_000_000)
    b = scipy.signal.resample_poly(np.r_[b, np.zeros(100)], fr.numerator, fr.denominator)
    return a.astype(np.float32), b[offset:].astype(np.float32)


def run_compensator(a: np.ndarray, b: np.ndarray, comp: DriftCompensator, hop: int = 160,
                    events: list | None = None, aux: np.ndarray | None = None):
    """Stream both devices through ``comp``; ``(estimates per second, aligned output)``.
    ``events`` collects the drift events; ``aux`` is a second reference-device channel."""
    out = np.zeros((1, hop), np.float32)
    aligned = np.zeros(a.size, np.float32)
    est = []
    pushed = 0
    for k in range(a.size // hop - 4):
        while not comp.ready(hop):
            comp.push(b[None, pushed:pushed + hop])
            pushed += hop
        got = comp.process(a[k * hop:(k + 1) * hop], out,
                           None if aux is None else aux[k * hop:(k + 1) * hop])
        if events is not None:
            events.extend(got)
        aligned[k * hop:(k + 1) * hop] = out[0]
        if (k + 1) % (FS // hop) == 0:
            est.append(comp.drift_ppm)
    return np.array(est), aligned


@pytest.mark.parametrize("ppm", [-100, 20])
def test_estimator_converges_on_simulated_two_device_speech(corpus_dir: Path,
                                                             ppm: int) -> None:
    """Corpus speech at 10 dB SNR, second device -100 / +20 ppm and 37 samples late,
    no prior: within 1 ppm after 12 s, locked, and the aligned output lines up."""
    a, b = _two_devices(_speech(corpus_dir, 13), ppm, 10.0, 37)
    comp = DriftCompensator(1, FS)
    comp.expected_delay_samples = 2.0  # the talker's physical delay between the devices
    events: list = []
    est, aligned = run_compensator(a, b, comp, events=events)
    assert abs(est[11] - ppm) < 1.0, est
    assert "jump" not in [e.kind for e in events]
    assert comp.state == LOCKED
    lag, _ = gcc_phat(a[-4 * FS:-FS], aligned[-4 * FS:-FS], 50)
    assert abs(lag - 2.0) < 0.3  # the physical delay is kept


def test_estimator_relocks_after_a_device_reset(corpus_dir: Path) -> None:
    """The device restarts mid-stream (its input jumps by 1234 samples at 8 s): the
    compensator raises a ``relock`` event within a few seconds, re-acquires (an
    ``acquired`` event whose offset moved by the jump), tracks the same drift again and
    the aligned output lines up with the reference again."""
    a, b = _two_devices(_speech(corpus_dir, 26), 60, 15.0, 0)
    b = np.r_[b[: 8 * FS], b[8 * FS + 1234:]]
    a = a[: 25 * FS]
    comp = DriftCompensator(1, FS)
    events: list = []
    est, aligned = run_compensator(a, b, comp, events=events)
    assert comp.relocks >= 1
    kinds = [(e.kind, round(e.t_s)) for e in events]
    relocks = [e for e in events if e.kind == "relock"]
    assert relocks and 8 < relocks[0].t_s <= 13, kinds
    before = [e for e in events if e.kind == "acquired" and e.t_s < 8]
    after = [e for e in events if e.kind == "acquired" and e.t_s > relocks[0].t_s]
    assert before and after, kinds
    # the device's index for a reference sample dropped by the lost samples (the drift
    # meanwhile adds 60 ppm of the time between the events, about 11 samples)
    moved = after[0].offset_samples - before[0].offset_samples
    assert abs(moved + 1234) < 20, (moved, kinds)
    assert abs(est[-1] - 60) < 2.0, est
    # aligned again (no expected delay given: the talker's 2 samples count as offset)
    lag, _ = gcc_phat(a[-4 * FS:-FS], aligned[-4 * FS:-FS], 50)
    assert abs(lag) < 0.3, lag


def test_a_clock_rate_step_raises_a_jump_event_and_is_followed(corpus_dir: Path) -> None:
    """The device's clock steps from +40 to +80 ppm at 10 s (a re-clocked device): four
    segments in a row beyond 10 ppm make a ``jump`` event within 7 s, from about 40 to
    about 80 ppm; the estimate ends within 2 ppm of 80 and locked again (the Huber-weighted
    fit alone stays near 40 for minutes). No false step at a steady rate (the other
    tests: no ``jump`` there)."""
    speech = _speech(corpus_dir, 26)
    rng = np.random.default_rng(3)
    scale = np.sqrt(np.mean(speech ** 2) / 10 ** 1.5)
    a = speech + scale * rng.standard_normal(speech.size)
    b = np.r_[np.zeros(2), speech][: speech.size] + scale * rng.standard_normal(speech.size)

    def fast(x: np.ndarray, ppm: int) -> np.ndarray:
        fr = Fraction(1_000_000 + ppm, 1_000_000)
        return scipy.signal.resample_poly(np.r_[x, np.zeros(100)], fr.numerator,
                                          fr.denominator)
    cut = 10 * FS
    b = np.r_[fast(b[:cut], 40)[: round(cut * 1.00004)], fast(b[cut:], 80)]
    comp = DriftCompensator(1, FS)
    events: list = []
    est, _ = run_compensator(a[: 25 * FS].astype(np.float32), b.astype(np.float32), comp,
                             events=events)
    kinds = [(e.kind, round(e.t_s), round(e.drift_ppm, 1)) for e in events]
    jumps = [e for e in events if e.kind == "jump"]
    assert len(jumps) == 1 and 10 < jumps[0].t_s <= 17, kinds
    assert abs(jumps[0].previous_ppm - 40) < 2 and abs(jumps[0].drift_ppm - 80) < 3, kinds
    assert abs(est[-1] - 80) < 2.0, est
    assert comp.state == LOCKED and comp.relocks == 0, kinds


def test_coherence_kernels_equal_references() -> None:
    rng = np.random.default_rng(11)
    n_frames, n_all = 12, 65
    a = (rng.standard_normal((n_frames, n_all)) + 1j * rng.standard_normal(
        (n_frames, n_all))).astype(np.complex64)
    b = (0.5 * a + rng.standard_normal((n_frames, n_all))).astype(np.complex64)
    a[:, 3] = 0  # a silent bin gives 0
    bins = np.arange(2, 60, dtype=np.int64)
    gamma = np.zeros((3, bins.size), np.complex128)
    group_coherence_kernel(a, b, bins, 4, gamma)
    np.testing.assert_allclose(gamma, group_coherence_reference(a, b, bins, 4, 3),
                               rtol=1e-9, atol=1e-12)
    assert np.all(np.abs(gamma) <= 1 + 1e-9) and np.all(gamma[:, 1] == 0)
    prev = np.roll(gamma, 1, axis=0)
    omega = np.linspace(0.1, 2.5, bins.size)
    shift = np.array([0.0, 1.5, -3.25])
    out = np.full(bins.size, 0.5 + 0j)
    coherence_drift_kernel(gamma, prev, omega, shift, out)
    np.testing.assert_allclose(out - 0.5, coherence_drift_reference(gamma, prev, omega, shift),
                               rtol=1e-9, atol=1e-12)


def test_weighted_median() -> None:
    assert weighted_median(np.array([3.0, 1.0, 2.0]), np.ones(3)) == 2.0
    assert weighted_median(np.array([0.0, 10.0]), np.array([1.0, 3.0])) == 10.0
    assert weighted_median(np.array([0.0, 10.0]), np.array([1.0, 1.0])) == 5.0


def _delayed(x: np.ndarray, d: int) -> np.ndarray:
    return np.concatenate([np.zeros(d), x])[: x.size] if d >= 0 else np.r_[x[-d:],
                                                                          np.zeros(-d)]


@pytest.mark.parametrize("snr_db", [0.0, 10.0])
def test_drift_converges_with_a_louder_point_noise_in_another_direction(
        corpus_dir: Path, snr_db: float) -> None:
    """The failure mode of an absolute-delay tracker: a talker (4 samples later at the
    second device) and a point noise source (dishes, 5 samples earlier there) that is
    as loud as (0 dB) or 10 dB below the talker, so the dominant source, and with it the
    inter-device delay, switches all the time. Second device +100 ppm, 31 samples late:
    the coherence drift does not see the source delays; within 1 ppm after 10 s and
    after 14 s, locked, no re-lock."""
    seconds = 15
    speech = _speech(corpus_dir, seconds)
    noise = sf.read(corpus_dir / "noise" / "speechcommands_doing_the_dishes.wav")[0]
    noise = np.resize(noise, speech.size)
    noise *= np.sqrt(np.mean(speech ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
    rng = np.random.default_rng(4)
    floor = 1e-3 * np.sqrt(np.mean(speech ** 2))
    a = speech + noise + floor * rng.standard_normal(speech.size)
    b = _delayed(speech, 4) + _delayed(noise, -5) + floor * rng.standard_normal(speech.size)
    fr = Fraction(1_000_100, 1_000_000)
    b = scipy.signal.resample_poly(np.r_[b, np.zeros(100)], fr.numerator, fr.denominator)
    comp = DriftCompensator(1, FS)
    comp.expected_delay_samples = 4.0
    est, _ = run_compensator(a.astype(np.float32), b[31:].astype(np.float32), comp)
    assert abs(est[9] - 100) < 1.0 and abs(est[13] - 100) < 1.0, est
    assert comp.state == LOCKED and comp.relocks == 0


@pytest.mark.parametrize("n_frames, n_all, tau_x, sharpness", [(12, 65, 2.5, 4.0),
                                                               (3, 513, -7.0, 1.0),
                                                               (1, 9, 0.0, 16.0)])
def test_talker_cross_spectrum_kernel_equals_reference(n_frames: int, n_all: int,
                                                       tau_x: float, sharpness: float) -> None:
    rng = np.random.default_rng(n_all)

    def spec() -> np.ndarray:
        return (rng.standard_normal((n_frames, n_all))
                + 1j * rng.standard_normal((n_frames, n_all))).astype(np.complex64)
    a, b, x = spec(), spec(), spec()
    x[:, 1] = 0  # a silent bin of the mask channel: no contribution
    bins = np.arange(1, n_all - 1, dtype=np.int64)
    omega = np.pi * bins / (n_all - 1)
    phi = np.zeros(bins.size, np.complex128)
    paa = np.zeros(bins.size)
    pbb = np.zeros(bins.size)
    talker_cross_spectrum_kernel(a, b, x, bins, omega, tau_x, sharpness, phi, paa, pbb)
    want = talker_cross_spectrum_reference(a, b, x, bins, omega, tau_x, sharpness)
    for got, ref in zip((phi, paa, pbb), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)
    assert phi[0] == 0 and paa[0] == 0
    # a mask channel that sees exactly the look direction passes everything
    x_look = (a[:, bins] * np.exp(-1j * omega * tau_x)[None, :]).astype(np.complex64)
    x_full = np.zeros_like(a)
    x_full[:, bins] = x_look
    phi.fill(0)
    paa.fill(0)
    pbb.fill(0)
    talker_cross_spectrum_kernel(a, b, x_full, bins, omega, tau_x, sharpness, phi, paa, pbb)
    np.testing.assert_allclose(paa, (np.abs(a[:, bins]) ** 2).sum(0), rtol=1e-4)


def test_look_direction_mask_keeps_the_talkers_offset_under_a_louder_noise(
        corpus_dir: Path) -> None:
    """Talker and a point noise source 6 dB louder (dishes) in another direction; the
    second device +100 ppm and 31 samples late. Without the mask the offset follows the
    louder noise (its inter-device delay, 9 samples from the talker's); with a second
    reference channel seeing the talker 3 samples later and the noise 2 samples earlier,
    the offset is the talker's: the aligned device keeps the talker's physical delay."""
    seconds = 12
    speech = _speech(corpus_dir, seconds)
    noise = sf.read(corpus_dir / "noise" / "speechcommands_doing_the_dishes.wav")[0]
    noise = np.resize(noise, speech.size)
    noise *= np.sqrt(np.mean(speech ** 2) / np.mean(noise ** 2) * 10 ** (6 / 10))
    rng = np.random.default_rng(5)
    floor = 1e-3 * np.sqrt(np.mean(speech ** 2))

    def mic(d_talker: int, d_noise: int) -> np.ndarray:
        return (_delayed(speech, d_talker) + _delayed(noise, d_noise)
                + floor * rng.standard_normal(speech.size))
    a, aux, b = mic(0, 0), mic(3, -2), mic(4, -5)
    fr = Fraction(1_000_100, 1_000_000)
    b = scipy.signal.resample_poly(np.r_[b, np.zeros(100)], fr.numerator, fr.denominator)
    b = b[31:].astype(np.float32)
    lags = {}
    for masked in (False, True):
        comp = DriftCompensator(1, FS)
        comp.expected_delay_samples = 4.0
        comp.aux_delay_samples = 3.0 if masked else None
        est, aligned = run_compensator(a.astype(np.float32), b, comp,
                                       aux=aux.astype(np.float32))
        assert abs(est[-1] - 100) < 1.0, est
        # where the aligned device sits: the talker alone, through both signal paths
        clean_b = _delayed(speech, 4)
        lags[masked], _ = gcc_phat(clean_b[-6 * FS:-FS], aligned[-6 * FS:-FS], 50)
    assert abs(lags[True]) < 0.5, lags
    assert abs(lags[False]) > 3.0, lags  # the failure the mask removes
