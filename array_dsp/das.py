"""Frequency-domain delay-and-sum beamformer.

``y[k] = (1 / M) sum_m conj(w[k, m]) X[m, k]`` with ``w`` the far-field steering vector
of the look direction (:mod:`mica.array_dsp.steering`): each channel is phase-aligned to
the array centroid and the channels are averaged, so a plane wave from the look direction
passes with unit gain and distortionless phase, and other directions add incoherently
(Van Trees 2002, "Optimum Array Processing", sec. 2.2; Brandstein & Ward 2001,
"Microphone Arrays", ch. 2).
"""

from __future__ import annotations

import numpy as np

from mica.array_dsp.jit import kernel
from mica.array_dsp.validate import check_array, check_output


@kernel
def das_kernel(spec: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """``out[k] = mean_m conj(weights[k, m]) spec[m, k]``.

    spec: ``(n_ch, n_bins)`` complex64; weights: ``(n_bins, n_ch)`` complex64;
    out: ``(n_bins,)`` complex64, preallocated.
    """
    n_ch, n_bins = spec.shape
    scale = np.float32(1.0 / n_ch)
    for k in range(n_bins):
        acc = np.complex64(0.0)
        for m in range(n_ch):
            acc += np.conj(weights[k, m]) * spec[m, k]
        out[k] = acc * scale


def das_reference(spec: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Numpy reference of :func:`das_kernel`: ``(n_bins,)`` complex64."""
    return (np.conj(weights).T * spec).mean(axis=0).astype(np.complex64)


def delay_and_sum(
    spec: np.ndarray, weights: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Beamform one frame: ``(n_ch, n_bins)`` spectrum, ``(n_bins, n_ch)`` weights -> ``(n_bins,)``.

    All complex64.

    ``out``: optional preallocated ``(n_bins,)`` complex64 (allocated if ``None``).
    """
    spec = check_array(spec, "spec", (None, None), np.complex64)
    n_ch, n_bins = spec.shape
    weights = check_array(weights, "weights", (n_bins, n_ch), np.complex64)
    if out is None:
        out = np.empty(n_bins, np.complex64)
    check_output(out, "out", (n_bins,), np.complex64)
    das_kernel(spec, weights, out)
    return out
