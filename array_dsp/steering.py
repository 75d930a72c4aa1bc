"""Far-field (plane-wave) directions, delays and steering vectors.

Frame: azimuth ``phi`` counter-clockwise from +x, elevation ``theta`` up from the x-y plane,
so the unit vector pointing from the array towards the source is
``u = [cos(theta) cos(phi), cos(theta) sin(phi), sin(theta)]``.

A plane wave from ``u`` reaches microphone ``m`` at ``p_m`` with delay
``tau_m = -(p_m - c) . u / v`` relative to the array centroid ``c`` (``v``: speed of sound):
microphones nearer the source hear it earlier (negative delay). In the rfft domain the
wave is ``X_m[k] = S[k] exp(-j 2 pi f_k tau_m)``, so the steering vector is
``w[k, m] = exp(-j 2 pi f_k tau_m)`` with ``f_k = k fs / n_fft`` (Van Trees 2002,
"Optimum Array Processing", ch. 2).
"""

from __future__ import annotations

import numpy as np

from mica.array_dsp.geometry import ArrayGeometry
from mica.array_dsp.jit import kernel
from mica.array_dsp.validate import (
    SignalShapeError,
    check_array,
    check_output,
    check_positive_int,
)

SOUND_SPEED_M_S = 343.0
"""Speed of sound in air at about 20 degC (m/s)."""


def direction_unit(azimuth_deg: float, elevation_deg: float = 0.0) -> np.ndarray:
    """``(3,)`` float64 unit vector towards ``(azimuth_deg, elevation_deg)``."""
    if not (np.isfinite(azimuth_deg) and np.isfinite(elevation_deg)):
        raise SignalShapeError(
            f"direction must be finite, got azimuth {azimuth_deg!r}, elevation {elevation_deg!r}"
        )
    if not -90.0 <= elevation_deg <= 90.0:
        raise SignalShapeError(f"elevation_deg must be in [-90, 90], got {elevation_deg!r}")
    az = np.deg2rad(azimuth_deg)
    el = np.deg2rad(elevation_deg)
    return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


def far_field_delays_s(
    geometry: ArrayGeometry | np.ndarray,
    azimuth_deg: float,
    elevation_deg: float = 0.0,
    sound_speed_m_s: float = SOUND_SPEED_M_S,
    reference_channel: int | None = None,
) -> np.ndarray:
    """``(n_ch,)`` float64 plane-wave arrival delays ``tau_m = -(p_m - c) . u / v`` (s).

    ``geometry``: an :class:`ArrayGeometry` or ``(n_ch, 3)`` positions in metres. With
    ``reference_channel=None`` delays are relative to the centroid ``c`` (they sum to
    zero); with channel ``r`` they are relative to microphone ``r`` (``c = p_r``,
    ``tau_r = 0``).
    """
    geom = geometry if isinstance(geometry, ArrayGeometry) else ArrayGeometry(geometry)
    if not sound_speed_m_s > 0:
        raise SignalShapeError(f"sound_speed_m_s must be > 0, got {sound_speed_m_s!r}")
    if reference_channel is None:
        origin_m = geom.centroid_m
    else:
        if not (
            isinstance(reference_channel, (int, np.integer))
            and not isinstance(reference_channel, bool)
            and 0 <= reference_channel < geom.n_channels
        ):
            raise SignalShapeError(
                f"reference_channel must be in [0, {geom.n_channels - 1}] or None, "
                f"got {reference_channel!r}"
            )
        origin_m = geom.positions_m[reference_channel]
    u = direction_unit(azimuth_deg, elevation_deg)
    return -((geom.positions_m - origin_m) @ u) / sound_speed_m_s


def rfft_freqs_hz(n_fft: int, fs_hz: float) -> np.ndarray:
    """``(n_fft // 2 + 1,)`` float64 bin centre frequencies ``f_k = k fs / n_fft`` (Hz)."""
    n_fft = check_positive_int(n_fft, "n_fft")
    if not fs_hz > 0:
        raise SignalShapeError(f"fs_hz must be > 0, got {fs_hz!r}")
    return np.arange(n_fft // 2 + 1) * (float(fs_hz) / n_fft)


@kernel
def steering_kernel(tau_s: np.ndarray, freqs_hz: np.ndarray, out: np.ndarray) -> None:
    """``out[k, m] = exp(-j 2 pi freqs_hz[k] tau_s[m])``; out ``(n_bins, n_ch)`` complex64."""
    two_pi = 2.0 * np.pi
    for k in range(freqs_hz.shape[0]):
        for m in range(tau_s.shape[0]):
            phase = -two_pi * freqs_hz[k] * tau_s[m]
            out[k, m] = np.complex64(complex(np.cos(phase), np.sin(phase)))


def steering_vectors_reference(tau_s: np.ndarray, freqs_hz: np.ndarray) -> np.ndarray:
    """Numpy reference of :func:`steering_kernel`: ``(n_bins, n_ch)`` complex64."""
    return np.exp(-2j * np.pi * np.outer(freqs_hz, tau_s)).astype(np.complex64)


def steering_vectors_into(tau_s: np.ndarray, freqs_hz: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write ``w[k, m] = exp(-j 2 pi f_k tau_m)`` into ``out`` and return it.

    ``tau_s``: ``(n_ch,)`` float64 delays (s); ``freqs_hz``: ``(n_bins,)`` float64;
    ``out``: preallocated ``(n_bins, n_ch)`` complex64 (so re-steering allocates nothing).
    """
    tau_s = check_array(tau_s, "tau_s", (None,), np.float64)
    freqs_hz = check_array(freqs_hz, "freqs_hz", (None,), np.float64)
    check_output(out, "out", (freqs_hz.shape[0], tau_s.shape[0]), np.complex64)
    steering_kernel(tau_s, freqs_hz, out)
    return out


def steering_vectors(
    geometry: ArrayGeometry | np.ndarray,
    azimuth_deg: float,
    elevation_deg: float,
    fs_hz: float,
    n_fft: int,
    sound_speed_m_s: float = SOUND_SPEED_M_S,
    reference_channel: int | None = None,
) -> np.ndarray:
    """``(n_fft // 2 + 1, n_ch)`` complex64 far-field steering vectors for an rfft grid.

    Phase reference: the centroid, or microphone ``reference_channel`` (see
    :func:`far_field_delays_s`).
    """
    tau = far_field_delays_s(
        geometry, azimuth_deg, elevation_deg, sound_speed_m_s, reference_channel
    )
    freqs = rfft_freqs_hz(n_fft, fs_hz)
    out = np.empty((freqs.shape[0], tau.shape[0]), dtype=np.complex64)
    return steering_vectors_into(tau, freqs, out)
