"""Acoustic echo cancellation: a partitioned-block frequency-domain Kalman filter per mic.

Model (Enzner & Vary 2006, "Frequency-domain adaptive Kalman filter for acoustic echo
control in hands-free telephones"; partitioned form: Kuech, Mabande & Enzner 2014,
"State-space architecture of the partitioned-block-based acoustic echo controller").
Block length ``N`` (= the DSP hop), FFT ``M = 2 N``, overlap-save, ``P = ceil(tail / N)``
partitions per reference channel. Per block ``l``, microphone ``m`` and bin ``k``:

* ``X_{r,p}`` = rfft of the last ``2 N`` reference samples of channel ``r``, ``p`` blocks ago;
* echo estimate ``Y^ = sum_{r,p} W_{m,r,p} X_{r,p}``; ``y^`` = last ``N`` samples of its irfft;
* a-priori error ``e = y - y^`` (the output), ``E = rfft([0_N, e])``;
* error PSD ``Psi = beta Psi + (1 - beta) |E|^2`` (near end + noise + misalignment: in
  double talk it grows and the gain shrinks, which is the Kalman filter's double-talk
  robustness, no detector needed);
* near-end PSD ``Psi_s = max(Psi - c sum P |X|^2, f Psi, g mean_k Psi)`` (the error less
  the predicted misalignment echo, ``c = 0`` by default; at least a flat floor against the
  error's leakage into weakly excited bins), ``D = sum_{r,p} P_{m,r,p} |X_{r,p}|^2 +
  s Psi_s`` (``s`` = :attr:`AecParams.noise_scale`), Kalman gain ``K = P X^* / D``;
* ``W += G(K E)`` with ``G`` the gradient constraint (irfft, zero the last ``N`` taps, rfft:
  a linear, not circular, convolution);
* ``P <- A^2 (1 - (N / M) K X) P + (1 - A^2) |W|^2`` (random-walk echo path, ``A`` from
  :attr:`AecParams.path_forget`; while the previous block was double talk, ``A`` is
  :attr:`AecParams.double_talk_path_forget`, by default 1: the path uncertainty ``P``
  does not grow while the near end talks, so the gain stays as small as the converged
  filter's, instead of growing with ``(1 - A^2) |W|^2`` per block until the near-end
  speech drives the filter away).

Full covariance (default while ``n_ref P <= full_covariance_max_states``): per bin ``k``
the regressors ``x = [X_{r,p}]`` (``Q = n_ref P`` of them) and a ``Q x Q`` Hermitian
``C`` replace the diagonal ``P``: ``D = x^T C x^* + s Psi_s``, ``K = C x^* / D``,
``C <- C - (N / M) K (C x^*)^H``, then ``C <- A^2 C`` with the cross terms also times
``rho`` (:attr:`AecParams.cross_covariance_keep`) and ``C_qq += (1 - A^2) |W_q|^2``.
The partitions of a bin see overlapping frames of one signal (and, for sustained tones,
nearly the same phasor), so their regressors are strongly correlated; the diagonal ``P``
ignores that and converges slowly along the weak directions (the per-bin analogue of
NLMS against RLS). Measured on the echo benchmark (12 s, mic 0): jazz 24.9 -> 29.6 dB,
speech 32.8 -> 33.5 dB; on 12 held-out scenes (three other far ends, four other measured
rooms) mean steady ERLE 27.3 -> 28.1 dB and the 1 s mean ERLE reaches 20 dB after 2.7
instead of 3.3 s.

Monitors (two kernels): smoothed powers of mic ``y``, error ``e``, echo estimate ``y^``
and reference ``x``; far end active when the reference is above ``far_threshold_db``; the
coherence of the error with the reference (:func:`coherence_kernel`) tells what a large
error is: near-end speech (incoherent: double talk, when ``e`` is more than
``double_talk_db`` of ``y^``) or echo the filter no longer models (coherent: an echo-path
change, when a converged filter's ``e`` rises above ``path_change_db`` of ``y`` for
``path_change_blocks`` blocks, e.g. the device moved), which restarts the filter (fastest
re-convergence), unless a shift of the recent echo estimate explains the mics
(:mod:`mica.array_dsp.aec_realign`: the reference slid, the filter is still right), which
moves the bulk delay instead; a run of large errors the detector takes for double talk is
tested for such a slide too. ERLE = ``10 log10(P_y / P_e)`` averaged over far-end-only blocks.

Least-squares bootstrap (:mod:`mica.array_dsp.aec_bootstrap`): the per-bin model above
lets each bin's error carry the other bins' misadjustment (the error block is a
rectangular half frame), so after the far end starts the Kalman filter converges slower
than the data allow (benchmark speech: 14 dB ERLE in the first second, where the exact
least-squares fit of all samples so far reaches 22-28 dB). For the first
:attr:`AecParams.bootstrap_s` of far-end blocks (again after an echo-path change or a new
bulk delay) the canceller also accumulates the time-domain normal equations and solves
them every few blocks (preconditioned conjugate gradients on FFT matvecs); a mic takes the
LS filter when it fits the segment better than its Kalman filter and well enough to
contain no near-end speech, and the Kalman filter goes on from it. Costs only during the
bootstrap.

Latency: the filter works on the DSP hop itself (``N = hop``), so the error block of input
block ``l`` is ready when block ``l`` is: the AEC adds **0** samples of algorithmic latency.
The reference may be delayed by a bulk delay (:mod:`mica.array_dsp.echo_delay`) so the
tail covers the echo path, not the playback buffering.

Shapes: mic block ``(n_mic, N)`` float32, reference block ``(n_ref, N)`` float32; state
``W (n_mic, n_ref, P, N + 1)`` complex128, ``P`` the same in float64.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from mica.array_dsp.aec_bootstrap import LsBootstrap, refit_due
from mica.array_dsp.aec_realign import best_shift
from mica.array_dsp.jit import kernel
from mica.array_dsp.validate import SignalShapeError, check_array, check_positive_int

log = logging.getLogger(__name__)
_FFT_HAS_OUT = np.lib.NumpyVersion(np.__version__) >= "2.0.0"
_TINY = 1e-20


@dataclass(frozen=True)
class AecParams:
    """Tuning of :class:`EchoCanceller` (defaults measured with ``benchmarks/echo.py``).

    Attributes:
        tail_ms: echo path length the filter models (ms); ``ceil(tail * fs / N)`` partitions.
        path_forget: ``A`` of the random-walk echo-path model (closer to 1: steadier filter,
            slower tracking of small path changes).
        psi_smoothing: ``beta``, smoothing of the error PSD per block.
        initial_state_var: ``P`` at start and after a path change (filter-coefficient
            variance in the FFT domain, relative to a unit echo path).
        constraint_partitions: ``0``: constrain every partition's gradient every block
            (exact overlap-save); ``c > 0``: apply the gradients unconstrained and project
            ``c`` partitions of the filter per block onto the linear-convolution subspace,
            round robin (the alternating constraint of Speex's MDF: ``P / c`` times fewer
            FFTs; each partition is cleaned every ``ceil(P / c)`` blocks).
        misalignment: share of the predicted misalignment echo ``sum P |X|^2`` taken out of
            the error PSD to estimate the near-end PSD (Enzner & Vary 2006, eq. 30). Off
            (0) by default: the diagonal ``P`` ignores that the partitions (50 %-overlapping
            frames) share what each block tells, so it overstates the misalignment 10 to
            100x (measured against the true path on the benchmark's measured RIRs) and the
            subtraction left only ``psi_floor`` of the error: a near-end PSD far too small,
            a full-size gain even in bins the reference hardly excites.
        psi_floor: the near-end PSD estimate is at least this share of the error PSD (acts
            only with ``misalignment > 0``).
        psi_flat_floor: ... and at least this share of the error PSD's mean over the bins:
            the error of a block (rectangular half frame) leaks into every bin, so a bin the
            reference hardly excites sees the leaked error of the strong bins, which its
            ``1 / |X|^2``-sized gain would otherwise learn as echo path (tonal far ends).
        noise_scale: the measurement noise in the gain's denominator is this times the
            near-end PSD estimate (Enzner & Vary 2006 write ``M / R`` = 2 for 50 % overlap:
            ``K = P X^H (X P X^H + (M / R) Psi_s)^-1``). Measured with the flat floor: 2
            keeps the near end better in double talk (benchmark SI-SDR 28.5 vs 27.0 dB)
            but re-converges slower after an echo-path change (ERLE 2-4 s after it 13.3 vs
            15.5 dB), so 1.
        cross_covariance_keep: ``0``: the state covariance is diagonal (one variance per
            partition and bin, Kuech et al. 2014); ``rho > 0``: the full covariance across
            the partitions (and reference channels) of each bin, its cross terms multiplied
            by ``rho`` each block. The partitions' regressors in a bin are strongly
            correlated (50 %-overlapping frames; sustained tones), which a diagonal ``P``
            ignores: it converges slowly along the weak directions (6 s benchmark scenes,
            median ERLE of seconds 3-6, diagonal vs ``rho = 0.9``: jazz 19.9 vs 24.9 dB).
            ``rho = 1`` (plain per-bin RLS) over-fits the error that the per-bin model does
            not explain (leakage, the gradient constraint): speech 29.8 dB against the
            diagonal's 34.2 (``rho = 0.9``: 34.5; 0.8-0.95 within 0.1 dB on held-out
            scenes). Costs
            ``O((n_ref P)^2)`` per bin and mic instead of ``O(n_ref P)``.
        full_covariance_max_states: the full covariance is used only while ``n_ref P``
            (states per bin) is at most this; beyond it (long tails, several references)
            the diagonal ``P``: a bounded cost. Measured RTF per mic (4 mics, 10 ms
            blocks) diagonal vs full: 13 states (one reference, 128 ms) 0.0062 vs 0.0193,
            26 states (two references at 128 ms, or 256 ms) 0.0126 vs 0.0530 and 0.0074 vs
            0.0461, 32 states 0.0094 vs 0.0773. Several references were not measured for
            quality with the full covariance, hence 16.
        coherence_smoothing: smoothing of the error-reference cross-spectra per block.
        far_threshold_db: reference power (dBFS) above which the far end counts as active.
        double_talk_db: error over echo-estimate power (dB) above which a far-end-active
            block counts as double talk ...
        double_talk_coherence: ... if the error's coherence with the reference is below
            this (near-end speech is incoherent with the playback).
        double_talk_path_forget: ``A`` of the time update while adaptation is held
            for double talk (1: no process noise then; ``path_forget``: the same as in
            single talk).
        double_talk_step: the Kalman gain is scaled by this while adaptation is held for
            double talk (1: the Kalman filter's own robustness only).
        double_talk_adapt_hold_blocks: adaptation stays held (``double_talk_step``,
            ``double_talk_path_forget``) this many blocks after the reported double talk
            ends (a longer hangover than the reported state's: near-end speech the
            detector misses between its detections no longer drives the filter, and the
            reported state stays clean).
        double_talk_hold_blocks: hangover of the double-talk state (blocks).
        power_smoothing: smoothing of the monitors' block powers (per block).
        erle_smoothing: smoothing of the ERLE powers (per far-end-only block).
        path_change_db: error over mic power (dB) above which a converged filter is
            judged wrong ...
        path_change_coherence: ... if the error is this coherent with the reference ...
        path_change_min_erle_db: ... and the mic's ERLE had reached this (dB) ...
        path_change_blocks: ... for this many blocks in a row: an echo-path change.
        bootstrap_s: seconds of far-end blocks (from the far end's first block after a
            start, an echo-path change or a new bulk delay) during which the least-squares
            bootstrap (:mod:`mica.array_dsp.aec_bootstrap`) also fits the filter to all
            samples so far (0: off; several reference channels: one block-Toeplitz fit).
            Measured (benchmark scenes cut to 4 s, mic 0) ERLE of the first 0.5 s windows
            without / with it: speech 14.4 / 13.3 -> 29.1 / 30.2 dB, jazz 3.9 / 6.2 / 12.8
            -> 6.8 / 20.6 / 27.8 dB;
            12 held-out scenes: 1 and 2 s equal within 0.05 dB (steady) and 0.05 s (time to
            within 3 dB of steady), so 1 s (the bootstrap costs only while it runs).
        bootstrap_refit_blocks: the first refit after this many included blocks ...
        bootstrap_refit_growth: ... then after ``max(refit_blocks, growth n)`` more (``n``
            the included blocks so far: 11 refits in 1 s at the defaults).
        bootstrap_reg: ridge ``lam``: ``lam t_0 |h|^2`` (``t_0`` the segment's reference
            energy).
        bootstrap_iterations: conjugate-gradient iterations per refit (warm start: the
            Kalman filter; 10 and 30 measured equal).
        bootstrap_iterations_per_block: ... run this many per block (a refit is spread over
            ``iterations / per_block`` blocks after the block that begins it and taken in
            the block after the last, so no block carries a whole solve or two of its
            parts; a refit falling due while one runs is skipped).
        bootstrap_max_gaps: double-talk gaps a segment may have (more: it ends).
        bootstrap_dt_erle_db: the double-talk state excludes blocks from the fit only once
            the canceller's ERLE reached this (dB): before that the detector mostly
            flags the unconverged filter's own error (46 of the first 600 blocks of
            benchmark speech) and would starve the fit.
        bootstrap_min_rows: a fit is taken only with at least this many times ``L``
            (``P N`` taps) included samples (an over-determined fit) ...
        bootstrap_max_residual_db: ... with its residual at most this (dB) of the mic
            energy over the segment (echo alone is explained by the linear model up to the
            loudspeaker's nonlinearity; near-end speech the detector did not flag leaves a
            large residual: measured with a near-end talker from the far end's start, the
            near end's SI-SDR equals the Kalman filter's alone or is better) ...
            and with a lower squared error over the segment than the Kalman filter's.
        realign_max_ms: an echo-path change is first tested for a pure shift of the echo
            estimate against the mics up to this (ms; :mod:`mica.array_dsp.aec_realign`):
            the reference slid (a loopback restarted after an overrun, a new playback
            buffering), the filter is still right, and the bulk delay moves instead of the
            filter restarting (0: off; needs bulk-delay room, ``max_delay_samples``) ...
        realign_gain_db: ... when the best shift explains the recent mic samples this much
            (dB) better than no shift ...
        realign_residual_db: ... and to this (dB) of their energy.
    """

    tail_ms: float = 128.0
    path_forget: float = 0.999
    psi_smoothing: float = 0.5
    initial_state_var: float = 10.0
    misalignment: float = 0.0
    constraint_partitions: int = 3
    psi_floor: float = 0.1
    psi_flat_floor: float = 1.0
    noise_scale: float = 1.0
    cross_covariance_keep: float = 0.9
    full_covariance_max_states: int = 16
    coherence_smoothing: float = 0.9
    far_threshold_db: float = -60.0
    double_talk_db: float = -10.0
    double_talk_coherence: float = 0.2
    double_talk_hold_blocks: int = 10
    double_talk_step: float = 1.0
    double_talk_path_forget: float = 1.0
    double_talk_adapt_hold_blocks: int = 40
    power_smoothing: float = 0.7
    erle_smoothing: float = 0.98
    path_change_db: float = -8.0
    path_change_coherence: float = 0.5
    path_change_min_erle_db: float = 10.0
    path_change_blocks: int = 10
    bootstrap_s: float = 1.0
    bootstrap_refit_blocks: int = 5
    bootstrap_refit_growth: float = 0.25
    bootstrap_reg: float = 1e-3
    bootstrap_iterations: int = 10
    bootstrap_iterations_per_block: int = 5
    bootstrap_max_gaps: int = 32
    bootstrap_dt_erle_db: float = 15.0
    bootstrap_min_rows: float = 1.0
    bootstrap_max_residual_db: float = -15.0
    realign_max_ms: float = 20.0
    realign_gain_db: float = 6.0
    realign_residual_db: float = -10.0

    def __post_init__(self) -> None:
        checks = (
            ("tail_ms", 1.0 <= self.tail_ms <= 2000.0),
            ("path_forget", 0.0 < self.path_forget <= 1.0),
            ("double_talk_path_forget", 0.0 < self.double_talk_path_forget <= 1.0),
            ("psi_smoothing", 0.0 <= self.psi_smoothing < 1.0),
            ("initial_state_var", self.initial_state_var > 0.0),
            ("misalignment", self.misalignment >= 0.0),
            ("psi_floor", self.psi_floor >= 0.0),
            ("psi_flat_floor", self.psi_flat_floor >= 0.0),
            ("noise_scale", self.noise_scale > 0.0),
            ("cross_covariance_keep", 0.0 <= self.cross_covariance_keep <= 1.0),
            ("full_covariance_max_states", self.full_covariance_max_states >= 0),
            ("power_smoothing", 0.0 <= self.power_smoothing < 1.0),
            ("erle_smoothing", 0.0 <= self.erle_smoothing < 1.0),
            ("path_change_blocks", self.path_change_blocks >= 1),
            ("constraint_partitions", self.constraint_partitions >= 0),
            ("coherence_smoothing", 0.0 <= self.coherence_smoothing < 1.0),
            ("double_talk_hold_blocks", self.double_talk_hold_blocks >= 0),
            ("double_talk_adapt_hold_blocks", self.double_talk_adapt_hold_blocks >= 0),
            ("bootstrap_s", 0.0 <= self.bootstrap_s <= 30.0),
            ("bootstrap_refit_blocks", self.bootstrap_refit_blocks >= 1),
            ("bootstrap_reg", self.bootstrap_reg > 0.0),
            ("bootstrap_iterations", self.bootstrap_iterations >= 1),
            ("bootstrap_iterations_per_block", self.bootstrap_iterations_per_block >= 1),
            ("bootstrap_refit_growth", 0.0 <= self.bootstrap_refit_growth <= 10.0),
            ("bootstrap_max_gaps", self.bootstrap_max_gaps >= 0),
            ("bootstrap_min_rows", self.bootstrap_min_rows >= 0.0),
            ("realign_max_ms", 0.0 <= self.realign_max_ms <= 100.0),
            ("realign_gain_db", self.realign_gain_db >= 0.0),
        )
        for name, ok in checks:
            if not ok:
                raise SignalShapeError(
                    f"AecParams.{name}: out of range, got {getattr(self, name)!r}"
                )


def monitor_params(p: AecParams) -> np.ndarray:
    """The ``params`` vector of :func:`monitor_kernel` from :class:`AecParams`."""
    return np.array(
        [
            p.power_smoothing,
            p.erle_smoothing,
            10.0 ** (p.far_threshold_db / 10.0),
            10.0 ** (p.double_talk_db / 10.0),
            10.0 ** (p.path_change_db / 10.0),
            p.path_change_blocks,
            p.double_talk_hold_blocks,
            p.double_talk_coherence,
            p.path_change_coherence,
            10.0 ** (p.path_change_min_erle_db / 10.0),
        ],
        np.float64,
    )


def uses_full_covariance(p: AecParams, n_refs: int, n_parts: int) -> bool:
    """Whether the canceller keeps the full per-bin state covariance (see
    :attr:`AecParams.cross_covariance_keep`, :attr:`AecParams.full_covariance_max_states`)."""
    return p.cross_covariance_keep > 0.0 and n_refs * n_parts <= p.full_covariance_max_states


def n_partitions(tail_ms: float, fs_hz: float, block_samples: int) -> int:
    """Partitions of ``block_samples`` needed to cover ``tail_ms`` at ``fs_hz``."""
    return max(1, math.ceil(tail_ms * 1e-3 * fs_hz / block_samples - 1e-9))


# --------------------------------------------------------------------------- kernels


@kernel
def delay_line_kernel(
    ring: np.ndarray, pos: np.ndarray, block: np.ndarray, delay: int, out: np.ndarray
) -> None:
    """Write ``block (n_ref, N)`` into ``ring (n_ref, L)`` at ``pos[0]``; ``out (n_ref, N)``
    = the ``N`` samples that ended ``delay`` samples ago (``L >= delay + N``)."""
    n_ref, length = ring.shape
    n = block.shape[1]
    p = pos[0]
    for r in range(n_ref):
        for i in range(n):
            ring[r, (p + i) % length] = block[r, i]
    start = p + n - delay - n
    for r in range(n_ref):
        for i in range(n):
            out[r, i] = ring[r, (start + i) % length]
    pos[0] = (p + n) % length


@kernel
def frame_kernel(prev: np.ndarray, cur: np.ndarray, frames: np.ndarray) -> None:
    """``frames (n, 2N) = [prev | cur]`` (float64), then ``prev = cur``."""
    n_ch, n = cur.shape
    for c in range(n_ch):
        for i in range(n):
            frames[c, i] = prev[c, i]
            frames[c, n + i] = cur[c, i]
            prev[c, i] = cur[c, i]


@kernel
def push_spectrum_kernel(x_hist: np.ndarray, x_new: np.ndarray) -> None:
    """Shift ``x_hist (n_ref, P, K)`` one partition older; ``x_hist[:, 0] = x_new (n_ref, K)``."""
    n_ref, n_part, n_bins = x_hist.shape
    for r in range(n_ref):
        for p in range(n_part - 1, 0, -1):
            for k in range(n_bins):
                x_hist[r, p, k] = x_hist[r, p - 1, k]
        for k in range(n_bins):
            x_hist[r, 0, k] = x_new[r, k]


@kernel
def echo_spectrum_kernel(x_hist: np.ndarray, w: np.ndarray, y_hat: np.ndarray) -> None:
    """``y_hat[m, k] = sum_{r,p} w[m, r, p, k] x_hist[r, p, k]`` (all complex128)."""
    n_mic, n_ref, n_part, n_bins = w.shape
    for m in range(n_mic):
        for k in range(n_bins):
            acc = 0j
            for r in range(n_ref):
                for p in range(n_part):
                    acc += w[m, r, p, k] * x_hist[r, p, k]
            y_hat[m, k] = acc


@kernel
def error_kernel(
    mic: np.ndarray, y_hat_time: np.ndarray, err: np.ndarray, echo: np.ndarray, err_pad: np.ndarray
) -> None:
    """``echo = y_hat_time[:, N:]``, ``err = mic - echo`` (float32, ``(n_mic, N)``) and
    ``err_pad = [0_N | err]`` (float64, ``(n_mic, 2N)``)."""
    n_mic, n = mic.shape
    for m in range(n_mic):
        for i in range(n):
            yh = y_hat_time[m, n + i]
            e = np.float32(mic[m, i] - yh)
            echo[m, i] = np.float32(yh)
            err[m, i] = e
            err_pad[m, i] = 0.0
            err_pad[m, n + i] = e


@kernel
def _error_psd_kernel(e_spec: np.ndarray, psi: np.ndarray, m: int, beta: float,
                      flat_floor: float) -> float:
    """Mic ``m``'s error PSD ``psi = beta psi + (1 - beta) |E|^2`` (in place); returns the
    flat floor ``flat_floor * mean_k psi`` (shared by both Kalman gain kernels)."""
    n_bins = psi.shape[1]
    mean_psi = 0.0
    for k in range(n_bins):
        e = e_spec[m, k]
        psi[m, k] = beta * psi[m, k] + (1.0 - beta) * (e.real * e.real + e.imag * e.imag)
        mean_psi += psi[m, k]
    return flat_floor * mean_psi / n_bins


@kernel
def _gain_scale_kernel(psi_mk: float, pxx: float, misalign: float, psi_floor: float,
                       flat: float, noise_scale: float, step: float) -> float:
    """``step / (pxx + s psi_s)`` with the near-end PSD
    ``psi_s = max(psi - c pxx, f psi, flat)`` (shared by both Kalman gain kernels)."""
    psi_ss = max(psi_mk - misalign * pxx, psi_floor * psi_mk, flat)
    return step / (pxx + noise_scale * psi_ss + 1e-20)


@kernel
def kalman_gain_kernel(
    x_hist: np.ndarray,
    e_spec: np.ndarray,
    psi: np.ndarray,
    p_cov: np.ndarray,
    beta: float,
    overlap: float,
    misalign: float,
    psi_floor: float,
    flat_floor: float,
    noise_scale: float,
    step: float,
    grad: np.ndarray,
) -> None:
    """Error PSD, Kalman gain, unconstrained update and the ``P`` measurement update.

    ``psi = beta psi + (1 - beta) |E|^2``; near-end PSD
    ``psi_s = max(psi - c sum P |X|^2, f psi, g mean_k psi)``;
    ``D = sum P |X|^2 + s psi_s``; ``K = step P X^* / D``;
    ``grad = K E``; ``P <- (1 - overlap K X) P`` (``overlap = N / M``).
    x_hist ``(n_ref, P, K)`` c128, e_spec ``(n_mic, K)`` c128, psi ``(n_mic, K)`` f64,
    p_cov ``(n_mic, n_ref, P, K)`` f64, grad like p_cov in c128.
    """
    n_mic, n_ref, n_part, n_bins = p_cov.shape
    for m in range(n_mic):
        flat = _error_psd_kernel(e_spec, psi, m, beta, flat_floor)
        for k in range(n_bins):
            e = e_spec[m, k]
            pxx = 0.0
            for r in range(n_ref):
                for p in range(n_part):
                    x = x_hist[r, p, k]
                    pxx += p_cov[m, r, p, k] * (x.real * x.real + x.imag * x.imag)
            inv = _gain_scale_kernel(psi[m, k], pxx, misalign, psi_floor, flat, noise_scale,
                                     step)
            for r in range(n_ref):
                for p in range(n_part):
                    x = x_hist[r, p, k]
                    x2 = x.real * x.real + x.imag * x.imag
                    pk = p_cov[m, r, p, k]
                    grad[m, r, p, k] = pk * inv * np.conj(x) * e
                    p_cov[m, r, p, k] = pk * (1.0 - overlap * pk * x2 * inv)


@kernel
def coherence_kernel(
    x_hist: np.ndarray,
    e_spec: np.ndarray,
    alpha: float,
    s_ex: np.ndarray,
    s_xx: np.ndarray,
    s_ee: np.ndarray,
    coh: np.ndarray,
) -> None:
    """Error-to-reference coherence per mic (Benesty, Morgan & Cho 2000's cross-correlation
    detector, per partition): recursive cross-spectra ``S_ex = a S_ex + (1 - a) E X_p^*``,
    ``S_xx``, ``S_ee``; ``coh[m] = max_{r,p} sum_k |S_ex|^2 / sum_k S_ee S_xx`` in [0, 1].

    High when the error still holds echo (a changed path), low when it is near-end speech
    (double talk). s_ex ``(n_mic, n_ref, P, K)`` c128, s_xx ``(n_ref, P, K)``, s_ee
    ``(n_mic, K)`` f64, coh ``(n_mic,)`` f64 out.
    """
    n_mic, n_ref, n_part, n_bins = s_ex.shape
    b = 1.0 - alpha
    for r in range(n_ref):
        for p in range(n_part):
            for k in range(n_bins):
                x = x_hist[r, p, k]
                s_xx[r, p, k] = alpha * s_xx[r, p, k] + b * (x.real * x.real + x.imag * x.imag)
    for m in range(n_mic):
        for k in range(n_bins):
            e = e_spec[m, k]
            s_ee[m, k] = alpha * s_ee[m, k] + b * (e.real * e.real + e.imag * e.imag)
        best = 0.0
        for r in range(n_ref):
            for p in range(n_part):
                num = 0.0
                den = 1e-30
                for k in range(n_bins):
                    v = alpha * s_ex[m, r, p, k] + b * e_spec[m, k] * np.conj(x_hist[r, p, k])
                    s_ex[m, r, p, k] = v
                    num += v.real * v.real + v.imag * v.imag
                    den += s_ee[m, k] * s_xx[r, p, k]
                if num / den > best:
                    best = num / den
        coh[m] = best


@kernel
def constrain_kernel(grad_time: np.ndarray) -> None:
    """Zero the last half of every ``(..., 2N)`` gradient impulse response (flattened to
    ``(n_filters, 2N)``): the gradient constraint of overlap-save."""
    n_f, m2 = grad_time.shape
    n = m2 // 2
    for f in range(n_f):
        for i in range(n, m2):
            grad_time[f, i] = 0.0


@kernel
def kalman_gain_full_kernel(
    x_hist: np.ndarray,
    e_spec: np.ndarray,
    psi: np.ndarray,
    c_cov: np.ndarray,
    beta: float,
    overlap: float,
    misalign: float,
    psi_floor: float,
    flat_floor: float,
    noise_scale: float,
    step: float,
    cross_scale: float,
    scratch: np.ndarray,
    grad: np.ndarray,
) -> None:
    """:func:`kalman_gain_kernel` with the full state covariance of each bin.

    ``x`` = the bin's regressors ``X_{r,p}`` (index ``q = r P + p``); ``c = C x^*``;
    ``D = x^T C x^* + s psi_s``; ``K = step c / D``; ``grad = K E``;
    ``C <- C - overlap K c^H`` (stays Hermitian), then the cross terms (``i != j``) times
    ``cross_scale`` (the time update's share of them, ``A^2 rho``: one pass over ``C``;
    :func:`state_update_full_kernel` does the diagonal). c_cov ``(n_mic, K, Q, Q)`` c128
    (``Q = n_ref P``), scratch ``(2, Q)`` c128, grad ``(n_mic, n_ref, P, K)`` c128.
    """
    n_mic, n_ref, n_part, n_bins = grad.shape
    nq = n_ref * n_part
    cx = scratch[0]
    xc = scratch[1]
    for m in range(n_mic):
        flat = _error_psd_kernel(e_spec, psi, m, beta, flat_floor)
        for k in range(n_bins):
            e = e_spec[m, k]
            for r in range(n_ref):
                for p in range(n_part):
                    xc[r * n_part + p] = np.conj(x_hist[r, p, k])
            pxx = 0.0
            for i in range(nq):
                acc = 0j
                for j in range(nq):
                    acc += c_cov[m, k, i, j] * xc[j]
                cx[i] = acc
                pxx += (np.conj(xc[i]) * acc).real
            inv = _gain_scale_kernel(psi[m, k], pxx, misalign, psi_floor, flat, noise_scale,
                                     step)
            for r in range(n_ref):
                for p in range(n_part):
                    grad[m, r, p, k] = cx[r * n_part + p] * inv * e
            for i in range(nq):
                gi = overlap * inv * cx[i]
                d = (c_cov[m, k, i, i] - gi * np.conj(cx[i])).real
                for j in range(nq):
                    c_cov[m, k, i, j] = cross_scale * (c_cov[m, k, i, j] - gi * np.conj(cx[j]))
                c_cov[m, k, i, i] = d


@kernel
def state_update_full_kernel(w: np.ndarray, grad: np.ndarray, c_cov: np.ndarray, a2: float) -> None:
    """``W += grad``; ``C_qq = A^2 C_qq + (1 - A^2) |W_q|^2`` (time update of the full
    per-bin covariance's diagonal; :func:`kalman_gain_full_kernel` already scaled the
    cross terms by ``A^2 rho``)."""
    n_mic, n_ref, n_part, n_bins = w.shape
    for m in range(n_mic):
        for r in range(n_ref):
            for p in range(n_part):
                i = r * n_part + p
                for k in range(n_bins):
                    v = w[m, r, p, k] + grad[m, r, p, k]
                    w[m, r, p, k] = v
                    c_cov[m, k, i, i] = a2 * c_cov[m, k, i, i].real + (1.0 - a2) * (
                        v.real * v.real + v.imag * v.imag
                    )


@kernel
def state_update_kernel(w: np.ndarray, grad: np.ndarray, p_cov: np.ndarray, a2: float) -> None:
    """``W += grad``; ``P = A^2 P + (1 - A^2) |W|^2`` (time update)."""
    n_mic, n_ref, n_part, n_bins = w.shape
    for m in range(n_mic):
        for r in range(n_ref):
            for p in range(n_part):
                for k in range(n_bins):
                    v = w[m, r, p, k] + grad[m, r, p, k]
                    w[m, r, p, k] = v
                    p_cov[m, r, p, k] = a2 * p_cov[m, r, p, k] + (1.0 - a2) * (
                        v.real * v.real + v.imag * v.imag
                    )


@kernel
def monitor_kernel(
    mic: np.ndarray,
    err: np.ndarray,
    echo: np.ndarray,
    ref: np.ndarray,
    coh: np.ndarray,
    params: np.ndarray,
    pow_state: np.ndarray,
    counters: np.ndarray,
    out: np.ndarray,
) -> None:
    """Powers, far-end activity, double talk, ERLE and echo-path change for one block.

    params: ``[power_smoothing, erle_smoothing, far_threshold (power), dt_ratio,
    path_change_ratio, path_change_blocks, dt_hold_blocks, dt_coherence,
    path_change_coherence, path_change_min_erle (ratio)]``; coh ``(n_mic,)`` from
    :func:`coherence_kernel`. pow_state ``(n_mic, 6)`` f64: smoothed ``P_y, P_e, P_echo``,
    ERLE powers ``P_y, P_e``, spare; counters ``(n_mic + 1,)`` int64: per-mic path-change
    run, then the double-talk hold. out ``(4 + n_mic,)`` f64: far active, double talk,
    ERLE (dB, nan before any), path change, then per-mic ERLE (dB).

    Double talk: far end active, error above ``dt_ratio`` of the echo estimate and the
    error incoherent with the reference (near-end speech, not echo). Path change: far end
    active, a mic that had converged (ERLE above the minimum) now has its error above
    ``path_change_ratio`` of its input, coherent with the reference, for
    ``path_change_blocks`` blocks in a row (echo the filter no longer models).
    """
    n_mic, n = mic.shape
    a = params[0]
    a_erle = params[1]
    far_thr = params[2]
    dt_ratio = params[3]
    pc_ratio = params[4]
    pc_blocks = int(params[5])
    hold_blocks = int(params[6])
    dt_coh = params[7]
    pc_coh = params[8]
    pc_min_erle = params[9]
    px = 0.0
    for r in range(ref.shape[0]):
        for i in range(n):
            px += float(ref[r, i]) * float(ref[r, i])
    px /= n * ref.shape[0]
    far = px > far_thr
    dt_now = False
    change = False
    for m in range(n_mic):
        py = 0.0
        pe = 0.0
        pyh = 0.0
        for i in range(n):
            py += float(mic[m, i]) * float(mic[m, i])
            pe += float(err[m, i]) * float(err[m, i])
            pyh += float(echo[m, i]) * float(echo[m, i])
        pow_state[m, 0] = a * pow_state[m, 0] + (1.0 - a) * py / n
        pow_state[m, 1] = a * pow_state[m, 1] + (1.0 - a) * pe / n
        pow_state[m, 2] = a * pow_state[m, 2] + (1.0 - a) * pyh / n
        if far and pow_state[m, 1] > dt_ratio * pow_state[m, 2] and coh[m] < dt_coh:
            dt_now = True
        converged = pow_state[m, 3] > 0.0 and pow_state[m, 3] > pc_min_erle * pow_state[m, 4]
        if far and converged and pow_state[m, 1] > pc_ratio * pow_state[m, 0] and coh[m] >= pc_coh:
            counters[m] += 1
            if counters[m] >= pc_blocks:
                change = True
        else:
            counters[m] = 0
    if dt_now:
        counters[n_mic] = hold_blocks + 1
    elif counters[n_mic] > 0:
        counters[n_mic] -= 1
    dt = counters[n_mic] > 0
    if far and not dt:
        for m in range(n_mic):
            pow_state[m, 3] = a_erle * pow_state[m, 3] + (1.0 - a_erle) * pow_state[m, 0]
            pow_state[m, 4] = a_erle * pow_state[m, 4] + (1.0 - a_erle) * pow_state[m, 1]
    sy = 0.0
    se = 0.0
    for m in range(n_mic):
        sy += pow_state[m, 3]
        se += pow_state[m, 4]
        if pow_state[m, 3] > 0.0:
            out[4 + m] = 10.0 * math.log10((pow_state[m, 3] + 1e-30) / (pow_state[m, 4] + 1e-30))
        else:
            out[4 + m] = math.nan
    out[0] = 1.0 if far else 0.0
    out[1] = 1.0 if dt else 0.0
    out[2] = 10.0 * math.log10((sy + 1e-30) / (se + 1e-30)) if sy > 0.0 else math.nan
    out[3] = 1.0 if change else 0.0
    if change:  # start the ERLE average and the detector afresh on the new path
        for m in range(n_mic):
            counters[m] = 0
            pow_state[m, 3] = 0.0
            pow_state[m, 4] = 0.0


# --------------------------------------------------------------------------- streaming


def _rfft(x: np.ndarray, out: np.ndarray) -> None:
    if _FFT_HAS_OUT:
        np.fft.rfft(x, axis=-1, out=out)
    else:  # pragma: no cover - numpy < 2
        out[...] = np.fft.rfft(x, axis=-1)


def _irfft(x: np.ndarray, n: int, out: np.ndarray) -> None:
    if _FFT_HAS_OUT:
        np.fft.irfft(x, n=n, axis=-1, out=out)
    else:  # pragma: no cover - numpy < 2
        out[...] = np.fft.irfft(x, n=n, axis=-1)


class EchoCanceller:
    """Per-microphone PBFDAF/Kalman echo canceller, block by block (see the module doc).

    Args:
        n_mics: microphones ``n_mic`` (one filter set each).
        n_refs: reference (playback loopback) channels ``n_ref``.
        block_samples: block ``N`` (use the DSP hop: no added latency).
        fs_hz: sample rate (Hz).
        params: :class:`AecParams`.
        max_delay_samples: largest bulk delay :meth:`set_delay` may apply.

    After each :meth:`process`: :attr:`echo` ``(n_mic, N)`` float32 (echo estimate),
    :attr:`far_active`, :attr:`double_talk`, :attr:`erle_db`, :attr:`path_changed`.
    Not thread-safe.
    """

    def __init__(
        self,
        n_mics: int,
        n_refs: int,
        block_samples: int,
        fs_hz: float = 16000,
        params: AecParams | None = None,
        max_delay_samples: int = 0,
    ) -> None:
        self.n_mics = check_positive_int(n_mics, "n_mics")
        self.n_refs = check_positive_int(n_refs, "n_refs")
        self.block_samples = n = check_positive_int(block_samples, "block_samples")
        if not (isinstance(fs_hz, (int, float)) and fs_hz > 0):
            raise SignalShapeError(f"fs_hz must be > 0, got {fs_hz!r}")
        if not (isinstance(max_delay_samples, int) and max_delay_samples >= 0):
            raise SignalShapeError(
                f"max_delay_samples must be an int >= 0, got {max_delay_samples!r}"
            )
        self.fs_hz = float(fs_hz)
        self.params = p = params or AecParams()
        self.n_partitions = n_partitions(p.tail_ms, fs_hz, n)
        self.n_bins = n + 1
        self.max_delay_samples = max_delay_samples
        self.delay_samples = 0
        shape = (self.n_mics, self.n_refs, self.n_partitions, self.n_bins)
        # the recent mic and echo-estimate blocks, for the shift test of an echo-path
        # change (see _realign)
        self._shift_max = int(round(p.realign_max_ms * 1e-3 * fs_hz))
        # blocks in the ring (0: realignment off): the path-change run and the shift range
        # on both sides
        self._ring_blocks = (
            p.path_change_blocks + 2 * (-(-self._shift_max // n)) if self._shift_max else 0
        )
        self._y_ring = np.zeros((self.n_mics, self._ring_blocks * n), np.float32)
        self._e_ring = np.zeros_like(self._y_ring)
        # the ring also keeps (P + 1) N older samples, so a new delay can rebuild the
        # reference history (see :meth:`set_delay`), and the realignment window more
        self._ring = np.zeros(
            (
                self.n_refs,
                max_delay_samples + (self.n_partitions + 2) * n + self._y_ring.shape[1],
            ),
            np.float32,
        )
        self._ring_pos = np.zeros(1, np.int64)
        self._x_cur = np.zeros((self.n_refs, n), np.float32)
        self._x_prev = np.zeros((self.n_refs, n), np.float32)
        self._x_frames = np.zeros((self.n_refs, 2 * n), np.float64)
        self._x_new = np.zeros((self.n_refs, self.n_bins), np.complex128)
        self._x_hist = np.zeros((self.n_refs, self.n_partitions, self.n_bins), np.complex128)
        self._w = np.zeros(shape, np.complex128)
        self._p = np.full(shape, p.initial_state_var, np.float64)
        self._full = uses_full_covariance(p, self.n_refs, self.n_partitions)
        if p.cross_covariance_keep > 0.0 and not self._full:
            log.info(
                "aec: %d states per bin > full_covariance_max_states %d: diagonal covariance",
                self.n_refs * self.n_partitions,
                p.full_covariance_max_states,
            )
        n_q = self.n_refs * self.n_partitions if self._full else 0
        # full per-bin covariance (cross_covariance_keep > 0; else empty and _p is used)
        self._c = np.zeros((self.n_mics, self.n_bins, n_q, n_q), np.complex128)
        self._cx = np.zeros((2, n_q), np.complex128)
        self._c_diag_init()
        self._grad = np.zeros(shape, np.complex128)
        self._cp = min(p.constraint_partitions, self.n_partitions)
        self._cp_next = 0
        if self._cp == 0:
            self._grad_time = np.zeros(shape[:3] + (2 * n,), np.float64)
            self._grad_time_2d = self._grad_time.reshape(-1, 2 * n)
        else:
            self._w_time = np.zeros(shape[:2] + (self._cp, 2 * n), np.float64)
            self._w_spec = np.zeros(shape[:2] + (self._cp, self.n_bins), np.complex128)
        self._y_hat = np.zeros((self.n_mics, self.n_bins), np.complex128)
        self._y_hat_time = np.zeros((self.n_mics, 2 * n), np.float64)
        self._err_pad = np.zeros((self.n_mics, 2 * n), np.float64)
        self._e_spec = np.zeros((self.n_mics, self.n_bins), np.complex128)
        self._psi = np.zeros((self.n_mics, self.n_bins), np.float64)
        self._s_ex = np.zeros(shape, np.complex128)
        self._s_xx = np.zeros(shape[1:], np.float64)
        self._s_ee = np.zeros((self.n_mics, self.n_bins), np.float64)
        self.coherence = np.zeros(self.n_mics, np.float64)
        """``(n_mic,)`` error-to-reference coherence of the last block (see
        :func:`coherence_kernel`)."""
        self.out = np.zeros((self.n_mics, n), np.float32)
        """``(n_mic, N)`` float32 error (echo-cancelled mics) of the last block."""
        self.echo = np.zeros((self.n_mics, n), np.float32)
        """``(n_mic, N)`` float32 echo estimate of the last block."""
        self._mon_params = monitor_params(p)
        self._mon_params_quiet = self._mon_params.copy()  # adapt=False: no far end
        self._mon_params_quiet[2] = math.inf
        self._pow = np.zeros((self.n_mics, 6), np.float64)
        self._counters = np.zeros(self.n_mics + 1, np.int64)
        self._mon = np.zeros(4 + self.n_mics, np.float64)
        self._mon[2:] = math.nan
        self.path_changes_total = 0
        self._adapt_hold = 0  # blocks adaptation stays held for double talk
        boot_blocks = int(round(p.bootstrap_s * fs_hz / n))
        self._boot = (
            LsBootstrap(
                self.n_mics,
                self.n_partitions * n,
                n,
                boot_blocks,
                p.bootstrap_max_gaps,
                max_delay=max_delay_samples,
                n_refs=self.n_refs,
            )
            if boot_blocks > 0
            else None
        )
        self._boot_state = 1  # 0 done, 1 armed (waits for the far end), 2 running
        self._boot_refit_now = False  # the segment moved to a new delay: refit at once
        self._ring_block = 0
        self.realigned_samples = 0
        """The bulk delay moved by this in the last block because an echo-path change was
        a pure shift of the echo estimate (0: none; see :attr:`AecParams.realign_max_ms`)."""
        self.realigns_total = 0
        self._slide_run = 0  # blocks in a row with a large error (see process)
        self._ring_fill = 0  # blocks in the ring since the last realignment
        self._w_good = np.zeros_like(self._w) if self._shift_max else self._w[:0]
        self._has_good = False  # _w_good holds a filter from a calm stretch
        self._verify = False  # test once more when the ring has refilled after a realignment
        self._calm = 0  # blocks of a converged filter without a large error
        self._converged = False  # the ERLE reached path_change_min_erle_db since a restart
        self.bootstrap_refits_taken = 0
        """Refits of the LS bootstrap that replaced a mic's filter (since construction)."""

    @property
    def latency_samples(self) -> int:
        """Algorithmic latency the canceller adds: 0 (it works on the DSP block itself)."""
        return 0

    @property
    def far_active(self) -> bool:
        """The reference carried playback in the last block."""
        return bool(self._mon[0])

    @property
    def double_talk(self) -> bool:
        """Far end active and near-end speech present (with hangover)."""
        return bool(self._mon[1])

    @property
    def erle_db(self) -> float:
        """ERLE over far-end-only blocks, all mics pooled (dB; ``nan`` before any)."""
        return float(self._mon[2])

    @property
    def erle_db_per_mic(self) -> np.ndarray:
        """``(n_mic,)`` ERLE per microphone (dB; a view)."""
        return self._mon[4:]

    @property
    def path_changed(self) -> bool:
        """The last block declared an echo-path change (``P`` was reset)."""
        return bool(self._mon[3])

    def set_delay(self, delay_samples: int, keep_filter: bool = True) -> None:
        """Delay the reference by ``delay_samples`` (bulk delay).

        ``keep_filter``: the learned echo path moves with the delay instead of being
        dropped: the partitions' impulse responses (first ``N`` taps each, i.e. the
        linear-convolution part) are joined into one ``P N``-tap response ``h``, shifted by
        ``d = new - old`` samples (``h'[n] = h[n + d]``; taps shifted out are lost, taps
        shifted in are 0) and cut into partitions again; the state variance ``P`` moves by
        ``round(d / N)`` partitions (new ones start at ``initial_state_var``), and the
        reference history is rebuilt from the delay line as if the new delay had always
        been applied, so the next block's echo estimate is as good as the last one.
        Otherwise the filter restarts. Allocates (a rare event, not per block).
        """
        if not (
            isinstance(delay_samples, (int, np.integer))
            and 0 <= delay_samples <= self.max_delay_samples
        ):
            raise SignalShapeError(
                f"delay_samples must be in [0, {self.max_delay_samples}], got {delay_samples!r}"
            )
        shift = int(delay_samples) - self.delay_samples
        if shift == 0:
            return
        self.delay_samples = int(delay_samples)
        if not keep_filter:
            self._restart_filter()
            return
        n, n_part = self.block_samples, self.n_partitions
        taps = np.fft.irfft(self._w, 2 * n, axis=-1)[..., :n]
        h = taps.reshape(self.n_mics, self.n_refs, n_part * n)
        moved = np.zeros_like(h)
        if 0 < shift < h.shape[-1]:
            moved[..., : h.shape[-1] - shift] = h[..., shift:]
        elif 0 < -shift < h.shape[-1]:
            moved[..., -shift:] = h[..., : h.shape[-1] + shift]
        padded = np.zeros(self._w.shape[:3] + (2 * n,), np.float64)
        padded[..., :n] = moved.reshape(self.n_mics, self.n_refs, n_part, n)
        self._w[...] = np.fft.rfft(padded, axis=-1)
        k = int(round(shift / n))
        if self._full:  # the variances move with the taps; the cross terms start afresh
            q = np.arange(self._c.shape[2])
            diag = np.transpose(self._c[:, :, q, q].real, (0, 2, 1))
            self._p[...] = diag.reshape(self._p.shape)
        p_old = self._p.copy()
        self._p.fill(self.params.initial_state_var)
        if 0 <= k < n_part:
            self._p[:, :, : n_part - k] = p_old[:, :, k:]
        elif -n_part < k < 0:
            self._p[:, :, -k:] = p_old[:, :, : n_part + k]
        self._cp_next = 0
        self._c_diag_init()
        for buf in (self._s_ex, self._s_xx, self._s_ee, self.coherence):
            buf.fill(0)
        self._rebuild_history()
        self._has_good, self._calm = False, 0  # a snapshot in the old delay's tap positions
        boot = self._boot
        moving = boot is not None and self._boot_state == 2
        if moving and 0 < boot.blocks <= 3 * boot.max_blocks // 4:
            # the segment so far moves to the new delay: the next refit fits all of it (a
            # segment more than 3/4 full starts afresh instead: moved, it would end after
            # a refit or two at the new delay, leaving the rest to the Kalman filter)
            self._boot.redelay(self.delay_samples)
            self._boot_refit_now = True
        else:
            self._boot_state = 1  # a new LS segment at the far end's next block
            if self._boot is not None:
                self._boot.abort()

    def kept_energy_share(self, delay_samples: int) -> float:
        """Share of the learned filter's tap energy (all mics and references) that
        :meth:`set_delay` with ``keep_filter`` would keep for ``delay_samples`` (1 when
        the filter is empty; taps shifted out of ``[0, P N)`` are lost). Allocates."""
        n = self.block_samples
        taps = np.fft.irfft(self._w, 2 * n, axis=-1)[..., :n]
        energy = np.sum(taps**2, axis=(0, 1)).reshape(-1)  # (P N,) oldest tap last
        total = float(energy.sum())
        if total <= 0.0:
            return 1.0
        shift = int(delay_samples) - self.delay_samples
        length = energy.shape[0]
        lo, hi = max(0, shift), min(length, length + shift)
        return float(energy[lo:hi].sum()) / total if lo < hi else 0.0

    def _rebuild_history(self) -> None:
        """``x_hist`` and the previous reference block from the delay line, for the
        current :attr:`delay_samples` (the ring holds ``(P + 1) N`` samples beyond it)."""
        n, n_part = self.block_samples, self.n_partitions
        length = self._ring.shape[1]
        end = int(self._ring_pos[0]) - self.delay_samples  # one past the newest sample
        idx = (end - (n_part + 1) * n + np.arange((n_part + 1) * n)) % length
        x = self._ring[:, idx].astype(np.float64)  # oldest first
        for p in range(n_part):
            b = (n_part + 1) * n - p * n
            self._x_hist[:, p] = np.fft.rfft(x[:, b - 2 * n : b], axis=-1)
        self._x_prev[...] = x[:, -n:]

    def _c_diag_init(self) -> None:
        """Full covariance (if used) = ``diag(_p)``, no cross terms."""
        if self._full:
            self._c.fill(0)
            d = self._p.reshape(self.n_mics, -1, self.n_bins)  # (n_mic, Q, K)
            q = np.arange(d.shape[1])
            self._c[:, :, q, q] = np.transpose(d, (0, 2, 1))

    def _restart_filter(self) -> None:
        self._converged = self._has_good = self._verify = False
        self._slide_run = self._calm = self._ring_fill = 0
        self._boot_state = 1
        if self._boot is not None:
            self._boot.abort()
        self._w.fill(0)
        self._cp_next = 0
        self._p.fill(self.params.initial_state_var)
        self._c_diag_init()
        for buf in (self._psi, self._s_ex, self._s_xx, self._s_ee, self.coherence):
            buf.fill(0)

    def process(self, mic: np.ndarray, ref: np.ndarray, adapt: bool = True) -> np.ndarray:
        """Cancel the echo of ``ref (n_ref, N)`` in ``mic (n_mic, N)`` (float32); return the
        ``(n_mic, N)`` float32 error (this object's buffer, overwritten next call).

        ``adapt=False`` (a reference the caller does not trust, e.g. its device is lost):
        the echo estimate of ``ref`` is still taken out, but the filter ``W``, its state
        covariance and the error PSD stand still (no Kalman update, no constraint pass),
        the monitors count the block as no playback (no ERLE, double-talk or echo-path
        evidence) and an LS bootstrap segment in progress is dropped and re-armed (it
        starts again at the far end's first block once adapting)."""
        n = self.block_samples
        mic = check_array(mic, "mic", (self.n_mics, n), np.float32)
        ref = check_array(ref, "ref", (self.n_refs, n), np.float32)
        delay_line_kernel(self._ring, self._ring_pos, ref, self.delay_samples, self._x_cur)
        frame_kernel(self._x_prev, self._x_cur, self._x_frames)
        _rfft(self._x_frames, self._x_new)
        push_spectrum_kernel(self._x_hist, self._x_new)
        echo_spectrum_kernel(self._x_hist, self._w, self._y_hat)
        _irfft(self._y_hat, 2 * n, self._y_hat_time)
        error_kernel(mic, self._y_hat_time, self.out, self.echo, self._err_pad)
        _rfft(self._err_pad, self._e_spec)
        p = self.params
        step = p.double_talk_step if self._adapt_hold else 1.0
        forget = p.double_talk_path_forget if self._adapt_hold else p.path_forget
        if adapt and self._full:
            kalman_gain_full_kernel(
                self._x_hist,
                self._e_spec,
                self._psi,
                self._c,
                p.psi_smoothing,
                0.5,
                p.misalignment,
                p.psi_floor,
                p.psi_flat_floor,
                p.noise_scale,
                step,
                forget**2 * p.cross_covariance_keep,
                self._cx,
                self._grad,
            )
        elif adapt:
            kalman_gain_kernel(
                self._x_hist,
                self._e_spec,
                self._psi,
                self._p,
                p.psi_smoothing,
                0.5,
                p.misalignment,
                p.psi_floor,
                p.psi_flat_floor,
                p.noise_scale,
                step,
                self._grad,
            )
        coherence_kernel(
            self._x_hist,
            self._e_spec,
            p.coherence_smoothing,
            self._s_ex,
            self._s_xx,
            self._s_ee,
            self.coherence,
        )
        if adapt:
            self._update_filter(forget)
        monitor_kernel(
            mic,
            self.out,
            self.echo,
            self._x_cur,
            self.coherence,
            self._mon_params if adapt else self._mon_params_quiet,
            self._pow,
            self._counters,
            self._mon,
        )
        if self._mon[1]:
            self._adapt_hold = self.params.double_talk_adapt_hold_blocks + 1
        elif self._adapt_hold:
            self._adapt_hold -= 1
        if self._boot is not None and not adapt:
            if self._boot_state == 2:
                self._boot_state = 1
            self._boot.abort()
        elif self._boot is not None and (
            self._boot_state or self._boot.solving or self._boot.ready
        ):
            self._bootstrap_step(mic, ref)
        self.realigned_samples = 0
        if self._shift_max:
            k = self._ring_block * n
            self._y_ring[:, k : k + n] = mic
            self._e_ring[:, k : k + n] = self.echo
            self._ring_block = (self._ring_block + 1) % self._ring_blocks
            self._ring_fill = min(self._ring_fill + 1, self._ring_blocks)
        if self._shift_max and not self._mon[3]:
            # a slid reference may leave the error incoherent with it (the detector then
            # sees double talk, not a path change): test for a slide on the error alone
            big, calm = False, True
            for m in range(self.n_mics):  # error above path_change_db of the mic / 10 dB below
                big = big or self._pow[m, 1] > self._mon_params[4] * self._pow[m, 0]
                calm = calm and self._pow[m, 1] < 0.1 * self._pow[m, 0]
            if self._mon[0]:  # far-end blocks only: a pause neither counts nor resets
                if self._slide_run < 0:  # waiting after a test that found no slide
                    self._slide_run += 1
                else:
                    self._slide_run = self._slide_run + 1 if big and self._converged else 0
                self._calm = self._calm + 1 if calm and self._converged else 0
            ring_blocks = self._ring_blocks
            if self._slide_run >= ring_blocks or (self._verify and self._ring_fill >= ring_blocks):
                # the ring is all after the slide; or the first ring after a realignment
                # (a check: the estimates it was found on were partly adapted to the slid
                # reference); a test that finds no slide waits 10 rings before the next
                self._verify = False
                self._slide_run = 0 if self._realign() else -10 * ring_blocks
            # the filter of a calm stretch, which a realignment restores (the Kalman filter
            # adapts toward the slid reference until the slide is found)
            if self._calm >= ring_blocks:
                np.copyto(self._w_good, self._w)
                self._has_good, self._calm = True, 0
        if not math.isnan(self._mon[2]) and self._mon[2] >= p.path_change_min_erle_db:
            self._converged = True
        if self._mon[3] and self._realign():
            self._mon[3] = 0.0  # the filter is right, only the reference slid
        elif self._mon[3]:  # the old filter is wrong: start afresh (fastest re-convergence)
            self.path_changes_total += 1
            self._restart_filter()
        return self.out

    def _echo_of(self, w: np.ndarray, length: int) -> np.ndarray:
        """``(n_mic, length)`` echo estimate the filter ``w`` would have made over the last
        ``length`` samples (a whole number of blocks): the canceller's own overlap-save,
        ``y^_b = last N of IFFT(sum_p W_p X_{b-p})``, on the delayed reference from the
        delay line. Allocates (a rare event)."""
        n, n_part = self.block_samples, self.n_partitions
        n_blocks = length // n
        size = (n_blocks + n_part + 1) * n
        end = int(self._ring_pos[0]) - self.delay_samples  # one past the newest sample
        idx = (end - size + np.arange(size)) % self._ring.shape[1]
        x = self._ring[:, idx].astype(np.float64)  # (n_ref, size), oldest first
        starts = np.arange(n_blocks + n_part) * n  # frame t: x[t N : (t + 2) N]
        frames = x[:, starts[:, None] + np.arange(2 * n)]  # (n_ref, B + P, 2N)
        spec = np.fft.rfft(frames, axis=-1)
        t = n_part + np.arange(n_blocks)[:, None] - np.arange(n_part)[None, :]  # (B, P)
        y_hat = np.einsum("mrpk,rbpk->mbk", w, spec[:, t])
        return np.fft.irfft(y_hat, 2 * n, axis=-1)[..., n:].reshape(self.n_mics, -1)

    def _realign(self) -> bool:
        """On an echo-path change (or a run of large errors, see :meth:`process`): if a
        shift ``s`` of the recent echo estimate explains the recent mic samples
        (:func:`~mica.array_dsp.aec_realign.best_shift`), move the bulk delay by ``-s``
        keeping the filter (the reference history is rebuilt from the delay
        line) and return True. Allocates (a rare event)."""
        m, n = self._shift_max, self.block_samples
        if not m or self.max_delay_samples == 0 or self._ring_fill < self._ring_blocks:
            return False  # off, no delay line, or the ring holds estimates of two alignments
        k = self._ring_block * n  # oldest sample first
        y = np.concatenate([self._y_ring[:, k:], self._y_ring[:, :k]], axis=1)
        if self._has_good:  # the echo estimate of the filter from before the slide
            e = self._echo_of(self._w_good, y.shape[1])
        else:
            e = np.concatenate([self._e_ring[:, k:], self._e_ring[:, :k]], axis=1)
        p = self.params
        s = best_shift(y, e, m, p.realign_gain_db, p.realign_residual_db)
        new = self.delay_samples - s
        if s == 0 or not 0 <= new <= self.max_delay_samples:
            return False
        log.info("aec: the echo estimate slid %+d samples: bulk delay %d -> %d, filter kept",
                 s, self.delay_samples, new)
        self.delay_samples = new
        if self._has_good:
            np.copyto(self._w, self._w_good)
        self._rebuild_history()
        for buf in (self._s_ex, self._s_xx, self._s_ee, self.coherence):
            buf.fill(0)
        self._counters[: self.n_mics] = 0  # the path-change runs counted the slide
        self._ring_fill = 0  # its echo estimates were made at the old alignment
        self._slide_run = 0
        self._verify = True
        if self._boot is not None:  # a segment across the slide mixes two alignments
            self._boot.abort()
            if self._boot_state == 2:
                self._boot_state = 0
        self.realigned_samples = -s
        self.realigns_total += 1
        return True

    def _update_filter(self, forget: float) -> None:
        """Gradient constraint (every partition, or none: see :meth:`_project_filter`),
        ``W += grad`` with the time update of the state covariance (``A = forget``)."""
        n = self.block_samples
        if self._cp == 0:
            _irfft(self._grad, 2 * n, self._grad_time)
            constrain_kernel(self._grad_time_2d)
            _rfft(self._grad_time, self._grad)
        if self._full:
            state_update_full_kernel(self._w, self._grad, self._c, forget**2)
        else:
            state_update_kernel(self._w, self._grad, self._p, forget**2)
        if self._cp:
            self._project_filter()

    def _bootstrap_step(self, mic: np.ndarray, ref: np.ndarray) -> None:
        """The LS bootstrap (:mod:`mica.array_dsp.aec_bootstrap`) for this block: start a
        segment at the far end's first block, add the block (its rows only outside
        trusted double talk), begin a refit when one is due or the segment moved to a new
        delay (warm start: the Kalman filter), run ``bootstrap_iterations_per_block`` of
        its PCG iterations, and in the block after it is done take the LS filter for each
        mic :meth:`LsBootstrap.accept` admits. A refit's beginning, its iterations and its
        taking fall in different blocks (a refit due in a taking block begins in the
        next), so no block pays for two of them: the slowest block is the slowest part."""
        boot, n, p = self._boot, self.block_samples, self.params
        took, began = boot.ready, False  # a solve finished in the last block: take it now
        if took:
            boot.ready = False
            self._bootstrap_take()
        if self._boot_state == 1 and self._mon[0]:
            length = self._ring.shape[1]
            head = boot.max_delay + boot.taps - 1  # undelayed samples before this block
            end = int(self._ring_pos[0]) - n
            idx = (end - head + np.arange(head)) % length
            boot.start(self._ring[:, idx], self.delay_samples)
            self._boot_state = 2
            self._boot_refit_now = False
        if self._boot_state == 2:
            erle = self._mon[2]
            trusted = not math.isnan(erle) and erle >= p.bootstrap_dt_erle_db
            include = not (self._mon[1] and trusted)
            if not boot.push(self._x_cur, mic, include, ref):
                self._boot_state = 0
            else:
                due = (
                    include
                    and not boot.solving
                    and (
                        self._boot_refit_now
                        or refit_due(
                            boot.included_blocks,
                            p.bootstrap_refit_blocks,
                            p.bootstrap_refit_growth,
                        )
                    )
                )
                if due and took:
                    self._boot_refit_now = True  # the next block begins it
                elif due:
                    self._boot_refit_now = False
                    boot.begin(self._filter_taps(), p.bootstrap_reg, p.bootstrap_iterations)
                    began = True
                if boot.full:
                    self._boot_state = 0
        if boot.solving and not began:
            boot.iterate(p.bootstrap_iterations_per_block)  # done: taken next block

    def _filter_taps(self) -> np.ndarray:
        """``(n_mic, n_ref P N)`` impulse responses of the filters (ref-major). Allocates."""
        n = self.block_samples
        return np.fft.irfft(self._w, 2 * n, axis=-1)[..., :n].reshape(self.n_mics, -1)

    def _bootstrap_take(self) -> None:
        """Replace the filter of each mic where the finished LS solution is admitted."""
        boot, n, n_part, p = self._boot, self.block_samples, self.n_partitions, self.params
        h = boot.solution
        better = boot.accept(
            h, self._filter_taps(), p.bootstrap_min_rows, p.bootstrap_max_residual_db
        )
        if np.any(better):
            pad = np.zeros((self.n_mics, self.n_refs, n_part, 2 * n))
            pad[..., :n] = h.reshape(self.n_mics, self.n_refs, n_part, n)
            spec = np.fft.rfft(pad, axis=-1)
            for m in np.nonzero(better)[0]:
                self._w[m] = spec[m]
                self.bootstrap_refits_taken += 1

    def _project_filter(self) -> None:
        """Alternating constraint: the next ``c`` partitions of ``W`` (round robin) to
        impulse responses of ``N`` taps (irfft, zero the last ``N``, rfft)."""
        n = self.block_samples
        a = self._cp_next
        b = min(a + self._cp, self.n_partitions)
        length = b - a
        w_time = self._w_time[:, :, :length]
        _irfft(self._w[:, :, a:b], 2 * n, w_time)
        w_time[..., n:] = 0.0
        _rfft(w_time, self._w_spec[:, :, :length])
        self._w[:, :, a:b] = self._w_spec[:, :, :length]
        self._cp_next = 0 if b >= self.n_partitions else b

    def reset(self) -> None:
        """Back to silence: filter, reference history, monitors (keeps the bulk delay)."""
        self._restart_filter()
        for buf in (
            self._ring,
            self._ring_pos,
            self._x_prev,
            self._x_hist,
            self._pow,
            self._counters,
            self._y_ring,
            self._e_ring,
        ):
            buf.fill(0)
        self._mon[:2] = 0.0
        self._mon[2:] = math.nan
        self._mon[3] = 0.0
        self._adapt_hold = 0

    def warmup(self) -> None:
        """Compile (or load) every kernel, then :meth:`reset`."""
        n = self.block_samples
        self.process(np.zeros((self.n_mics, n), np.float32), np.zeros((self.n_refs, n), np.float32))
        if self._boot is not None:  # its kernel runs only on far-end blocks: not above
            self._boot.warmup()
        self.reset()


