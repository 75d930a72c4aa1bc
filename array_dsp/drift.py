"""Online sampling-rate-offset (clock drift) estimation and compensation between devices.

One :class:`DriftCompensator` per non-reference capture device. It resamples the device
onto the reference clock (:class:`~mica.array_dsp.resample.StreamingResampler`) and, about
once per second, measures how well the resampled device lines up with the reference:

1. **Acquisition** (initial offset). GCC-PHAT (Knapp & Carter 1976) between one reference
   channel and one channel of the device over a 2 s segment, searched over
   ``+-max_offset_s``; the read position jumps by the lag found. A weak or ambiguous peak
   (silence) is retried on the next segment.
2. **Tracking** (sampling-rate offset). Each segment (``update_s``, 1 s) gives a Welch
   cross-power spectrum ``Phi(k)`` of the two channels (1024-point frames, 50 % overlap).
   Its phase, weighted by the magnitude-squared coherence and PHAT-normalised, gives the
   residual sub-sample delay ``delta`` of the device against the reference: the maximum of
   the weighted coherent sum ``sum_k w_k Re(Phi_k / |Phi_k| exp(-j w_k d))`` over ``d``.
   This is the phase-of-coherence idea of weighted average coherence drift (WACD/DWACD:
   Gburrek, Schmalenstroeer & Haeb-Umbach 2022, "On synchronization of wireless acoustic
   sensor networks in the presence of time-varying sampling rate offsets and speaker
   changes"), applied closed-loop: because the device is already resampled with the
   current estimate, the residual delay stays within a few samples and its phase never
   wraps, so it needs no coarse search.
3. Every measurement places one point ``(k, p(k) + delta)``: the device's sample index that
   lines up with reference sample ``k``. The read position ``p`` is exact (fixed point), so
   these points are absolute, and errors do not accumulate. A weighted least-squares line
   through them (exponential forgetting, ``memory_s``) has slope ``1 + drift_ppm * 1e-6``;
   a prior on the slope (the ALSA-reported rates) regularises the first seconds. The
   resampler's step is then set to the slope plus a bounded slew that moves the read
   position onto the line (no jumps, so no clicks), keeping the device aligned, not just at
   the right rate.

Re-lock: measurements that disagree with the line by more than ``relock_samples`` several
times in a row (a device reset, a restart of its stream) send the compensator back to
acquisition, keeping the rate estimate as the prior. Slow changes (temperature) are
followed by the forgetting.

The acoustic delay between the reference channel and the device's channel for the talker
is part of every measured ``delta``; :attr:`DriftCompensator.expected_delay_samples` (from
the geometry and look direction) is subtracted when aligning, so the beamformer sees the
physical inter-device delays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mica.array_dsp.jit import kernel
from mica.array_dsp.resample import FRAC_BITS, FRAC_ONE, StreamingResampler
from mica.array_dsp.validate import SignalShapeError, check_array, check_positive_int

ACQUIRING = "acquiring"
TRACKING = "tracking"
LOCKED = "locked"
LOCK_STATES = (ACQUIRING, TRACKING, LOCKED)


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
    """Signal used for the initial GCC-PHAT offset search."""
    max_offset_s: float = 0.25
    """Offset search range (+-) at acquisition, beyond the timestamp guess."""
    max_drift_ppm: float = 1000.0
    """Largest drift acquisition believes (two offset peaks further apart: no lock yet)."""
    acquire_min_ratio: float = 2.0
    """GCC-PHAT peak over the next-best peak needed to accept an offset."""
    n_fft: int = 1024
    """Frame of the Welch cross-spectrum (50 % overlap)."""
    band_hz: tuple[float, float] = (150.0, 6000.0)
    """Bins used for the delay estimate."""
    min_quality: float = 0.05
    """Measurements with a weaker coherent sum (0..1) are skipped (silence, noise only)."""
    track_range_samples: float = 16.0
    """Largest residual delay looked for while tracking."""
    memory_s: float = 60.0
    """Time constant of the exponential forgetting of the line fit."""
    max_points: int = 240
    """Measurements kept for the fit."""
    prior_ppm: float = 0.0
    """Prior drift (e.g. from the ALSA frame rates)."""
    prior_sigma_ppm: float = 1000.0
    """Standard deviation of the prior (large: almost ignored)."""
    lock_stderr_ppm: float = 1.0
    """Standard error of the slope below which the estimate counts as locked."""
    min_points_lock: int = 5
    """Measurements needed before locking."""
    slew_ppm: float = 200.0
    """Largest extra rate used to move the read position onto the fitted line (ten times
    that until locked)."""
    slew_s: float = 1.0
    """Time over which a position error is corrected."""
    relock_samples: float = 6.0
    """A measurement this far off the line counts against the lock."""
    relock_count: int = 3
    """Consecutive such measurements that restart acquisition."""
    event_jump_ppm: float = 5.0
    """A change of the locked estimate by more than this raises a ``drift`` event."""


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
class _Fit:
    slope: float
    intercept: float
    stderr_ppm: float
    n: int


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


def fit_line(x: np.ndarray, y: np.ndarray, w: np.ndarray, prior_slope: float,
             prior_precision: float) -> tuple[float, float, float]:
    """Weighted LS ``y = a + b x`` with a Gaussian prior on ``b``: ``(b, a, stderr_b)``.

    ``prior_precision`` is ``1 / sigma_b^2`` scaled like the data weights (0: no prior).
    ``stderr_b`` uses the weighted residual variance (floor: 0.01 samples RMS).
    """
    sw = float(w.sum())
    xm = float((w * x).sum() / sw)
    ym = float((w * y).sum() / sw)
    dx = x - xm
    sxx = float((w * dx * dx).sum())
    sxy = float((w * dx * (y - ym)).sum())
    b = (sxy + prior_precision * prior_slope) / (sxx + prior_precision)
    a = ym - b * xm
    n = len(x)
    resid = y - (a + b * x)
    var = max(float((w * resid * resid).sum()) / max(n - 2, 1), 1e-4)
    stderr = math.sqrt(var / (sxx + prior_precision))
    return b, a, stderr


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

    Not thread-safe: one thread pushes device input and processes reference blocks.
    """

    def __init__(self, n_channels: int, fs_hz: float, settings: DriftSettings | None = None,
                 analysis_channel: int = 0, initial_offset_samples: float = 0.0,
                 compensate: bool = True) -> None:
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
        self.expected_delay_samples = 0.0
        self._seg = max(int(round(s.update_s * fs_hz)), 2 * s.n_fft)
        self._acq = max(int(round(s.acquire_s * fs_hz)), self._seg)
        self._max_lag = max(int(round(s.max_offset_s * fs_hz)), 1)
        self.resampler = StreamingResampler(n_channels,
                                            history_samples=self._max_lag + self._acq + 64)
        self._ref_buf = np.zeros(self._acq, np.float32)
        self._oth_buf = np.zeros(self._acq, np.float32)
        self._fill = 0
        self._window = np.hanning(s.n_fft + 2)[1:-1].astype(np.float32)
        freqs = np.fft.rfftfreq(s.n_fft, 1.0 / fs_hz)
        self._band = (freqs >= s.band_hz[0]) & (freqs <= s.band_hz[1])
        self._omega = (2 * np.pi * freqs / fs_hz)[self._band]
        n_bins = s.n_fft // 2 + 1
        self._phi = np.zeros(n_bins, np.complex128)
        self._paa = np.zeros(n_bins, np.float64)
        self._pbb = np.zeros(n_bins, np.float64)
        self._fine_lags = np.linspace(-1.0, 1.0, 41)
        self._fine_out = np.zeros(self._fine_lags.size, np.float64)
        self._points = _Points()
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
        self._points.clear()
        self._bad = 0
        self.state = ACQUIRING
        if not hasattr(self, "drift_ppm"):
            self.drift_ppm = self.settings.prior_ppm
            self.stderr_ppm = float("inf")
            self.t_locked_s: float | None = None
            self.measurements = 0
            self.relocks = 0
            self._t_total = 0
            self.last_delay_samples = 0.0
        self._apply_step(0.0)

    def set_prior(self, drift_ppm: float, sigma_ppm: float) -> None:
        """Prior on the drift (e.g. from ALSA frame rates); used while few points exist."""
        self.settings.prior_ppm = float(drift_ppm)
        self.settings.prior_sigma_ppm = max(float(sigma_ppm), 1e-3)
        if self.state == ACQUIRING and not self._points.x:
            self.drift_ppm = float(drift_ppm)
            self._apply_step(0.0)

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

    def process(self, ref_mono: np.ndarray, out: np.ndarray) -> list[DriftEvent]:
        """Fill ``out`` ``(n_channels, n)`` with the device aligned to the reference block.

        ``ref_mono``: ``(n,)`` float32, the reference channel for the same ``n`` samples.
        Call only when :meth:`ready`. Returns the events this block caused (usually none).
        """
        n = out.shape[1]
        ref_mono = check_array(ref_mono, "ref_mono", (n,), np.float32)
        self.resampler.pull(out)
        self._k += n
        self._t_total += n
        events: list[DriftEvent] = []
        i = 0
        while i < n:
            take = min(n - i, self._target_len() - self._fill)
            self._ref_buf[self._fill:self._fill + take] = ref_mono[i:i + take]
            self._oth_buf[self._fill:self._fill + take] = out[self.analysis_channel,
                                                              i:i + take]
            self._fill += take
            i += take
            if self._fill == self._target_len():
                seg_len = self._fill
                events += self._update()
                self._fill = 0
                self._collected_k0 += seg_len
        return events

    def _position_q_at(self, k: int) -> int:
        """Fixed-point read position of output sample ``k`` (within the current step)."""
        return self._seg_pos_q + (k - self._seg_k0) * self._seg_step_q

    def _target_len(self) -> int:
        return self._acq if self.state == ACQUIRING else self._seg

    # ------------------------------------------------------------------ estimation

    def _apply_step(self, slew_ppm: float) -> None:
        """Set the resampler's step from now on: drift plus a position slew.

        Rebases the position model at the resampler's current position, so positions of
        later outputs stay exact: ``p(k) = p(k0) + (k - k0) step``.
        """
        ppm = (self.drift_ppm + slew_ppm) if self.compensate else 0.0
        self._seg_k0 = self._k
        self._seg_pos_q = self.resampler.position_q
        self.resampler.set_drift_ppm(ppm)
        self._seg_step_q = self.resampler.step_q

    def _segment_delay(self) -> tuple[float, float]:
        """Residual delay (samples) and quality (0..1) of the buffered segment."""
        s = self.settings
        hop = s.n_fft // 2
        n_frames = (self._seg - s.n_fft) // hop + 1
        idx = np.arange(n_frames)[:, None] * hop + np.arange(s.n_fft)[None, :]
        spec_a = np.fft.rfft(self._ref_buf[:self._seg][idx] * self._window).astype(np.complex64)
        spec_b = np.fft.rfft(self._oth_buf[:self._seg][idx] * self._window).astype(np.complex64)
        self._phi.fill(0)
        self._paa.fill(0)
        self._pbb.fill(0)
        cross_spectrum_kernel(spec_a, spec_b, self._phi, self._paa, self._pbb)
        phi = self._phi[self._band]
        power = self._paa[self._band] * self._pbb[self._band]
        mag = np.abs(phi)
        ok = power > 1e-20
        msc = np.zeros_like(mag)
        msc[ok] = mag[ok] ** 2 / power[ok]
        weighted = np.zeros_like(phi)
        nz = mag > 0
        weighted[nz] = msc[nz] * phi[nz] / mag[nz]
        norm = float(len(phi))
        # coarse: integer lags over the tracking range, then a fine grid around the best
        span = int(np.ceil(s.track_range_samples))
        coarse = np.arange(-span, span + 1, dtype=np.float64)
        vals = np.zeros(coarse.size)
        coherent_sum_kernel(weighted, self._omega, coarse, vals)
        best = float(coarse[int(np.argmax(vals))])
        lags = best + self._fine_lags
        coherent_sum_kernel(weighted, self._omega, lags, self._fine_out)
        j = int(np.argmax(self._fine_out))
        delay = float(lags[j])
        if 0 < j < lags.size - 1:
            y0, y1, y2 = self._fine_out[j - 1:j + 2]
            den = y0 - 2 * y1 + y2
            if den < 0:
                delay += float(0.5 * (y0 - y2) / den) * (lags[1] - lags[0])
        return delay, float(self._fine_out[j] / norm)

    def _update(self) -> list[DriftEvent]:
        if self.state == ACQUIRING:
            return self._acquire()
        return self._track()

    def _acquire(self) -> list[DriftEvent]:
        """GCC-PHAT on both halves of the acquisition buffer: offset, and from the change
        of the lag between the halves a coarse drift (double cross-correlation, as in
        DXCP-PHAT, Chinaev et al. 2021)."""
        s = self.settings
        half = self._acq // 2
        lag1, ratio1 = gcc_phat(self._ref_buf[:half], self._oth_buf[:half], self._max_lag)
        lag2, ratio2 = gcc_phat(self._ref_buf[half:2 * half], self._oth_buf[half:2 * half],
                                self._max_lag)
        if not (ratio1 >= s.acquire_min_ratio and ratio2 >= s.acquire_min_ratio):
            return []
        rate = (lag2 - lag1) / half  # residual drift against the current step
        if abs(rate) > s.max_drift_ppm * 1e-6:
            return []  # the two halves disagree: no reliable peak yet
        previous = self.drift_ppm
        step_ppm = self._seg_step_q / FRAC_ONE * 1e6 - 1e6
        if self.compensate:
            self.drift_ppm = step_ppm + rate * 1e6
        # lag now (end of the buffer) extrapolated from the second half's centre
        lag_now = lag2 + rate * (self._k - (self._collected_k0 + 1.5 * half))
        now_q = self.resampler.position_q
        new_q = now_q + int(round((lag_now - self.expected_delay_samples)
                                  * self._seg_step_q))
        try:
            self.resampler.set_position_q(new_q)
        except SignalShapeError:
            return []  # needs history we no longer have: try again on the next segment
        self._apply_step(0.0)
        self.state = TRACKING
        self._points.clear()
        self._bad = 0
        return [DriftEvent("acquired", self.drift_ppm, previous, self.offset_samples,
                           self.t_s)]

    def _track(self) -> list[DriftEvent]:
        s = self.settings
        delay, quality = self._segment_delay()
        self.last_delay_samples = delay
        k_mid = self._collected_k0 + self._seg // 2
        if quality < s.min_quality:
            # silence, or the device jumped (reset, restarted stream) beyond the tracking
            # range: a wide GCC-PHAT tells them apart
            lag, ratio = gcc_phat(self._ref_buf[:self._seg], self._oth_buf[:self._seg],
                                  self._max_lag)
            if ratio >= s.acquire_min_ratio and abs(lag) > s.relock_samples:
                return self._count_bad()
            self._apply_step(0.0)
            return []
        self.measurements += 1
        y_q = self._position_q_at(k_mid)
        extra = delay * self._seg_step_q / FRAC_ONE
        events: list[DriftEvent] = []
        if len(self._points.x) >= s.min_points_lock:
            fit = self._fit()
            predicted = fit.intercept + fit.slope * (k_mid - self._points.x[-1])
            got = (y_q - self._points.y_q[-1]) / FRAC_ONE + extra
            if abs(got - predicted) > s.relock_samples:
                return self._count_bad()
            self._bad = 0
        self._points.add(k_mid, y_q, extra, quality, s.max_points)
        fit = self._fit()
        previous = self.drift_ppm
        was_locked = self.state == LOCKED
        if len(self._points.x) >= 2:
            self.drift_ppm = (fit.slope - 1.0) * 1e6
            self.stderr_ppm = fit.stderr_ppm
        if (len(self._points.x) >= s.min_points_lock
                and self.stderr_ppm <= s.lock_stderr_ppm):
            if not was_locked:
                self.state = LOCKED
                if self.t_locked_s is None:
                    self.t_locked_s = self.t_s
                events.append(DriftEvent("locked", self.drift_ppm, previous,
                                         self.offset_samples, self.t_s))
            elif abs(self.drift_ppm - previous) > s.event_jump_ppm:
                events.append(DriftEvent("jump", self.drift_ppm, previous,
                                         self.offset_samples, self.t_s))
        # slew the read position onto the fitted line (minus the acoustic delay)
        k_next = self._k
        target = fit.intercept + fit.slope * (k_next - self._points.x[-1]) \
            - self.expected_delay_samples
        pos_next = (self.resampler.position_q - self._points.y_q[-1]) / FRAC_ONE
        err = target - pos_next
        slew = err / (s.slew_s * self.fs_hz) * 1e6
        limit = s.slew_ppm if self.state == LOCKED else 10 * s.slew_ppm
        self._apply_step(max(-limit, min(limit, slew)))
        return events

    def _count_bad(self) -> list[DriftEvent]:
        """One more measurement off the line; enough of them in a row: re-acquire."""
        self._bad += 1
        self._apply_step(0.0)
        if self._bad < self.settings.relock_count:
            return []
        self.relocks += 1
        self.state = ACQUIRING
        self._points.clear()
        self._bad = 0
        return [DriftEvent("relock", self.drift_ppm, self.drift_ppm, self.offset_samples,
                           self.t_s)]

    def _fit(self) -> _Fit:
        s = self.settings
        pts = self._points
        x_last = pts.x[-1]
        yq_last = pts.y_q[-1]
        x = np.array([xi - x_last for xi in pts.x], np.float64)
        y = np.array([(yq - yq_last) / FRAC_ONE for yq in pts.y_q], np.float64) \
            + np.array(pts.y_extra)
        age_s = -x / self.fs_hz
        w = np.array(pts.w) * np.exp(-age_s / s.memory_s)
        prior_slope = 1.0 + s.prior_ppm * 1e-6
        prior_var = (s.prior_sigma_ppm * 1e-6) ** 2
        # prior precision in units of the data: a residual variance of ~0.01 samples^2
        prior_precision = 0.01 / prior_var * float(w.mean()) if len(x) else 0.0
        if len(x) == 1:
            return _Fit(prior_slope, float(y[0]), float("inf"), 1)
        b, a, stderr_b = fit_line(x, y, w, prior_slope, prior_precision)
        return _Fit(b, a, stderr_b * 1e6, len(x))


def warmup_kernels() -> None:
    """Compile (or load from the cache) every kernel drift compensation uses."""
    comp = DriftCompensator(1, 16000.0, DriftSettings(update_s=0.25, acquire_s=0.5,
                                                      max_offset_s=0.01))
    comp.resampler.warmup()
    n_bins = comp.settings.n_fft // 2 + 1
    spec = np.zeros((1, n_bins), np.complex64)
    cross_spectrum_kernel(spec, spec, comp._phi, comp._paa, comp._pbb)
    coherent_sum_kernel(comp._phi[comp._band], comp._omega, comp._fine_lags, comp._fine_out)


__all__ = ["ACQUIRING", "TRACKING", "LOCKED", "LOCK_STATES", "DriftCompensator",
           "DriftEvent", "DriftSettings", "FRAC_BITS", "cross_spectrum_kernel",
           "cross_spectrum_reference", "coherent_sum_kernel", "coherent_sum_reference",
           "fit_line", "gcc_phat", "warmup_kernels"]
