"""SPP, covariances, MVDR/RTF, superdirective, SRP-PHAT and channel power: each Numba kernel
against its numpy reference, across channel counts (2, 4, 6, 8), sizes and edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from mica.array_dsp.channels import channel_power_kernel, channel_power_reference
from mica.array_dsp.covariance import (
    covariance_update_kernel,
    covariance_update_reference,
    speech_loaded_kernel,
    speech_loaded_reference,
)
from mica.array_dsp.doa import srp_phat_kernel, srp_phat_reference
from mica.array_dsp.mvdr import (
    beamform_kernel,
    beamform_reference,
    diffuse_coherence_kernel,
    diffuse_coherence_reference,
    mvdr_weights_kernel,
    mvdr_weights_reference,
    rtf_kernel,
    rtf_reference,
)
from mica.array_dsp.spp import SppParams, spp_kernel, spp_reference

CHANNELS = (2, 4, 6, 8)
BINS = (5, 65, 161)


def rand_c(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (scale * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))).astype(
        np.complex64)


def random_cov(n_bins: int, n_ch: int, seed: int, rank: int | None = None) -> np.ndarray:
    """Hermitian PSD ``(n_bins, n_ch, n_ch)`` complex64 (full rank unless ``rank``)."""
    a = rand_c((n_bins, n_ch, rank or 2 * n_ch), seed)
    return (a @ np.conj(np.transpose(a, (0, 2, 1))) / a.shape[2]).astype(np.complex64)


def work(n_ch: int) -> tuple[np.ndarray, ...]:
    return (np.zeros((n_ch, n_ch), np.complex128), np.zeros((n_ch, n_ch), np.complex128),
            np.zeros(n_ch, np.complex128), np.zeros(n_ch, np.complex128))


def active_sets(n_ch: int) -> list[np.ndarray]:
    """All channels, the first two left out (when 2 remain), none."""
    sets = [np.arange(n_ch)]
    if n_ch >= 4:
        sets.append(np.arange(2, n_ch))
    sets.append(np.arange(0))
    return sets


def padded_idx(active: np.ndarray, n_ch: int) -> np.ndarray:
    rest = np.setdiff1d(np.arange(n_ch), active)
    return np.concatenate([active, rest]).astype(np.int64)


@pytest.mark.parametrize("n_ch", CHANNELS)
@pytest.mark.parametrize("n_bins", BINS)
def test_spp_kernel_matches_reference(n_ch: int, n_bins: int) -> None:
    params = SppParams(init_frames=3)
    xi = 10 ** (params.xi_h1_db / 10)
    for active in active_sets(n_ch):
        idx = padded_idx(active, n_ch)
        noise, ps, seen = np.zeros(n_bins, np.float32), np.zeros(n_bins, np.float32), np.zeros(
            1, np.int64)
        r_noise, r_ps, r_seen = noise.copy(), ps.copy(), 0
        out = np.zeros(n_bins, np.float32)
        for t in range(12):
            scale = 0.01 if t < 6 else 0.2  # noise, then "speech" (louder)
            spec = rand_c((n_ch, n_bins), 100 * t + n_ch, scale)
            if t == 4:
                spec[:] = 0  # digital silence keeps the state
            spp_kernel(spec, idx, len(active), xi, params.noise_alpha, params.smooth_alpha,
                       params.p_cap, params.init_frames, noise, ps, seen, out)
            ref, r_noise, r_ps, r_seen = spp_reference(spec, active, params, r_noise, r_ps,
                                                       r_seen)
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(noise, r_noise, rtol=1e-4)
            assert seen[0] == r_seen
        if len(active):
            assert out.mean() > 0.9  # loud frames after a quiet start are speech


@pytest.mark.parametrize("n_ch", CHANNELS)
@pytest.mark.parametrize("n_bins", BINS)
def test_covariance_kernel_matches_reference(n_ch: int, n_bins: int) -> None:
    rng = np.random.default_rng(n_ch * n_bins)
    phi_n, phi_x = np.zeros((2, n_bins, n_ch, n_ch), np.complex64)
    m_n, m_x = np.zeros((2, n_bins))
    r = [phi_n.copy(), phi_x.copy(), m_n.copy(), m_x.copy()]
    for t in range(30):
        spec = rand_c((n_ch, n_bins), t)
        spp = rng.uniform(0, 1, n_bins).astype(np.float32)
        spp[:2] = (0.0, 1.0)  # edge values
        covariance_update_kernel(spec, spp, 0.95, 0.9, phi_n, phi_x, m_n, m_x)
        r = list(covariance_update_reference(spec, spp, 0.95, 0.9, *r))
    np.testing.assert_allclose(phi_n, r[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(phi_x, r[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m_n, r[2])
    np.testing.assert_allclose(phi_n, np.conj(np.transpose(phi_n, (0, 2, 1))))


@pytest.mark.parametrize("n_ch", CHANNELS)
@pytest.mark.parametrize("n_bins", BINS)
def test_speech_loaded_kernel_matches_reference(n_ch: int, n_bins: int) -> None:
    a = rand_c((n_bins, n_ch, n_ch), n_ch)
    b = rand_c((n_bins, n_ch, n_ch), n_bins + 1, 1.5)
    phi_n = np.einsum("kij,klj->kil", a, np.conj(a)).astype(np.complex64)
    phi_x = (phi_n + 3 * np.einsum("kij,klj->kil", b, np.conj(b))).astype(np.complex64)
    phi_x[0] = 1.4 * phi_n[0]  # within the margin: no loading added
    out = np.zeros_like(phi_n)
    speech_loaded_kernel(phi_n, phi_x, 0.1, 0.5, out)
    np.testing.assert_allclose(out, speech_loaded_reference(phi_n, phi_x, 0.1, 0.5), rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_array_equal(out[0], phi_n[0])
    off = ~np.eye(n_ch, dtype=bool)
    np.testing.assert_array_equal(out[:, off], phi_n[:, off])  # only the diagonal moves


@pytest.mark.parametrize("n_ch", CHANNELS)
@pytest.mark.parametrize("n_bins", BINS)
def test_mvdr_weights_kernel_matches_reference(n_ch: int, n_bins: int) -> None:
    cov = random_cov(n_bins, n_ch, n_ch)
    cov[0] = 0  # empty bin -> delay-and-sum
    cov[1] = random_cov(1, n_ch, 7, rank=1)[0]  # singular -> loading
    steer = rand_c((n_bins, n_ch), n_bins)
    for active in active_sets(n_ch):
        idx = padded_idx(active, n_ch)
        for loading, floor in ((1e-3, 0.1), (0.0, 10.0 ** 0.3)):
            out = np.full((n_bins, n_ch), 9, np.complex64)
            mvdr_weights_kernel(cov, steer, idx, len(active), loading, floor, 6, *work(n_ch),
                                out)
            ref = mvdr_weights_reference(cov, steer, active, loading, floor, 6)
            np.testing.assert_allclose(out, ref, rtol=2e-3, atol=2e-4)
            if len(active):
                gain = np.einsum("km,km->k", np.conj(out[:, active]), steer[:, active])
                np.testing.assert_allclose(gain, 1.0, atol=1e-3)  # distortionless
            else:
                assert not out.any()


@pytest.mark.parametrize("n_ch", CHANNELS)
@pytest.mark.parametrize("n_bins", BINS)
def test_rtf_kernel_matches_reference(n_ch: int, n_bins: int) -> None:
    h_true = rand_c((n_bins, n_ch), 3)
    h_true /= h_true[:, :1]
    phi_n = random_cov(n_bins, n_ch, 5)
    phi_x = (phi_n + 4.0 * np.einsum("ki,kj->kij", h_true, np.conj(h_true))).astype(
        np.complex64)
    geo = (h_true + 0.3 * rand_c((n_bins, n_ch), 9)).astype(np.complex64)  # near the truth
    geo[:3] = rand_c((3, n_ch), 11)  # far from it: geometry wins by the match test
    mass = np.full(n_bins, 100.0)
    mass[3] = 0.0  # unseen bin: geometry
    for active in active_sets(n_ch):
        idx = padded_idx(active, n_ch)
        state = np.zeros((n_bins, n_ch), np.complex64)
        out = np.zeros((n_bins, n_ch), np.complex64)
        used = np.zeros(n_bins, np.uint8)
        r_state = state.copy()
        for _ in range(10):  # warm-started power iterations converge
            rtf_kernel(phi_x, phi_n, geo, mass, idx, len(active), 0, 1e-6, 10.0, 0.5, 0.0, 2,
                       state, *work(n_ch), out, used)
            ref, r_used, r_state = rtf_reference(phi_x, phi_n, geo, mass, active, 0, 1e-6,
                                                 10.0, 0.5, 0.0, 2, r_state)
            np.testing.assert_allclose(out, ref, rtol=2e-3, atol=2e-4)
            np.testing.assert_array_equal(used, r_used)
        if len(active) >= 2:
            assert used[3] == 0 and used[4:].mean() > 0.8
            good = used.astype(bool)
            expect = h_true[:, active] * (geo[:, active[0]] / h_true[:, active[0]])[:, None]
            np.testing.assert_allclose(out[good][:, active], expect[good], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("n_ch", CHANNELS)
@pytest.mark.parametrize("n_bins", BINS)
def test_beamform_kernel_matches_reference(n_ch: int, n_bins: int) -> None:
    spec, w = rand_c((n_ch, n_bins), 1), rand_c((n_bins, n_ch), 2)
    out = np.zeros(n_bins, np.complex64)
    beamform_kernel(spec, w, out)
    np.testing.assert_allclose(out, beamform_reference(spec, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_ch", CHANNELS)
def test_diffuse_coherence_kernel_matches_reference(n_ch: int) -> None:
    pos = np.random.default_rng(n_ch).uniform(-0.05, 0.05, (n_ch, 3))
    freqs = np.linspace(0, 8000, 161)
    out = np.zeros((161, n_ch, n_ch), np.complex64)
    diffuse_coherence_kernel(pos, freqs, 343.0, out)
    np.testing.assert_allclose(out, diffuse_coherence_reference(pos, freqs, 343.0), atol=1e-6)
    np.testing.assert_allclose(out[0], 1.0)  # DC: fully coherent


@pytest.mark.parametrize("n_ch", CHANNELS)
@pytest.mark.parametrize("n_bins", BINS)
def test_srp_phat_kernel_matches_reference(n_ch: int, n_bins: int) -> None:
    phi_n = random_cov(n_bins, n_ch, 1)
    phi_x = (phi_n + random_cov(n_bins, n_ch, 2, rank=1)).astype(np.complex64)
    phi_x[0] = 0  # no energy: skipped
    table = rand_c((n_bins, n_ch, 24), 3)
    table /= np.abs(table)
    for active in active_sets(n_ch):
        idx = padded_idx(active, n_ch)
        out = np.full(24, 7.0)
        srp_phat_kernel(phi_x, phi_n, table, 0, n_bins, idx, len(active), out)
        ref = srp_phat_reference(phi_x, phi_n, table, 0, n_bins, active)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_ch", CHANNELS)
@pytest.mark.parametrize("n", (32, 160, 512))
def test_channel_power_kernel_matches_reference(n_ch: int, n: int) -> None:
    last = np.zeros(n_ch, np.float32)
    p, d = np.zeros(n_ch), np.zeros(n_ch)
    r = (last.copy(), p.copy(), d.copy())
    for t in range(4):
        block = np.random.default_rng(t).uniform(-1, 1, (n_ch, n)).astype(np.float32)
        block[0] = 0.25  # stuck
        channel_power_kernel(block, 0.9, last, p, d)
        r = channel_power_reference(block, 0.9, *r)
    np.testing.assert_allclose(last, r[0])
    np.testing.assert_allclose(p, r[1], rtol=1e-7)
    np.testing.assert_allclose(d, r[2], rtol=1e-7)
    assert d[0] < 1e-3 * d[1]
