"""Measurements on a multichannel recording: per-mic gain, dead mics, inter-mic delays and the
channel order.

Every function takes a recording ``x`` of shape ``(n_ch, n_samples)`` (float, full scale 1.0)
and its rate ``fs_hz``; channel ``i`` of the recording is *capture channel* ``i``. Microphones
are the rows of a board profile's geometry (*mic* ``k``). Plain numpy/scipy: each procedure
runs once per calibration, on a few seconds of audio, so nothing here needs a Numba kernel.

Sign conventions (as in :mod:`mica.array_dsp.steering`): ``tdoa_s[i, j] = t_i - t_j``, the
arrival time at channel ``i`` minus that at channel ``j``; a plane wave with slowness vector
``s = u / c`` reaches the mic at ``p`` at ``t = -(p - centroid) . s``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import signal

from mica.array_dsp.errors import MicaError
from mica.array_dsp.steering import SOUND_SPEED_M_S, direction_unit


class CalibrationError(MicaError):
    """A measurement cannot be made on this recording (too short, wrong channel count...)."""


MAX_GENERAL_PERMUTATION_MICS = 8
"""Up to this many mics every permutation is tried (8! = 40320); above it only the rotations
and reflections of a circular array (and the identity)."""

DEAD_SILENT_DBFS = -70.0
"""A channel whose RMS level is below this (dBFS) is dead: nothing is connected."""
DEAD_WEAK_DB = 20.0
"""A channel this many dB below the median of the array is reported dead (blocked port)."""
CLIP_FRACTION = 0.01
"""More than this share of samples at full scale: the channel clips (or is stuck high)."""


def _check_recording(x: np.ndarray, fs_hz: float, min_seconds: float = 0.25) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1:
        raise CalibrationError(f"recording must be (n_channels, n_samples), got shape {x.shape}")
    if not fs_hz > 0:
        raise CalibrationError(f"fs_hz must be > 0, got {fs_hz!r}")
    if x.shape[1] < min_seconds * fs_hz:
        raise CalibrationError(f"recording too short: {x.shape[1] / fs_hz:.2f} s, need at least "
                               f"{min_seconds:.2f} s")
    if not np.all(np.isfinite(x)):
        raise CalibrationError("recording holds NaN or inf samples")
    return x.astype(np.float64, copy=False)


# --------------------------------------------------------------------------- levels, dead mics


@dataclass(frozen=True)
class ChannelHealth:
    """Per-channel levels and the dead-mic verdict.

    Attributes:
        rms_dbfs: ``(n_ch,)`` RMS level of each channel, dBFS.
        relative_db: ``(n_ch,)`` level against the median of the live channels, dB.
        clip_fraction: ``(n_ch,)`` share of samples at or above 0.999 full scale.
        coherence: ``(n_ch,)`` best mean magnitude-squared coherence (200 Hz - 2 kHz) with any
            other channel; a disconnected input that still picks up electrical noise has
            almost none.
        verdicts: per channel ``"ok"``, ``"silent"``, ``"weak"``, ``"clipping"`` or
            ``"incoherent"``.
    """

    rms_dbfs: np.ndarray
    relative_db: np.ndarray
    clip_fraction: np.ndarray
    coherence: np.ndarray
    verdicts: list[str]

    @property
    def dead(self) -> list[int]:
        """Channels that carry no usable microphone signal."""
        return [i for i, v in enumerate(self.verdicts) if v in ("silent", "weak", "incoherent")]


def channel_health(x: np.ndarray, fs_hz: float, coherence_min: float = 0.05) -> ChannelHealth:
    """Dead-mic test: level, clipping and coherence of every channel of a recording.

    Record a few seconds of room noise or speech. A channel is ``silent`` below
    :data:`DEAD_SILENT_DBFS`, ``weak`` more than :data:`DEAD_WEAK_DB` below the array median,
    ``clipping`` above :data:`CLIP_FRACTION` samples at full scale, and ``incoherent`` when it
    shares (almost) nothing with any other channel while the others do (a floating input).
    """
    x = _check_recording(x, fs_hz)
    n_ch = x.shape[0]
    rms = np.sqrt(np.mean((x - x.mean(axis=1, keepdims=True)) ** 2, axis=1))
    rms_dbfs = 20.0 * np.log10(np.maximum(rms, 1e-12))
    live = rms_dbfs > DEAD_SILENT_DBFS
    ref = float(np.median(rms_dbfs[live])) if live.any() else float(np.median(rms_dbfs))
    relative = rms_dbfs - ref
    clip = np.mean(np.abs(x) >= 0.999, axis=1)
    coh = _best_coherence(x, fs_hz) if n_ch > 1 else np.ones(1)
    verdicts = []
    others_coherent = np.sort(coh)[-min(2, n_ch):].min() if n_ch > 1 else 1.0
    for i in range(n_ch):
        if not live[i]:
            verdicts.append("silent")
        elif relative[i] < -DEAD_WEAK_DB:
            verdicts.append("weak")
        elif clip[i] > CLIP_FRACTION:
            verdicts.append("clipping")
        elif n_ch > 2 and coh[i] < coherence_min <= others_coherent:
            verdicts.append("incoherent")
        else:
            verdicts.append("ok")
    return ChannelHealth(rms_dbfs, relative, clip, coh, verdicts)


def _best_coherence(x: np.ndarray, fs_hz: float) -> np.ndarray:
    """Per channel, the best band-mean coherence with another channel."""
    n_ch = x.shape[0]
    nper = int(min(1024, 2 ** math.floor(math.log2(max(64, x.shape[1] // 8)))))
    best = np.zeros(n_ch)
    for i, j in itertools.combinations(range(n_ch), 2):
        f, c = signal.coherence(x[i], x[j], fs=fs_hz, nperseg=nper)
        band = (f >= 200.0) & (f <= min(2000.0, 0.45 * fs_hz))
        value = float(np.nan_to_num(c[band]).mean()) if band.any() else 0.0
        best[i] = max(best[i], value)
        best[j] = max(best[j], value)
    return best


# --------------------------------------------------------------------------- gain


@dataclass(frozen=True)
class GainEstimate:
    """Per-mic sensitivity from a diffuse (or at least spatially spread) noise field.

    Attributes:
        level_db: ``(n_ch,)`` each channel's level against the array median, dB (a mic 6 dB
            too quiet reads -6).
        correction_db: ``(n_ch,)`` the gain to apply to equalise the array (``-level_db``;
            0 for excluded channels).
        spread_db: ``(n_ch,)`` interquartile range of the per-band estimates, dB: small when
            the field was diffuse and the estimate is trustworthy.
        band_hz: the band the levels were measured in.
    """

    level_db: np.ndarray
    correction_db: np.ndarray
    spread_db: np.ndarray
    band_hz: tuple[float, float]


def estimate_gains(x: np.ndarray, fs_hz: float, exclude: list[int] | tuple[int, ...] = (),
                   band_hz: tuple[float, float] = (200.0, 6000.0)) -> GainEstimate:
    """Relative mic gains from a diffuse-noise recording (e.g. pink noise or a running fan
    in a reverberant room, the mics' ports unobstructed).

    In a diffuse field every mic sees the same power spectral density, so each channel's PSD
    over the array's median PSD, taken per frequency band and then the median across bands,
    is its sensitivity error. The medians make the estimate robust to one bad mic and to a few
    bands where a room mode or a directional noise dominates.
    """
    x = _check_recording(x, fs_hz)
    n_ch = x.shape[0]
    keep = [i for i in range(n_ch) if i not in set(exclude)]
    if not keep:
        raise CalibrationError("every channel is excluded: no gain to estimate")
    nper = int(min(1024, 2 ** math.floor(math.log2(max(64, x.shape[1] // 8)))))
    f, psd = signal.welch(x, fs=fs_hz, nperseg=nper, axis=-1)
    lo, hi = band_hz[0], min(band_hz[1], 0.45 * fs_hz)
    band = (f >= lo) & (f <= hi)
    if band.sum() < 4:
        raise CalibrationError(f"band {lo:.0f}-{hi:.0f} Hz holds too few bins at {fs_hz} Hz")
    psd_db = 10.0 * np.log10(np.maximum(psd[:, band], 1e-30))
    ref = np.median(psd_db[keep], axis=0)
    return gains_from_band_levels(psd_db - ref, keep, (lo, hi))


def gains_from_band_levels(per_band_db: np.ndarray, keep: list[int] | np.ndarray,
                           band_hz: tuple[float, float]) -> GainEstimate:
    """Per-channel gains from per-bin levels relative to the array.

    ``level_c = median_k per_band_db[c, k] - median_{c' in keep} (median_k per_band_db[c', k])``
    (medians, so narrow-band peaks and nulls do not move it); the correction is ``-level``
    for the kept channels and 0 for the others; the spread is the interquartile range over
    the bins.

    Args:
        per_band_db: (n_channels, n_bins) level of each channel in each bin, in dB,
            relative to any per-bin reference (it cancels).
        keep: the channels that define 0 dB (not dead, not excluded).
        band_hz: the band the bins cover (reported with the estimate).
    """
    level = np.median(per_band_db, axis=1)
    level -= np.median(level[keep])
    q75, q25 = np.percentile(per_band_db, [75, 25], axis=1)
    correction = -level
    for i in set(range(per_band_db.shape[0])) - set(int(k) for k in keep):
        correction[i] = 0.0
    return GainEstimate(level, correction, q75 - q25, (float(band_hz[0]), float(band_hz[1])))


# --------------------------------------------------------------------------- delays


@dataclass(frozen=True)
class Tdoas:
    """Pairwise time differences of arrival measured with GCC-PHAT.

    Attributes:
        tdoa_s: ``(n_ch, n_ch)`` antisymmetric, ``t_i - t_j`` in seconds.
        peak: ``(n_ch, n_ch)`` symmetric height of the PHAT correlation peak (0..1): how
            clearly one path dominates for that pair.
        arrival_s: ``(n_ch,)`` least-squares arrival times (sum zero) fitting every pair.
        consistency_s: RMS misfit of the pairs against ``arrival_s`` (s); large when the
            pairs disagree (reverberation, several sources).
    """

    tdoa_s: np.ndarray
    peak: np.ndarray
    arrival_s: np.ndarray
    consistency_s: float


def gcc_phat(x: np.ndarray, fs_hz: float, max_tau_s: float, n_fft: int = 1024,
             interp: int = 16, band_hz: tuple[float, float] = (150.0, 7000.0)) -> Tdoas:
    """GCC-PHAT TDOAs of every channel pair over the whole recording.

    The cross-spectra of all frames are summed first and then PHAT-weighted (one whitened
    correlation per pair), the peak is searched within ``+-max_tau_s`` on a grid ``interp``
    times finer than the sample period and refined by a parabola through its neighbours.
    """
    x = _check_recording(x, fs_hz)
    n_ch, n = x.shape
    if n < n_fft:
        raise CalibrationError(f"recording too short for n_fft = {n_fft}: {n} samples")
    hop = n_fft // 2
    n_frames = 1 + (n - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    win = signal.get_window("hann", n_fft)
    spec = np.fft.rfft(x[:, idx] * win, axis=-1)  # (n_ch, n_frames, n_bins)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / fs_hz)
    band = (freqs >= band_hz[0]) & (freqs <= min(band_hz[1], 0.49 * fs_hz))
    n_up = n_fft * interp
    max_lag = int(math.ceil(max_tau_s * fs_hz * interp)) + 1
    max_lag = min(max_lag, n_up // 2 - 2)
    tdoa = np.zeros((n_ch, n_ch))
    peak = np.ones((n_ch, n_ch))
    for i, j in itertools.combinations(range(n_ch), 2):
        cross = np.sum(spec[i] * np.conj(spec[j]), axis=0)
        mag = np.abs(cross)
        cross = np.where(band & (mag > 0), cross / np.maximum(mag, 1e-30), 0.0)
        cc = np.fft.irfft(cross, n=n_up) * (n_up / max(1, band.sum()) / 2.0)
        window = np.concatenate([cc[-max_lag:], cc[:max_lag + 1]])
        k = int(np.argmax(window))
        frac = 0.0
        if 0 < k < window.size - 1:
            y0, y1, y2 = window[k - 1], window[k], window[k + 1]
            denom = y0 - 2 * y1 + y2
            if denom < 0:
                frac = 0.5 * (y0 - y2) / denom
        lag = (k - max_lag + frac) / interp
        tdoa[i, j], tdoa[j, i] = lag / fs_hz, -lag / fs_hz
        peak[i, j] = peak[j, i] = float(window[k])
    arrival, misfit = _arrivals_from_pairs(tdoa, peak)
    return Tdoas(tdoa, peak, arrival, misfit)


def _arrivals_from_pairs(tdoa: np.ndarray, peak: np.ndarray) -> tuple[np.ndarray, float]:
    """Weighted least-squares arrival times ``t`` (sum zero) with ``t_i - t_j ~ tdoa[i, j]``."""
    n_ch = tdoa.shape[0]
    if n_ch == 1:
        return np.zeros(1), 0.0
    pairs = list(itertools.combinations(range(n_ch), 2))
    a = np.zeros((len(pairs) + 1, n_ch))
    b = np.zeros(len(pairs) + 1)
    w = np.ones(len(pairs) + 1)
    for r, (i, j) in enumerate(pairs):
        a[r, i], a[r, j], b[r] = 1.0, -1.0, tdoa[i, j]
        w[r] = max(peak[i, j], 1e-3)
    a[-1, :] = 1.0  # sum of arrivals = 0
    w[-1] = 10.0
    sw = np.sqrt(w)[:, None]
    t, *_ = np.linalg.lstsq(a * sw, b * sw[:, 0], rcond=None)
    resid = a[:-1] @ t - b[:-1]
    return t, float(np.sqrt(np.mean(resid**2)))


# --------------------------------------------------------------------------- channel order


def geometry_symmetries(positions_m: np.ndarray, tol_m: float = 1e-4) -> np.ndarray:
    """``(n_sym, n)`` the permutations ``g`` of the mics that keep every pairwise distance
    (``|p_g[a] - p_g[b]| = |p_a - p_b|``): the array's rotations and reflections. Row 0 is the
    identity. Without a known source direction the channel order is only determined up to
    these."""
    p = np.asarray(positions_m, dtype=np.float64)
    n = p.shape[0]
    dist = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))
    cands = _candidate_permutations(p)
    ok = np.all(np.abs(dist[cands[:, :, None], cands[:, None, :]] - dist[None]) < tol_m,
                axis=(1, 2))
    sym = cands[ok]
    ident = np.arange(n)
    order = np.argsort([0 if np.array_equal(s, ident) else 1 for s in sym], kind="stable")
    return sym[order]


def _candidate_permutations(positions_m: np.ndarray) -> np.ndarray:
    """Every permutation for up to :data:`MAX_GENERAL_PERMUTATION_MICS` mics; above, the
    dihedral group of a circular array (rotations and reflections of the ring order) and
    the identity."""
    n = positions_m.shape[0]
    if n <= MAX_GENERAL_PERMUTATION_MICS:
        return np.array(list(itertools.permutations(range(n))), dtype=np.int64)
    c = positions_m - positions_m.mean(axis=0)
    ang = np.arctan2(c[:, 1], c[:, 0])
    ring = np.argsort(ang)
    perms = [np.arange(n)]
    for shift in range(n):
        for flip in (False, True):
            order = np.roll(ring[::-1] if flip else ring, shift)
            perm = np.empty(n, dtype=np.int64)
            perm[ring] = order
            perms.append(perm)
    return np.unique(np.array(perms, dtype=np.int64), axis=0)


@dataclass(frozen=True)
class ChannelOrder:
    """Result of :func:`check_channel_order`.

    Attributes:
        mic_of_channel: ``(n,)`` for each recording channel the profile mic it carries.
        mic_channels: ``(n,)`` for each profile mic the recording channel that carries it
            (the value for ``array.mic_channels``, relative to the channels checked).
        is_identity: the channels are in profile order.
        confidence: 0..1, ``1 - rms_best / rms_next`` where ``rms_next`` is the best fit of
            an order that is not equivalent to the reported one.
        rms_us: RMS misfit of the reported order, microseconds.
        rms_next_us: RMS misfit of the best non-equivalent order, microseconds.
        slowness_s_m: ``(3,)`` fitted slowness vector ``u / c`` of the dominant source.
        azimuth_deg: its azimuth in the profile frame.
        equivalent: other orders that fit equally well because of the array's symmetry (only
            without a known source direction); resolve with ``source_azimuth_deg``.
        channel_confidence: ``(n,)`` per recording channel, the same ratio against the best
            order that puts another mic on that channel: low on the channels a swap would go
            unnoticed (two mics at the same distance from the source).
        method: ``"general"`` (all permutations) or ``"circular"`` (rotations/reflections).
        notes: technician-readable remarks.
    """

    mic_of_channel: np.ndarray
    mic_channels: np.ndarray
    is_identity: bool
    confidence: float
    rms_us: float
    rms_next_us: float
    slowness_s_m: np.ndarray
    azimuth_deg: float
    equivalent: list[list[int]] = field(default_factory=list)
    channel_confidence: np.ndarray = field(default_factory=lambda: np.ones(0))
    method: str = "general"
    notes: list[str] = field(default_factory=list)


def check_channel_order(x: np.ndarray, fs_hz: float, positions_m: np.ndarray,
                        source_azimuth_deg: float | None = None,
                        source_elevation_deg: float | None = None,
                        sound_speed_m_s: float = SOUND_SPEED_M_S,
                        tdoas: Tdoas | None = None) -> ChannelOrder:
    """Which profile mic is on which channel, from the delays of one dominant source.

    Record a talker or a loudspeaker (noise or speech) from one direction, 1 m or more away.
    GCC-PHAT gives the arrival time on every channel; for each candidate order the far-field
    model ``t = -(p - c) . s`` is fitted (``s``: slowness, free or along the known source
    direction) and the order with the smallest misfit wins.

    With no known direction the answer is only defined up to the array's symmetries (rotate a
    circular array and the source with it: same delays); the order among those that moves the
    fewest channels is reported and the rest listed in ``equivalent``. Give the source's
    azimuth (and elevation, if known) to pin it down.
    """
    p = np.asarray(positions_m, dtype=np.float64)
    x = _check_recording(x, fs_hz)
    n = p.shape[0]
    if x.shape[0] != n:
        raise CalibrationError(f"recording has {x.shape[0]} channel(s), the geometry {n} mic(s)")
    if n < 2:
        raise CalibrationError("the channel order of a single mic needs no check")
    centred = p - p.mean(axis=0)
    aperture = float(np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1)).max())
    if tdoas is None:
        tdoas = gcc_phat(x, fs_hz, max_tau_s=1.1 * aperture / sound_speed_m_s)
    t = tdoas.arrival_s - tdoas.arrival_s.mean()
    perms = _candidate_permutations(p)
    method = "general" if n <= MAX_GENERAL_PERMUTATION_MICS else "circular"
    inv = np.argsort(perms, axis=1)
    v = t[inv]  # v[m] = arrival at mic m under the candidate order
    s_max = 1.05 / sound_speed_m_s
    known = source_azimuth_deg is not None
    if known:
        if source_elevation_deg is not None:
            basis = direction_unit(source_azimuth_deg, source_elevation_deg)[:, None]
        else:
            az = math.radians(source_azimuth_deg)
            basis = np.array([[math.cos(az), 0.0], [math.sin(az), 0.0], [0.0, 1.0]])
        pb = centred @ basis
        coef = -(v @ np.linalg.pinv(pb, rcond=1e-6).T)
        coef[:, 0] = np.clip(coef[:, 0], 0.0, s_max)
        s = coef @ basis.T
    else:
        s = -(v @ np.linalg.pinv(centred, rcond=1e-6).T)
    norm = np.linalg.norm(s, axis=1, keepdims=True)
    s = s * np.minimum(1.0, s_max / np.maximum(norm, 1e-30))
    resid = v + s @ centred.T
    rms = np.sqrt(np.mean(resid**2, axis=1))
    best = int(np.argmin(rms))
    if known:
        sym = np.arange(n)[None, :]
    else:
        sym = geometry_symmetries(p)
    # the class of the best order: g o sigma for every symmetry g
    cls = {tuple(g[perms[best]]) for g in sym}
    in_cls = np.array([tuple(q) in cls for q in perms])
    moved = (perms != np.arange(n)).sum(axis=1)
    members = np.nonzero(in_cls)[0]
    rep = int(members[np.lexsort((members, moved[members]))][0])
    others = rms[~in_cls]
    rms_next = float(others.min()) if others.size else float("inf")
    rms_best = float(rms[rep])
    confidence = float(np.clip(1.0 - rms_best / rms_next, 0.0, 1.0)) if others.size else 1.0
    mic_of_channel = perms[rep].copy()
    channel_conf = np.full(n, confidence)  # without a direction: only the whole order counts
    for i in range(n if known else 0):
        alt = rms[(perms[:, i] != mic_of_channel[i]) & ~in_cls]
        if alt.size:
            channel_conf[i] = float(np.clip(1.0 - rms_best / alt.min(), 0.0, 1.0))
    notes: list[str] = []
    if tdoas.consistency_s * fs_hz > 0.5:
        notes.append(f"pairwise delays disagree by {tdoas.consistency_s * 1e6:.0f} us RMS: "
                     "strong reverberation or more than one source")
    if float(np.linalg.norm(s[rep])) < 0.3 / sound_speed_m_s:
        notes.append("the source is nearly broadside/overhead: delays are small, record from "
                     "the side of the array")
    unsure = [i for i in range(n) if channel_conf[i] < 0.2]
    if known and unsure and confidence < 0.2:
        notes.append(f"channel(s) {unsure} hear the source at nearly the same time as "
                     "another mic: record again with the source 20-30 degrees to the side")
    if not known and len(cls) > 1:
        notes.append(f"{len(cls)} orders fit equally well (the array's symmetry); give the "
                     "source azimuth to tell them apart")
    az = float(np.degrees(np.arctan2(s[rep][1], s[rep][0])) % 360.0)
    equivalent = sorted(list(c) for c in cls if list(c) != mic_of_channel.tolist())
    return ChannelOrder(mic_of_channel=mic_of_channel,
                        mic_channels=np.argsort(mic_of_channel),
                        is_identity=bool(np.array_equal(mic_of_channel, np.arange(n))),
                        confidence=confidence, rms_us=rms_best * 1e6,
                        rms_next_us=rms_next * 1e6, slowness_s_m=s[rep].copy(),
                        azimuth_deg=az, equivalent=[list(map(int, e)) for e in equivalent],
                        channel_confidence=channel_conf, method=method, notes=notes)
