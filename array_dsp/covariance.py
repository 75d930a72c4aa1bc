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

import math

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


# --------------------------------------------------------------------------- reverb residual

JACOBI_SWEEPS = 8
"""Cyclic Jacobi sweeps of :func:`hermitian_eig_kernel` (n <= 8 converges in 4-6)."""


@kernel
def hermitian_eig_kernel(a: np.ndarray, n: int, vecs: np.ndarray, vals: np.ndarray) -> None:
    """Eigen-decomposition ``a[:n, :n] = V diag(vals) V^H`` of a Hermitian matrix (cyclic
    Jacobi, Golub & Van Loan 2013, sec. 8.5; each complex pair is first made real by a
    phase). ``a``: ``(>= n, >= n)`` complex128, destroyed; ``vecs``: complex128 out
    (columns); ``vals``: float64 out, unsorted. No allocation."""
    for i in range(n):
        for j in range(n):
            vecs[i, j] = 0.0
        vecs[i, i] = 1.0
    for _ in range(JACOBI_SWEEPS):
        off = 0.0
        diag = 0.0
        for p in range(n):
            diag += a[p, p].real ** 2
            for q in range(p + 1, n):
                off += a[p, q].real ** 2 + a[p, q].imag ** 2
        if not off > 1e-26 * diag:
            break
        for p in range(n - 1):
            for q in range(p + 1, n):
                b = abs(a[p, q])
                if not b > 1e-300:
                    continue
                u = np.conj(a[p, q] / b)  # P = diag(1, u) makes the pair real: b
                tau = (a[q, q].real - a[p, p].real) / (2.0 * b)
                t = (1.0 if tau >= 0.0 else -1.0) / (abs(tau) + math.sqrt(1.0 + tau * tau))
                c = 1.0 / math.sqrt(1.0 + t * t)
                s = t * c
                r_pp = complex(c)  # R = P [[c, s], [-s, c]]
                r_pq = complex(s)
                r_qp = -s * u
                r_qq = c * u
                for k in range(n):  # A <- A R
                    akp = a[k, p]
                    akq = a[k, q]
                    a[k, p] = akp * r_pp + akq * r_qp
                    a[k, q] = akp * r_pq + akq * r_qq
                for k in range(n):  # A <- R^H A
                    apk = a[p, k]
                    aqk = a[q, k]
                    a[p, k] = np.conj(r_pp) * apk + np.conj(r_qp) * aqk
                    a[q, k] = np.conj(r_pq) * apk + np.conj(r_qq) * aqk
                a[p, q] = 0.0
                a[q, p] = 0.0
                for k in range(n):  # V <- V R
                    vkp = vecs[k, p]
                    vkq = vecs[k, q]
                    vecs[k, p] = vkp * r_pp + vkq * r_qp
                    vecs[k, q] = vkp * r_pq + vkq * r_qq
    for i in range(n):
        vals[i] = a[i, i].real


@kernel
def residual_covariance_kernel(
    phi_n: np.ndarray,
    phi_x: np.ndarray,
    mass_x: np.ndarray,
    active_idx: np.ndarray,
    n_active: int,
    ref_pos: int,
    beta: float,
    min_mass: float,
    work_a: np.ndarray,
    work_v: np.ndarray,
    work_d: np.ndarray,
    out: np.ndarray,
) -> None:
    """What a distortionless beam toward the reference microphone's target should minimise:

        out[k] = Phi_n + beta (Phi_s - Phi_s e_r e_r^H Phi_s / Phi_s[r, r]),
        Phi_s = PSD part of (Phi_x - Phi_n)

    ``Phi_s e_r / Phi_s[r, r]`` is the target RTF by covariance subtraction, i.e. the
    regression of the array's speech on the reference microphone's; the Schur complement
    is the covariance of the speech that RTF does not explain (late reverberation, a
    reflection arriving within the frame from elsewhere). An MVDR that minimises it as well
    as the noise leaves the reverberant target at the reference microphone and nothing
    else (the per-bin distortionless bound: oracle ``R_n + R_s - E|s_r|^2 h h^H``). The
    PSD part clips the negative eigenvalues of the estimate (:func:`hermitian_eig_kernel`).
    Bins whose ``mass_x < min_mass`` (little speech seen) get ``Phi_n``. Only the active
    block changes; other entries are ``Phi_n``'s. ``beta``: weight of the residual.
    phi_n, phi_x, out: ``(n_bins, n_ch, n_ch)`` complex64; mass_x: ``(n_bins,)`` float64;
    work_a, work_v: ``(n_ch, n_ch)`` complex128; work_d: ``(n_ch,)`` float64.
    """
    n_bins, n_ch, _ = phi_n.shape
    n = n_active
    for k in range(n_bins):
        for i in range(n_ch):
            for j in range(n_ch):
                out[k, i, j] = phi_n[k, i, j]
        if n < 2 or mass_x[k] < min_mass or not beta > 0.0:
            continue
        for i in range(n):
            for j in range(n):
                ai = active_idx[i]
                aj = active_idx[j]
                work_a[i, j] = complex(phi_x[k, ai, aj]) - complex(phi_n[k, ai, aj])
        hermitian_eig_kernel(work_a, n, work_v, work_d)
        for i in range(n):  # work_a = V max(D, 0) V^H
            for j in range(n):
                acc = 0j
                for q in range(n):
                    if work_d[q] > 0.0:
                        acc += work_v[i, q] * work_d[q] * np.conj(work_v[j, q])
                work_a[i, j] = acc
        srr = work_a[ref_pos, ref_pos].real
        if not srr > 0.0:
            continue
        for i in range(n):
            for j in range(n):
                s = work_a[i, j] - work_a[i, ref_pos] * work_a[ref_pos, j] / srr
                ai = active_idx[i]
                aj = active_idx[j]
                out[k, ai, aj] = out[k, ai, aj] + np.complex64(beta * s)
        for i in range(n):
            ai = active_idx[i]
            out[k, ai, ai] = np.complex64(out[k, ai, ai].real)


def residual_covariance_reference(
    phi_n: np.ndarray,
    phi_x: np.ndarray,
    mass_x: np.ndarray,
    active: np.ndarray,
    ref_pos: int,
    beta: float,
    min_mass: float,
) -> np.ndarray:
    """Numpy reference of :func:`residual_covariance_kernel` (``np.linalg.eigh``)."""
    out = phi_n.astype(np.complex128).copy()
    if len(active) < 2 or not beta > 0:
        return out.astype(np.complex64)
    sub = np.ix_(active, active)
    for k in range(phi_n.shape[0]):
        if mass_x[k] < min_mass:
            continue
        d = phi_x[k][sub].astype(np.complex128) - phi_n[k][sub]
        d = 0.5 * (d + d.conj().T)
        vals, vecs = np.linalg.eigh(d)
        s = (vecs * np.maximum(vals, 0.0)) @ vecs.conj().T
        srr = s[ref_pos, ref_pos].real
        if not srr > 0:
            continue
        res = s - np.outer(s[:, ref_pos], s[ref_pos, :]) / srr
        blk = out[k][sub] + beta * res
        blk[np.diag_indices_from(blk)] = np.diag(blk).real
        out[k][sub] = blk
    return out.astype(np.complex64)
