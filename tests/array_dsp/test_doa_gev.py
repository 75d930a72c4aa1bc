"""Noise-whitened SRP-PHAT (generalized-eigenvector DOA): kernel == numpy reference, and it
finds a talker that a louder point interferer hides from plain SRP-PHAT on ``Phi_x - Phi_n``."""

from __future__ import annotations

import numpy as np
import pytest

from mica.array_dsp.doa import (
    peak_azimuth_deg,
    srp_phat_gev_kernel,
    srp_phat_gev_reference,
    srp_phat_kernel,
)
from mica.array_dsp.steering import far_field_delays_s, rfft_freqs_hz, steering_vectors_reference


def circle(n_ch: int, radius_m: float = 0.05) -> np.ndarray:
    a = 2 * np.pi * np.arange(n_ch) / n_ch
    return np.stack([radius_m * np.cos(a), radius_m * np.sin(a), np.zeros(n_ch)], axis=1)


def table(geom: np.ndarray, freqs: np.ndarray, grid: np.ndarray) -> np.ndarray:
    return np.stack(
        [steering_vectors_reference(far_field_delays_s(geom, float(g)), freqs) for g in grid],
        axis=2,
    ).astype(np.complex64)


def work(n_ch: int) -> tuple[np.ndarray, ...]:
    return (
        np.zeros((n_ch, n_ch), np.complex128),
        np.zeros((n_ch, n_ch), np.complex128),
        np.zeros(n_ch, np.complex128),
        np.zeros(n_ch, np.complex128),
    )


def scene(n_ch: int, talker_deg: float, interferer_deg: float, leak: float):
    """Covariances where SPP errors left part of a 10x louder interferer in ``Phi_x``."""
    geom = circle(n_ch)
    freqs = rfft_freqs_hz(320, 16000.0)
    d_t = steering_vectors_reference(far_field_delays_s(geom, talker_deg), freqs)
    d_i = steering_vectors_reference(far_field_delays_s(geom, interferer_deg), freqs)
    eye = np.eye(n_ch)[None]
    rank1 = lambda d, p: p * np.einsum("ki,kj->kij", d, np.conj(d))  # noqa: E731
    phi_n = rank1(d_i, 10.0) + 0.1 * eye
    phi_x = rank1(d_i, 10.0 * (1 + leak)) + rank1(d_t, 1.0) + 0.1 * eye
    return geom, freqs, phi_n.astype(np.complex64), phi_x.astype(np.complex64)


@pytest.mark.parametrize("n_ch", (2, 4, 6, 8))
def test_gev_kernel_matches_reference(n_ch: int) -> None:
    geom, freqs, phi_n, phi_x = scene(n_ch, 40.0, 200.0, 0.5)
    grid = np.arange(0, 360, 10.0)
    tab = table(geom, freqs, grid)
    sets = [np.arange(n_ch)] + ([np.arange(2, n_ch)] if n_ch >= 4 else []) + [np.arange(0)]
    for active in sets:
        idx = np.concatenate([active, np.setdiff1d(np.arange(n_ch), active)]).astype(np.int64)
        state = np.zeros((freqs.size, n_ch), np.complex64)
        ref_state = state.copy()
        for _ in range(3):  # warm starts carry over
            out = np.zeros(grid.size)
            srp_phat_gev_kernel(
                phi_x, phi_n, tab, 10, 120, idx, len(active), 1e-3, 2, 4.0, state, *work(n_ch), out
            )
            ref, ref_state = srp_phat_gev_reference(
                phi_x, phi_n, tab, 10, 120, active, 1e-3, 2, 4.0, ref_state
            )
            np.testing.assert_allclose(out, ref, rtol=2e-3, atol=1e-3 * max(1, abs(ref).max()))
            np.testing.assert_allclose(state, ref_state, rtol=1e-3, atol=1e-4)


def test_whitened_search_finds_the_talker_behind_a_leaking_interferer() -> None:
    """Half the interferer's power leaked into ``Phi_x``: plain SRP on ``Phi_x - Phi_n``
    points at the interferer, the whitened search at the talker."""
    n_ch, talker, interferer = 4, 40.0, 200.0
    geom, freqs, phi_n, phi_x = scene(n_ch, talker, interferer, 0.5)
    grid = np.arange(0, 360, 5.0)
    tab = table(geom, freqs, grid)
    idx = np.arange(n_ch, dtype=np.int64)
    plain = np.zeros(grid.size)
    srp_phat_kernel(phi_x, phi_n, tab, 10, 120, idx, n_ch, plain)
    gev = np.zeros(grid.size)
    srp_phat_gev_kernel(
        phi_x,
        phi_n,
        tab,
        10,
        120,
        idx,
        n_ch,
        1e-3,
        5,
        8.0,
        np.zeros((freqs.size, n_ch), np.complex64),
        *work(n_ch),
        gev,
    )
    assert abs(peak_azimuth_deg(plain, grid) - interferer) < 10.0
    assert abs(peak_azimuth_deg(gev, grid) - talker) < 5.0
