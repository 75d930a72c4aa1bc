"""Per-bin spatial covariances tracked by SPP-weighted recursive averaging.

Souden, Benesty & Affes 2010 ("On optimal frequency-domain multichannel linear filtering
for noise reduction", IEEE TASLP 18(2)): with the frame's speech-presence probability
``p[k]``, the noise covariance learns from what is probably noise and the noisy-speech
covariance from what is probably speech,

    Phi_n[k] <- Phi_n[k] + s_n (x x^H - Phi_n[k]),   s_n = (1 - p) / min(m_n, 1 / (1 - a_n))
    Phi_x[k] <- Phi_x[k] + s_x (x x^H - Phi_x[k]),   s_x = p / min(m_x, 1 / (1 - a_x))

where ``m`` accumulates the weights (``m_n += 1 - p``, ``m_x += p``): a plain weighted mean
while little has been seen, then exponential forgetting with factor ``a`` per frame
(effective memory ``1 / (1 - a)`` frames). ``Phi_x - Phi_n`` estimates the speech covariance.
Shapes: spectra ``(n_ch, n_bins)``, covariances ``(n_bins, n_ch, n_ch)`` complex64.
"""

from __future__ import annotations

import numpy as np

from mica.array_dsp.jit import kernel

MASS_CAP = 1e9
"""The accumulated weight ``m`` stops growing here (float32 stays exact far below it)."""


@kernel
def covariance_update_kernel(
    spec: np.ndarray,
    spp: np.ndarray,
    noise_alpha: float,
    speech_alpha: float,
    phi_n: np.ndarray,
    phi_x: np.ndarray,
    mass_n: np.ndarray,
    mass_x: np.ndarray,
) -> None:
    """One frame of the SPP-weighted updates above, in place.

    spec: ``(n_ch, n_bins)`` complex64; spp: ``(n_bins,)`` float32 in [0, 1];
    phi_n, phi_x: ``(n_bins, n_ch, n_ch)`` complex64; mass_n, mass_x: ``(n_bins,)`` float64.
    """
    n_ch, n_bins = spec.shape
    cap_n = 1.0 / (1.0 - noise_alpha)
    cap_x = 1.0 / (1.0 - speech_alpha)
    for k in range(n_bins):
        p = min(max(float(spp[k]), 0.0), 1.0)
        wn = 1.0 - p
        wx = p
        sn = 0.0
        sx = 0.0
        if wn > 0.0:
            mass_n[k] = min(mass_n[k] + wn, MASS_CAP)
            sn = wn / min(mass_n[k], cap_n)
        if wx > 0.0:
            mass_x[k] = min(mass_x[k] + wx, MASS_CAP)
            sx = wx / min(mass_x[k], cap_x)
        for i in range(n_ch):
            xi = spec[i, k]
            for j in range(i, n_ch):
                xx = xi * np.conj(spec[j, k])
                if sn > 0.0:
                    v = phi_n[k, i, j] + np.float32(sn) * (xx - phi_n[k, i, j])
                    phi_n[k, i, j] = v
                    phi_n[k, j, i] = np.conj(v)
                if sx > 0.0:
                    v = phi_x[k, i, j] + np.float32(sx) * (xx - phi_x[k, i, j])
                    phi_x[k, i, j] = v
                    phi_x[k, j, i] = np.conj(v)
        for i in range(n_ch):  # exactly real diagonals
            phi_n[k, i, i] = np.complex64(phi_n[k, i, i].real)
            phi_x[k, i, i] = np.complex64(phi_x[k, i, i].real)


def covariance_update_reference(
    spec: np.ndarray,
    spp: np.ndarray,
    noise_alpha: float,
    speech_alpha: float,
    phi_n: np.ndarray,
    phi_x: np.ndarray,
    mass_n: np.ndarray,
    mass_x: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Numpy reference of :func:`covariance_update_kernel`: new ``(phi_n, phi_x, m_n, m_x)``."""
    p = np.clip(spp.astype(np.float64), 0.0, 1.0)
    outer = np.einsum("ik,jk->kij", spec, np.conj(spec))
    out = []
    for w, alpha, phi, mass in ((1.0 - p, noise_alpha, phi_n, mass_n),
                                (p, speech_alpha, phi_x, mass_x)):
        new_mass = np.where(w > 0, np.minimum(mass + w, MASS_CAP), mass)
        step = np.where(w > 0, w / np.maximum(np.minimum(new_mass, 1.0 / (1.0 - alpha)),
                                                1e-300), 0.0)
        new_phi = phi + step[:, None, None].astype(np.float32) * (outer - phi)
        new_phi = 0.5 * (new_phi + np.conj(np.transpose(new_phi, (0, 2, 1))))
        out.append((new_phi.astype(np.complex64), new_mass))
    return out[0][0], out[1][0], out[0][1], out[1][1]


@kernel
def speech_loaded_kernel(phi_n: np.ndarray, phi_x: np.ndarray, mu: float, margin: float,
                         out: np.ndarray) -> None:
    """``out[k] = Phi_n[k] + mu max(tr(Phi_x[k]) - (1 + margin) tr(Phi_n[k]), 0) / M I``.

    The noise covariance plus spatially white loading in proportion to the estimated speech
    power: the MVDR then also limits how much it amplifies the part of a reverberant
    target that its rank-1 RTF does not model (late reverberation, a share of the speech
    power), while a noise-only scene keeps its deep nulls: ``margin`` discounts the excess
    that SPP-selected noise frames show over ``Phi_n`` by themselves (they are the louder
    frames). All ``(n_bins, n_ch, n_ch)``
    complex64.
    """
    n_bins, n_ch, _ = phi_n.shape
    for k in range(n_bins):
        tr = 0.0
        for i in range(n_ch):
            tr += phi_x[k, i, i].real - (1.0 + margin) * phi_n[k, i, i].real
        add = np.float32(mu * max(tr, 0.0) / n_ch)
        for i in range(n_ch):
            for j in range(n_ch):
                out[k, i, j] = phi_n[k, i, j]
            out[k, i, i] = np.complex64(phi_n[k, i, i].real + add)


def speech_loaded_reference(phi_n: np.ndarray, phi_x: np.ndarray, mu: float,
                            margin: float) -> np.ndarray:
    """Numpy reference of :func:`speech_loaded_kernel`."""
    n_ch = phi_n.shape[1]
    tr = np.trace(phi_x.astype(np.complex128) - (1.0 + margin) * phi_n, axis1=1,
                  axis2=2).real
    out = phi_n.astype(np.complex128).copy()
    idx = np.arange(n_ch)
    out[:, idx, idx] = out[:, idx, idx].real + (mu * np.maximum(tr, 0.0) / n_ch)[:, None]
    return out.astype(np.complex64)
