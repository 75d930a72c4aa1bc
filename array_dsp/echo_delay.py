"""Bulk delay between the playback reference and the microphones, tracked with hysteresis.

The loudspeaker signal reaches the mics after the playback buffering plus the acoustic
path; the echo canceller's tail should cover only the acoustic part. Once per segment
(``segment_s`` of signal in which the reference was active; the first one
``first_segment_s``), GCC-PHAT (Knapp & Carter 1976,
:func:`mica.array_dsp.drift.gcc_phat`, shared with the drift estimator) finds the lag of
one mic against the mono reference within ``[0, max_delay]``. A lag is accepted when its
peak stands ``min_peak_ratio`` above the next-best peak and, if it differs from the current
delay by more than ``hysteresis_samples``, only after ``confirm`` segments in a row agree
(within the hysteresis). The delay applied to the reference is ``lag - margin`` (floored at
0): the margin keeps the direct path and the filter's pre-echo inside the tail.

Shapes: :meth:`push` takes ``(N,)`` float32 blocks of the mono reference and one mic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mica.array_dsp.drift import gcc_phat
from mica.array_dsp.validate import SignalShapeError, check_array, check_positive_int


@dataclass(frozen=True)
class DelayParams:
    """Tuning of :class:`DelayTracker`.

    Attributes:
        max_delay_ms: largest lag searched (ms).
        segment_s: seconds of active reference per estimate.
        first_segment_s: seconds of active reference for the first estimate (shorter: the
            canceller, which keeps its learned taps when the delay moves, gets its tail
            onto the echo path sooner; later segments confirm or correct it).
        min_peak_ratio: GCC-PHAT peak over the next-best peak needed to accept a lag.
        hysteresis_ms: a new lag within this of the current one changes nothing (ms).
        confirm: segments in a row that must agree before the delay moves.
        margin_ms: applied delay = lag - margin (ms), floored at 0.
        active_rms: reference RMS (full scale 1) above which a block counts as active.
    """

    max_delay_ms: float = 200.0
    segment_s: float = 1.0
    first_segment_s: float = 0.5
    min_peak_ratio: float = 2.0
    hysteresis_ms: float = 2.0
    confirm: int = 2
    margin_ms: float = 4.0
    active_rms: float = 1e-3

    def __post_init__(self) -> None:
        if not (
            self.max_delay_ms > 0
            and self.segment_s > 0
            and self.first_segment_s > 0
            and self.confirm >= 1
            and self.min_peak_ratio >= 1.0
            and self.hysteresis_ms >= 0
            and self.margin_ms >= 0
            and self.active_rms >= 0
        ):
            raise SignalShapeError(f"DelayParams: a value is out of range: {self!r}")


class DelayTracker:
    """Tracks the reference-to-mic bulk delay (see the module doc).

    After :meth:`push` returns True, :attr:`delay_samples` (applied delay) changed;
    :attr:`lag_samples` is the last accepted GCC-PHAT lag (``None`` before any).
    """

    def __init__(self, block_samples: int, fs_hz: float, params: DelayParams | None = None) -> None:
        self.block_samples = check_positive_int(block_samples, "block_samples")
        self.params = p = params or DelayParams()
        self.fs_hz = float(fs_hz)
        self.max_lag = max(1, int(round(p.max_delay_ms * 1e-3 * fs_hz)))
        self._seg = self._blocks(p.segment_s)
        self._seg_first = self._blocks(p.first_segment_s)
        self._ref = np.zeros(max(self._seg, self._seg_first), np.float32)
        self._mic = np.zeros_like(self._ref)
        self._fill = 0
        self._hyst = p.hysteresis_ms * 1e-3 * fs_hz
        self._margin = int(round(p.margin_ms * 1e-3 * fs_hz))
        self._thr = p.active_rms**2 * self.block_samples
        self.lag_samples: float | None = None
        self.delay_samples = 0
        self._candidate: float | None = None
        self._agree = 0
        self.estimates_total = 0
        self.rejected_total = 0
        self._previous: tuple[float | None, int] = (None, 0)

    def _blocks(self, seconds: float) -> int:
        """``seconds`` in samples, a whole number of blocks (at least one)."""
        n = self.block_samples
        return max(n, int(round(seconds * self.fs_hz)) // n * n)

    @property
    def delay_ms(self) -> float | None:
        """Accepted lag in ms (``None`` before any)."""
        return None if self.lag_samples is None else 1e3 * self.lag_samples / self.fs_hz

    def push(self, ref_block: np.ndarray, mic_block: np.ndarray) -> bool:
        """Add one block of the mono reference and a mic; True when the applied delay
        changed (at most once per segment)."""
        n = self.block_samples
        ref_block = check_array(ref_block, "ref_block", (n,), np.float32)
        mic_block = check_array(mic_block, "mic_block", (n,), np.float32)
        if float(np.dot(ref_block, ref_block)) < self._thr:
            return False  # only segments with playback say anything about the delay
        self._ref[self._fill : self._fill + n] = ref_block
        self._mic[self._fill : self._fill + n] = mic_block
        self._fill += n
        if self._fill < (self._seg_first if self.lag_samples is None else self._seg):
            return False
        length, self._fill = self._fill, 0
        return self._estimate(length)

    def _estimate(self, length: int) -> bool:
        ref, mic = self._ref[:length], self._mic[:length]
        if not np.any(mic):
            return False
        lag, ratio = gcc_phat(ref, mic, self.max_lag)
        self.estimates_total += 1
        if ratio < self.params.min_peak_ratio or lag < -0.5:
            return False
        if self.lag_samples is not None and abs(lag - self.lag_samples) <= self._hyst:
            self._agree = 0
            return False
        if self._candidate is not None and abs(lag - self._candidate) <= self._hyst:
            self._agree += 1
        else:
            self._candidate, self._agree = lag, 1
        need = 1 if self.lag_samples is None else self.params.confirm
        if self._agree < need:
            return False
        self._previous = (self.lag_samples, self.delay_samples)
        self.lag_samples = float(lag)
        self._candidate, self._agree = None, 0
        new = max(0, int(round(lag)) - self._margin)
        changed = new != self.delay_samples
        self.delay_samples = new
        return changed

    def reject(self) -> None:
        """Undo the last accepted change (the caller found it contradicts what works)."""
        self.lag_samples, self.delay_samples = self._previous
        self.rejected_total += 1

    def reset(self) -> None:
        """Forget the collected segment and the estimate."""
        self._fill = 0
        self.lag_samples = None
        self.delay_samples = 0
        self._candidate, self._agree = None, 0
