"""Online sampling-rate-offset (clock drift) estimation and compensation between devices.

One :class:`DriftCompensator` per non-reference capture device. It resamples the device
onto the reference clock (:class:`~mica.array_dsp.resample.StreamingResampler`) and, about
once per second, measures how well the resampled device lines up with the reference:

1. **Acquisition** (integer/initial offset only). GCC-PHAT (Knapp & Carter 1976) between
   one reference channel and one channel of the device over one segment, searched over
   ``+-max_offset_s``; the read position jumps by the lag found. A weak or ambiguous peak
   (silence) is retried on the next segment.
2. **Drift** (sampling-rate offset) from the *coherence drift*, never from an absolute
   delay. Each segment (``update_s``, 1 s) is cut into groups of ``frames_per_group``
   1024-point frames; each group gives a coherence ``G(w)`` whose phase is
   ``w (T(k) - p(k) + tau_s)``: the device's true position ``T``, the exact read position
   ``p`` and the inter-device delay ``tau_s`` of whichever source fills the bin. The
   product ``G_2 conj(G_1)`` of the same group one, two, four, eight segments apart keeps
   the clocks and cancels the source delays, as long as the sources stay where they are
   (a talker and a louder point noise source in another direction may take turns: a bin
   lit by the talker in both, or by the noise in both, says the same thing; mixed pairs
   come in both orders and cancel in phase). The known ``p_2 - p_1`` is added back, so the
   phase is ``w eps D`` with ``eps`` the absolute drift and ``D`` the distance. The
   products (weights: the magnitude-squared coherences) are summed per distance with
   forgetting (``memory_s``), each segment's contribution Huber-weighted by how far its own
   estimate lies from the running one; ``eps D`` is the peak of their coherent sum over the
   delay, the short distances finding it within ``+-max_drift_ppm`` and the long ones
   refining it. This is weighted average coherence drift (WACD/DWACD: Gburrek,
   Schmalenstroeer & Haeb-Umbach 2022), online and on decimated statistics; the prior
   (the ALSA-reported rates) is combined by its variance.
3. **Offset** (alignment). Every segment also gives the residual delay ``delta`` of the
   aligned device (phase of the MSC-weighted cross-spectrum), an absolute point
   ``(k, p(k) + delta)``. With the slope fixed by the drift estimate, the offset line's
   intercept is the weighted median of those points (forgetting ``memory_s``), so the
   source that dominates most of the time sets it and short switches do not move it. The
   resampler's step is the drift plus a bounded slew that moves the read position onto the
   line (no jumps, so no clicks), keeping the device aligned, not just at the right rate.
4. **Look-direction mask** (with a second reference-device channel ``x`` and the talker's
   delay ``tau_x`` there, :attr:`DriftCompensator.aux_delay_samples`). A louder noise
   source in another direction would set the offset (its inter-device delay, not the
   talker's: MVDR then steers the wrong way, 0.8-2.5 dB lost at 0 dB SNR). The residual
   delay is measured on the time-frequency bins where the synchronous pair ``(ref, x)``
   sees the talker's phase, ``m = ((1 + cos(arg(A conj(X)) - w tau_x)) / 2) ** s``
   (binary-mask DOA selection in the spirit of DUET: Yilmaz & Rickard 2004, W-disjoint
   orthogonality), and each offset point weighs its quality times the share of power the
   mask passed (noise alone passes little: its spatially aliased bins leak, but count
   little). The drift (coherence drift) needs no mask.

**Rate-only mode** (``rate_only=True``: a playback loopback device, whose signal is not the
microphones' acoustic signal, so no offset search may run on it): no estimation at all; the
resampler runs at the drift given by :meth:`DriftCompensator.set_prior` (the ALSA-timestamp
rate ratio) from the starting offset given at construction / :meth:`DriftCompensator.reset`
(the capture timestamps), so physical time lines up and stays lined up; lock state
:data:`RATE_ONLY`.

Re-lock: measurements that disagree with the line by more than ``relock_samples`` several
times in a row (a device reset, a restart of its stream) send the compensator back to
acquisition, keeping the drift estimate (segment pairs across the reset are dropped).
Slow changes (temperature) are followed by the forgetting. A rate *step* (the device
re-clocked: several single-segment estimates in a row far from the estimate, on one side
and agreeing with each other) restarts the drift fit from them, with a ``jump`` event, and
re-acquires the offset; the Huber weighting alone would hold the old rate for minutes.

The acoustic delay between the reference channel and the device's channel for the talker
is part of every measured ``delta``; :attr:`DriftCompensator.expected_delay_samples` (from
the geometry and look direction) is subtracted when aligning, so the beamformer sees the
physical inter-device delays. Known limits: without a second reference channel (a
one-channel reference device) a point noise source that dominates most segments sets the
median offset (a few samples; the drift is unaffected); the mask needs the look direction
(a wrong one aligns the device for that direction); noise louder than the talker in most
bins (-6 dB and below on the tests' synthetic pair) can still pull the offset.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from mica.array_dsp.jit import kernel
from mica.array_dsp.resample import FRAC_BITS, FRAC_ONE, StreamingResampler
from mica.array_dsp.validate import SignalShapeError, check_array, check_positive_int

ACQUIRING = "acquiring"
TRACKING = "tracking"
LOCKED = "locked"
RATE_ONLY = "rate_only"
LOCK_STATES = (ACQUIRING, TRACKING, LOCKED)
"""States of an estimating compensator; a rate-only one is always :data:`RATE_ONLY`."""


# --------------------------------------------------------------------------- kernels


@kernel
def cross_spectrum_kernel(spec_a: np.ndarray, spec_b: np.ndarray, phi_ab: np.ndarray,
                          p_aa: np.ndarray, p_bb: np.ndarray) -> None:
    """Accumulate Welch statistics over frames.

    spec_a, spec_b: ``(n_frames, n_bins)`` complex64 spectra of the two channels;
    phi_ab: ``(n_bins,)`` complex128 ``+= sum_t A conj(B)``; p_aa, p_bb: ``(n_bins,)``
    float64 ``+= sum_t |A|^2``, ``|B|^2``.
    """
    n_frames, n_bins = spec_a.shape
    for t in range(n_frames):
        for k in range(n_bins):
            a = spec_a[t, k]
            b = spec_b[t, k]
            phi_ab[k] += complex(a) * complex(b).conjugate()
            p_aa[k] += a.real * a.real + a.imag * a.imag
            p_bb[k] += b.real * b.real + b.imag * b.imag


def cross_spectrum_reference(spec_a: np.ndarray, spec_b: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numpy reference of :func:`cross_spectrum_kernel` (from zero): ``(phi_ab, p_aa, p_bb)``."""
    a = spec_a.astype(np.complex128)
    b = spec_b.astype(np.complex128)
    return ((a * b.conj()).sum(axis=0), (np.abs(a) ** 2).sum(axis=0),
            (np.abs(b) ** 2).sum(axis=0))


