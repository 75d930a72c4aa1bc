"""Dead or silent microphone detection, per block, without a restart.

Per channel, recursively smoothed block power ``P_m`` and first-difference power ``D_m``
(``D`` of a stuck, constant channel is 0 while its ``P`` may not be). A channel is *bad* in a
block when ``P_m < median(P) 10^(-margin_db / 10)`` (far below the others: all-zero or a
broken capsule) or ``D_m <= stuck_floor * median(D)`` (stuck). It is declared dead after
``dead_blocks`` bad blocks in a row and back after ``alive_blocks`` good ones. When every
channel is equally quiet (digital silence) nothing changes.
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
    """

    margin_db: float = 30.0
    stuck_floor: float = 1e-6
    smooth_alpha: float = 0.9
    dead_blocks: int = 20
    alive_blocks: int = 50


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


class ChannelMonitor:
    """Which microphones are in use; :meth:`update` per block returns True on a change.

    Attributes:
        active_idx: ``(n_ch,)`` int64, the first :attr:`n_active` entries are in use.
        n_active: number of channels in use.
        dead: ``(n_ch,)`` bool, channels left out.
    """

    def __init__(self, n_channels: int, params: ChannelParams | None = None) -> None:
        self.params = params or ChannelParams()
        self.n_channels = n_channels
        self._last = np.zeros(n_channels, np.float32)
        self.power = np.zeros(n_channels, np.float64)
        self._diff = np.zeros(n_channels, np.float64)
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
        self._bad.fill(0)
        self._good.fill(0)
        self.dead.fill(False)
        self.active_idx[:] = np.arange(self.n_channels)
        self.n_active = self.n_channels

    def update(self, block: np.ndarray) -> bool:
        """Fold in one ``(n_ch, n)`` float32 block; True when the set of channels changed."""
        p = self.params
        channel_power_kernel(block, p.smooth_alpha, self._last, self.power, self._diff)
        if self.n_channels < 2:
            return False
        med_p = float(np.median(self.power))
        if med_p < SILENCE_POWER:
            return False
        med_d = float(np.median(self._diff))
        bad = (self.power < med_p * 10.0 ** (-p.margin_db / 10.0)) | (
            self._diff <= p.stuck_floor * med_d)
        self._bad = np.where(bad, self._bad + 1, 0)
        self._good = np.where(bad, 0, self._good + 1)
        new_dead = np.where(self.dead, self._good < p.alive_blocks, self._bad >= p.dead_blocks)
        if np.array_equal(new_dead, self.dead) or new_dead.all():
            return False
        self.dead[:] = new_dead
        live = np.nonzero(~new_dead)[0]
        self.n_active = int(live.size)
        self.active_idx[:self.n_active] = live
        self.active_idx[self.n_active:] = np.nonzero(new_dead)[0]
        self.changes += 1
        return True
