"""Residual-echo suppression: per-bin gains from the canceller's echo estimate.

What the linear canceller leaves (a tail longer than the filter, loudspeaker
nonlinearity, misadjustment while it converges) is modelled as a fraction ``leak`` of the
echo estimate's power, as in Speex's echo canceller (Valin 2007, "On adjusting the
learning rate in frequency domain echo cancellation with double-talk"): per frame, with
``E_k`` the beam spectrum after cancellation and ``Y_k`` the beamformed echo estimate,

* ``leak = sum_k cov(|E_k|^2, |Y_k|^2) / sum_k var(|Y_k|^2)`` (recursive, mean-removed,
  clipped to ``[0, 1]``): uncorrelated near-end speech does not raise it;
* residual echo PSD ``R_k = leak * S(|Y_k|^2)``, error PSD ``S(|E_k|^2)`` (``S``: one-pole
  smoothing over frames);
* gain ``g_k = max(floor, 1 - over * R_k / S(|E_k|^2))`` (power subtraction).

Combination with the denoiser (the rule :class:`~mica.array_dsp.enhancer.Enhancer`
applies): the output spectrum is ``g_res * denoiser(beam)``, i.e. the product of the two
gains, each floored on its own; the combined gain never falls below
``floor_res * floor_denoiser``. Without a reference (``Y = 0``) ``g = 1``: clean input is
untouched. Zero latency (one gain per STFT frame). Shapes: ``(n_bins,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mica.array_dsp.jit import kernel
from mica.array_dsp.validate import SignalShapeError, check_array, check_positive_int


@dataclass(frozen=True)
class ResParams:
    """Tuning of :class:`ResidualEchoSuppressor`.

    Attributes:
        floor_db: lowest gain (dB).
        overestimate: ``over``, how much of the residual estimate is subtracted.
        psd_smoothing: smoothing of the power spectra per frame.
        leak_smoothing: smoothing of the leak statistics per frame.
    """

    floor_db: float = -20.0
    overestimate: float = 2.0
    psd_smoothing: float = 0.6
    leak_smoothing: float = 0.95

    def __post_init__(self) -> None:
        if not (
            self.floor_db <= 0.0
            and self.overestimate >= 0.0
            and 0.0 <= self.psd_smoothing < 1.0
            and 0.0 <= self.leak_smoothing < 1.0
        ):
            raise SignalShapeError(f"ResParams: a value is out of range: {self!r}")


@kernel
def res_gain_kernel(
    err: np.ndarray,
    echo: np.ndarray,
    params: np.ndarray,
    state: np.ndarray,
    leak: np.ndarray,
    gains: np.ndarray,
) -> None:
    """One frame of residual-echo gains.

    err, echo: ``(K,)`` complex64 spectra; params ``[floor, over, a_psd, a_leak]``;
    state ``(4, K)`` float64: ``S|E|^2, S|Y|^2, mean |E|^2, mean |Y|^2``; leak ``(3,)``
    float64: ``[leak, sum cov, sum var]``; gains ``(K,)`` float32 out.
    """
    n_bins = err.shape[0]
    floor, over, a, al = params[0], params[1], params[2], params[3]
    cov = 0.0
    var = 0.0
    for k in range(n_bins):
        pe = float(err[k].real) ** 2 + float(err[k].imag) ** 2
        py = float(echo[k].real) ** 2 + float(echo[k].imag) ** 2
        state[0, k] = a * state[0, k] + (1.0 - a) * pe
        state[1, k] = a * state[1, k] + (1.0 - a) * py
        state[2, k] = al * state[2, k] + (1.0 - al) * pe
        state[3, k] = al * state[3, k] + (1.0 - al) * py
        de = pe - state[2, k]
        dy = py - state[3, k]
        cov += de * dy
        var += dy * dy
    leak[1] = al * leak[1] + (1.0 - al) * cov
    leak[2] = al * leak[2] + (1.0 - al) * var
    lk = leak[1] / leak[2] if leak[2] > 1e-30 else 0.0
    lk = min(max(lk, 0.0), 1.0)
    leak[0] = lk
    for k in range(n_bins):
        resid = over * lk * state[1, k]
        g = 1.0 - resid / state[0, k] if state[0, k] > 1e-30 else 1.0
        gains[k] = np.float32(min(max(g, floor), 1.0))


def res_gain_reference(err: np.ndarray, echo: np.ndarray, params: ResParams) -> np.ndarray:
    """Whole-signal numpy reference: ``(n_frames, K)`` spectra in, ``(n_frames, K)`` float32
    gains out (same recursions as :func:`res_gain_kernel`)."""
    floor = 10.0 ** (params.floor_db / 20.0)
    a, al = params.psd_smoothing, params.leak_smoothing
    n_bins = err.shape[1]
    s = np.zeros((4, n_bins))
    cov_s = var_s = 0.0
    out = np.zeros(err.shape, np.float32)
    for f in range(err.shape[0]):
        pe = np.abs(err[f].astype(np.complex128)) ** 2
        py = np.abs(echo[f].astype(np.complex128)) ** 2
        s[0] = a * s[0] + (1 - a) * pe
        s[1] = a * s[1] + (1 - a) * py
        s[2] = al * s[2] + (1 - al) * pe
        s[3] = al * s[3] + (1 - al) * py
        cov_s = al * cov_s + (1 - al) * np.sum((pe - s[2]) * (py - s[3]))
        var_s = al * var_s + (1 - al) * np.sum((py - s[3]) ** 2)
        lk = float(np.clip(cov_s / var_s, 0.0, 1.0)) if var_s > 1e-30 else 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(s[0] > 1e-30, 1.0 - params.overestimate * lk * s[1] / s[0], 1.0)
        out[f] = np.clip(g, floor, 1.0)
    return out


class ResidualEchoSuppressor:
    """Per-bin residual-echo gains, frame by frame (see the module doc).

    :meth:`process` takes the ``(K,)`` complex64 beam after cancellation and the ``(K,)``
    complex64 beamformed echo estimate; returns ``(K,)`` float32 gains in
    ``[floor, 1]`` (this object's buffer). :attr:`leak` is the current leak estimate.
    """

    def __init__(self, n_bins: int, params: ResParams | None = None) -> None:
        self.n_bins = check_positive_int(n_bins, "n_bins")
        self.params = p = params or ResParams()
        self._params = np.array(
            [10.0 ** (p.floor_db / 20.0), p.overestimate, p.psd_smoothing, p.leak_smoothing],
            np.float64,
        )
        self._state = np.zeros((4, self.n_bins), np.float64)
        self._leak = np.zeros(3, np.float64)
        self.gains = np.ones(self.n_bins, np.float32)

    @property
    def leak(self) -> float:
        """Residual echo over echo estimate power (broadband, in [0, 1])."""
        return float(self._leak[0])

    def process(self, err: np.ndarray, echo: np.ndarray) -> np.ndarray:
        err = check_array(err, "err", (self.n_bins,), np.complex64)
        echo = check_array(echo, "echo", (self.n_bins,), np.complex64)
        res_gain_kernel(err, echo, self._params, self._state, self._leak, self.gains)
        return self.gains

    def reset(self) -> None:
        self._state.fill(0.0)
        self._leak.fill(0.0)
        self.gains.fill(1.0)
