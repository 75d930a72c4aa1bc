"""Dead or silent microphone detection, per block, without a restart.

Per channel, recursively smoothed block power ``P_m`` and first-difference power ``D_m``
(``D`` of a stuck, constant channel is 0 while its ``P`` may not be). A channel is *bad* in a
block when ``P_m < median(P) 10^(-margin_db / 10)`` (far below the others: all-zero or a
broken capsule) or ``D_m <= stuck_floor * median(D)`` (stuck). It is declared dead after
``dead_blocks`` bad blocks in a row and back after ``alive_blocks`` good ones. When every
channel is equally quiet (digital silence) nothing changes.

The same pass over the block also smooths each channel's mean (its DC offset) and the share
of samples at or above ``clip_level`` (clipping rate), for the capture self-checks. Nothing
in :meth:`ChannelMonitor.update` allocates unless the set of channels changes.

:func:`dc_block_kernel` is the DC blocker run when an offset is found: the first-order
high-pass ``y[n] = x[n] - x[n-1] + r y[n-1]`` (J. O. Smith, "Introduction to Digital
Filters", DC blocker), ``r = 1 - 2 pi fc / fs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mica.array_dsp.jit import kernel

SILENCE_POWER = 1e-14
"""Median power (full scale squared) under which no decision is taken (about -140 dBFS)."""


@dataclass(frozen=True)
class ChannelParams:
    """Tuning of :class:`ChannelMonitor`.

    Attributes:
        margin_db: a channel this far under the median power is bad (dB).
        stuck_floor: relative first-difference power under which a channel is stuck.
        smooth_alpha: forgetting factor of the per-channel powers per block.
        dead_blocks: bad blocks in a row before a channel is left out.
        alive_blocks: good blocks in a row before it is taken back.
        clip_level: absolute sample value counted as clipped (full scale 1.0).
    """

    margin_db: float = 30.0
    stuck_floor: float = 1e-6
    smooth_alpha: float = 0.9
    dead_blocks: int = 20
    alive_blocks: int = 50
    clip_level: float = 0.999


@kernel
def channel_power_kernel(
    block: np.ndarray, alpha: float, last: np.ndarray, power: np.ndarray, diff_power: np.ndarray
) -> None:
    """Smoothed mean square and first-difference mean square per channel, in place.

    block: ``(n_ch, n)`` float32; last: ``(n_ch,)`` float32 previous block's last sample
    (updated); power, diff_power: ``(n_ch,)`` float64 (updated).
    """
    n_ch, n = block.shape
    for m in range(n_ch):
        p = 0.0
        d = 0.0
        prev = float(last[m])
        for i in range(n):
            v = float(block[m, i])
            p += v * v
            d += (v - prev) * (v - prev)
            prev = v
        last[m] = block[m, n - 1]
        power[m] = alpha * power[m] + (1.0 - alpha) * p / n
        diff_power[m] = alpha * diff_power[m] + (1.0 - alpha) * d / n


def channel_power_reference(
    block: np.ndarray, alpha: float, last: np.ndarray, power: np.ndarray, diff_power: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numpy reference of :func:`channel_power_kernel`: ``(last, power, diff_power)``."""
    x = block.astype(np.float64)
    prev = np.concatenate([last.astype(np.float64)[:, None], x[:, :-1]], axis=1)
    p = np.mean(x**2, axis=1)
    d = np.mean((x - prev) ** 2, axis=1)
    return (block[:, -1].copy(), alpha * power + (1 - alpha) * p,
            alpha * diff_power + (1 - alpha) * d)


@kernel
def channel_stats_kernel(
    block: np.ndarray, alpha: float, clip_level: float, last: np.ndarray, power: np.ndarray,
    diff_power: np.ndarray, mean: np.ndarray, clip: np.ndarray
) -> None:
    """:func:`channel_power_kernel` plus the smoothed mean and clipped-sample share.

    block: ``(n_ch, n)`` float32; last: ``(n_ch,)`` float32 (updated); power, diff_power,
    mean, clip: ``(n_ch,)`` float64 (updated, each ``alpha``-smoothed per block).
    """
    n_ch, n = block.shape
    for m in range(n_ch):
        p = 0.0
        d = 0.0
        s = 0.0
        c = 0
        prev = float(last[m])
        for i in range(n):
            v = float(block[m, i])
            p += v * v
            d += (v - prev) * (v - prev)
            s += v
            if abs(v) >= clip_level:
                c += 1
            prev = v
        last[m] = block[m, n - 1]
        power[m] = alpha * power[m] + (1.0 - alpha) * p / n
        diff_power[m] = alpha * diff_power[m] + (1.0 - alpha) * d / n
        mean[m] = alpha * mean[m] + (1.0 - alpha) * s / n
        clip[m] = alpha * clip[m] + (1.0 - alpha) * c / n


