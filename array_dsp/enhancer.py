"""The streaming enhancement chain: STFT -> SPP / DOA -> beamformer -> ISTFT.

One ``(n_ch, R)`` float32 block in, one ``(R,)`` float32 block out, no array allocation per
block. Per block, in order: dead-channel check (:mod:`channels`), STFT, speech-presence
probability (:mod:`spp`, or a caller's mask), SPP-weighted spatial covariances
(:mod:`covariance`, when MVDR or DOA needs them), SRP-PHAT DOA and tracker (:mod:`doa`,
every few frames; it can steer the beam), the beamformer (:data:`BEAMFORMERS`), ISTFT.
Later stages (denoiser, AGC) slot in between the beamformer and the ISTFT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from mica.array_dsp.channels import ChannelMonitor, ChannelParams
from mica.array_dsp.covariance import (
    covariance_update_kernel,
    residual_covariance_kernel,
    speech_loaded_kernel,
)
from mica.array_dsp.das import das_kernel, das_reference
from mica.array_dsp.doa import (
    DoaParams,
    DoaTracker,
    peak_azimuth_deg,
    srp_phat_gev_kernel,
    srp_phat_kernel,
)
from mica.array_dsp.echo import EchoControl
from mica.array_dsp.geometry import ArrayGeometry
from mica.array_dsp.mvdr import (
    beamform_kernel,
    diffuse_coherence_kernel,
    mvdr_weights_kernel,
    rtf_kernel,
)
from mica.array_dsp.spp import SpeechPresence, SppParams, VadParams, VoiceActivity
from mica.array_dsp.steering import (
    SOUND_SPEED_M_S,
    direction_unit,
    far_field_delays_s,
    rfft_freqs_hz,
    steering_vectors_into,
    steering_vectors_reference,
)
from mica.array_dsp.stft import StreamingIstft, StreamingStft, istft_reference, stft_reference
from mica.array_dsp.validate import SignalShapeError, check_array, check_positive_int

BEAMFORMERS: tuple[str, ...] = ("das", "superdirective", "mvdr")
"""Beamformer names :class:`Enhancer` accepts (``beamformer=``), fixed first."""


@dataclass(frozen=True)
class BeamformerParams:
    """Tuning of the adaptive parts of :class:`Enhancer` (defaults measured on the corpus).

    Attributes:
        noise_alpha: noise covariance forgetting factor per frame (memory ``1/(1-a)`` frames).
        speech_alpha: noisy-speech covariance forgetting factor per frame.
        loading: MVDR diagonal loading relative to ``tr(Phi_n) / M``.
        superdirective_loading: loading of the diffuse coherence matrix.
        wng_floor_db: white-noise-gain floor (dB); loading grows tenfold until it holds.
            -10 dB cost 1.9 dB of the 4-mic rooms' mean gain (the residual covariance
            already keeps the beam from amplifying what it does not model); -30 dB only
            guards against a blow-up.
        max_loading_steps: at most this many tenfold loading increases.
        rtf: estimate the target RTF from the covariances (else geometry only).
        rtf_iterations: power iterations per frame (warm-started).
        rtf_min_speech_frames: speech frames (sum of SPP) a bin needs before its RTF is used.
        rtf_min_match: least normalised match ``|g^H h|^2 / (|g|^2 |h|^2)`` of the RTF with
            the geometric look direction; below it the geometric vector is used.
        rtf_min_snr_db: least whitened speech-to-noise ratio of a bin for its RTF (dB).
        speech_loading: MVDR solves against ``Phi_n + speech_loading * (tr(Phi_x) - (1 + m)
            tr(Phi_n))_+ /
            M * I``: white loading in proportion to the speech power, standing in for the
            part of a reverberant target its rank-1 RTF does not model (measured on the
            simulated rooms: mean SI-SDR gain 0.6 -> 1.4 dB (4-mic), 0.1 -> 1.1 dB (6-mic),
            never more than 0.03 dB under delay-and-sum;
            noise-only scenes keep their nulls). 0 turns it off.
        speech_loading_margin: only the speech power above ``(1 + margin) tr(Phi_n)``
            counts (SPP-selected noise frames alone exceed ``Phi_n``).
        residual_beta: MVDR solves against ``Phi_n + beta`` (speech covariance the RTF does
            not explain), :func:`~mica.array_dsp.covariance.residual_covariance_kernel`
            (measured on the 16 simulated 4-mic rooms, with ``beam_spp``: 2.3 -> 3.7 dB
            mean SI-SDR gain; then 3.0 -> 4.1 dB with RTFs from 5 speech frames
            (was 20) and a 10 dB (was 0) whitened-SNR threshold); 0 turns it off.
        beam_spp: with MVDR, the covariances learn from the SPP of a beam (MVDR against
            ``Phi_n``, steered by geometry, previous frame) instead of the channels' mean
            periodogram: a point interferer is nulled before speech presence is judged
            (Souden, Benesty & Affes 2010, "Gaussian model-based multichannel speech
            presence probability": the a-posteriori SNR at the MVDR output).
            Measured: 1.8 -> 2.3 dB on the same rooms.
        beam_spp_xi_h1_db: the beam SPP's a-priori SNR under speech (dB; the channels'
            SPP keeps ``spp.xi_h1_db``): the beam has less noise left, so weaker speech
            bins count as speech (15 -> 7.5 dB: 4.14 -> 4.59 dB on the 4-mic rooms).
        spp, vad, doa, channels: the stages' own parameters.
    """

    noise_alpha: float = 0.99
    speech_alpha: float = 0.98
    loading: float = 1e-3
    superdirective_loading: float = 1e-2
    wng_floor_db: float = -30.0
    max_loading_steps: int = 6
    rtf: bool = True
    rtf_iterations: int = 1
    rtf_min_speech_frames: float = 5.0
    rtf_min_match: float = 0.5
    rtf_min_snr_db: float = 10.0
    speech_loading: float = 0.0
    speech_loading_margin: float = 3.0
    residual_beta: float = 1.0
    beam_spp: bool = True
    beam_spp_xi_h1_db: float = 7.5
    spp: SppParams = field(default_factory=SppParams)
    vad: VadParams = field(default_factory=VadParams)
    doa: DoaParams = field(default_factory=DoaParams)
    channels: ChannelParams = field(default_factory=ChannelParams)


class Postfilter(Protocol):
    """A per-frame spectral stage after the beamformer (the denoiser, in ``mica.models``):
    ``process(spec)`` takes the ``(n_bins,)`` complex64 beam spectrum and returns the one to
    synthesize; after it, ``speech_mask`` is its ``(n_bins,)`` speech probability (pass it
    as ``speech_mask=`` to the next :meth:`Enhancer.process` for mask-based beamforming)."""

    speech_mask: np.ndarray

    def process(self, spec: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


class Enhancer:
    """Beamforming speech enhancer for one microphone array, block by block.

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
        postfilter: optional :class:`Postfilter` (denoiser) applied to the beam spectrum
            before the ISTFT; it must add no latency.
        beamformer: one of :data:`BEAMFORMERS` (default ``"das"``, delay-and-sum).
        auto_steer: follow the tracked DOA of the talker (implies ``track_doa``).
        track_doa: run SRP-PHAT and the tracker (:attr:`doa_azimuth_deg`).
        exclude_dead_channels: leave dead/stuck microphones out of every stage.
        params: :class:`BeamformerParams`.
        echo: optional :class:`~mica.array_dsp.echo.EchoControl` (acoustic echo
            cancellation per microphone before the STFT, fed by ``reference=`` of
            :meth:`process`; with its residual-echo suppressor, the output spectrum is
            ``g_res * denoiser(beam)``: the two gain stages multiply, each with its own floor).

    Output sample ``n`` is the beamformed input sample ``n - latency_samples``: a plane
    wave from the look direction comes out exactly as it arrived at the reference
    microphone, delayed by ``latency_samples``. After each :meth:`process`:
    :attr:`speech_presence` (``(n_bins,)`` SPP), :attr:`speech_probability`,
    :attr:`speech_active`, :attr:`doa_azimuth_deg`, :attr:`active_channels`. Not
    thread-safe: call :meth:`process`, :meth:`steer` and :meth:`reset` from one thread.
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
        beamformer: str = "das",
        auto_steer: bool = False,
        track_doa: bool = False,
        exclude_dead_channels: bool = True,
        params: BeamformerParams | None = None,
        postfilter: Postfilter | None = None,
        echo: EchoControl | None = None,
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
        if beamformer not in BEAMFORMERS:
            raise SignalShapeError(f"beamformer must be one of {list(BEAMFORMERS)}, "
                                   f"got {beamformer!r}")
        self.params = params or BeamformerParams()
        self._beamformer = beamformer
        self._auto_steer = bool(auto_steer)
        self._track_doa = bool(track_doa or auto_steer)
        self._exclude_dead = bool(exclude_dead_channels)
        self._fs_hz = fs_hz
        self._hop = check_positive_int(hop_samples, "hop_samples")
        self._sound_speed_m_s = float(sound_speed_m_s)
        self._reference_channel = reference_channel  # checked by steer() below
        self.postfilter = postfilter
        self.echo = echo
        n_ch = self.geometry.n_channels
        self._stft = StreamingStft(n_ch, self._hop)
        self._istft = StreamingIstft(self._hop)
        n_bins = self._stft.n_bins
        self._freqs_hz = rfft_freqs_hz(self._stft.frame_samples, float(fs_hz))
        self._weights = np.empty((n_bins, n_ch), np.complex64)  # geometric look vector d
        self._das_masked = np.zeros((n_bins, n_ch), np.complex64)  # d / M on live channels
        self._bf_weights = np.zeros((n_bins, n_ch), np.complex64)  # superdirective / MVDR
        self._beam = np.zeros(n_bins, np.complex64)
        if echo is not None and (echo.n_mics != n_ch or echo.block_samples != self._hop):
            raise SignalShapeError(f"echo: built for {echo.n_mics} mics and blocks of "
                                   f"{echo.block_samples}, the enhancer has {n_ch} and "
                                   f"{self._hop}")
        # residual-echo suppression: the echo estimate through the same STFT and beam
        self._echo_stft = StreamingStft(n_ch, self._hop) if echo is not None else None
        self._echo_beam = np.zeros(n_bins, np.complex64)
        self._res_out = np.zeros(n_bins, np.complex64)
        self._channels = ChannelMonitor(n_ch, self.params.channels)
        self._spp = SpeechPresence(n_ch, n_bins, self.params.spp)
        self._spp_out = self._spp.out
        self._spp_beam = SpeechPresence(  # SPP of the beam in _beam_spp
            1, n_bins, replace(self.params.spp, xi_h1_db=self.params.beam_spp_xi_h1_db))
        self._spp_beam_spec = np.zeros((1, n_bins), np.complex64)
        self._spp_beam_w = np.zeros((n_bins, n_ch), np.complex64)
        self._one_idx = np.zeros(1, np.int64)
        self._work_v = np.zeros((n_ch, n_ch), np.complex128)
        self._work_d = np.zeros(n_ch, np.float64)
        self._vad = VoiceActivity(self._freqs_hz, self.params.vad)
        self._work_a = np.zeros((n_ch, n_ch), np.complex128)
        self._work_l = np.zeros((n_ch, n_ch), np.complex128)
        self._work_b = np.zeros(n_ch, np.complex128)
        self._work_x = np.zeros(n_ch, np.complex128)
        # every chain's state is allocated here, so set_beamformer() allocates nothing
        self._phi_n = np.zeros((n_bins, n_ch, n_ch), np.complex64)
        self._phi_x = np.zeros((n_bins, n_ch, n_ch), np.complex64)
        self._phi_r = np.zeros((n_bins, n_ch, n_ch), np.complex64)  # what MVDR minimises
        self._mass_n = np.zeros(n_bins, np.float64)
        self._mass_x = np.zeros(n_bins, np.float64)
        self._rtf = np.zeros((n_bins, n_ch), np.complex64)
        self._rtf_state = np.zeros((n_bins, n_ch), np.complex64)
        self._rtf_used = np.zeros(n_bins, np.uint8)
        self._gamma = np.zeros((n_bins, n_ch, n_ch), np.complex64)
        diffuse_coherence_kernel(self.geometry.positions_m, self._freqs_hz,
                                 self._sound_speed_m_s, self._gamma)
        self._wng_floor = 10.0 ** (self.params.wng_floor_db / 10.0)
        self._rtf_min_snr = 10.0 ** (self.params.rtf_min_snr_db / 10.0)
        dp = self.params.doa
        n_grid = int(round(360.0 / dp.grid_step_deg))
        self._grid_deg = np.arange(n_grid) * (360.0 / n_grid)
        band = np.nonzero((self._freqs_hz >= dp.band_hz[0]) & (self._freqs_hz <= dp.band_hz[1]))[0]
        self._k_lo = int(band[0]) if band.size else 0
        self._k_hi = int(band[-1]) + 1 if band.size else n_bins
        self._doa_table = np.zeros((n_bins, n_ch, n_grid) if self._track_doa
                                   else (0, n_ch, n_grid), np.complex64)
        self._srp = np.zeros(n_grid, np.float64)
        self._doa_v = np.zeros((n_bins, n_ch), np.complex64)  # warm start of the DOA GEV
        self._tracker = DoaTracker(dp)
        self._table_elevation_deg = math.nan
        self._frame = 0
        self.doa_raw_azimuth_deg = math.nan
        self.doa_changed = False
        self._azimuth_deg = 0.0
        self._elevation_deg = 0.0
        self.steer(steer_azimuth_deg, steer_elevation_deg)

    # ------------------------------------------------------------------ properties

    @property
    def n_channels(self) -> int:
        """Channels per input block."""
        return self.geometry.n_channels

    @property
    def hop_samples(self) -> int:
        """Samples per block (input and output)."""
        return self._hop

    @property
    def n_bins(self) -> int:
        """Frequency bins per frame (``R + 1``)."""
        return self._stft.n_bins

    @property
    def fs_hz(self) -> float:
        """Sample rate (Hz)."""
        return self._fs_hz

    @property
    def beamformer(self) -> str:
        """The beamformer in use (one of :data:`BEAMFORMERS`)."""
        return self._beamformer

    def set_beamformer(self, name: str) -> None:
        """Switch the chain between blocks (e.g. the quality governor under load).

        MVDR resumes from the covariances it last saw (they are tracked whenever DOA is on).
        Raises :class:`SignalShapeError` for a name not in :data:`BEAMFORMERS`.
        """
        if name not in BEAMFORMERS:
            raise SignalShapeError(f"beamformer must be one of {list(BEAMFORMERS)}, "
                                   f"got {name!r}")
        self._beamformer = name
        self._refresh_fixed_weights()

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

    @property
    def auto_steer(self) -> bool:
        """Whether the beam follows the tracked talker (settable; needs ``track_doa``)."""
        return self._auto_steer

    @auto_steer.setter
    def auto_steer(self, value: bool) -> None:
        if value and not self._track_doa:
            raise SignalShapeError("auto_steer needs an Enhancer built with track_doa=True")
        self._auto_steer = bool(value)

    @property
    def tracks_doa(self) -> bool:
        """Whether DOA is estimated."""
        return self._track_doa

    @property
    def speech_presence(self) -> np.ndarray:
        """``(n_bins,)`` float32 speech-presence probability of the last frame (a view)."""
        return self._spp_out

    @property
    def speech_probability(self) -> float:
        """Smoothed frame-level speech probability (300-4000 Hz mean of the SPP)."""
        return self._vad.probability

    @property
    def speech_active(self) -> bool:
        """Voice activity with hysteresis and hangover."""
        return self._vad.active

    @property
    def doa_azimuth_deg(self) -> float:
        """Tracked talker azimuth in [0, 360) degrees (``nan`` before any speech or when
        DOA is off)."""
        return self._tracker.azimuth_deg

    @property
    def active_channels(self) -> tuple[int, ...]:
        """Microphones in use, ascending."""
        return tuple(sorted(int(i) for i in self._channels.active_idx[:self._channels.n_active]))

    @property
    def dead_channels(self) -> tuple[int, ...]:
        """Microphones left out (dead, stuck or far below the others), ascending."""
        return tuple(int(i) for i in np.nonzero(self._channels.dead)[0])

    @property
    def weights(self) -> np.ndarray:
        """``(n_bins, n_ch)`` complex64 weights of the last frame, ``y = w^H x`` (a view;
        delay-and-sum: ``d / M`` on the channels in use)."""
        return self._das_masked if self._beamformer == "das" else self._bf_weights

    @property
    def rtf_share(self) -> float:
        """Fraction of bins whose MVDR steering came from the RTF estimate (last frame)."""
        return float(self._rtf_used.mean()) if self._beamformer == "mvdr" else 0.0

    # ------------------------------------------------------------------ control

    def steer(self, azimuth_deg: float, elevation_deg: float = 0.0) -> None:
        """Point the beam at ``(azimuth_deg, elevation_deg)``; takes effect on the next block.

        Recomputes the ``(n_bins, n_ch)`` steering vectors in place (no allocation of the
        weights). Raises :class:`SignalShapeError` for a non-finite direction or an
        elevation outside [-90, 90]. With :attr:`auto_steer` on, the tracker may move the
        beam again at its next update.
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
        if self._track_doa and self._table_elevation_deg != self._elevation_deg:
            self._build_doa_table()
        self._refresh_fixed_weights()

    def _build_doa_table(self) -> None:
        """``table[k, m, g] = d_m(theta_g, f_k)`` at the look elevation (centroid phase)."""
        one = np.empty((self.n_bins, self.n_channels), np.complex64)
        for g, az in enumerate(self._grid_deg):
            tau = far_field_delays_s(self.geometry, float(az), self._elevation_deg,
                                     self._sound_speed_m_s, None)
            self._doa_table[:, :, g] = steering_vectors_into(tau, self._freqs_hz, one)
        self._table_elevation_deg = self._elevation_deg

    def _refresh_fixed_weights(self) -> None:
        """Weights that change only with the look direction or the set of channels."""
        idx, n = self._channels.active_idx, self._channels.n_active
        self._das_masked.fill(0)
        if n:
            live = idx[:n]
            self._das_masked[:, live] = self._weights[:, live] / np.float32(n)
        if self._beamformer == "superdirective":
            p = self.params
            mvdr_weights_kernel(self._gamma, self._weights, idx, n, p.superdirective_loading,
                                self._wng_floor, p.max_loading_steps, self._work_a,
                                self._work_l, self._work_b, self._work_x, self._bf_weights)

    def _ref_pos(self) -> int:
        """Position in the active list of the microphone the RTF is normalised to."""
        idx, n = self._channels.active_idx, self._channels.n_active
        ref = 0 if self._reference_channel is None else self._reference_channel
        for pos in range(n):
            if idx[pos] == ref:
                return pos
        return 0

    # ------------------------------------------------------------------ processing

    def process(self, block: np.ndarray, speech_mask: np.ndarray | None = None,
                reference: np.ndarray | None = None) -> np.ndarray:
        """Enhance one ``(n_ch, hop_samples)`` float32 block; return ``(hop_samples,)`` float32.

        ``speech_mask``: optional ``(n_bins,)`` float32 speech probability in [0, 1] (e.g.
        a learned mask) used instead of the built-in SPP for this frame.
        ``reference``: ``(n_ref, hop_samples)`` float32 playback reference for the ``echo``
        stage (ignored without one; ``None``: no echo cancellation in this block).

        The returned array is the enhancer's own buffer, overwritten by the next call: the
        caller must copy it to keep it. Raises :class:`SignalShapeError` (a
        :class:`MicaError` and ``ValueError``) for a wrong shape, dtype or type.
        """
        block = check_array(block, "block", (self.n_channels, self._hop), np.float32)
        if speech_mask is not None:
            speech_mask = check_array(speech_mask, "speech_mask", (self.n_bins,), np.float32)
        if self.echo is not None and reference is not None:
            block = self.echo.process(block, reference)  # per mic, before the beamformer
        spec = self._stft.process(block)
        if self._exclude_dead and self._channels.update(block):
            self._refresh_fixed_weights()
        idx, n_active = self._channels.active_idx, self._channels.n_active
        if speech_mask is None:
            spp = self._spp.process(spec, idx, n_active)
        else:
            np.clip(speech_mask, 0.0, 1.0, out=self._spp_out)
            spp = self._spp_out
        self._vad.update(spp)
        p = self.params
        if speech_mask is None and p.beam_spp and self._beamformer == "mvdr":
            spp = self._beam_spp(spec, idx, n_active)
        if self._beamformer == "mvdr" or self._track_doa:
            covariance_update_kernel(spec, spp, p.noise_alpha, p.speech_alpha, self._phi_n,
                                     self._phi_x, self._mass_n, self._mass_x)
        self.doa_changed = False
        if self._track_doa and self._frame % p.doa.update_frames == 0:
            self._update_doa(idx, n_active)
        self._frame += 1
        if self._beamformer == "das":
            if n_active == self.n_channels:
                das_kernel(spec, self._weights, self._beam)
            else:
                beamform_kernel(spec, self._das_masked, self._beam)
        else:
            if self._beamformer == "mvdr":
                steer = self._weights
                if p.rtf:
                    rtf_kernel(self._phi_x, self._phi_n, self._weights, self._mass_x, idx,
                               n_active, self._ref_pos(), p.loading,
                               p.rtf_min_speech_frames, p.rtf_min_match, self._rtf_min_snr,
                               p.rtf_iterations,
                               self._rtf_state, self._work_a, self._work_l, self._work_b,
                               self._work_x, self._rtf, self._rtf_used)
                    steer = self._rtf
                phi_r = self._phi_n
                if p.residual_beta > 0.0:
                    residual_covariance_kernel(self._phi_n, self._phi_x, self._mass_x, idx,
                                               n_active, self._ref_pos(), p.residual_beta,
                                               p.rtf_min_speech_frames, self._work_a,
                                               self._work_v, self._work_d, self._phi_r)
                    phi_r = self._phi_r
                elif p.speech_loading > 0.0:
                    speech_loaded_kernel(self._phi_n, self._phi_x, p.speech_loading,
                                         p.speech_loading_margin, self._phi_r)
                    phi_r = self._phi_r
                mvdr_weights_kernel(phi_r, steer, idx, n_active, p.loading,
                                    self._wng_floor, p.max_loading_steps, self._work_a,
                                    self._work_l, self._work_b, self._work_x, self._bf_weights)
            beamform_kernel(spec, self._bf_weights, self._beam)
        out = self._beam if self.postfilter is None else self.postfilter.process(self._beam)
        if self.echo is not None and self.echo.res is not None and reference is not None:
            # residual echo: gains from the beamformed echo estimate, times the denoiser's
            echo_spec = self._echo_stft.process(self.echo.echo)
            beamform_kernel(echo_spec, self.weights, self._echo_beam)
            gains = self.echo.res_gains(self._beam, self._echo_beam)
            np.multiply(out, gains, out=self._res_out)
            out = self._res_out
        return self._istft.process(out)

    def _beam_spp(self, spec: np.ndarray, idx: np.ndarray, n_active: int) -> np.ndarray:
        """SPP of this frame at the output of an MVDR against the noise covariance so far,
        steered by geometry (delay-and-sum until noise is seen); ``(n_bins,)`` float32."""
        p = self.params
        mvdr_weights_kernel(self._phi_n, self._weights, idx, n_active, p.loading, 0.0, 0,
                            self._work_a, self._work_l, self._work_b, self._work_x,
                            self._spp_beam_w)
        beamform_kernel(spec, self._spp_beam_w, self._spp_beam_spec[0])
        return self._spp_beam.process(self._spp_beam_spec, self._one_idx, 1 if n_active else 0)

    def _update_doa(self, idx: np.ndarray, n_active: int) -> None:
        if n_active < 2 or not self._vad.active:
            return
        dp = self.params.doa
        if dp.whiten:
            srp_phat_gev_kernel(self._phi_x, self._phi_n, self._doa_table, self._k_lo,
                                self._k_hi, idx, n_active, self.params.loading,
                                dp.gev_iterations, dp.gev_weight_power, self._doa_v,
                                self._work_a, self._work_l, self._work_b, self._work_x,
                                self._srp)
        else:
            srp_phat_kernel(self._phi_x, self._phi_n, self._doa_table, self._k_lo,
                            self._k_hi, idx, n_active, self._srp)
        if not self._srp.max() > 0.0:
            return
        self.doa_raw_azimuth_deg = peak_azimuth_deg(self._srp, self._grid_deg)
        moved = self._tracker.update(self.doa_raw_azimuth_deg, True)
        if moved:
            self.doa_changed = True
            if self._auto_steer:
                self.steer(self._tracker.steer_azimuth_deg, self._elevation_deg)

    def reset(self) -> None:
        """Forget all past input (filter, noise, covariance and tracker states back to
        silence, every channel in use again); keeps the look direction."""
        self._stft.reset()
        if self.echo is not None:
            self.echo.reset()
            self._echo_stft.reset()
        self._istft.reset()
        if self.postfilter is not None:
            self.postfilter.reset()
        self._channels.reset()
        self.reset_spatial()
        self._refresh_fixed_weights()

    def reset_spatial(self) -> None:
        """Forget the adaptive spatial statistics (noise/speech covariances, RTF, SPP and
        noise trackers, VAD, DOA tracker) but keep the STFT/ISTFT overlap, postfilter,
        echo and channel states, so the output stays continuous. For when the array's
        geometry changed under the beamformer (e.g. a device's offset was re-acquired)."""
        self._spp.reset()
        self._spp_beam.reset()
        self._vad.reset()
        self._tracker.reset()
        for buf in (self._phi_n, self._phi_x, self._mass_n, self._mass_x, self._rtf_state,
                    self._rtf_used, self._srp, self._doa_v):
            buf.fill(0)
        self._frame = 0
        self.doa_raw_azimuth_deg = math.nan
        self.doa_changed = False

    def warmup(self) -> None:
        """Run every kernel once (compile or load from ``NUMBA_CACHE_DIR``), then reset."""
        self.steer(self._azimuth_deg, self._elevation_deg)
        self.process(np.zeros((self.n_channels, self._hop), np.float32))
        compile_kernels(self.n_channels)
        if self.echo is not None:
            self.echo.warmup()
        self.reset()


def compile_kernels(n_channels: int) -> None:
    """Call every kernel of the chain once on zeros, so none compiles in the hot path."""
    n_bins, n_grid, m = 3, 4, n_channels
    spec = np.zeros((m, n_bins), np.complex64)
    vec = np.zeros((n_bins, m), np.complex64)
    cov = np.zeros((n_bins, m, m), np.complex64)
    idx = np.arange(m, dtype=np.int64)
    mass = np.zeros(n_bins)
    work = (np.zeros((m, m), np.complex128), np.zeros((m, m), np.complex128),
            np.zeros(m, np.complex128), np.zeros(m, np.complex128))
    beamform_kernel(spec, vec, np.zeros(n_bins, np.complex64))
    das_kernel(spec, vec, np.zeros(n_bins, np.complex64))
    covariance_update_kernel(spec, np.zeros(n_bins, np.float32), 0.9, 0.9, cov, cov.copy(),
                             mass, mass.copy())
    speech_loaded_kernel(cov, cov, 0.1, 1.0, cov.copy())
    residual_covariance_kernel(cov, cov, mass, idx, m, 0, 1.0, 1.0, work[0], work[1],
                               np.zeros(m), cov.copy())
    mvdr_weights_kernel(cov, vec, idx, m, 1e-3, 0.1, 2, *work, vec.copy())
    rtf_kernel(cov, cov, vec, mass, idx, m, 0, 1e-3, 1.0, 0.5, 1.0, 1, vec.copy(), *work,
               vec.copy(), np.zeros(n_bins, np.uint8))
    srp_phat_kernel(cov, cov, np.zeros((n_bins, m, n_grid), np.complex64), 0, n_bins, idx, m,
                    np.zeros(n_grid))
    srp_phat_gev_kernel(cov, cov, np.zeros((n_bins, m, n_grid), np.complex64), 0, n_bins, idx,
                        m, 1e-3, 1, 4.0, vec.copy(), *work, np.zeros(n_grid))
    diffuse_coherence_kernel(np.zeros((m, 3)), np.zeros(n_bins), 343.0, cov)


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
