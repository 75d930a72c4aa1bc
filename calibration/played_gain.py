"""Per-mic gain from a played signal (a sweep or noise burst from a loudspeaker).

Each mic's transfer function from the played signal is estimated with the H1 estimator
``H_k(f) = S_{x_k r}(f) / S_{rr}(f)`` (Welch cross- and auto-spectra, Bendat & Piersol),
which is unbiased by noise at the mics that is uncorrelated with what was played: a fan,
people talking, the room's hum. The level of mic ``k`` is the median over the band of
``20 log10 |H_k| - median_k 20 log10 |H_k|``, as for the diffuse-noise method
(:func:`mica.calibration.measure.estimate_gains`), whose result type it shares. From one
direction the mics also differ by their distance to the loudspeaker (0.4 dB for 10 cm at
1 m) and by the room's reflections, which the median over bands mostly removes: put the
loudspeaker 1 m or more away.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import signal

from mica.calibration.delays import align_played
from mica.calibration.measure import CalibrationError, GainEstimate, gains_from_band_levels


def estimate_gains_played(x: np.ndarray, played: np.ndarray, fs_hz: float,
                          exclude: list[int] | tuple[int, ...] = (),
                          band_hz: tuple[float, float] = (200.0, 6000.0)) -> GainEstimate:
    """Relative mic gains ``(n_ch,)`` from a recording ``x`` ``(n_ch, n)`` of ``played``
    ``(m,)`` (module doc); ``exclude``: channels left out (dead), given 0 correction."""
    x = np.asarray(x, np.float64)
    n_ch = x.shape[0]
    keep = [i for i in range(n_ch) if i not in set(exclude)]
    if not keep:
        raise CalibrationError("every channel is excluded: no gain to estimate")
    ref, _ = align_played(x, played, fs_hz)
    nper = int(min(1024, 2 ** math.floor(math.log2(max(64, x.shape[1] // 8)))))
    f, s_rr = signal.welch(ref, fs=fs_hz, nperseg=nper)
    _, s_xr = signal.csd(x, ref[None, :], fs=fs_hz, nperseg=nper, axis=-1)
    lo, hi = band_hz[0], min(band_hz[1], 0.45 * fs_hz)
    band = (f >= lo) & (f <= hi) & (s_rr > 1e-6 * s_rr.max())
    if band.sum() < 4:
        raise CalibrationError(f"the played signal has too little energy in {lo:.0f}-"
                               f"{hi:.0f} Hz")
    h_db = 20.0 * np.log10(np.maximum(np.abs(s_xr[:, band]) / s_rr[band], 1e-15))
    return gains_from_band_levels(h_db - np.median(h_db[keep], axis=0), keep, (lo, hi))
