"""Objective quality metrics (numpy only).

SI-SDR (Le Roux, Wisdom, Erdogan & Hershey 2019, "SDR - half-baked or well done?",
ICASSP): with zero-mean ``s`` (reference) and ``s_hat`` (estimate),
``s_target = (<s_hat, s> / ||s||^2) s``, ``e = s_hat - s_target`` and
``SI-SDR = 10 log10(||s_target||^2 / ||e||^2)`` dB. Invariant to the estimate's gain;
not to delay, so the estimate must be time-aligned with the reference.
"""

from __future__ import annotations

import numpy as np


def si_sdr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant SDR (dB) of ``estimate`` against ``reference``, both ``(n,)``.

    Computed in float64 after removing each signal's mean. Returns ``inf`` for an exact
    (scaled) copy and ``-inf`` for an estimate orthogonal to the reference. Raises
    ``ValueError`` for shapes that differ or are not 1-D, non-finite samples, or a
    reference with no energy (the metric is undefined).
    """
    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if est.ndim != 1 or ref.ndim != 1 or est.shape != ref.shape:
        raise ValueError(
            f"si_sdr_db: estimate and reference must be 1-D of the same length, "
            f"got {est.shape} and {ref.shape}"
        )
    if not (np.isfinite(est).all() and np.isfinite(ref).all()):
        raise ValueError("si_sdr_db: non-finite samples")
    est = est - est.mean()
    ref = ref - ref.mean()
    ref_energy = float(ref @ ref)
    if ref_energy == 0.0:
        raise ValueError("si_sdr_db: reference has no energy (after removing its mean)")
    target = (float(est @ ref) / ref_energy) * ref
    error = est - target
    target_energy = float(target @ target)
    error_energy = float(error @ error)
    if error_energy == 0.0:
        return float("inf")
    if target_energy == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(target_energy / error_energy))