@kernel
def talker_cross_spectrum_kernel(spec_a: np.ndarray, spec_b: np.ndarray, spec_x: np.ndarray,
                                 bins: np.ndarray, omega: np.ndarray, tau_x: float,
                                 sharpness: float, phi_ab: np.ndarray, p_aa: np.ndarray,
                                 p_bb: np.ndarray) -> None:
    """Welch statistics of the bins the talker dominates (a direction mask from the
    reference device's own second channel).

    spec_a, spec_b, spec_x: ``(n_frames, n_all_bins)`` complex64 spectra of the reference
    channel, the device channel and a second reference-device channel ``x``; bins:
    ``(n_bins,)`` int64 bins used; omega: ``(n_bins,)`` rad/sample; tau_x: the talker's
    delay of ``x`` behind ``a`` (samples). Each time-frequency bin gets the weight
    ``m = ((1 + cos(arg(A conj(X)) - omega tau_x)) / 2) ** sharpness``: 1 where the
    synchronous pair ``(a, x)`` sees the look direction's phase, 0 where it sees the
    opposite. phi_ab: ``(n_bins,)`` complex128 ``+= sum_t m A conj(B)``; p_aa, p_bb:
    ``(n_bins,)`` float64 ``+= sum_t m |A|^2``, ``m |B|^2``.
    """
    n_frames = spec_a.shape[0]
    for i in range(bins.shape[0]):
        k = bins[i]
        ref = complex(math.cos(omega[i] * tau_x), math.sin(omega[i] * tau_x))
        for t in range(n_frames):
            a = complex(spec_a[t, k])
            b = complex(spec_b[t, k])
            ax = a * complex(spec_x[t, k]).conjugate()
            mag = abs(ax)
            if mag <= 1e-30:
                continue
            c = (ax * ref.conjugate()).real / mag
            m = (0.5 * (1.0 + c)) ** sharpness
            phi_ab[i] += m * (a * b.conjugate())
            p_aa[i] += m * (a.real * a.real + a.imag * a.imag)
            p_bb[i] += m * (b.real * b.real + b.imag * b.imag)


