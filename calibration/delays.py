"""Per-mic delay corrections: measured arrival times against the array's plane-wave model.

A mic whose signal path is late (a longer cable in a multi-board array, a codec with a
different group delay, a mic mounted off its nominal place along the look axis) hears every
source later than the geometry predicts. With one dominant far-field source, the arrival
time at mic ``m`` is ``t_m = t_0 - (p_m - c) . s + e_m`` (``s``: slowness ``u / c``,
``e_m``: the mic's own delay error). The model part is fitted (``s`` free, or along the
known source direction with its magnitude fitted robustly), the residual ``e`` is the
error and ``-e`` the correction written to ``delay_s``.

Arrival times come either from GCC-PHAT between the mics (Knapp & Carter 1976; any source,
e.g. a talker) or, for a played sweep or noise burst whose signal is known, from GCC-PHAT of
each mic against that played signal (a direct measurement per mic, robust to the pairwise
ambiguity of reverberation). Without a known source direction the fitted ``s`` absorbs the
part of ``e`` that looks like a plane wave (two or three degrees of freedom), so give the
azimuth when the delays matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mica.array_dsp.drift import gcc_phat as gcc_phat_pair
from mica.array_dsp.steering import SOUND_SPEED_M_S, direction_unit
from mica.calibration.measure import CalibrationError, gcc_phat

MIN_DELAY_US = 10.0
"""Residuals below this (microseconds, about 1/6 sample at 16 kHz) are measurement noise:
no correction is written (a non-zero delay costs the fractional-delay filter's latency)."""
MAX_PLAYBACK_LATENCY_S = 0.5
"""Largest play-to-record latency searched when measuring against a played signal."""


@dataclass(frozen=True)
class DelayEstimate:
    """Result of :func:`estimate_mic_delays`.

    Attributes:
        arrival_s: ``(n,)`` measured arrival times minus the fitted arrival time (s).
        model_s: ``(n,)`` plane-wave arrival times of the fitted source (s).
        residual_s: ``(n,)`` ``arrival - model``: each mic's own delay error (s; sum zero
            without a known direction).
        correction_s: ``(n,)`` the ``delay_s`` to write: ``-residual`` when the largest
            residual reaches ``min_delay_us``, else zeros.
        rms_us: RMS of the residuals (microseconds).
        azimuth_deg, elevation_deg: direction of the fitted source.
        method: ``"doa"`` (mic pairs) or ``"played"`` (against the played signal).
        written: the correction is non-zero.
    """

    arrival_s: np.ndarray
    model_s: np.ndarray
    residual_s: np.ndarray
    correction_s: np.ndarray
    rms_us: float
    azimuth_deg: float
    elevation_deg: float
    method: str
    written: bool


def _robust_line(proj_s: np.ndarray, t: np.ndarray, k_min: float, k_max: float
                 ) -> tuple[float, float]:
    """``(t0, k)`` of ``t ~ t0 + k proj_s`` that a few late mics do not drag: least median
    of squares over the lines through every pair of mics (Rousseeuw 1984), then least
    squares on the mics within 3 robust standard deviations (at least 5 us) of it.
    ``k`` (the measured over the modelled delay: GCC-PHAT on a noisy recording shrinks every
    delay a little) is kept within ``[k_min, k_max]``."""
    n = t.size
    best = (float(np.median(t)), 1.0)
    best_med = np.inf
    for i in range(n):
        for j in range(i + 1, n):
            dp = proj_s[j] - proj_s[i]
            if abs(dp) < 1e-7:
                continue
            k = float(np.clip((t[j] - t[i]) / dp, k_min, k_max))
            t0 = float(np.median(t - k * proj_s))
            med = float(np.median((t - t0 - k * proj_s) ** 2))
            if med < best_med:
                best, best_med = (t0, k), med
    t0, k = best
    res = t - t0 - k * proj_s
    inlier = np.abs(res) <= max(3.0 * 1.4826 * np.sqrt(best_med), 5e-6)
    if inlier.sum() >= 3:
        a = np.c_[np.ones(inlier.sum()), proj_s[inlier]]
        (t0, k), *_ = np.linalg.lstsq(a, t[inlier], rcond=None)
        k = float(np.clip(k, k_min, k_max))
        t0 = float(np.mean(t[inlier] - k * proj_s[inlier]))
    return float(t0), float(k)


def align_played(x: np.ndarray, played: np.ndarray, fs_hz: float,
                 max_latency_s: float = MAX_PLAYBACK_LATENCY_S) -> tuple[np.ndarray, np.ndarray]:
    """The played signal shifted by the play-to-record latency, ``(n,)``, and each channel's
    whole lag against it, ``(n_ch,)`` samples.

    ``x``: ``(n_ch, n)`` the recording; ``played``: ``(m,)`` what the loudspeaker played
    (a sweep, a noise burst). GCC-PHAT of each channel against ``played`` over
    ``0 .. max_latency_s``; the shift is the median lag, in whole samples.
    """
    x = np.asarray(x, np.float64)
    ref = np.asarray(played, np.float64).ravel()
    n = x.shape[1]
    if ref.size < 0.1 * fs_hz:
        raise CalibrationError(f"played signal too short: {ref.size / fs_hz:.2f} s")
    ref = np.r_[ref, np.zeros(max(0, n - ref.size))][:n]
    max_lag = max(1, min(int(max_latency_s * fs_hz), n - 1))
    lags = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        lags[i], ratio = gcc_phat_pair(ref, x[i], max_lag)
        if ratio < 1.5:
            raise CalibrationError(f"channel {i}: the played signal is not found in the "
                                   f"recording (GCC-PHAT peak ratio {ratio:.2f}); is it the "
                                   "signal that was played?")
    shift = int(round(float(np.median(lags))))
    shifted = np.zeros(n)
    if shift >= 0:
        shifted[shift:] = ref[: n - shift]
    else:
        shifted[: n + shift] = ref[-shift:]
    return shifted, lags - shift


def arrivals_against_played(x: np.ndarray, played: np.ndarray, fs_hz: float,
                            max_latency_s: float = MAX_PLAYBACK_LATENCY_S) -> np.ndarray:
    """``(n_ch,)`` arrival time of the played signal on each channel (s, mean removed):
    :func:`align_played`, then every channel against the shifted played signal on the 16x
    interpolated grid of :func:`mica.calibration.measure.gcc_phat`."""
    x = np.asarray(x, np.float64)
    shifted, lags = align_played(x, played, fs_hz, max_latency_s)
    spread_s = (float(np.max(np.abs(lags))) + 2.0) / fs_hz
    tdoa = gcc_phat(np.vstack([shifted[None], x]), fs_hz, max_tau_s=spread_s).tdoa_s
    t = tdoa[1:, 0]
    return t - t.mean()


def estimate_mic_delays(x: np.ndarray, fs_hz: float, positions_m: np.ndarray,
                        azimuth_deg: float | None = None, elevation_deg: float | None = None,
                        played: np.ndarray | None = None,
                        sound_speed_m_s: float = SOUND_SPEED_M_S,
                        min_delay_us: float = MIN_DELAY_US) -> DelayEstimate:
    """Each mic's delay error against the plane-wave model of the dominant source.

    ``x``: ``(n, n_samples)`` the mics in geometry order (channel order already fixed);
    ``positions_m``: ``(n, 3)``. With ``azimuth_deg`` (and ``elevation_deg``, default 0)
    the model is a wave from that direction, its arrival time and apparent speed
    (within ``[0.5, 1.05] c``) fitted robustly, so a late mic stands out alone; without,
    the slowness is the least-squares fit (capped at ``1 / c``). ``played``: the signal
    the loudspeaker played, if known.
    """
    p = np.asarray(positions_m, np.float64)
    x = np.asarray(x, np.float64)
    n = p.shape[0]
    if x.ndim != 2 or x.shape[0] != n:
        raise CalibrationError(f"recording has shape {x.shape}, the geometry {n} mic(s)")
    if n < 2:
        raise CalibrationError("delay corrections need at least 2 mics")
    centred = p - p.mean(axis=0)
    if played is not None:
        t = arrivals_against_played(x, played, fs_hz)
        method = "played"
    else:
        aperture = float(np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1)).max())
        # a mic's own error widens the search: up to 1 ms beyond the aperture
        t = gcc_phat(x, fs_hz, max_tau_s=1.1 * aperture / sound_speed_m_s + 1e-3).arrival_s
        t = t - t.mean()
        method = "doa"
    if azimuth_deg is not None:
        # the direction is known; its speed (the room's c, the array's scale) is fitted
        u = direction_unit(azimuth_deg, 0.0 if elevation_deg is None else elevation_deg)
        proj_s = -(centred @ u) / sound_speed_m_s  # the model at the nominal speed
        t0, k = _robust_line(proj_s, t, 0.5, 1.05)
        t = t - t0
        s = u * (k / sound_speed_m_s)
    else:
        s = -(np.linalg.pinv(centred, rcond=1e-6) @ t)
        norm = float(np.linalg.norm(s))
        if norm > 1.0 / sound_speed_m_s:
            s = s / (norm * sound_speed_m_s)
    model = -(centred @ s)
    if azimuth_deg is None:
        model = model - model.mean()
    residual = t - model  # known direction: zero on the mics that fit, the error elsewhere
    written = bool(np.max(np.abs(residual)) * 1e6 >= min_delay_us)
    correction = -residual if written else np.zeros(n)
    az = float(math.degrees(math.atan2(s[1], s[0])) % 360.0)
    el = float(math.degrees(math.asin(np.clip(s[2] * sound_speed_m_s, -1.0, 1.0))))
    return DelayEstimate(arrival_s=t, model_s=model, residual_s=residual,
                         correction_s=correction,
                         rms_us=float(np.sqrt(np.mean(residual ** 2)) * 1e6),
                         azimuth_deg=az, elevation_deg=el, method=method, written=written)
