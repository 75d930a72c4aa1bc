"""Directions, far-field delays and steering vectors (kernel vs numpy reference)."""

from __future__ import annotations

import numpy as np
import pytest

from mica.array_dsp.errors import GeometryError, MicaError
from mica.array_dsp.steering import (
    SOUND_SPEED_M_S,
    direction_unit,
    far_field_delays_s,
    rfft_freqs_hz,
    steering_vectors,
    steering_vectors_into,
    steering_vectors_reference,
)

CHANNELS = (1, 2, 4, 8)
FRAMES = (128, 256, 320, 512)  # 2 x hop for hops 64, 128, 160, 256


def random_geometry(n_ch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.1, 0.1, size=(n_ch, 3))


@pytest.mark.parametrize(
    ("az", "el", "expected"),
    [
        (0.0, 0.0, [1, 0, 0]),
        (90.0, 0.0, [0, 1, 0]),
        (180.0, 0.0, [-1, 0, 0]),
        (-90.0, 0.0, [0, -1, 0]),
        (0.0, 90.0, [0, 0, 1]),
        (45.0, -90.0, [0, 0, -1]),
    ],
)
def test_direction_unit(az: float, el: float, expected: list[float]) -> None:
    np.testing.assert_allclose(direction_unit(az, el), expected, atol=1e-15)


def test_direction_unit_matches_corpus_label() -> None:
    u = np.array([-0.82918, 0.55279, -0.082918])
    az = np.degrees(np.arctan2(u[1], u[0]))
    el = np.degrees(np.arcsin(u[2]))
    np.testing.assert_allclose(direction_unit(az, el), u, atol=1e-5)


@pytest.mark.parametrize(("az", "el"), [(float("nan"), 0.0), (0.0, 91.0), (0.0, float("inf"))])
def test_bad_direction(az: float, el: float) -> None:
    with pytest.raises(MicaError):
        direction_unit(az, el)


def test_delays_sign_and_reference() -> None:
    geom = np.array([[-0.1, 0.0, 0.0], [0.1, 0.0, 0.0]])
    tau = far_field_delays_s(geom, azimuth_deg=0.0)
    # source on +x: the +x microphone hears it first, 0.1 m / c before the centroid
    np.testing.assert_allclose(tau, [0.1 / SOUND_SPEED_M_S, -0.1 / SOUND_SPEED_M_S])
    tau_ref = far_field_delays_s(geom, 0.0, reference_channel=1)
    np.testing.assert_allclose(tau_ref, tau - tau[1])
    assert tau_ref[1] == 0.0
    # broadside (y axis) and zenith: no delay across an x-axis pair
    np.testing.assert_allclose(far_field_delays_s(geom, 90.0), 0.0, atol=1e-18)
    np.testing.assert_allclose(far_field_delays_s(geom, 0.0, 90.0), 0.0, atol=1e-18)


def test_delays_sum_to_zero_about_centroid() -> None:
    geom = random_geometry(8)
    tau = far_field_delays_s(geom, 37.0, 12.0, sound_speed_m_s=340.0)
    assert abs(tau.sum()) < 1e-18
    assert np.abs(tau).max() <= np.ptp(geom, axis=0).max() * 2 / 340.0


def test_delay_errors() -> None:
    geom = random_geometry(4)
    with pytest.raises(MicaError, match="reference_channel"):
        far_field_delays_s(geom, 0.0, reference_channel=4)
    with pytest.raises(MicaError, match="sound_speed"):
        far_field_delays_s(geom, 0.0, sound_speed_m_s=0.0)
    with pytest.raises(GeometryError):
        far_field_delays_s(np.zeros((2, 3)), 0.0)


@pytest.mark.parametrize("n_ch", CHANNELS)
@pytest.mark.parametrize("n_fft", FRAMES)
def test_kernel_matches_reference(n_ch: int, n_fft: int) -> None:
    tau = far_field_delays_s(random_geometry(n_ch, seed=n_ch), 123.0, -20.0)
    freqs = rfft_freqs_hz(n_fft, 16000)
    out = np.empty((n_fft // 2 + 1, n_ch), np.complex64)
    got = steering_vectors_into(tau, freqs, out)
    assert got is out
    np.testing.assert_allclose(got, steering_vectors_reference(tau, freqs), atol=2e-6)


def test_steering_vectors_properties() -> None:
    geom = random_geometry(4)
    w = steering_vectors(geom, 30.0, 10.0, fs_hz=16000, n_fft=320)
    assert w.shape == (161, 4)
    assert w.dtype == np.complex64
    np.testing.assert_allclose(w[0], 1.0)
    np.testing.assert_allclose(np.abs(w), 1.0, atol=1e-6)
    # the phase at bin k is -2 pi f_k tau (unwrapped at the first bin)
    tau = far_field_delays_s(geom, 30.0, 10.0)
    np.testing.assert_allclose(np.angle(w[1]), -2 * np.pi * 50.0 * tau, atol=1e-6)


def test_rfft_freqs() -> None:
    np.testing.assert_allclose(rfft_freqs_hz(320, 16000), np.fft.rfftfreq(320, 1 / 16000))


def test_steering_into_rejects_bad_buffers() -> None:
    tau = np.zeros(4)
    freqs = rfft_freqs_hz(8, 16000)
    with pytest.raises(MicaError, match="dtype complex64"):
        steering_vectors_into(tau, freqs, np.empty((5, 4), np.complex128))
    with pytest.raises(MicaError, match="shape"):
        steering_vectors_into(tau, freqs, np.empty((4, 5), np.complex64))
    with pytest.raises(MicaError, match="C-contiguous"):
        steering_vectors_into(tau, freqs, np.empty((4, 5), np.complex64).T)
    with pytest.raises(MicaError, match="dtype float64"):
        steering_vectors_into(tau.astype(np.float32), freqs, np.empty((5, 4), np.complex64))
