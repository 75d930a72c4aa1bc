"""Objective quality metrics.

``si_sdr_db`` is numpy only. ``pesq_wb`` (``pesq``), ``stoi_score`` (``pystoi``),
``dnsmos`` (``speechmos``), ``wer`` (``pocketsphinx``) and the wake-word scorers (in
:mod:`mica.evaluation.wakeword`) need the ``.[eval]`` extra; they import it lazily so
``si_sdr_db`` works without it.

Every function takes 1-D float signals at ``fs_hz`` (16 kHz unless said otherwise).

SI-SDR (Le Roux, Wisdom, Erdogan & Hershey 2019, "SDR - half-baked or well done?",
ICASSP): with zero-mean ``s`` (reference) and ``s_hat`` (estimate),
``s_target = (<s_hat, s> / ||s||^2) s``, ``e = s_hat - s_target`` and
``SI-SDR = 10 log10(||s_target||^2 / ||e||^2)`` dB. Invariant to the estimate's gain;
not to delay, so the estimate must be time-aligned with the reference.
"""

from __future__ import annotations

import numpy as np
import scipy.signal


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


def _pair(estimate: np.ndarray, reference: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if est.ndim != 1 or ref.ndim != 1 or est.shape != ref.shape:
        raise ValueError(
            f"{name}: estimate and reference must be 1-D of the same length, "
            f"got {est.shape} and {ref.shape}"
        )
    if not (np.isfinite(est).all() and np.isfinite(ref).all()):
        raise ValueError(f"{name}: non-finite samples")
    return est, ref


def pesq_wb(estimate: np.ndarray, reference: np.ndarray, fs_hz: int = 16000) -> float:
    """Wide-band PESQ (ITU-T P.862.2) MOS-LQO of ``estimate`` against ``reference``.

    Both ``(n,)`` at ``fs_hz`` (16 kHz, or 8 kHz which is upsampled to 16 kHz first as
    P.862.2 requires a 16 kHz input). Identical signals score about 4.64; the floor is
    about 1.04. Raises ``ValueError`` for bad shapes/rates and when PESQ finds no
    utterance in the reference (too short or silent).
    """
    est, ref = _pair(estimate, reference, "pesq_wb")
    if fs_hz == 8000:
        est = scipy.signal.resample_poly(est, 2, 1)
        ref = scipy.signal.resample_poly(ref, 2, 1)
        fs_hz = 16000
    if fs_hz != 16000:
        raise ValueError(f"pesq_wb: fs_hz must be 16000 (or 8000), got {fs_hz}")
    from pesq import PesqError, pesq

    try:
        return float(pesq(16000, ref, est, "wb"))
    except PesqError as err:
        raise ValueError(f"pesq_wb: {err}") from err


def stoi_score(
    estimate: np.ndarray, reference: np.ndarray, fs_hz: int = 16000, extended: bool = False
) -> float:
    """Short-time objective intelligibility (Taal et al. 2011), in [0, 1] (ESTOI if
    ``extended``). Identical signals score 1; ``pystoi`` resamples to 10 kHz itself."""
    est, ref = _pair(estimate, reference, "stoi_score")
    from pystoi import stoi

    return float(stoi(ref, est, int(fs_hz), extended=extended))
