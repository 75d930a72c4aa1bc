"""ERB-band features and band-to-bin gain interpolation shared by training and inference.

Bands: ``n_bands`` triangular filters whose centres are equally spaced on the ERB-rate
scale (Glasberg & Moore 1990, ``E(f) = 21.4 log10(1 + 0.00437 f)``) from 0 Hz to Nyquist,
rounded to whole bins and at least one bin apart. Adjacent triangles overlap so that the
weights of every bin sum to 1 (``W.sum(0) == 1``): band energies are ``W @ |Y|^2`` and a
per-bin gain is ``W.T @ g`` (linear interpolation between band centres, as in RNNoise).

Features per frame and stream (e.g. the beam output, optionally a noise reference):
``l_b = ln(E_b + EPS)``, then ``[ (l_b - mu_b) / 4, (l_b + 10) / 5 ]`` with ``mu_b`` a running
mean ``mu <- a mu + (1 - a) l`` (``a = NORM_ALPHA``, about 1 s), started at the first frame's
value. The first half is level-independent (what stands out of the long-term spectrum),
the second tells the absolute level.

Extended features (``extended=True``, bundles whose card says ``"features": "ext"``), three
more per band and stream, appended after every stream's two base blocks; with them the
running mean starts warm, ``a_t = min(NORM_ALPHA, t / (t + 1))`` at frame ``t`` (the plain
mean of the frames so far for the first second), so a faint or silent start (a beamformer
that is still converging) does not bias it for seconds:

- noise-floor SNR ``(l_b - n_b) / 4``: ``n_b`` is a minimum tracker on the smoothed log energy
  ``s <- FLOOR_SMOOTH s + (1 - FLOOR_SMOOTH) l`` (``s`` starts at the first frame's ``l``),
  ``n <- max(min(s, n + FLOOR_RISE), mu - FLOOR_BELOW_MEAN)`` (rises at most ~6 dB/s and
  stays within 30 dB of the running mean ``mu``, so a silent start or a dropout cannot
  leave it stuck far below; minimum statistics, Martin 2001, in its simplest recursive
  form); the level above the noise floor (a posteriori SNR);
- temporal delta ``(l_b(t) - l_b(t - 1)) / 4`` (0 at the first frame): onsets, clicks;
- in-band spectral flatness ``(ln(sum_k w P_k / W) - sum_k w ln(P_k + EPS) / W - 0.6) / 2``
  with ``W = sum_k w_bk`` (>= 0 by Jensen; about 0.58 for Gaussian noise over many bins, larger
  for harmonic speech): tells voiced speech from broadband noise and transients.

Harmonic features (``kind="harm"``, card ``"features": "harm"``): the extended ones plus one
more per band and stream, appended last: the band's normalised autocorrelation at the
frame's pitch lag, an in-frame analogue of RNNoise's per-band pitch correlation (Valin 2018,
sec. 3.3). From the frame's power spectrum ``P_k`` (``N = 2 (n_bins - 1)``, ``c_k = 1`` at DC
and Nyquist, else 2) the circular autocorrelation is ``r(tau) = sum_k c_k P_k cos(2 pi k tau /
N)`` (Wiener-Khinchin); the pitch lag ``tau*`` is its largest value over ``HARM_MIN_LAG ..
HARM_MAX_LAG`` samples (500 Hz .. 100 Hz at 16 kHz), refined to a fraction of a sample by a
parabola through the peak and its neighbours (at most half a sample either way); the feature
is ``r_b(tau*) / r_b(0)`` with ``r_b(tau) = sum_k w_bk c_k P_k cos(2 pi k tau / N)``, in
``[-1, 1]``: near 1 where the band's power sits on the harmonics of ``1 / tau*`` (voiced
speech, a tonal noise), near 0 for broadband noise. (The frame is one 20 ms window, so the
autocorrelation is circular: lags beyond ``N / 2`` alias, hence the 100 Hz lower limit.)
"""

from __future__ import annotations

import math

import numpy as np

from mica.array_dsp.jit import kernel

