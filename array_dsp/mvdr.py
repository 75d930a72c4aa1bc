"""MVDR weights, relative transfer functions by covariance whitening, superdirective beams.

Weights use ``y[k] = sum_m conj(w[k, m]) X[m, k] = w^H x`` (as in :mod:`das`, without the
``1 / M``). Shapes: covariances ``(n_bins, n_ch, n_ch)``, steering / RTF / weights
``(n_bins, n_ch)``, all complex64. ``active_idx`` is ``(n_ch,)`` int64 whose first
``n_active`` entries are the channels in use: the others get weight 0 and are left out of
every solve (a dead microphone is simply not part of the array).

- MVDR (Capon 1969; Van Trees 2002, ch. 6): ``w = R^-1 h / (h^H R^-1 h)``, unit gain toward
  ``h`` (``w^H h = 1``) and least output power from ``R``. ``R`` is diagonally loaded by
  ``delta tr(R) / M``; when the white-noise gain ``WNG = |w^H h|^2 / ||w||^2`` falls under
  the floor the loading grows tenfold, up to ``max_tries`` times (Cox, Zeskind & Owen 1987,
  "Robust adaptive beamforming"). Solves are small in-place Cholesky factorisations.
- Superdirective (Cox, Zeskind & Kooij 1986; Bitzer & Simmer 2001): MVDR against the
  diffuse-field coherence ``Gamma_ij(f) = sinc(2 f d_ij / c)`` (``sinc(x) = sin(pi x)/(pi x)``).
- RTF by covariance whitening (Markovich-Golan & Gannot 2015, "Performance analysis of the
  covariance subtraction method for relative transfer function estimation and comparison to
  the covariance whitening method", ICASSP): the principal generalized eigenvector ``v`` of
  ``(Phi_x, Phi_n)`` gives ``h ~ Phi_n v``, normalised to the reference microphone; one or two
  warm-started power iterations per frame.
"""

from __future__ import annotations

import math

import numpy as np

from mica.array_dsp.jit import kernel

TINY = 1e-20


# --------------------------------------------------------------------------- small linalg


@kernel
def _load_submatrix(cov: np.ndarray, k: int, active_idx: np.ndarray, n: int,
                    loading_abs: float, a: np.ndarray) -> None:
    """``a[:n, :n] = cov[k][idx, idx] + loading_abs I`` (complex128)."""
    for i in range(n):
        for j in range(n):
            a[i, j] = cov[k, active_idx[i], active_idx[j]]
        a[i, i] = a[i, i].real + loading_abs


@kernel
def _cholesky(a: np.ndarray, n: int, low: np.ndarray) -> bool:
    """Lower ``L`` with ``L L^H = a[:n, :n]`` into ``low``; False if not positive definite."""
    for j in range(n):
        s = a[j, j].real
        for q in range(j):
            s -= low[j, q].real ** 2 + low[j, q].imag ** 2
        if not s > 0.0:
            return False
        d = math.sqrt(s)
        low[j, j] = d
        for i in range(j + 1, n):
            t = a[i, j]
            for q in range(j):
                t -= low[i, q] * np.conj(low[j, q])
            low[i, j] = t / d
    return True


@kernel
def _cholesky_solve(low: np.ndarray, n: int, b: np.ndarray, x: np.ndarray) -> None:
    """Solve ``L L^H x = b`` (first ``n`` entries); ``x`` may not alias ``b``."""
    for i in range(n):
        s = b[i]
        for q in range(i):
            s -= low[i, q] * x[q]
        x[i] = s / low[i, i].real
    for i in range(n - 1, -1, -1):
        s = x[i]
        for q in range(i + 1, n):
            s -= np.conj(low[q, i]) * x[q]
        x[i] = s / low[i, i].real


@kernel
def _gev_power_iterations(phi_x: np.ndarray, k: int, active_idx: np.ndarray, n: int,
                          low_n: np.ndarray, n_iter: int, work_b: np.ndarray,
                          v: np.ndarray) -> None:
    """Principal generalized eigenvector of ``(Phi_x, Phi_n)`` in bin ``k`` by power
    iteration: ``v <- normalize(Phi_n^-1 Phi_x v)`` ``n_iter`` times (stops early if ``v``
    vanishes). ``low_n``: the Cholesky factor of the loaded ``Phi_n`` submatrix; ``v``:
    ``(n_ch,)`` complex128, the warm start on entry, the eigenvector on return."""
    for _ in range(n_iter):
        for i in range(n):  # b = Phi_x v
            acc = 0j
            for j in range(n):
                acc += phi_x[k, active_idx[i], active_idx[j]] * v[j]
            work_b[i] = acc
        _cholesky_solve(low_n, n, work_b, v)  # v = Phi_n^-1 b
        norm = 0.0
        for i in range(n):
            norm += v[i].real ** 2 + v[i].imag ** 2
        if not norm > 0.0:
            return
        norm = math.sqrt(norm)
        for i in range(n):
            v[i] = v[i] / norm


