"""Re-cut capture periods into DSP hops, keeping each hop's capture time.

An ALSA period need not equal the DSP hop (it should, to avoid buffering twice, but a
device may refuse the size). The reblocker keeps a preallocated FIFO of samples and the
capture time of its first sample, and hands out ``(n_ch, hop)`` views with the
``t_capture_ns`` of their first sample, derived from the period's time plus the sample
offset at the nominal rate. A gap (overrun) restarts the time base at the new block.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mica.device.block import Block


class Reblocker:
    """Turn blocks of any length into blocks of ``hop`` samples (same channels)."""

    def __init__(self, n_channels: int, hop: int, fs_hz: int, max_period: int = 16384) -> None:
        self.hop = hop
        self.fs_hz = fs_hz
        self._buf = np.zeros((n_channels, max_period + hop), dtype=np.float32)
        self._fill = 0
        self._t0_ns = 0  # capture time (ns) of _buf[:, 0]
        self._gap = 0  # frames lost before the next hop to leave
        self._seq = 0

    def push(self, block: Block) -> Iterator[Block]:
        """Add one capture block; yield every complete hop it finishes.

        The yielded blocks have their own gapless ``seq`` (hops, from 0); ``gap_frames`` of
        the capture block is carried by the first hop that leaves after it arrived.
        """
        n = block.n_samples
        if n > self._buf.shape[1] - self.hop:
            grown = np.zeros((self._buf.shape[0], n + self.hop), dtype=np.float32)
            grown[:, :self._fill] = self._buf[:, :self._fill]
            self._buf = grown
        # anchor the buffer's time on the newest block's own capture clock
        self._t0_ns = block.t_capture_ns - self._fill * 1_000_000_000 // self.fs_hz
        self._gap += block.gap_frames
        self._buf[:, self._fill:self._fill + n] = block.samples
        self._fill += n
        while self._fill >= self.hop:
            out = Block(self._buf[:, :self.hop].copy(), self._seq, self._t0_ns, self._gap)
            self._seq += 1
            self._gap = 0
            self._fill -= self.hop
            self._buf[:, :self._fill] = self._buf[:, self.hop:self.hop + self._fill]
            self._t0_ns += self.hop * 1_000_000_000 // self.fs_hz
            yield out
