"""The reverberation-residual covariance (MVDR's interference estimate): the Jacobi
eigen-decomposition and the residual kernel against their numpy references, and the
properties the MVDR relies on."""

from __future__ import annotations

import numpy as np
import pytest

from mica.array_dsp.covariance import (
    hermitian_eig_kernel,
    residual_covariance_kernel,
    residual_covariance_reference,
)

CHANNELS = (2, 4, 6, 8)


def rand_c(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def random_cov(n_bins: int, n_ch: int, seed: int, rank: int) -> np.ndarray:
    a = rand_c((n_bins, n_ch, rank), seed)
    return (a @ np.conj(np.transpose(a, (0, 2, 1))) / rank).astype(np.complex64)


def work(n_ch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.zeros((n_ch, n_ch), np.complex128),
        np.zeros((n_ch, n_ch), np.complex128),
        np.zeros(n_ch),
    )


@pytest.mark.parametrize("n_ch", (1, 2, 3, 4, 6, 8))
def test_hermitian_eig_matches_numpy(n_ch: int) -> None:
    for seed in range(5):
        a = rand_c((n_ch, n_ch), seed)
        a = a + a.conj().T
        if seed == 4:
            a = np.diag(np.arange(n_ch, dtype=float)).astype(complex)  # already diagonal
        vecs, vals = np.zeros((n_ch, n_ch), complex), np.zeros(n_ch)
        hermitian_eig_kernel(a.copy(), n_ch, vecs, vals)
        np.testing.assert_allclose(np.sort(vals), np.linalg.eigvalsh(a), atol=1e-10)
        np.testing.assert_allclose(vecs @ np.diag(vals) @ vecs.conj().T, a, atol=1e-10)
        np.testing.assert_allclose(vecs.conj().T @ vecs, np.eye(n_ch), atol=1e-10)


@pytest.mark.parametrize("n_ch", CHANNELS)
@pytest.mark.parametrize("n_bins", (5, 161))
def test_residual_kernel_matches_reference(n_ch: int, n_bins: int) -> None:
    phi_n = random_cov(n_bins, n_ch, n_ch, 2 * n_ch)
    # speech of rank 2 plus a share of the noise: Phi_x - Phi_n is indefinite in places
    phi_x = (0.8 * phi_n + random_cov(n_bins, n_ch, n_bins, 2)).astype(np.complex64)
    mass = np.full(n_bins, 30.0)
    mass[1] = 2.0  # too little speech: Phi_n alone
    sets = [np.arange(n_ch)] + ([np.arange(2, n_ch)] if n_ch >= 4 else []) + [np.arange(0)]
    for active in sets:
        idx = np.concatenate([active, np.setdiff1d(np.arange(n_ch), active)]).astype(np.int64)
        ref_pos = min(1, max(len(active) - 1, 0))
        for beta in (0.0, 0.6, 1.0):
            out = np.zeros_like(phi_n)
            residual_covariance_kernel(
                phi_n, phi_x, mass, idx, len(active), ref_pos, beta, 5.0, *work(n_ch), out
            )
            ref = residual_covariance_reference(phi_n, phi_x, mass, active, ref_pos, beta, 5.0)
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(out[1], phi_n[1])
            if beta == 0.0 or len(active) < 2:
                np.testing.assert_array_equal(out, phi_n)


def test_residual_removes_the_reference_regression_and_keeps_the_rest() -> None:
    """Speech = rank-1 target + an independent reflection: the residual is exactly the
    part of the reflection the reference microphone does not predict, PSD, and zero in the
    reference row (what the reference hears of the speech is modelled by the RTF)."""
    n_ch, ref = 4, 0
    rng = np.random.default_rng(1)
    h = rng.standard_normal(n_ch) + 1j * rng.standard_normal(n_ch)
    g = rng.standard_normal(n_ch) + 1j * rng.standard_normal(n_ch)
    s = 4.0 * np.outer(h, h.conj()) + 1.0 * np.outer(g, g.conj())
    phi_n = np.eye(n_ch)[None].astype(np.complex64)
    phi_x = (phi_n + s[None]).astype(np.complex64)
    out = np.zeros_like(phi_n)
    residual_covariance_kernel(
        phi_n, phi_x, np.full(1, 10.0), np.arange(n_ch), n_ch, ref, 1.0, 1.0, *work(n_ch), out
    )
    resid = out[0] - phi_n[0]
    expect = s - np.outer(s[:, ref], s[ref, :]) / s[ref, ref].real
    np.testing.assert_allclose(resid, expect, atol=1e-4 * np.abs(s).max())
    np.testing.assert_allclose(resid[ref], 0.0, atol=1e-4 * np.abs(s).max())
    assert np.linalg.eigvalsh(resid).min() > -1e-4 * np.abs(s).max()
    assert np.linalg.matrix_rank(resid, tol=1e-3 * np.abs(s).max()) == 1