def talker_cross_spectrum_reference(spec_a: np.ndarray, spec_b: np.ndarray,
                                    spec_x: np.ndarray, bins: np.ndarray, omega: np.ndarray,
                                    tau_x: float, sharpness: float
                                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numpy reference of :func:`talker_cross_spectrum_kernel` (from zero)."""
    a = spec_a[:, bins].astype(np.complex128)
    b = spec_b[:, bins].astype(np.complex128)
    ax = a * spec_x[:, bins].astype(np.complex128).conj()
    mag = np.abs(ax)
    ok = mag > 1e-30
    c = np.real(ax * np.exp(-1j * omega * tau_x)[None, :]) / np.where(ok, mag, 1.0)
    m = np.where(ok, (0.5 * (1.0 + c)) ** sharpness, 0.0)
    return ((m * a * b.conj()).sum(axis=0), (m * np.abs(a) ** 2).sum(axis=0),
            (m * np.abs(b) ** 2).sum(axis=0))


@kernel
def coherent_sum_kernel(weighted: np.ndarray, omega: np.ndarray, lags: np.ndarray,
                        out: np.ndarray) -> None:
    """``out[i] = sum_k Re(weighted[k] exp(-j omega[k] lags[i]))``.

    weighted: ``(n_bins,)`` complex128; omega: ``(n_bins,)`` float64 rad/sample;
    lags: ``(n_lags,)`` float64 samples; out: ``(n_lags,)`` float64.
    """
    for i in range(lags.shape[0]):
        acc = 0.0
        d = lags[i]
        for k in range(weighted.shape[0]):
            ph = omega[k] * d
            acc += weighted[k].real * math.cos(ph) + weighted[k].imag * math.sin(ph)
        out[i] = acc


def coherent_sum_reference(weighted: np.ndarray, omega: np.ndarray,
                           lags: np.ndarray) -> np.ndarray:
    """Numpy reference of :func:`coherent_sum_kernel`."""
    return np.real(np.exp(-1j * np.outer(lags, omega)) @ weighted)


@kernel
def group_coherence_kernel(spec_a: np.ndarray, spec_b: np.ndarray, bins: np.ndarray,
                           frames_per_group: int, out: np.ndarray) -> None:
    """MSC-weighted coherence of consecutive groups of frames.

    spec_a, spec_b: ``(n_frames, n_all_bins)`` complex64; bins: ``(n_bins,)`` int64 bins
    used; out: ``(n_groups, n_bins)`` complex128, ``out[g, i] = G |G|`` with ``G`` the
    coherence ``sum_t A conj(B) / sqrt(sum_t |A|^2 sum_t |B|^2)`` over frames
    ``g F .. g F + F - 1`` of bin ``bins[i]`` (0 where a channel is silent): magnitude the
    magnitude-squared coherence, phase that of the cross-spectrum.
    """
    for g in range(out.shape[0]):
        for i in range(bins.shape[0]):
            k = bins[i]
            acc = 0j
            pa = 0.0
            pb = 0.0
            for t in range(g * frames_per_group, (g + 1) * frames_per_group):
                a = complex(spec_a[t, k])
                b = complex(spec_b[t, k])
                acc += a * b.conjugate()
                pa += a.real * a.real + a.imag * a.imag
                pb += b.real * b.real + b.imag * b.imag
            den = pa * pb
            if den > 1e-30:
                out[g, i] = acc * (abs(acc) / den)
            else:
                out[g, i] = 0j


def group_coherence_reference(spec_a: np.ndarray, spec_b: np.ndarray, bins: np.ndarray,
                              frames_per_group: int, n_groups: int) -> np.ndarray:
    """Numpy reference of :func:`group_coherence_kernel`."""
    f = frames_per_group
    a = spec_a[: n_groups * f, bins].astype(np.complex128).reshape(n_groups, f, -1)
    b = spec_b[: n_groups * f, bins].astype(np.complex128).reshape(n_groups, f, -1)
    cross = (a * b.conj()).sum(axis=1)
    den = (np.abs(a) ** 2).sum(axis=1) * (np.abs(b) ** 2).sum(axis=1)
    out = np.zeros_like(cross)
    ok = den > 1e-30
    out[ok] = cross[ok] * np.abs(cross[ok]) / den[ok]
    return out


@kernel
def coherence_drift_kernel(cur: np.ndarray, prev: np.ndarray, omega: np.ndarray,
                           shift: np.ndarray, out: np.ndarray) -> None:
    """Accumulate the coherence drift of group pairs:
    ``out[i] += sum_g cur[g, i] conj(prev[g, i]) exp(j omega[i] shift[g])``.

    cur, prev: ``(n_groups, n_bins)`` complex128 (:func:`group_coherence_kernel`, one
    segment apart); omega: ``(n_bins,)`` rad/sample; shift: ``(n_groups,)`` float64
    samples, the known change of the read position between the pair beyond the nominal
    one (it is added back, so the phase is that of the clocks alone); out: ``(n_bins,)``
    complex128.
    """
    for g in range(cur.shape[0]):
        s = shift[g]
        for i in range(cur.shape[1]):
            ph = omega[i] * s
            out[i] += cur[g, i] * prev[g, i].conjugate() * complex(math.cos(ph),
                                                                   math.sin(ph))


def coherence_drift_reference(cur: np.ndarray, prev: np.ndarray, omega: np.ndarray,
                              shift: np.ndarray) -> np.ndarray:
    """Numpy reference of :func:`coherence_drift_kernel` (from zero)."""
    return (cur * prev.conj() * np.exp(1j * np.outer(shift, omega))).sum(axis=0)


# --------------------------------------------------------------------------- estimators


def gcc_phat(ref: np.ndarray, other: np.ndarray, max_lag: int,
             exclude: int = 16) -> tuple[float, float]:
    """GCC-PHAT lag of ``other`` against ``ref`` (both ``(n,)``): ``(lag, peak_ratio)``.

    ``lag`` (samples, parabolic sub-sample refinement) is such that ``other[n + lag]``
    lines up with ``ref[n]``; searched over ``[-max_lag, max_lag]``. ``peak_ratio`` is the
    peak over the largest value at least ``exclude`` samples away from it (1: no distinct
    peak; the exclusion covers a peak smeared by a drift within the window).
    """
    ref = np.asarray(ref, np.float64)
    other = np.asarray(other, np.float64)
    if ref.ndim != 1 or ref.shape != other.shape:
        raise SignalShapeError(f"gcc_phat: two 1-D signals of one length, got {ref.shape} "
                               f"and {other.shape}")
    max_lag = check_positive_int(max_lag, "max_lag")
    n = ref.shape[0]
    n_fft = 1 << int(np.ceil(np.log2(n + max_lag + 1)))
    a = np.fft.rfft(ref, n_fft)
    b = np.fft.rfft(other, n_fft)
    cross = b * a.conj()
    mag = np.abs(cross)
    cross = np.where(mag > 1e-12 * (mag.max() + 1e-300), cross / np.maximum(mag, 1e-300), 0)
    cc = np.fft.irfft(cross, n_fft)
    lags = np.arange(-max_lag, max_lag + 1)
    vals = cc[lags % n_fft]
    i = int(np.argmax(vals))
    peak = float(vals[i])
    far = np.abs(lags - lags[i]) >= exclude
    second = float(vals[far].max()) if far.any() else 0.0
    frac = 0.0
    if 0 < i < len(vals) - 1:
        y0, y1, y2 = vals[i - 1], vals[i], vals[i + 1]
        den = y0 - 2 * y1 + y2
        if den < 0:
            frac = float(0.5 * (y0 - y2) / den)
    ratio = peak / second if second > 0 else float("inf")
    return float(lags[i] + frac), ratio


@dataclass
class DriftSettings:
    """Tuning of :class:`DriftCompensator` (units in the names)."""

    update_s: float = 1.0
    """Segment length: one measurement and one update per segment."""
    acquire_s: float = 2.0
    """Accepted for compatibility; acquisition now uses one segment (``update_s``)."""
    max_offset_s: float = 0.25
    """Offset search range (+-) at acquisition, beyond the timestamp guess."""
    max_drift_ppm: float = 1000.0
    """Largest drift looked for."""
    acquire_min_ratio: float = 2.0
    """GCC-PHAT peak over the next-best peak needed to accept an offset."""
    n_fft: int = 1024
    """Frame of the cross-spectra (50 % overlap)."""
    frames_per_group: int = 5
    """Frames per coherence estimate (5 frames of 1024: 0.19 s at 16 kHz)."""
    drift_lags: tuple[int, ...] = (1, 2, 4, 8)
    """Segment distances over which the coherence drift is measured (longer: finer)."""
    huber_ppm: float = 4.0
    """Per-segment drift measurements (at a distance of one segment; scaled by 1 / lag)
    further than this from the estimate are down-weighted (Huber)."""
    band_hz: tuple[float, float] = (150.0, 6000.0)
    """Bins used for the delay and drift estimates."""
    min_quality: float = 0.05
    """Measurements with a weaker coherent sum (0..1) are skipped (silence, noise only)."""
    track_range_samples: float = 16.0
    """Largest residual delay looked for while tracking the offset."""
    memory_s: float = 60.0
    """Time constant of the exponential forgetting (drift and offset)."""
    max_points: int = 240
    """Offset measurements kept."""
    prior_ppm: float = 0.0
    """Prior drift (e.g. from the ALSA frame rates)."""
    prior_sigma_ppm: float = 1000.0
    """Standard deviation of the prior (large: almost ignored)."""
    lock_stderr_ppm: float = 1.0
    """Standard error of the drift below which the estimate counts as locked."""
    min_points_lock: int = 5
    """Drift measurements needed before locking."""
    slew_ppm: float = 200.0
    """Largest extra rate used to move the read position onto the offset line (ten times
    that until locked)."""
    slew_s: float = 1.0
    """Time over which a position error is corrected."""
    relock_samples: float = 12.0
    """An offset measurement this far from the tracked offset counts against the lock
    (sources in different directions differ by up to the array's delay range)."""
    relock_count: int = 3
    """Consecutive such measurements that restart acquisition."""
    event_jump_ppm: float = 5.0
    """A change of the locked estimate by more than this raises a ``drift`` event."""
    step_ppm: float = 10.0
    """A clock-rate step: ``step_count`` single-segment drift measurements in a row all
    further than this from the estimate, on one side, and within this of each other,
    restart the drift fit from them
    (a ``jump`` event) instead of waiting for the forgetting (a 40 ppm step would take
    minutes under the Huber weighting)."""
    step_count: int = 4
    """Consecutive measurements that make a rate step (a 0 dB scene's single-segment
    spread is about 1 ppm, so 4 beyond 10 ppm on one side do not happen by chance)."""
    talker_mask_sharpness: float = 8.0
    """Exponent of the look-direction mask of the offset measurement (with a second
    reference channel, :attr:`DriftCompensator.aux_delay_samples`); 0 turns it off."""


@dataclass
class DriftEvent:
    """Something a daemon reports: a jump of the estimate, a lock, a loss of lock."""

    kind: str
    """``"jump"``, ``"locked"``, ``"acquired"`` or ``"relock"``."""
    drift_ppm: float
    previous_ppm: float
    offset_samples: float
    t_s: float
    """Reference time of the event (s since the compensator started)."""


@dataclass
class _Points:
    x: list[int] = field(default_factory=list)
    y_q: list[int] = field(default_factory=list)
    y_extra: list[float] = field(default_factory=list)
    w: list[float] = field(default_factory=list)

    def clear(self) -> None:
        self.x.clear()
        self.y_q.clear()
        self.y_extra.clear()
        self.w.clear()

    def add(self, x: int, y_q: int, extra: float, w: float, cap: int) -> None:
        self.x.append(x)
        self.y_q.append(y_q)
        self.y_extra.append(extra)
        self.w.append(w)
        if len(self.x) > cap:
            del self.x[0], self.y_q[0], self.y_extra[0], self.w[0]


@dataclass
class _Segment:
    """Coherence of one segment's groups, their centres and the read positions there."""

    gamma: np.ndarray
    k: list[int]
    pos_q: list[int]


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value below and above which half the weight lies (midpoint on a tie)."""
    order = np.argsort(values)
    v = np.asarray(values, np.float64)[order]
    c = np.cumsum(np.asarray(weights, np.float64)[order])
    half = 0.5 * c[-1]
    i = int(np.searchsorted(c, half))
    if i < len(v) - 1 and math.isclose(c[i], half):
        return float(0.5 * (v[i] + v[i + 1]))
    return float(v[min(i, len(v) - 1)])


class DriftCompensator:
    """Estimate and remove one device's clock drift against the reference (module doc).

    Args:
        n_channels: channels of the (non-reference) device.
        fs_hz: nominal rate of both devices.
        settings: :class:`DriftSettings`.
        analysis_channel: the device's channel compared with the reference channel.
        initial_offset_samples: device sample index that lines up with reference sample 0,
            as far as timestamps tell (refined by acquisition).
        compensate: ``False`` measures only (the step stays at the nominal 1.0): a
            benchmark's "uncompensated" case.
        rate_only: no offset or drift estimation: resample at the drift given by
            :meth:`set_prior` from ``initial_offset_samples`` (module doc, "Rate-only
            mode"); :meth:`process` ignores the reference samples.

    Not thread-safe: one thread pushes device input and processes reference blocks.
    """

    def __init__(self, n_channels: int, fs_hz: float, settings: DriftSettings | None = None,
                 analysis_channel: int = 0, initial_offset_samples: float = 0.0,
                 compensate: bool = True, rate_only: bool = False) -> None:
        self.settings = settings or DriftSettings()
        s = self.settings
        self.n_channels = check_positive_int(n_channels, "n_channels")
        if not fs_hz > 0:
            raise SignalShapeError(f"fs_hz must be > 0, got {fs_hz!r}")
        if not 0 <= analysis_channel < n_channels:
            raise SignalShapeError(f"analysis_channel {analysis_channel} not in "
                                   f"[0, {n_channels - 1}]")
        self.fs_hz = float(fs_hz)
        self.analysis_channel = int(analysis_channel)
        self.compensate = bool(compensate)
        self.rate_only = bool(rate_only)
        self.expected_delay_samples = 0.0
        self.aux_delay_samples: float | None = None
        hop = s.n_fft // 2
        self._seg = max(int(round(s.update_s * fs_hz)), 2 * s.n_fft)
        self._max_lag = max(int(round(s.max_offset_s * fs_hz)), 1)
        self.resampler = StreamingResampler(n_channels,
                                            history_samples=self._max_lag + self._seg + 64)
        self._ref_buf = np.zeros(self._seg, np.float32)
        self._oth_buf = np.zeros(self._seg, np.float32)
        self._aux_buf = np.zeros(self._seg, np.float32)
        self._have_aux = False
        self._fill = 0
        self._window = np.hanning(s.n_fft + 2)[1:-1].astype(np.float32)
        freqs = np.fft.rfftfreq(s.n_fft, 1.0 / fs_hz)
        self._band = (freqs >= s.band_hz[0]) & (freqs <= s.band_hz[1])
        self._bins = np.flatnonzero(self._band).astype(np.int64)
        self._omega = (2 * np.pi * freqs / fs_hz)[self._band]
        n_bins = s.n_fft // 2 + 1
        self._phi = np.zeros(n_bins, np.complex128)
        self._paa = np.zeros(n_bins, np.float64)
        self._pbb = np.zeros(n_bins, np.float64)
        self._n_frames = (self._seg - s.n_fft) // hop + 1
        self._n_groups = max(self._n_frames // s.frames_per_group, 1)
        self._group_k = [g * s.frames_per_group * hop
                         + ((s.frames_per_group - 1) * hop + s.n_fft) // 2
                         for g in range(self._n_groups)]
        self._lags = tuple(sorted({int(v) for v in s.drift_lags if int(v) >= 1}))
        self._history: deque[_Segment] = deque(maxlen=max(self._lags) + 1)
        self._acc = {lag: np.zeros(len(self._omega), np.complex128) for lag in self._lags}
        self._acc_n = dict.fromkeys(self._lags, 0.0)
        self._product = np.zeros(len(self._omega), np.complex128)
        self._seg_estimates: deque[float] = deque(maxlen=30)
        self._step_run: deque[float] = deque(maxlen=8)
        self._step_prior: tuple[float, float] | None = None
        self._pending: list[DriftEvent] = []
        self._fine_lags = np.linspace(-1.0, 1.0, 41)
        self._fine_out = np.zeros(self._fine_lags.size, np.float64)
        self._points = _Points()
        self._breaks: list[tuple[int, int, int]] = []
        self._initial_offset = float(initial_offset_samples)
        self.reset(initial_offset_samples)

    # ------------------------------------------------------------------ state

    def reset(self, initial_offset_samples: float | None = None) -> None:
        """Back to acquisition (e.g. the device was reopened); keeps the drift estimate."""
        if initial_offset_samples is not None:
            self._initial_offset = float(initial_offset_samples)
        start_q = int(round(self._initial_offset * FRAC_ONE))
        self.resampler.reset(start_q >> FRAC_BITS)
        self.resampler.set_position_q(start_q)
        self._k = 0  # output (reference) samples produced since reset
        self._collected_k0 = 0  # output index of the first sample in the segment buffers
        self._fill = 0
        self._spec_x: np.ndarray | None = None
        self._points.clear()
        self._history.clear()
        self._step_run.clear()
        self._breaks.clear()
        self._bad = 0
        self.state = RATE_ONLY if self.rate_only else ACQUIRING
        if not hasattr(self, "drift_ppm"):
            self.drift_ppm = self.settings.prior_ppm
            self.stderr_ppm = float("inf")
            self.t_locked_s: float | None = None
            self.measurements = 0
            self.relocks = 0
            self._t_total = 0
            self.last_delay_samples = 0.0
            self._reported_ppm = self.drift_ppm
        self._apply_step(0.0)

    def set_prior(self, drift_ppm: float, sigma_ppm: float) -> None:
        """Prior on the drift (e.g. from ALSA frame rates); used while few points exist.
        Rate-only: the drift itself (and its standard error), from now on."""
        self.settings.prior_ppm = float(drift_ppm)
        self.settings.prior_sigma_ppm = max(float(sigma_ppm), 1e-3)
        if self.rate_only:
            self.stderr_ppm = self.settings.prior_sigma_ppm
        if self.measurements == 0:
            self.drift_ppm = float(drift_ppm)
            self._apply_step(0.0)

    def skip(self, n: int) -> None:
        """Rate-only: the reference lost ``n`` samples (an overrun gap): move the read
        position on as if ``n`` outputs had been made (exact, O(1)), so physical time stays
        lined up."""
        if not self.rate_only:
            raise SignalShapeError("skip() is for a rate-only compensator")
        n = int(n)
        if n > 0:
            self.resampler.advance(n)
            self._k += n
            self._t_total += n

    @property
    def offset_samples(self) -> float:
        """Device sample index minus reference sample index at the current read position."""
        return self.resampler.position - self._k

    @property
    def t_s(self) -> float:
        """Reference time since the compensator started (s)."""
        return self._t_total / self.fs_hz

    def status(self) -> dict[str, float | str | int | None]:
        """Telemetry: drift, offset, lock state and counters."""
        return {"drift_ppm": round(self.drift_ppm, 3),
                "drift_stderr_ppm": (round(self.stderr_ppm, 3)
                                     if math.isfinite(self.stderr_ppm) else None),
                "offset_samples": round(self.offset_samples, 3),
                "offset_ms": round(1e3 * self.offset_samples / self.fs_hz, 4),
                "lock": self.state, "measurements": self.measurements,
                "relocks": self.relocks}

    # ------------------------------------------------------------------ streaming

    def push(self, block: np.ndarray) -> None:
        """Append raw ``(n_channels, n)`` float32 samples of the device."""
        self.resampler.push(block)

    def ready(self, n: int) -> bool:
        """True when ``n`` aligned output samples can be made now."""
        return self.resampler.available(n)

    def process(self, ref_mono: np.ndarray, out: np.ndarray,
                ref_aux: np.ndarray | None = None) -> list[DriftEvent]:
        """Fill ``out`` ``(n_channels, n)`` with the device aligned to the reference block.

        ``ref_mono``: ``(n,)`` float32, the reference channel for the same ``n`` samples;
        ``ref_aux``: ``(n,)`` float32, a second channel of the reference device (with
        :attr:`aux_delay_samples` set, the offset is measured on the bins where this pair
        sees the look direction: the talker's, not a louder noise source's).
        Call only when :meth:`ready`. Returns the events this block caused (usually none).
        """
        n = out.shape[1]
        ref_mono = check_array(ref_mono, "ref_mono", (n,), np.float32)
        self._have_aux = ref_aux is not None
        if ref_aux is not None:
            ref_aux = check_array(ref_aux, "ref_aux", (n,), np.float32)
        self.resampler.pull(out)
        self._k += n
        self._t_total += n
        if self.rate_only:
            return []
        events: list[DriftEvent] = []
        i = 0
        while i < n:
            take = min(n - i, self._seg - self._fill)
            self._ref_buf[self._fill:self._fill + take] = ref_mono[i:i + take]
            if ref_aux is not None:
                self._aux_buf[self._fill:self._fill + take] = ref_aux[i:i + take]
            self._oth_buf[self._fill:self._fill + take] = out[self.analysis_channel,
                                                              i:i + take]
            self._fill += take
            i += take
            if self._fill == self._seg:
                events += self._update()
                self._fill = 0
                self._collected_k0 += self._seg
        return events

    def _position_q_at(self, k: int) -> int:
        """Exact fixed-point read position that produced output sample ``k``."""
        for k0, pos_q0, step_q in reversed(self._breaks):
            if k0 <= k:
                return pos_q0 + (k - k0) * step_q
        k0, pos_q0, step_q = self._breaks[0]
        return pos_q0 + (k - k0) * step_q

    # ------------------------------------------------------------------ estimation

    def _apply_step(self, slew_ppm: float) -> None:
        """Set the resampler's step from now on: drift plus a position slew.

        Records the breakpoint, so positions of later outputs stay exact:
        ``p(k) = p(k0) + (k - k0) step``.
        """
        ppm = (self.drift_ppm + slew_ppm) if self.compensate else 0.0
        self.resampler.set_drift_ppm(ppm)
        if self._breaks and self._breaks[-1][0] == self._k:
            self._breaks.pop()
        self._breaks.append((self._k, self.resampler.position_q, self.resampler.step_q))
        if len(self._breaks) > 64:
            del self._breaks[0]

    def _spectra(self) -> tuple[np.ndarray, np.ndarray]:
        hop = self.settings.n_fft // 2
        idx = (np.arange(self._n_frames)[:, None] * hop
               + np.arange(self.settings.n_fft)[None, :])
        spec_a = np.fft.rfft(self._ref_buf[idx] * self._window).astype(np.complex64)
        spec_b = np.fft.rfft(self._oth_buf[idx] * self._window).astype(np.complex64)
        self._spec_x = None
        if self._masked():
            self._spec_x = np.fft.rfft(self._aux_buf[idx] * self._window).astype(np.complex64)
        return spec_a, spec_b

    def _masked(self) -> bool:
        """Whether the offset is measured through the look-direction mask."""
        return (self._have_aux and self.aux_delay_samples is not None
                and self.settings.talker_mask_sharpness > 0)

    def _peak(self, weighted: np.ndarray, center: float, span: float) -> tuple[float, float]:
        """Lag in ``center +- span`` maximising the coherent sum of ``weighted``:
        ``(lag, sum at the lag / sum of magnitudes)``."""
        coarse = np.arange(math.floor(center - span), math.ceil(center + span) + 1,
                           dtype=np.float64)
        vals = np.zeros(coarse.size)
        coherent_sum_kernel(weighted, self._omega, coarse, vals)
        lags = float(coarse[int(np.argmax(vals))]) + self._fine_lags
        coherent_sum_kernel(weighted, self._omega, lags, self._fine_out)
        j = int(np.argmax(self._fine_out))
        lag = float(lags[j])
        if 0 < j < lags.size - 1:
            y0, y1, y2 = self._fine_out[j - 1:j + 2]
            den = y0 - 2 * y1 + y2
            if den < 0:
                lag += float(0.5 * (y0 - y2) / den) * (lags[1] - lags[0])
        total = float(np.abs(weighted).sum())
        return lag, (float(self._fine_out[j]) / total if total > 0 else 0.0)

    def _segment_delay(self, spec_a: np.ndarray, spec_b: np.ndarray
                       ) -> tuple[float, float, float]:
        """Residual delay (samples), quality (0..1) and weight of the buffered segment.

        With the look-direction mask the weight is the quality times the share of the
        reference channel's in-band power the mask passed (a segment of noise alone
        passes little, so its few leaking bins count little); else the quality."""
        share = 1.0
        self._phi.fill(0)
        self._paa.fill(0)
        self._pbb.fill(0)
        if self._spec_x is not None and self.aux_delay_samples is not None:
            nb = self._bins.size
            talker_cross_spectrum_kernel(spec_a, spec_b, self._spec_x, self._bins,
                                         self._omega, float(self.aux_delay_samples),
                                         float(self.settings.talker_mask_sharpness),
                                         self._phi[:nb], self._paa[:nb], self._pbb[:nb])
            phi = self._phi[:nb]
            power = self._paa[:nb] * self._pbb[:nb]
            band = spec_a[:, self._bins]
            total = float(np.sum(band.real.astype(np.float64) ** 2
                                 + band.imag.astype(np.float64) ** 2))
            share = float(self._paa[:nb].sum()) / total if total > 0 else 0.0
        else:
            cross_spectrum_kernel(spec_a, spec_b, self._phi, self._paa, self._pbb)
            phi = self._phi[self._band]
            power = self._paa[self._band] * self._pbb[self._band]
        mag = np.abs(phi)
        ok = (power > 1e-20) & (mag > 0)
        weighted = np.zeros_like(phi)
        weighted[ok] = mag[ok] * phi[ok] / power[ok]  # MSC times the unit phase
        delay, _ = self._peak(weighted, 0.0, self.settings.track_range_samples)
        quality = float(self._fine_out.max() / float(len(phi)))
        return delay, quality, quality * share

    def _update(self) -> list[DriftEvent]:
        spec_a, spec_b = self._spectra()
        self._drift_update(spec_a, spec_b)
        events, self._pending = self._pending, []
        if self.state == ACQUIRING:
            return events + self._acquire()
        return events + self._track(spec_a, spec_b)

    # ---------------------------------------------------------- drift (coherence drift)

    def _drift_update(self, spec_a: np.ndarray, spec_b: np.ndarray) -> None:
        """Coherence drift of this segment against earlier ones; updates ``drift_ppm``.

        Each group's coherence ``G`` has the phase ``w (T(k) - p(k) + tau(w))``: the true
        device position ``T``, the read position ``p`` and the delays of whatever sources
        fill the bin. Between two groups ``D`` samples apart, the product ``G2 conj(G1)``
        keeps the clocks and loses the sources (as long as they stay put); adding back
        the known ``p2 - p1 - D`` leaves ``w (T2 - T1 - D) = w eps D``. The products are
        summed per lag over time (forgetting ``memory_s``; Huber-weighted against the
        estimate), and ``eps D`` is the peak of their coherent sum over the delay.
        """
        s = self.settings
        gamma = np.zeros((self._n_groups, len(self._bins)), np.complex128)
        group_coherence_kernel(spec_a, spec_b, self._bins, s.frames_per_group, gamma)
        k = [self._collected_k0 + c for c in self._group_k]
        seg = _Segment(gamma, k, [self._position_q_at(c) for c in k])
        self._history.append(seg)
        forget = math.exp(-s.update_s / s.memory_s)
        eps = self.drift_ppm * 1e-6
        have = self.measurements >= s.min_points_lock
        used = False
        for lag in self._lags:
            if len(self._history) <= lag:
                break
            prev = self._history[-1 - lag]
            dist = k[0] - prev.k[0]
            shift = np.array([(pc - pp - (kc - kp) * FRAC_ONE) / FRAC_ONE for pc, pp, kc, kp
                              in zip(seg.pos_q, prev.pos_q, k, prev.k, strict=True)])
            self._product.fill(0)
            coherence_drift_kernel(gamma, prev.gamma, self._omega, shift, self._product)
            if not np.abs(self._product).sum() > 0:
                continue
            weight = 1.0
            if have:
                span = 4.0 + 20e-6 * dist
                d, q = self._peak(self._product, eps * dist, span)
                if q < s.min_quality:
                    continue
                dev_ppm = abs(d / dist - eps) * 1e6
                limit = s.huber_ppm / lag
                weight = min(1.0, limit / dev_ppm) if dev_ppm > 0 else 1.0
                if lag == self._lags[0]:
                    self._seg_estimates.append(d / dist * 1e6)
                    self._step_run.append(d / dist * 1e6 - self.drift_ppm)
                    if (len(self._step_run) >= s.step_count
                            and self._is_rate_step(list(self._step_run)[-s.step_count:])):
                        self._restart_drift(list(self._seg_estimates)[-s.step_count:])
                        return
            self._acc[lag] *= forget
            self._acc[lag] += weight * self._product
            self._acc_n[lag] = self._acc_n[lag] * forget + weight
            used = True
        if not used:
            return
        self.measurements += 1
        self._estimate_drift()

    def _is_rate_step(self, deviations: list[float]) -> bool:
        """All ``deviations`` (ppm) beyond ``step_ppm``, on one side, and agreeing with
        each other within ``step_ppm`` (a new rate, not a stretch of wild measurements:
        a sustained vowel can give several in a row)."""
        limit = self.settings.step_ppm
        one_side = all(d > limit for d in deviations) or all(d < -limit for d in deviations)
        return one_side and max(deviations) - min(deviations) < limit

    def _restart_drift(self, recent_ppm: list[float]) -> None:
        """The clock rate stepped: drop the accumulated coherence drift, the segment
        history (pairs across the step mix both rates) and the offset points (their
        line had the old slope); carry on from the recent segments' median and
        re-acquire the offset."""
        previous = self.drift_ppm
        for lag in self._lags:
            self._acc[lag].fill(0)
            self._acc_n[lag] = 0.0
        self._history.clear()
        self._seg_estimates.clear()
        self._seg_estimates.extend(recent_ppm)
        self._step_run.clear()
        self._points.clear()
        self.drift_ppm = float(np.median(recent_ppm))
        self.stderr_ppm = float("inf")
        spread = 1.4826 * float(np.median(np.abs(np.array(recent_ppm) - self.drift_ppm)))
        # a prior for the young fit (a few bad segments must not swing it)
        self._step_prior = (self.drift_ppm, spread / math.sqrt(len(recent_ppm)) + 1.0)
        # measurements keep counting: the new fit is searched (and Huber-weighted) around
        # the recent median, not over the whole +-max_drift_ppm again; the position is
        # re-acquired (GCC-PHAT) as after a reset, not slewed from a stale line
        self.state = ACQUIRING
        self._bad = 0
        self._reported_ppm = self.drift_ppm
        self._pending.append(DriftEvent("jump", self.drift_ppm, previous,
                                        self.offset_samples, self.t_s))

    def _estimate_drift(self) -> None:
        """Combine the lags' accumulated products (finer lags refine coarser ones)."""
        s = self.settings
        est = None
        num = den = 0.0
        for lag in self._lags:
            if self._acc_n[lag] <= 0:
                continue
            dist = lag * self._seg
            if est is None:
                span = s.max_drift_ppm * 1e-6 * dist
                d, q = self._peak(self._acc[lag], 0.0, max(span, 2.0))
            else:
                d, q = self._peak(self._acc[lag], est * dist, 2.0 + 10e-6 * dist)
            if q < s.min_quality:
                break
            w = self._acc_n[lag] * lag * lag * q
            num += w * d / dist
            den += w
            est = num / den
        if est is None:
            return
        # spread of single-segment estimates, scaled to all the accumulated pairs
        if len(self._seg_estimates) >= 3:
            vals = np.array(self._seg_estimates)
            sigma = 1.4826 * float(np.median(np.abs(vals - np.median(vals)))) + 0.5
        else:
            sigma = 20.0
        pairs = sum(self._acc_n[lag] * lag * lag for lag in self._lags)
        stderr = sigma / math.sqrt(max(pairs, 1e-9))
        prior_w = 1.0 / max(s.prior_sigma_ppm, 1e-3) ** 2
        data_w = 1.0 / stderr ** 2
        ppm = data_w * est * 1e6 + prior_w * s.prior_ppm
        if self._step_prior is not None:  # after a rate step: the segments that showed it
            step_w = 1.0 / self._step_prior[1] ** 2
            ppm += step_w * self._step_prior[0]
            prior_w += step_w
        ppm /= data_w + prior_w
        self.drift_ppm = float(ppm)
        self.stderr_ppm = float(1.0 / math.sqrt(data_w + prior_w))

    # ---------------------------------------------------------- offset

    def _acquire(self) -> list[DriftEvent]:
        """GCC-PHAT over the segment: the integer/initial offset (the drift comes from
        the coherence drift, not from here)."""
        s = self.settings
        lag, ratio = gcc_phat(self._ref_buf, self._oth_buf, self._max_lag)
        if not ratio >= s.acquire_min_ratio:
            self._apply_step(0.0)
            return []
        previous = self.drift_ppm
        k_c = self._collected_k0 + self._seg // 2
        # lag at the segment centre, carried to now with the drift and the known positions
        moved = (self.resampler.position_q - self._position_q_at(k_c)) / FRAC_ONE
        lag_now = lag + (1.0 + self.drift_ppm * 1e-6) * (self._k - k_c) - moved
        now_q = self.resampler.position_q
        new_q = now_q + int(round((lag_now - self.expected_delay_samples)
                                  * self.resampler.step_q))
        try:
            self.resampler.set_position_q(new_q)
        except SignalShapeError:
            self._apply_step(0.0)
            return []  # needs history we no longer have: try again on the next segment
        self._apply_step(0.0)
        self.state = TRACKING
        self._points.clear()
        self._bad = 0
        return [DriftEvent("acquired", self.drift_ppm, previous, self.offset_samples,
                           self.t_s)]

    def _track(self, spec_a: np.ndarray, spec_b: np.ndarray) -> list[DriftEvent]:
        s = self.settings
        delay, quality, weight = self._segment_delay(spec_a, spec_b)
        self.last_delay_samples = delay
        k_mid = self._collected_k0 + self._seg // 2
        events: list[DriftEvent] = []
        previous = self.drift_ppm
        if quality < s.min_quality:
            # silence, or the device jumped (reset, restarted stream) beyond the tracking
            # range: a wide GCC-PHAT tells them apart
            lag, ratio = gcc_phat(self._ref_buf, self._oth_buf, self._max_lag)
            if ratio >= s.acquire_min_ratio and abs(lag) > s.relock_samples:
                return self._count_bad()
        else:
            y_q = self._position_q_at(k_mid)
            extra = delay * self.resampler.step_q / FRAC_ONE
            if len(self._points.x) >= s.min_points_lock:
                got = (y_q - self._points.y_q[-1]) / FRAC_ONE + extra
                if abs(got - self._offset_line(k_mid)) > s.relock_samples:
                    return self._count_bad()
            self._bad = 0
            self._points.add(k_mid, y_q, extra, weight, s.max_points)
        was_locked = self.state == LOCKED
        if (self.measurements >= s.min_points_lock
                and self.stderr_ppm <= s.lock_stderr_ppm):
            if not was_locked:
                self.state = LOCKED
                if self.t_locked_s is None:
                    self.t_locked_s = self.t_s
                events.append(DriftEvent("locked", self.drift_ppm, previous,
                                         self.offset_samples, self.t_s))
            elif abs(self.drift_ppm - self._reported_ppm) > s.event_jump_ppm:
                events.append(DriftEvent("jump", self.drift_ppm, self._reported_ppm,
                                         self.offset_samples, self.t_s))
            if events:
                self._reported_ppm = self.drift_ppm
        elif was_locked and self.stderr_ppm > 3 * s.lock_stderr_ppm:
            self.state = TRACKING
        if not self._points.x:
            self._apply_step(0.0)
            return events
        # slew the read position onto the offset line (minus the acoustic delay)
        target = self._offset_line(self._k) - self.expected_delay_samples
        pos_next = (self.resampler.position_q - self._points.y_q[-1]) / FRAC_ONE
        err = target - pos_next
        slew = err / (s.slew_s * self.fs_hz) * 1e6
        limit = s.slew_ppm if self.state == LOCKED else 10 * s.slew_ppm
        self._apply_step(max(-limit, min(limit, slew)))
        return events

    def _offset_line(self, k: int) -> float:
        """Device position lining up with reference sample ``k`` (relative to the newest
        point's read position): slope from the drift estimate, intercept the weighted
        median of the offset measurements (forgetting ``memory_s``), so that a source
        in another direction taking over the room for a while does not move it."""
        s = self.settings
        pts = self._points
        slope = 1.0 + self.drift_ppm * 1e-6
        x_last = pts.x[-1]
        yq_last = pts.y_q[-1]
        x = np.array([xi - x_last for xi in pts.x], np.float64)
        y = np.array([(yq - yq_last) / FRAC_ONE for yq in pts.y_q], np.float64) \
            + np.array(pts.y_extra)
        w = np.array(pts.w) * np.exp(x / self.fs_hz / s.memory_s)
        intercept = weighted_median(y - slope * x, w)
        return intercept + slope * (k - x_last)

    def _count_bad(self) -> list[DriftEvent]:
        """One more measurement off the line; enough of them in a row: re-acquire."""
        self._bad += 1
        self._apply_step(0.0)
        if self._bad < self.settings.relock_count:
            return []
        self.relocks += 1
        self.state = ACQUIRING
        self._points.clear()
        self._history.clear()  # pairs across a device reset say nothing about the clocks
        self._step_run.clear()
        self._bad = 0
        return [DriftEvent("relock", self.drift_ppm, self.drift_ppm, self.offset_samples,
                           self.t_s)]


def warmup_kernels() -> None:
    """Compile (or load from the cache) every kernel drift compensation uses."""
    comp = DriftCompensator(1, 16000.0, DriftSettings(update_s=0.25, acquire_s=0.5,
                                                      max_offset_s=0.01))
    comp.resampler.warmup()
    n_bins = comp.settings.n_fft // 2 + 1
    spec = np.zeros((1, n_bins), np.complex64)
    cross_spectrum_kernel(spec, spec, comp._phi, comp._paa, comp._pbb)
    coherent_sum_kernel(comp._phi[comp._band], comp._omega, comp._fine_lags, comp._fine_out)
    gamma = np.zeros((1, comp._bins.size), np.complex128)
    group_coherence_kernel(spec, spec, comp._bins, 1, gamma)
    coherence_drift_kernel(gamma, gamma, comp._omega, np.zeros(1), comp._product)
    nb = comp._bins.size
    talker_cross_spectrum_kernel(spec, spec, spec, comp._bins, comp._omega, 0.0, 4.0,
                                 comp._phi[:nb], comp._paa[:nb], comp._pbb[:nb])


__all__ = ["ACQUIRING", "TRACKING", "LOCKED", "LOCK_STATES", "RATE_ONLY", "DriftCompensator",
           "DriftEvent", "DriftSettings", "FRAC_BITS", "cross_spectrum_kernel",
           "cross_spectrum_reference", "coherent_sum_kernel", "coherent_sum_reference",
           "coherence_drift_kernel", "coherence_drift_reference", "gcc_phat",
           "group_coherence_kernel", "group_coherence_reference",
           "talker_cross_spectrum_kernel", "talker_cross_spectrum_reference", "warmup_kernels",
           "weighted_median"]
