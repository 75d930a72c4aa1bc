"""The unit that travels from capture to MQTT: samples plus where they came from in time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class Block:
    """One capture period.

    Attributes:
        samples: ``(n_ch, n_samples)`` float32 in [-1, 1].
        seq: block counter of its source, starting at 0, +1 per block read (gaps in time do
            not skip ``seq``; they are reported in ``gap_frames``).
        t_capture_ns: CLOCK_MONOTONIC time (ns) of the block's first sample.
        gap_frames: frames estimated lost just before this block (overrun), 0 if none.
        muted: captured during a privacy mute: ``samples`` are zeros and the DSP leaves the
            block out (the capture thread zeroes it, device/service.py).
    """

    samples: np.ndarray
    seq: int
    t_capture_ns: int
    gap_frames: int = 0
    muted: bool = False

    @property
    def n_channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[1])


class Source(Protocol):
    """What the capture thread reads from (ALSA device, WAV file, ...)."""

    fs_hz: int
    """Sample rate of the blocks it yields (Hz)."""
    n_channels: int
    """Channels per block."""
    period_frames: int
    """Samples per channel in each block."""

    def read(self) -> Block | None:
        """Block until the next block is available; ``None`` at end of stream."""

    def close(self) -> None:
        """Release the device or file; idempotent."""

    @property
    def xruns_total(self) -> int:
        """Overruns seen since open."""