@kernel
def _mean_diag(cov: np.ndarray, k: int, active_idx: np.ndarray, n: int) -> float:
    tr = 0.0
    for i in range(n):
        tr += cov[k, active_idx[i], active_idx[i]].real
    return max(tr / n, 0.0)


# --------------------------------------------------------------------------- MVDR weights


@kernel
def mvdr_weights_kernel(
    cov: np.ndarray,
    steer: np.ndarray,
    active_idx: np.ndarray,
    n_active: int,
    loading: float,
    wng_floor: float,
    max_tries: int,
    work_a: np.ndarray,
    work_l: np.ndarray,
    work_b: np.ndarray,
    work_x: np.ndarray,
    out: np.ndarray,
) -> None:
    """MVDR weights per bin with loading escalation (see the module doc).

    cov: ``(n_bins, n_ch, n_ch)`` complex64 noise (or coherence) matrix; steer:
    ``(n_bins, n_ch)`` complex64 target vector ``h``; loading: relative ``delta``;
    wng_floor: linear WNG floor; work_a, work_l: ``(n_ch, n_ch)`` complex128 scratch;
    work_b, work_x: ``(n_ch,)`` complex128 scratch; out: ``(n_bins, n_ch)`` complex64.
    Falls back to ``h / ||h||^2`` (delay-and-sum) where no loading makes ``R`` definite.
    """
    n_bins, n_ch = steer.shape
    n = n_active
    for k in range(n_bins):
        for m in range(n_ch):
            out[k, m] = 0.0
        if n == 0:
            continue
        hh = 0.0
        for i in range(n):
            h = steer[k, active_idx[i]]
            work_b[i] = h
            hh += h.real * h.real + h.imag * h.imag
        if not hh > 0.0:
            continue
        delta = loading * _mean_diag(cov, k, active_idx, n) + TINY
        done = False
        for attempt in range(max_tries + 1):
            _load_submatrix(cov, k, active_idx, n, delta, work_a)
            if not _cholesky(work_a, n, work_l):
                delta *= 10.0
                continue
            _cholesky_solve(work_l, n, work_b, work_x)
            den = 0.0
            ww = 0.0
            for i in range(n):
                den += (np.conj(work_b[i]) * work_x[i]).real
                ww += work_x[i].real ** 2 + work_x[i].imag ** 2
            if not den > 0.0:
                delta *= 10.0
                continue
            wng = den * den / ww  # |w^H h|^2 / ||w||^2 with w = x / den
            if wng >= wng_floor or attempt == max_tries:
                for i in range(n):
                    out[k, active_idx[i]] = work_x[i] / den
                done = True
                break
            delta *= 10.0
        if not done:
            for i in range(n):
                out[k, active_idx[i]] = work_b[i] / hh


def mvdr_weights_reference(
    cov: np.ndarray,
    steer: np.ndarray,
    active: np.ndarray,
    loading: float,
    wng_floor: float,
    max_tries: int,
) -> np.ndarray:
    """Numpy reference of :func:`mvdr_weights_kernel`: ``(n_bins, n_ch)`` complex64."""
    n_bins, n_ch = steer.shape
    out = np.zeros((n_bins, n_ch), np.complex128)
    if len(active) == 0:
        return out.astype(np.complex64)
    sub = np.ix_(active, active)
    for k in range(n_bins):
        h = steer[k, active].astype(np.complex128)
        hh = float(np.vdot(h, h).real)
        if not hh > 0:
            continue
        r = cov[k][sub].astype(np.complex128)
        delta = loading * max(float(np.mean(np.diag(r).real)), 0.0) + TINY
        w = None
        for attempt in range(max_tries + 1):
            a = r.copy()
            a[np.diag_indices_from(a)] = np.diag(a).real + delta
            try:
                np.linalg.cholesky(a)
            except np.linalg.LinAlgError:
                delta *= 10.0
                continue
            x = np.linalg.solve(a, h)
            den = float(np.vdot(h, x).real)
            if not den > 0:
                delta *= 10.0
                continue
            if den * den / float(np.vdot(x, x).real) >= wng_floor or attempt == max_tries:
                w = x / den
                break
            delta *= 10.0
        out[k, active] = h / hh if w is None else w
    return out.astype(np.complex64)


