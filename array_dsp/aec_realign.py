"""Is an echo-path change only a shift? The echo estimate slid against the mics.

When the reference and the microphones slide against each other by a few ms (a loopback
device restarted after an overrun and placed only to its period by its timestamps, a
playback server that changed its buffering), a converged echo canceller's filter is still
right, only late or early: its echo estimate ``y^`` is the echo shifted, ``y(n) ~ y^(n + s)``.
Restarting the filter (what an echo-path change calls for) throws that away, and the
Kalman filter alone re-learns a shift of tens of taps only over seconds. So before a
restart the canceller asks :func:`best_shift` which shift ``s`` (``|s| <= max_shift``) of
its recent echo estimate explains the recent mic samples best,

``R(s) = sum_m sum_{i in core} (y_m(i) - y^_m(i + s))^2``
``     = |y_core|^2 - 2 c(s) + sum_m sum_{i in core} y^_m(i + s)^2``,
``c(s) = sum_m sum_{i in core} y_m(i) y^_m(i + s)`` (one shift for all mics: the reference
moved, not the room), the core being the window less ``max_shift`` samples at each end so
every shift reads inside it; the cross-correlation by FFT, the energies by running sums.
The caller realigns (moves its bulk delay by ``-s``, keeping the filter) when ``R(s)`` is
``gain_db`` below ``R(0)`` and ``residual_db`` below the core's mic energy; otherwise it is
a real echo-path change.

Shapes: ``y, y_hat (n_mic, W)`` float, the newest sample last.
"""

from __future__ import annotations

import numpy as np

from mica.array_dsp.validate import SignalShapeError


def _check(y: np.ndarray, y_hat: np.ndarray, max_shift: int) -> None:
    if y.ndim != 2 or y.shape != y_hat.shape:
        raise SignalShapeError(
            f"best_shift: y and y_hat must be one (n_mic, W) shape, got {y.shape}, {y_hat.shape}"
        )
    if not (isinstance(max_shift, int) and 0 < max_shift and 2 * max_shift < y.shape[1]):
        raise SignalShapeError(
            f"best_shift: max_shift must be an int in [1, W/2), got {max_shift!r} (W={y.shape[1]})"
        )


def shift_residuals(y: np.ndarray, y_hat: np.ndarray, max_shift: int) -> np.ndarray:
    """``(2 max_shift + 1,)`` ``R(s)`` for ``s = -max_shift .. max_shift`` (see the module
    doc), by FFT cross-correlation and running sums. Allocates (a rare event)."""
    _check(y, y_hat, max_shift)
    m, w = max_shift, y.shape[1]
    y = np.asarray(y, np.float64)
    y_hat = np.asarray(y_hat, np.float64)
    core = y[:, m : w - m]
    n_fft = 1 << int(np.ceil(np.log2(w + core.shape[1])))
    # c[j] = sum_i core(i) y_hat(i + j), j = s + m in 0 .. 2m
    cc = np.fft.irfft(
        np.conj(np.fft.rfft(core, n_fft, axis=-1)) * np.fft.rfft(y_hat, n_fft, axis=-1),
        n_fft,
        axis=-1,
    )[:, : 2 * m + 1].sum(axis=0)
    cum = np.concatenate([[0.0], np.cumsum(np.sum(y_hat**2, axis=0))])
    j = np.arange(2 * m + 1)
    energy = cum[j + core.shape[1]] - cum[j]
    return float(np.sum(core**2)) - 2.0 * cc + energy


def shift_residuals_reference(y: np.ndarray, y_hat: np.ndarray, max_shift: int) -> np.ndarray:
    """Direct-sum reference of :func:`shift_residuals` (same arguments)."""
    _check(y, y_hat, max_shift)
    m, w = max_shift, y.shape[1]
    y = np.asarray(y, np.float64)
    y_hat = np.asarray(y_hat, np.float64)
    return np.array(
        [np.sum((y[:, m : w - m] - y_hat[:, m + s : w - m + s]) ** 2) for s in range(-m, m + 1)]
    )


def best_shift(
    y: np.ndarray, y_hat: np.ndarray, max_shift: int, gain_db: float, residual_db: float
) -> int:
    """The shift ``s`` (samples; ``y(n) ~ y^(n + s)``) that explains ``y`` from ``y_hat``
    ``gain_db`` better than no shift and to ``residual_db`` of the core's mic energy; 0 when
    none does."""
    res = shift_residuals(y, y_hat, max_shift)
    k = int(np.argmin(res))
    s = k - max_shift
    mic = float(np.sum(np.asarray(y[:, max_shift:-max_shift], np.float64) ** 2))
    if (
        s != 0
        and res[k] <= 10.0 ** (-gain_db / 10.0) * res[max_shift]
        and res[k] <= 10.0 ** (residual_db / 10.0) * mic
    ):
        return s
    return 0