def channel_stats_reference(
    block: np.ndarray, alpha: float, clip_level: float, last: np.ndarray, power: np.ndarray,
    diff_power: np.ndarray, mean: np.ndarray, clip: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Numpy reference of :func:`channel_stats_kernel`: ``(last, power, diff, mean, clip)``."""
    new_last, p, d = channel_power_reference(block, alpha, last, power, diff_power)
    x = block.astype(np.float64)
    return (new_last, p, d, alpha * mean + (1 - alpha) * x.mean(axis=1),
            alpha * clip + (1 - alpha) * np.mean(np.abs(x) >= clip_level, axis=1))


@kernel
def _median(values: np.ndarray, scratch: np.ndarray) -> float:
    n = values.shape[0]
    for i in range(n):
        scratch[i] = values[i]
    scratch.sort()
    if n % 2:
        return scratch[n // 2]
    return 0.5 * (scratch[n // 2 - 1] + scratch[n // 2])


@kernel
def channel_decide_kernel(
    power: np.ndarray, diff_power: np.ndarray, bad_ratio: float, stuck_floor: float,
    silence_power: float, dead_blocks: int, alive_blocks: int, bad: np.ndarray,
    good: np.ndarray, dead: np.ndarray, scratch: np.ndarray
) -> bool:
    """One block's dead/alive decision (see the module doc), in place.

    power, diff_power: ``(n_ch,)`` float64 smoothed powers; bad_ratio: ``10^(-margin/10)``;
    bad, good: ``(n_ch,)`` int64 run lengths (updated); dead: ``(n_ch,)`` bool (updated only
    when the set changes and some channel stays alive); scratch: ``(n_ch,)`` float64.
    Returns True when ``dead`` changed. Nothing happens under ``silence_power``.
    """
    n = power.shape[0]
    med_p = _median(power, scratch)
    if med_p < silence_power:
        return False
    med_d = _median(diff_power, scratch)
    n_dead = 0
    changed = False
    for m in range(n):
        is_bad = power[m] < med_p * bad_ratio or diff_power[m] <= stuck_floor * med_d
        if is_bad:
            bad[m] += 1
            good[m] = 0
        else:
            bad[m] = 0
            good[m] += 1
        new = good[m] < alive_blocks if dead[m] else bad[m] >= dead_blocks
        scratch[m] = 1.0 if new else 0.0
        n_dead += int(new)
        changed = changed or new != dead[m]
    if not changed or n_dead == n:
        return False
    for m in range(n):
        dead[m] = scratch[m] > 0.5
    return True


def channel_decide_reference(
    power: np.ndarray, diff_power: np.ndarray, bad_ratio: float, stuck_floor: float,
    silence_power: float, dead_blocks: int, alive_blocks: int, bad: np.ndarray,
    good: np.ndarray, dead: np.ndarray
) -> tuple[bool, np.ndarray, np.ndarray, np.ndarray]:
    """Numpy reference of :func:`channel_decide_kernel`: ``(changed, bad, good, dead)``."""
    med_p = float(np.median(power))
    if med_p < silence_power:
        return False, bad.copy(), good.copy(), dead.copy()
    med_d = float(np.median(diff_power))
    is_bad = (power < med_p * bad_ratio) | (diff_power <= stuck_floor * med_d)
    bad = np.where(is_bad, bad + 1, 0)
    good = np.where(is_bad, 0, good + 1)
    new = np.where(dead, good < alive_blocks, bad >= dead_blocks)
    if np.array_equal(new, dead) or new.all():
        return False, bad, good, dead.copy()
    return True, bad, good, new


@kernel
def dc_block_kernel(block: np.ndarray, r: float, x_prev: np.ndarray, y_prev: np.ndarray,
                    out: np.ndarray) -> None:
    """DC blocker ``y[n] = x[n] - x[n-1] + r y[n-1]`` per channel (module doc).

    block, out: ``(n_ch, n)`` float32 (may be the same array); x_prev, y_prev: ``(n_ch,)``
    float64 filter state (updated).
    """
    n_ch, n = block.shape
    for m in range(n_ch):
        xp = x_prev[m]
        yp = y_prev[m]
        for i in range(n):
            x = float(block[m, i])
            yp = x - xp + r * yp
            xp = x
            out[m, i] = yp
        x_prev[m] = xp
        y_prev[m] = yp


def dc_block_reference(block: np.ndarray, r: float, x_prev: np.ndarray, y_prev: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numpy/scipy reference of :func:`dc_block_kernel`: ``(out, x_prev, y_prev)``."""
    from scipy.signal import lfilter

    x = block.astype(np.float64)
    out = np.empty_like(x)
    for m in range(x.shape[0]):
        zi = [r * y_prev[m] - x_prev[m]]  # direct form II transposed state
        out[m], _ = lfilter([1.0, -1.0], [1.0, -r], x[m], zi=zi)
    return out.astype(np.float32), x[:, -1].copy(), out[:, -1].copy()


def dc_block_coefficient(fs_hz: float, cutoff_hz: float = 20.0) -> float:
    """``r`` of :func:`dc_block_kernel` for a -3 dB corner near ``cutoff_hz``."""
    return 1.0 - 2.0 * np.pi * cutoff_hz / fs_hz


class ChannelMonitor:
    """Which microphones are in use; :meth:`update` per block returns True on a change.

    Attributes:
        active_idx: ``(n_ch,)`` int64, the first :attr:`n_active` entries are in use.
        n_active: number of channels in use.
        dead: ``(n_ch,)`` bool, channels left out.
        power: ``(n_ch,)`` smoothed mean square (full scale squared).
        dc: ``(n_ch,)`` smoothed mean (DC offset, full scale 1.0).
        clip_ratio: ``(n_ch,)`` smoothed share of samples at or above ``clip_level``.
    """

    def __init__(self, n_channels: int, params: ChannelParams | None = None) -> None:
        self.params = params or ChannelParams()
        self.n_channels = n_channels
        self._last = np.zeros(n_channels, np.float32)
        self.power = np.zeros(n_channels, np.float64)
        self._diff = np.zeros(n_channels, np.float64)
        self.dc = np.zeros(n_channels, np.float64)
        self.clip_ratio = np.zeros(n_channels, np.float64)
        self._scratch = np.zeros(n_channels, np.float64)
        self._bad = np.zeros(n_channels, np.int64)
        self._good = np.zeros(n_channels, np.int64)
        self.dead = np.zeros(n_channels, bool)
        self.active_idx = np.arange(n_channels, dtype=np.int64)
        self.n_active = n_channels
        self.changes = 0

    def reset(self) -> None:
        self._last.fill(0)
        self.power.fill(0)
        self._diff.fill(0)
        self.dc.fill(0)
        self.clip_ratio.fill(0)
        self._bad.fill(0)
        self._good.fill(0)
        self.dead.fill(False)
        self.active_idx[:] = np.arange(self.n_channels)
        self.n_active = self.n_channels

    def median_power(self) -> float:
        """Median over the channels of the smoothed power (no allocation)."""
        return float(_median(self.power, self._scratch))

    def update(self, block: np.ndarray) -> bool:
        """Fold in one ``(n_ch, n)`` float32 block; True when the set of channels changed."""
        p = self.params
        channel_stats_kernel(block, p.smooth_alpha, p.clip_level, self._last, self.power,
                             self._diff, self.dc, self.clip_ratio)
        if self.n_channels < 2:
            return False
        if not channel_decide_kernel(self.power, self._diff, 10.0 ** (-p.margin_db / 10.0),
                                     p.stuck_floor, SILENCE_POWER, p.dead_blocks,
                                     p.alive_blocks, self._bad, self._good, self.dead,
                                     self._scratch):
            return False
        live = np.nonzero(~self.dead)[0]
        self.n_active = int(live.size)
        self.active_idx[:self.n_active] = live
        self.active_idx[self.n_active:] = np.nonzero(self.dead)[0]
        self.changes += 1
        return True
