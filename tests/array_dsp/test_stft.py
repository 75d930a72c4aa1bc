"""Streaming STFT / ISTFT: kernels vs numpy references, and perfect reconstruction."""

from __future__ import annotations

import numpy as np
import pytest

from mica.array_dsp.errors import MicaError
from mica.array_dsp.stft import (
    StreamingIstft,
    StreamingStft,
    analysis_kernel,
    analysis_reference,
    istft_reference,
    sqrt_hann,
    stft_latency_samples,
    stft_reference,
    synthesis_kernel,
    synthesis_reference,
)

CHANNELS = (1, 2, 4, 8)
HOPS = (64, 128, 160, 256)
N_BLOCKS = 12


def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)


@pytest.mark.parametrize("hop", (*HOPS, 1, 7))
def test_window_squared_sums_to_one(hop: int) -> None:
    w = sqrt_hann(2 * hop).astype(np.float64)
    np.testing.assert_allclose(w[:hop] ** 2 + w[hop:] ** 2, 1.0, atol=1e-6)


@pytest.mark.parametrize("n_ch", CHANNELS)
@pytest.mark.parametrize("hop", HOPS)
def test_analysis_kernel_matches_reference(n_ch: int, hop: int) -> None:
    window = sqrt_hann(2 * hop)
    history = noise((n_ch, 2 * hop), seed=1)
    ref_history = history.copy()
    frames = np.empty_like(history)
    for b in range(3):
        block = noise((n_ch, hop), seed=10 + b)
        analysis_kernel(history, block, window, frames)
        ref_history, ref_frames = analysis_reference(ref_history, block, window)
        np.testing.assert_array_equal(history, ref_history)
        np.testing.assert_allclose(frames, ref_frames, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("hop", HOPS)
def test_synthesis_kernel_matches_reference(hop: int) -> None:
    window = sqrt_hann(2 * hop)
    overlap = noise((2 * hop,), seed=2)
    ref_overlap = overlap.copy()
    out = np.empty(hop, np.float32)
    for b in range(3):
        frame = noise((2 * hop,), seed=20 + b)
        synthesis_kernel(frame, window, overlap, out)
        ref_overlap, ref_out = synthesis_reference(frame, window, ref_overlap, hop)
        np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(overlap, ref_overlap, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n_ch", CHANNELS)
@pytest.mark.parametrize("hop", HOPS)
def test_streaming_stft_matches_whole_signal_reference(n_ch: int, hop: int) -> None:
    x = noise((n_ch, N_BLOCKS * hop), seed=n_ch * hop)
    stft = StreamingStft(n_ch, hop)
    got = np.stack([stft.process(x[:, b * hop:(b + 1) * hop]).copy() for b in range(N_BLOCKS)])
    ref = stft_reference(x, hop)
    assert got.shape == ref.shape == (N_BLOCKS, n_ch, hop + 1)
    assert got.dtype == np.complex64
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("hop", HOPS)
def test_streaming_istft_matches_whole_signal_reference(hop: int) -> None:
    rng = np.random.default_rng(hop)
    spectra = (rng.standard_normal((N_BLOCKS, hop + 1))
               + 1j * rng.standard_normal((N_BLOCKS, hop + 1))).astype(np.complex64)
    istft = StreamingIstft(hop)
    got = np.concatenate([istft.process(s).copy() for s in spectra])
    np.testing.assert_allclose(got, istft_reference(spectra, hop), atol=1e-5)


def roundtrip(x: np.ndarray, hop: int) -> np.ndarray:
    """STFT -> per-channel ISTFT, streamed block by block: ``(n_ch, n)`` -> ``(n_ch, n)``."""
    n_ch, n = x.shape
    stft = StreamingStft(n_ch, hop)
    istfts = [StreamingIstft(hop) for _ in range(n_ch)]
    y = np.empty_like(x)
    for b in range(n // hop):
        spec = stft.process(x[:, b * hop:(b + 1) * hop])
        for m in range(n_ch):
            y[m, b * hop:(b + 1) * hop] = istfts[m].process(spec[m])
    return y


@pytest.mark.parametrize("hop", HOPS)
@pytest.mark.parametrize("kind", ["random", "impulse"])
def test_perfect_reconstruction(hop: int, kind: str) -> None:
    n_ch = 2
    n = N_BLOCKS * hop
    if kind == "random":
        x = noise((n_ch, n), seed=hop)
    else:
        x = np.zeros((n_ch, n), np.float32)
        x[0, 3 * hop + 5] = 1.0  # mid-block
        x[1, 0] = -0.5  # the very first sample
    latency = stft_latency_samples(hop)
    assert latency == StreamingIstft(hop).latency_samples == hop
    y = roundtrip(x, hop)
    np.testing.assert_allclose(y[:, latency:], x[:, :n - latency], atol=1e-5)
    np.testing.assert_allclose(y[:, :latency], 0.0, atol=1e-6)


def test_buffers_are_reused_and_reset_restores_silence() -> None:
    hop = 64
    stft = StreamingStft(3, hop)
    istft = StreamingIstft(hop)
    a = stft.process(noise((3, hop)))
    b = stft.process(noise((3, hop), seed=1))
    assert a is b
    o1 = istft.process(a[0])
    assert istft.process(a[1]) is o1
    stft.reset()
    istft.reset()
    fresh_stft, fresh_istft = StreamingStft(3, hop), StreamingIstft(hop)
    block = noise((3, hop), seed=5)
    np.testing.assert_array_equal(stft.process(block), fresh_stft.process(block))
    np.testing.assert_array_equal(istft.process(stft._spec[0]), fresh_istft.process(stft._spec[0]))


def test_non_contiguous_block_is_accepted() -> None:
    hop = 64
    wide = noise((2, 2 * hop))
    stft, ref = StreamingStft(2, hop), StreamingStft(2, hop)
    np.testing.assert_array_equal(stft.process(wide[:, ::2]), ref.process(wide[:, ::2].copy()))


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (np.zeros((3, 64), np.float64), "dtype float32"),
        (np.zeros((2, 64), np.float32), r"shape \(3, 64\)"),
        (np.zeros((3, 63), np.float32), r"shape \(3, 64\)"),
        (np.zeros(192, np.float32), "shape"),
        ([[0.0] * 64] * 3, "numpy array"),
    ],
)
def test_stft_rejects_bad_blocks(block: object, match: str) -> None:
    with pytest.raises(MicaError, match=match) as info:
        StreamingStft(3, 64).process(block)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_istft_rejects_bad_spectra() -> None:
    istft = StreamingIstft(64)
    with pytest.raises(MicaError, match="complex64"):
        istft.process(np.zeros(65, np.complex128))
    with pytest.raises(MicaError, match="shape"):
        istft.process(np.zeros(64, np.complex64))


@pytest.mark.parametrize("hop", [0, -1, 2.5, True])
def test_bad_hop(hop: object) -> None:
    with pytest.raises(MicaError, match="hop_samples"):
        StreamingStft(2, hop)  # type: ignore[arg-type]
    with pytest.raises(MicaError, match="hop_samples"):
        StreamingIstft(hop)  # type: ignore[arg-type]
