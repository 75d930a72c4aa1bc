"""Timing statistics of one DSP stage: per-block durations in a fixed ring.

The DSP thread calls :meth:`StageStats.record` once per block (processing time and, for the
real-time factor, the audio time of the block); the telemetry timer calls
:meth:`StageStats.summary`. The ring is a preallocated ``(2, window)`` float64 array, so
recording allocates nothing.

Threads: one writer and any number of readers share a :class:`threading.Lock`. The writer
holds it for two array stores and one integer increment; a reader holds it only while it
copies the ring (a memcpy of ``2 * window`` floats, a few microseconds per thousand), and
computes the percentiles on its copy after releasing it. So the DSP thread waits at most
that long, and a reader never sees a half-written slot (numpy may release the GIL inside
a large copy, so the GIL alone would not guarantee that).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np


def real_time_factor(processing_s: float, audio_s: float) -> float:
    """Processing time over the duration of the audio it processed (< 1 keeps up).

    Raises:
        ValueError: ``audio_s`` is not positive.
    """
    if audio_s <= 0:
        raise ValueError(f"audio_s must be > 0, got {audio_s!r}")
    return processing_s / audio_s


@dataclass(frozen=True, slots=True)
class StageSummary:
    """Statistics over the last ``count`` blocks (at most the window) of a stage.

    Durations in seconds; ``count_total`` counts every block recorded since start.
    """

    count: int
    count_total: int
    p50_s: float
    p95_s: float
    p99_s: float
    max_s: float
    mean_s: float
    real_time_factor: float | None = None
    """Processing time over audio time of the blocks that gave their audio duration."""

    def as_dict(self) -> dict[str, float]:
        """``{"p50", "p95", "p99", "max"}`` in seconds (the telemetry ``dsp_block_seconds``)."""
        return {"p50": self.p50_s, "p95": self.p95_s, "p99": self.p99_s, "max": self.max_s}


class StageStats:
    """Durations of the last ``window`` blocks of one stage, and how many blocks in all.

    Each block may also bring the duration of the audio it processed, for the real-time
    factor over the window.

    Args:
        window: blocks kept for the statistics (e.g. 1000 = 10 s of 10 ms hops).
    """

    def __init__(self, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        self.window = int(window)
        # Row 0: processing time, row 1: audio time of each block (s).
        self._ring = np.zeros((2, self.window), dtype=np.float64)
        self._count_total = 0
        self._lock = threading.Lock()

    def record(self, duration_s: float, audio_s: float = 0.0) -> None:
        """Store one block's processing time and, optionally, its audio duration (seconds).

        Called by the single writer (the DSP thread).
        """
        with self._lock:
            i = self._count_total % self.window
            self._ring[0, i] = duration_s
            self._ring[1, i] = audio_s
            self._count_total += 1

    @contextmanager
    def measure(self, audio_s: float = 0.0) -> Iterator[None]:
        """Time the ``with`` body with ``perf_counter`` and :meth:`record` it."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.record(time.perf_counter() - t0, audio_s)

    @property
    def count_total(self) -> int:
        """Blocks recorded since creation."""
        return self._count_total

    def _copy(self) -> tuple[int, np.ndarray]:
        """Blocks in all and a copy of the filled part of the ring, ``(2, n)``, slot order."""
        with self._lock:
            total = self._count_total
            ring = self._ring[:, :min(total, self.window)].copy()
        return total, ring

    def snapshot(self) -> np.ndarray:
        """The processing times in the window, oldest first."""
        total, ring = self._copy()
        start = total % self.window if total > self.window else 0
        return np.roll(ring[0], -start)

    def summary(self) -> StageSummary | None:
        """Percentiles (numpy's linear interpolation), max, mean and real-time factor over the
        window; ``None`` before the first block."""
        total, ring = self._copy()
        durations, audio = ring
        if durations.size == 0:
            return None
        p50, p95, p99 = np.percentile(durations, (50.0, 95.0, 99.0))
        audio_sum = float(audio.sum())
        rtf = float(durations[audio > 0].sum()) / audio_sum if audio_sum > 0 else None
        return StageSummary(count=int(durations.size), count_total=total, p50_s=float(p50),
                            p95_s=float(p95), p99_s=float(p99), max_s=float(durations.max()),
                            mean_s=float(durations.mean()), real_time_factor=rtf)

    def real_time_factor(self, block_audio_s: float | None = None) -> float | None:
        """Processing time over audio time across the window.

        Uses the audio durations given to :meth:`record`, or ``block_audio_s`` per block when
        given; ``None`` before the first block or without any audio duration.
        """
        summary = self.summary()
        if summary is None:
            return None
        if block_audio_s is not None:
            return real_time_factor(summary.mean_s, block_audio_s)
        return summary.real_time_factor
