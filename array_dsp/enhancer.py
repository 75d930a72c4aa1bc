"""The streaming enhancement chain: STFT -> delay-and-sum beamformer -> ISTFT.

One ``(n_ch, R)`` float32 block in, one ``(R,)`` float32 block out, no allocation per
block. Later stages (VAD/DOA, MVDR, denoiser, AGC) slot in between the STFT and the ISTFT.
"""

from __future__ import annotations

import numpy as np

from mica.array_dsp.das import das_kernel, das_reference
from mica.array_dsp.geometry import ArrayGeometry
from mica.array_dsp.steering import (
    SOUND_SPEED_M_S,
    direction_unit,
    far_field_delays_s,
    rfft_freqs_hz,
    steering_vectors_into,
    steering_vectors_reference,
)
from mica.array_dsp.stft import StreamingIstft, StreamingStft, istft_reference, stft_reference
from mica.array_dsp.validate import SignalShapeError, check_positive_int


class Enhancer:
    """Delay-and-sum speech enhancer for one microphone array, block by block.

    Args:
        geometry_m: ``(n_ch, 3)`` microphone positions in metres (or an
            :class:`ArrayGeometry`); raises :class:`GeometryError` if malformed.
        fs_hz: sample rate of the blocks (Hz).
        hop_samples: block length ``R``; the STFT frame is ``2 R`` (sqrt-Hann, WOLA).
        steer_azimuth_deg, steer_elevation_deg: initial look direction (see :meth:`steer`).
        sound_speed_m_s: speed of sound for the far-field delays (m/s).
        reference_channel: microphone the output is phase-aligned to (``None``: the array
            centroid). Default 0, so the output lines up with channel 0 of the input, the
            reference every metric here is computed against.

    Output sample ``n`` is the beamformed input sample ``n - latency_samples``: a plane
    wave from the look direction comes out exactly as it arrived at the reference
    microphone, delayed by ``latency_samples``. Not thread-safe: call :meth:`process`,
    :meth:`steer` and :meth:`reset` from one thread (the DSP thread).
    """

    def __init__(
        self,
        geometry_m: np.ndarray | ArrayGeometry,
        fs_hz: float = 16000,
        hop_samples: int = 160,
        steer_azimuth_deg: float = 0.0,
        steer_elevation_deg: float = 0.0,
        sound_speed_m_s: float = SOUND_SPEED_M_S,
        reference_channel: int | None = 0,
    ) -> None:
        self.geometry = (
            geometry_m
            if isinstance(geometry_m, ArrayGeometry)
            else ArrayGeometry(geometry_m, fs_hz=None, source="geometry_m")
        )
        if isinstance(fs_hz, bool) or not isinstance(fs_hz, (int, float)) or not fs_hz > 0:
            raise SignalShapeError(f"fs_hz must be a positive number, got {fs_hz!r}")
        if not (isinstance(sound_speed_m_s, (int, float)) and sound_speed_m_s > 0):
            raise SignalShapeError(f"sound_speed_m_s must be > 0, got {sound_speed_m_s!r}")
        self._fs_hz = fs_hz
        self._hop = check_positive_int(hop_samples, "hop_samples")
        self._sound_speed_m_s = float(sound_speed_m_s)
        self._reference_channel = reference_channel  # checked by steer() below
        self._stft = StreamingStft(self.geometry.n_channels, self._hop)
        self._istft = StreamingIstft(self._hop)
        self._freqs_hz = rfft_freqs_hz(self._stft.frame_samples, float(fs_hz))
        self._weights = np.empty((self._stft.n_bins, self.n_channels), np.complex64)
        self._beam = np.zeros(self._stft.n_bins, np.complex64)
        self._azimuth_deg = 0.0
        self._elevation_deg = 0.0
        self.steer(steer_azimuth_deg, steer_elevation_deg)

    @property
    def n_channels(self) -> int:
        """Channels per input block."""
        return self.geometry.n_channels

    @property
    def hop_samples(self) -> int:
        """Samples per block (input and output)."""
        return self._hop

    @property
    def fs_hz(self) -> float:
        """Sample rate (Hz)."""
        return self._fs_hz

    @property
    def reference_channel(self) -> int | None:
        """Microphone the output is phase-aligned to (``None``: the centroid)."""
        return self._reference_channel

    @property
    def latency_samples(self) -> int:
        """Algorithmic latency: output sample ``n`` is input sample ``n - latency_samples``.

        ``frame - hop = R`` (WOLA synthesis overlap). The wall-clock delay of a live stream
        adds one block of buffering on top.
        """
        return self._istft.latency_samples

    @property
    def latency_s(self) -> float:
        """:attr:`latency_samples` in seconds."""
        return self.latency_samples / float(self._fs_hz)

    @property
    def steer_azimuth_deg(self) -> float:
        """Current look azimuth (degrees, counter-clockwise from +x)."""
        return self._azimuth_deg

    @property
    def steer_elevation_deg(self) -> float:
        """Current look elevation (degrees up from the x-y plane)."""
        return self._elevation_deg

    def steer(self, azimuth_deg: float, elevation_deg: float = 0.0) -> None:
        """Point the beam at ``(azimuth_deg, elevation_deg)``; takes effect on the next block.

        Recomputes the ``(n_bins, n_ch)`` steering vectors in place (no allocation of the
        weights). Raises :class:`SignalShapeError` for a non-finite direction or an
        elevation outside [-90, 90].
        """
        direction_unit(azimuth_deg, elevation_deg)  # validates before anything changes
        tau_s = far_field_delays_s(
            self.geometry,
            azimuth_deg,
            elevation_deg,
            self._sound_speed_m_s,
            self._reference_channel,
        )
        steering_vectors_into(tau_s, self._freqs_hz, self._weights)
        self._azimuth_deg = float(azimuth_deg)
        self._elevation_deg = float(elevation_deg)

    def process(self, block: np.ndarray) -> np.ndarray:
        """Enhance one ``(n_ch, hop_samples)`` float32 block; return ``(hop_samples,)`` float32.

        The returned array is the enhancer's own buffer, overwritten by the next call: the
        caller must copy it to keep it. Raises :class:`SignalShapeError` (a
        :class:`MicaError` and ``ValueError``) for a wrong shape, dtype or type.
        """
        spec = self._stft.process(block)
        das_kernel(spec, self._weights, self._beam)
        return self._istft.process(self._beam)

    def reset(self) -> None:
        """Forget all past input (filter states back to silence); keeps the look direction."""
        self._stft.reset()
        self._istft.reset()

    def warmup(self) -> None:
        """Run every kernel once (compile or load from ``NUMBA_CACHE_DIR``), then reset."""
        self.steer(self._azimuth_deg, self._elevation_deg)
        self.process(np.zeros((self.n_channels, self._hop), np.float32))
        self.reset()


def enhance_reference(
    signal: np.ndarray,
    geometry_m: np.ndarray,
    fs_hz: float = 16000,
    hop_samples: int = 160,
    steer_azimuth_deg: float = 0.0,
    steer_elevation_deg: float = 0.0,
    sound_speed_m_s: float = SOUND_SPEED_M_S,
    reference_channel: int | None = 0,
) -> np.ndarray:
    """Whole-signal numpy reference of :class:`Enhancer`: ``(n_ch, n_blocks * R)`` float32
    in, ``(n_blocks * R,)`` float32 out (same latency, no kernels)."""
    tau_s = far_field_delays_s(
        geometry_m, steer_azimuth_deg, steer_elevation_deg, sound_speed_m_s, reference_channel
    )
    weights = steering_vectors_reference(tau_s, rfft_freqs_hz(2 * hop_samples, fs_hz))
    spectra = stft_reference(signal, hop_samples)
    beams = np.stack([das_reference(frame, weights) for frame in spectra])
    return istft_reference(beams, hop_samples)