# --------------------------------------------------------------------------- beam output


@kernel
def beamform_kernel(spec: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """``out[k] = sum_m conj(weights[k, m]) spec[m, k]``.

    spec: ``(n_ch, n_bins)`` complex64; weights: ``(n_bins, n_ch)`` complex64;
    out: ``(n_bins,)`` complex64.
    """
    n_ch, n_bins = spec.shape
    for k in range(n_bins):
        acc = np.complex64(0.0)
        for m in range(n_ch):
            acc += np.conj(weights[k, m]) * spec[m, k]
        out[k] = acc


def beamform_reference(spec: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Numpy reference of :func:`beamform_kernel`: ``(n_bins,)`` complex64."""
    return np.sum(np.conj(weights).T * spec, axis=0).astype(np.complex64)


# --------------------------------------------------------------------------- RTF


@kernel
def rtf_kernel(
    phi_x: np.ndarray,
    phi_n: np.ndarray,
    geo_steer: np.ndarray,
    mass_x: np.ndarray,
    active_idx: np.ndarray,
    n_active: int,
    ref_pos: int,
    loading: float,
    min_mass: float,
    min_match: float,
    min_snr: float,
    n_iter: int,
    state_v: np.ndarray,
    work_a: np.ndarray,
    work_l: np.ndarray,
    work_b: np.ndarray,
    work_x: np.ndarray,
    out: np.ndarray,
    used: np.ndarray,
) -> None:
    """Target RTF per bin by covariance whitening, else the geometric steering vector.

    phi_x, phi_n: ``(n_bins, n_ch, n_ch)`` complex64; geo_steer: ``(n_bins, n_ch)``
    complex64 far-field vector (its phase reference is the output's); mass_x: ``(n_bins,)``
    float64 speech frames seen; ref_pos: position in ``active_idx`` of the microphone the
    RTF is normalised to; state_v: ``(n_bins, n_ch)`` complex64 warm start (updated);
    out: ``(n_bins, n_ch)`` complex64 ``h`` with ``h[ref] = geo_steer[ref]``; used:
    ``(n_bins,)`` uint8, 1 where the estimate was used.

    Per bin: ``v <- normalize(Phi_n^-1 Phi_x v)`` ``n_iter`` times, ``h = Phi_n v``,
    ``h <- h / h[ref] * g[ref]``. The geometric ``g`` is used instead while ``mass_x <
    min_mass`` (little speech seen) or where ``|g^H h|^2 / (||g||^2 ||h||^2) < min_match``
    (the estimate points somewhere else than the look direction, e.g. at an interferer),
    or where the whitened speech-to-noise ratio ``v^H Phi_x v / v^H Phi_n v - 1`` is below
    ``min_snr`` (the principal direction is noise, not speech).
    """
    n_bins, n_ch = geo_steer.shape
    n = n_active
    r = active_idx[ref_pos]
    for k in range(n_bins):
        used[k] = 0
        for m in range(n_ch):
            out[k, m] = 0.0
        for i in range(n):
            out[k, active_idx[i]] = geo_steer[k, active_idx[i]]
        if n < 2 or mass_x[k] < min_mass:
            continue
        delta = loading * _mean_diag(phi_n, k, active_idx, n) + TINY
        _load_submatrix(phi_n, k, active_idx, n, delta, work_a)
        if not _cholesky(work_a, n, work_l):
            continue
        vv = 0.0
        for i in range(n):
            work_x[i] = state_v[k, active_idx[i]]
            vv += work_x[i].real ** 2 + work_x[i].imag ** 2
        if not vv > 0.0:
            for i in range(n):
                work_x[i] = geo_steer[k, active_idx[i]]
        _gev_power_iterations(phi_x, k, active_idx, n, work_l, n_iter, work_b, work_x)
        for i in range(n):
            state_v[k, active_idx[i]] = work_x[i]
        vxv = 0.0
        for i in range(n):  # v^H Phi_x v
            acc = 0j
            for j in range(n):
                acc += phi_x[k, active_idx[i], active_idx[j]] * work_x[j]
            vxv += (np.conj(work_x[i]) * acc).real
        vnv = 0.0
        for i in range(n):  # h = Phi_n v (de-whitened; loaded matrix as in the solve)
            acc = 0j
            for j in range(n):
                acc += work_a[i, j] * work_x[j]
            work_b[i] = acc
            vnv += (np.conj(work_x[i]) * acc).real
        if not vxv > (1.0 + min_snr) * vnv:
            continue
        href = work_b[ref_pos]
        if not abs(href) > TINY:
            continue
        scale = geo_steer[k, r] / href
        gh = 0j
        gg = 0.0
        hh = 0.0
        for i in range(n):
            h = work_b[i] * scale
            work_b[i] = h
            g = geo_steer[k, active_idx[i]]
            gh += np.conj(g) * h
            gg += g.real * g.real + g.imag * g.imag
            hh += h.real * h.real + h.imag * h.imag
        if not (gg > 0.0 and hh > 0.0) or (gh.real ** 2 + gh.imag ** 2) < min_match * gg * hh:
            continue
        for i in range(n):
            out[k, active_idx[i]] = work_b[i]
        used[k] = 1


def rtf_reference(
    phi_x: np.ndarray,
    phi_n: np.ndarray,
    geo_steer: np.ndarray,
    mass_x: np.ndarray,
    active: np.ndarray,
    ref_pos: int,
    loading: float,
    min_mass: float,
    min_match: float,
    min_snr: float,
    n_iter: int,
    state_v: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numpy reference of :func:`rtf_kernel`: ``(out, used, new_state_v)``."""
    n_bins, n_ch = geo_steer.shape
    out = np.zeros((n_bins, n_ch), np.complex128)
    out[:, active] = geo_steer[:, active]
    used = np.zeros(n_bins, np.uint8)
    state = state_v.astype(np.complex128)
    sub = np.ix_(active, active)
    for k in range(n_bins):
        if len(active) < 2 or mass_x[k] < min_mass:
            continue
        rn = phi_n[k][sub].astype(np.complex128)
        delta = loading * max(float(np.mean(np.diag(rn).real)), 0.0) + TINY
        rn[np.diag_indices_from(rn)] = np.diag(rn).real + delta
        try:
            np.linalg.cholesky(rn)
        except np.linalg.LinAlgError:
            continue
        v = state[k, active]
        if not np.vdot(v, v).real > 0:
            v = geo_steer[k, active].astype(np.complex128)
        for _ in range(n_iter):
            x = np.linalg.solve(rn, phi_x[k][sub].astype(np.complex128) @ v)
            norm = np.linalg.norm(x)
            if not norm > 0:
                break
            v = x / norm
        state[k, active] = v
        h = rn @ v
        vxv = float(np.vdot(v, phi_x[k][sub].astype(np.complex128) @ v).real)
        if not vxv > (1.0 + min_snr) * float(np.vdot(v, h).real):
            continue
        if not abs(h[ref_pos]) > TINY:
            continue
        g = geo_steer[k, active].astype(np.complex128)
        h = h * (g[ref_pos] / h[ref_pos])
        gh = np.vdot(g, h)
        gg, hh = np.vdot(g, g).real, np.vdot(h, h).real
        if not (gg > 0 and hh > 0) or abs(gh) ** 2 < min_match * gg * hh:
            continue
        out[k, active] = h
        used[k] = 1
    return out.astype(np.complex64), used, state.astype(np.complex64)


# --------------------------------------------------------------------------- diffuse field


@kernel
def diffuse_coherence_kernel(
    positions_m: np.ndarray, freqs_hz: np.ndarray, sound_speed_m_s: float, out: np.ndarray
) -> None:
    """``out[k, i, j] = sinc(2 f_k d_ij / c)`` (spherically isotropic noise field).

    positions_m: ``(n_ch, 3)`` float64; freqs_hz: ``(n_bins,)`` float64;
    out: ``(n_bins, n_ch, n_ch)`` complex64 (real valued).
    """
    n_ch = positions_m.shape[0]
    for k in range(freqs_hz.shape[0]):
        for i in range(n_ch):
            for j in range(n_ch):
                d2 = 0.0
                for c in range(3):
                    diff = positions_m[i, c] - positions_m[j, c]
                    d2 += diff * diff
                x = 2.0 * freqs_hz[k] * math.sqrt(d2) / sound_speed_m_s
                out[k, i, j] = 1.0 if x == 0.0 else math.sin(math.pi * x) / (math.pi * x)


def diffuse_coherence_reference(
    positions_m: np.ndarray, freqs_hz: np.ndarray, sound_speed_m_s: float
) -> np.ndarray:
    """Numpy reference of :func:`diffuse_coherence_kernel`: ``(n_bins, n_ch, n_ch)``."""
    d = np.linalg.norm(positions_m[:, None, :] - positions_m[None, :, :], axis=-1)
    return np.sinc(2.0 * freqs_hz[:, None, None] * d[None] / sound_speed_m_s).astype(
        np.complex64)