# --------------------------------------------------------------------------- reference


def aec_reference(
    mic: np.ndarray,
    ref: np.ndarray,
    block_samples: int,
    fs_hz: float = 16000,
    params: AecParams | None = None,
    delay_samples: int = 0,
) -> dict[str, np.ndarray]:
    """Whole-signal numpy reference of :class:`EchoCanceller` (same algorithm, no kernels).

    mic ``(n_mic, n_blocks * N)`` and ref ``(n_ref, n_blocks * N)`` float32. Returns
    ``{"out": (n_mic, n) float32, "echo": (n_mic, n) float32, "far": (n_blocks,),
    "double_talk": (n_blocks,), "erle_db": (n_blocks,), "path_change": (n_blocks,)}``.
    The bulk delay is fixed (``delay_samples``), so the realignment of a slid reference
    (:attr:`AecParams.realign_max_ms`, which moves the delay) is not modelled: its test,
    :func:`~mica.array_dsp.aec_realign.shift_residuals`, has its own direct-sum reference.
    """
    p = params or AecParams()
    n = block_samples
    n_mic, total = mic.shape
    n_ref = ref.shape[0]
    n_blocks = total // n
    n_part = n_partitions(p.tail_ms, fs_hz, n)
    k_bins = n + 1
    ref_d = np.concatenate([np.zeros((n_ref, delay_samples), np.float32), ref], axis=1)
    w = np.zeros((n_mic, n_ref, n_part, k_bins), np.complex128)
    pc = np.full(w.shape, p.initial_state_var)
    n_q = n_ref * n_part
    full = uses_full_covariance(p, n_ref, n_part)
    eye_q = np.eye(n_q)
    c_init = p.initial_state_var * np.broadcast_to(eye_q, (n_mic, k_bins, n_q, n_q))
    cc = c_init.astype(np.complex128)  # (n_mic, K, Q, Q), used when full
    psi = np.zeros((n_mic, k_bins))
    x_hist = np.zeros((n_ref, n_part, k_bins), np.complex128)
    x_prev = np.zeros((n_ref, n), np.float32)
    pw = np.zeros((n_mic, 5))
    div = np.zeros(n_mic, int)
    hold = 0
    thr_far = 10.0 ** (p.far_threshold_db / 10.0)
    dt_ratio = 10.0 ** (p.double_talk_db / 10.0)
    pc_ratio = 10.0 ** (p.path_change_db / 10.0)
    cp = min(p.constraint_partitions, n_part)
    cp_next = 0
    adapt_hold = 0
    pc_min_erle = 10.0 ** (p.path_change_min_erle_db / 10.0)
    s_xx = np.zeros((n_ref, n_part, k_bins))
    s_ee = np.zeros((n_mic, k_bins))
    s_ex = np.zeros((n_mic, n_ref, n_part, k_bins), np.complex128)
    a, ae = p.power_smoothing, p.erle_smoothing
    boot_blocks = int(round(p.bootstrap_s * fs_hz / n))
    boot = (
        LsBootstrap(
            n_mic, n_part * n, n, boot_blocks, p.bootstrap_max_gaps, use_kernel=False,
            n_refs=n_ref,
        )
        if boot_blocks > 0
        else None
    )
    boot_state = 1
    refit_next = False  # a refit came due in a taking block: begin it in the next
    out = np.zeros((n_mic, n_blocks * n), np.float32)
    echo = np.zeros_like(out)
    res = {k: np.zeros(n_blocks) for k in ("far", "double_talk", "erle_db", "path_change")}
    for b in range(n_blocks):
        sl = slice(b * n, (b + 1) * n)
        x_cur = ref_d[:, sl]
        x_new = np.fft.rfft(np.concatenate([x_prev, x_cur], axis=1).astype(np.float64))
        x_prev = x_cur.copy()
        x_hist = np.concatenate([x_new[:, None], x_hist[:, :-1]], axis=1)
        y_hat = np.einsum("mrpk,rpk->mk", w, x_hist)
        yh = np.fft.irfft(y_hat, 2 * n)[:, n:]
        e = (mic[:, sl] - yh).astype(np.float32)
        out[:, sl] = e
        echo[:, sl] = yh.astype(np.float32)
        e_spec = np.fft.rfft(np.concatenate([np.zeros((n_mic, n)), e.astype(np.float64)], 1))
        psi = p.psi_smoothing * psi + (1 - p.psi_smoothing) * np.abs(e_spec) ** 2
        x2 = np.abs(x_hist) ** 2
        xq = np.transpose(x_hist.reshape(n_q, k_bins))  # (K, Q)
        if full:
            cxq = np.einsum("mkij,kj->mki", cc, np.conj(xq))
            pxx = np.real(np.einsum("ki,mki->mk", xq, cxq))
        else:
            pxx = np.einsum("mrpk,rpk->mk", pc, x2)
        flat = p.psi_flat_floor * psi.mean(axis=1, keepdims=True)
        psi_ss = np.maximum(np.maximum(psi - p.misalignment * pxx, p.psi_floor * psi), flat)
        den = (pxx + p.noise_scale * psi_ss + 1e-20) / (p.double_talk_step if adapt_hold else 1.0)
        if full:
            gq = cxq / den[:, :, None]  # (m, K, Q)
            grad = np.transpose(gq * e_spec[:, :, None], (0, 2, 1)).reshape(w.shape)
            cc = cc - 0.5 * gq[..., :, None] * np.conj(cxq)[..., None, :]
        else:
            gain = pc / den[:, None, None, :]
            grad = gain * np.conj(x_hist)[None] * e_spec[:, None, None, :]
            pc = pc * (1.0 - 0.5 * gain * x2[None])
        if cp == 0:
            gt = np.fft.irfft(grad, 2 * n)
            gt[..., n:] = 0.0
            grad = np.fft.rfft(gt)
        w = w + grad
        a2 = (p.double_talk_path_forget if adapt_hold else p.path_forget) ** 2
        pc = a2 * pc + (1 - a2) * np.abs(w) ** 2
        if full:
            d = np.einsum("mkii->mki", cc).real
            cc = cc * (a2 * p.cross_covariance_keep)
            wq = np.transpose(w.reshape(n_mic, n_q, k_bins), (0, 2, 1))
            q = np.arange(n_q)
            cc[:, :, q, q] = a2 * d + (1 - a2) * np.abs(wq) ** 2
        if cp:
            lo, hi = cp_next, min(cp_next + cp, n_part)
            wt = np.fft.irfft(w[:, :, lo:hi], 2 * n)
            wt[..., n:] = 0.0
            w[:, :, lo:hi] = np.fft.rfft(wt)
            cp_next = 0 if hi >= n_part else hi
        # coherence (coherence_kernel)
        ac = p.coherence_smoothing
        s_xx = ac * s_xx + (1 - ac) * x2
        s_ee = ac * s_ee + (1 - ac) * np.abs(e_spec) ** 2
        s_ex = ac * s_ex + (1 - ac) * e_spec[:, None, None, :] * np.conj(x_hist)[None]
        num = np.sum(np.abs(s_ex) ** 2, axis=-1)
        den = 1e-30 + np.einsum("mk,rpk->mrp", s_ee, s_xx)
        coh = (num / den).reshape(n_mic, -1).max(axis=1)
        # monitors (monitor_kernel)
        px = float(np.mean(x_cur.astype(np.float64) ** 2))
        far = px > thr_far
        py = np.mean(mic[:, sl].astype(np.float64) ** 2, axis=1)
        pe = np.mean(e.astype(np.float64) ** 2, axis=1)
        pyh = np.mean(echo[:, sl].astype(np.float64) ** 2, axis=1)
        pw[:, 0] = a * pw[:, 0] + (1 - a) * py
        pw[:, 1] = a * pw[:, 1] + (1 - a) * pe
        pw[:, 2] = a * pw[:, 2] + (1 - a) * pyh
        dt_now = far and bool(
            np.any((pw[:, 1] > dt_ratio * pw[:, 2]) & (coh < p.double_talk_coherence))
        )
        converged = (pw[:, 3] > 0) & (pw[:, 3] > pc_min_erle * pw[:, 4])
        bad = far & converged & (pw[:, 1] > pc_ratio * pw[:, 0]) & (coh >= p.path_change_coherence)
        div = np.where(bad, div + 1, 0)
        change = bool(np.any(div >= p.path_change_blocks))
        hold = p.double_talk_hold_blocks + 1 if dt_now else max(hold - 1, 0)
        dt = hold > 0
        adapt_hold = p.double_talk_adapt_hold_blocks + 1 if dt else max(adapt_hold - 1, 0)
        if far and not dt:
            pw[:, 3] = ae * pw[:, 3] + (1 - ae) * pw[:, 0]
            pw[:, 4] = ae * pw[:, 4] + (1 - ae) * pw[:, 1]
        sy, se = pw[:, 3].sum(), pw[:, 4].sum()
        res["far"][b] = far
        res["double_talk"][b] = dt
        res["erle_db"][b] = 10 * np.log10((sy + 1e-30) / (se + 1e-30)) if sy > 0 else np.nan
        res["path_change"][b] = change
        took = began = False
        if boot is not None and boot.ready:  # a solve finished in the last block
            boot.ready, took = False, True
            taps = np.fft.irfft(w, 2 * n)[..., :n].reshape(n_mic, -1)
            h = boot.solution.reshape(n_mic, n_ref, n_part, n)
            better = boot.accept(
                boot.solution, taps, p.bootstrap_min_rows, p.bootstrap_max_residual_db
            )
            hp = np.concatenate([h, np.zeros_like(h)], -1)
            w[better] = np.fft.rfft(hp, axis=-1)[better]
        if boot is not None and boot_state == 1 and far:
            lo = b * n - (n_part * n - 1)
            pre = ref_d[:, max(0, lo) : b * n].astype(np.float64)
            boot.start(np.concatenate([np.zeros((n_ref, max(0, -lo))), pre], axis=1))
            boot_state = 2
            refit_next = False
        if boot is not None and boot_state == 2:
            erle = res["erle_db"][b]
            include = not (dt and not np.isnan(erle) and erle >= p.bootstrap_dt_erle_db)
            if not boot.push(x_cur, mic[:, sl], include):
                boot_state = 0
            else:
                due = (
                    include
                    and not boot.solving
                    and (
                        refit_next
                        or refit_due(
                            boot.included_blocks,
                            p.bootstrap_refit_blocks,
                            p.bootstrap_refit_growth,
                        )
                    )
                )
                if due and took:
                    refit_next = True  # the next block begins it
                elif due:
                    refit_next = False
                    taps = np.fft.irfft(w, 2 * n)[..., :n].reshape(n_mic, -1)
                    boot.begin(taps, p.bootstrap_reg, p.bootstrap_iterations)
                    began = True
                if boot.full:
                    boot_state = 0
        if boot is not None and boot.solving and not began:
            boot.iterate(p.bootstrap_iterations_per_block)  # done: taken next block
        if change:
            boot_state = 1
            if boot is not None:
                boot.abort()
            div[:] = 0
            pw[:, 3:5] = 0.0
            pc = np.full(w.shape, p.initial_state_var)
            cc = c_init.astype(np.complex128)
            w = np.zeros_like(w)
            cp_next = 0
            psi = np.zeros_like(psi)
            s_ex, s_xx, s_ee = np.zeros_like(s_ex), np.zeros_like(s_xx), np.zeros_like(s_ee)
    return {"out": out, "echo": echo, **res}