EPS = 1e-9
NORM_ALPHA = 0.99
FEATS_PER_BAND = 2
EXT_FEATS_PER_BAND = 3
HARM_FEATS_PER_BAND = 1
FEATURE_KINDS = ("base", "ext", "harm")
"""Feature sets, each a superset of the one before (see the module docstring)."""
HARM_MIN_LAG = 32  # samples: 500 Hz at 16 kHz
HARM_MAX_LAG = 160  # samples: 100 Hz at 16 kHz; at most N / 2
FLOOR_SMOOTH = 0.6
FLOOR_RISE = 0.0138  # ln units per 10 ms frame = 6 dB/s
FLOOR_BELOW_MEAN = 6.91  # ln units = 30 dB
FLAT_OFFSET = 0.6


def erb_rate(f_hz: np.ndarray | float) -> np.ndarray | float:
    return 21.4 * np.log10(1.0 + 0.00437 * np.asarray(f_hz))


def band_centres(n_bins: int, fs_hz: float, n_bands: int) -> np.ndarray:
    """``(n_bands,)`` int bin indices of the band centres (0 first, ``n_bins - 1`` last)."""
    nyq = fs_hz / 2.0
    e = np.linspace(0.0, float(erb_rate(nyq)), n_bands)
    f = (10.0 ** (e / 21.4) - 1.0) / 0.00437
    bins = f / nyq * (n_bins - 1)
    centres = [0]
    for i in range(1, n_bands):
        remaining = n_bands - 1 - i
        c = max(int(round(bins[i])), centres[-1] + 1)
        centres.append(min(c, n_bins - 1 - remaining))
    centres[-1] = n_bins - 1
    return np.asarray(centres, np.int64)


def erb_weights(n_bins: int = 161, fs_hz: float = 16000.0, n_bands: int = 32) -> np.ndarray:
    """``(n_bands, n_bins)`` float32 triangular weights; columns sum to 1."""
    c = band_centres(n_bins, fs_hz, n_bands)
    w = np.zeros((n_bands, n_bins), np.float64)
    for b in range(n_bands):
        w[b, c[b]] = 1.0
        if b > 0:
            lo = c[b - 1]
            for k in range(lo + 1, c[b]):
                w[b, k] = (k - lo) / (c[b] - lo)
        if b < n_bands - 1:
            hi = c[b + 1]
            for k in range(c[b] + 1, hi):
                w[b, k] = (hi - k) / (hi - c[b])
    return w.astype(np.float32)


def check_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`FEATURE_KINDS`, else ``ValueError``."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature kind must be one of {list(FEATURE_KINDS)}, not {kind!r}")
    return kind


def feats_per_band(kind: str) -> int:
    """Features per band and stream of feature set ``kind``: 2 (base), 5 (ext), 6 (harm)."""
    n = FEATS_PER_BAND
    if check_kind(kind) != "base":
        n += EXT_FEATS_PER_BAND
    if kind == "harm":
        n += HARM_FEATS_PER_BAND
    return n


def harmonic_lags(n_bins: int) -> np.ndarray:
    """``(n_lags,)`` float64 candidate pitch lags in samples, ``HARM_MIN_LAG`` up to
    ``min(HARM_MAX_LAG, N / 2)``."""
    return np.arange(HARM_MIN_LAG, min(HARM_MAX_LAG, n_bins - 1) + 1, dtype=np.float64)


def bin_multiplicity(n_bins: int) -> np.ndarray:
    """``(n_bins,)`` float64 ``c_k``: 1 at DC and Nyquist, 2 elsewhere (the one-sided
    spectrum's bins as they enter the full ``N``-point sum)."""
    c = np.full(n_bins, 2.0)
    c[0] = c[-1] = 1.0
    return c


def harmonic_table(n_bins: int) -> np.ndarray:
    """``(n_lags, n_bins)`` float64 ``c_k cos(2 pi k tau / N)`` for the lags of
    :func:`harmonic_lags`: ``table @ P`` is the circular autocorrelation at those lags."""
    n_fft = 2 * (n_bins - 1)
    k = np.arange(n_bins)
    return bin_multiplicity(n_bins) * np.cos(
        2.0 * np.pi * np.outer(harmonic_lags(n_bins), k) / n_fft)


@kernel
def parabolic_offset(left: float, centre: float, right: float) -> float:
    """Vertex of the parabola through three equally spaced values, relative to the centre,
    in ``[-0.5, 0.5]``; 0 where they do not form a maximum."""
    den = left - 2.0 * centre + right
    if not den < 0.0:
        return 0.0
    return min(0.5, max(-0.5, 0.5 * (left - right) / den))


def harmonic_reference(power: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-band normalised autocorrelation at the pitch lag: power ``(n_frames, n_bins)`` ->
    ``(n_frames, n_bands)`` float64 (see the module docstring)."""
    n_frames, n_bins = power.shape
    n_fft = 2 * (n_bins - 1)
    lags = harmonic_lags(n_bins)
    r = power @ harmonic_table(n_bins).T  # (n_frames, n_lags)
    cp = power * bin_multiplicity(n_bins)
    r0 = cp @ weights.T + EPS  # (n_frames, n_bands)
    out = np.empty((n_frames, weights.shape[0]))
    k = np.arange(n_bins)
    for t in range(n_frames):
        i = int(np.argmax(r[t]))
        d = parabolic_offset(r[t, i - 1], r[t, i], r[t, i + 1]) \
            if 0 < i < len(lags) - 1 else 0.0
        cos = np.cos(2.0 * np.pi * k * (lags[i] + d) / n_fft)
        out[t] = (cp[t] * cos) @ weights.T / r0[t]
    return out


def features_reference(
    spectra: np.ndarray, weights: np.ndarray, kind: str = "base"
) -> np.ndarray:
    """Whole-signal features: spectra ``(n_streams, n_frames, n_bins)`` complex ->
    ``(n_frames, n_streams * n_bands * F)`` float32, ``F`` = :func:`feats_per_band`: first
    every stream's base blocks (stream-major: the normalised block, then the absolute
    block), then, for ``ext`` and ``harm``, every stream's noise-floor, delta and flatness
    blocks, then, for ``harm``, every stream's harmonicity block."""
    import scipy.signal

    extended = check_kind(kind) != "base"

    n_streams, n_frames, _ = spectra.shape
    power = np.abs(spectra.astype(np.complex128)) ** 2
    w64 = weights.astype(np.float64)
    energies = power @ w64.T  # (n_streams, n_frames, n_bands)
    logs = np.log(energies + EPS)
    a = NORM_ALPHA
    out = []
    means = []
    for s in range(n_streams):
        lg = logs[s]
        if extended:  # warm start: the mean of all frames so far until that is ~1 s long
            mu = np.empty_like(lg)
            m = lg[0]
            for t in range(n_frames):
                at = min(a, t / (t + 1.0))
                m = at * m + (1.0 - at) * lg[t]
                mu[t] = m
        else:
            mu, _ = scipy.signal.lfilter([1.0 - a], [1.0, -a], lg, axis=0, zi=a * lg[:1])
        means.append(mu)
        out.append((lg - mu) / 4.0)
        out.append((lg + 10.0) / 5.0)
    if extended:
        wsum = w64.sum(1)
        for s in range(n_streams):
            lg = logs[s]
            sm, _ = scipy.signal.lfilter(
                [1.0 - FLOOR_SMOOTH], [1.0, -FLOOR_SMOOTH], lg, axis=0, zi=FLOOR_SMOOTH * lg[:1]
            )
            floor = np.empty_like(lg)
            n = sm[0]
            for t in range(n_frames):
                n = np.maximum(np.minimum(sm[t], n + FLOOR_RISE), means[s][t] - FLOOR_BELOW_MEAN)
                floor[t] = n
            delta = np.diff(lg, axis=0, prepend=lg[:1])
            mean_log = np.log(power[s] + EPS) @ w64.T / wsum
            flat = np.log(energies[s] / wsum + EPS) - mean_log
            out += [(lg - floor) / 4.0, delta / 4.0, (flat - FLAT_OFFSET) / 2.0]
    if kind == "harm":
        out += [harmonic_reference(power[s], w64) for s in range(n_streams)]
    return np.concatenate(out, axis=1).astype(np.float32)


def db_to_gain(db: float) -> float:
    return math.pow(10.0, db / 20.0)
