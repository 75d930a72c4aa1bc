"""A multichannel audio file replayed as if it were the microphone array."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Self

import numpy as np
import soundfile as sf

from mica.array_dsp.errors import AudioFileError
from mica.device.block import Block

log = logging.getLogger(__name__)


class WavSource:
    """Replays an audio file (WAV, FLAC, ... anything libsndfile reads) block by block.

    Blocks are ``(n_channels, period_frames)`` float32 with ``seq`` 0, 1, 2, ... and
    ``t_capture_ns = t0 + seq * period_frames * 1e9 / fs_hz`` (integer nanoseconds, computed
    from ``seq`` so nothing accumulates), where ``t0`` is ``time.monotonic_ns()`` at the first
    :meth:`read`.

    With ``realtime`` the source behaves like a live device: :meth:`read` returns block ``k``
    no earlier than the moment its last sample would have been captured,
    ``t0 + (k + 1) * period``, sleeping towards that absolute deadline (so pacing never
    drifts). A reader that falls behind gets the late blocks at once, back to back; a file
    source never overruns, so ``gap_frames`` is always 0 and ``xruns_total`` stays 0.
    Without ``realtime`` blocks come as fast as they are asked for, stamped on the same
    nominal timeline.

    End of file: the last partial block is **zero-padded** to ``period_frames`` (the end of
    the recording is kept, the DSP always gets whole blocks), then :meth:`read` returns
    ``None``. With ``loop`` the file restarts seamlessly instead: a block that crosses the
    end continues with the file's first samples, and the stream never ends.
    """

    def __init__(self, path: str | Path, period_frames: int = 160, realtime: bool = True,
                 loop: bool = False, channels: list[int] | None = None,
                 speed: float = 1.0) -> None:
        """Open ``path``.

        Args:
            path: the audio file.
            period_frames: samples per channel in each block.
            realtime: pace reads at the file's sample rate (see the class doc).
            loop: restart at the end instead of ending the stream.
            channels: file channels to deliver, in this order (select and/or reorder);
                ``None`` delivers all of them in file order.
            speed: with ``realtime``, pace at ``speed`` times real time (soak tests); the
                blocks' ``t_capture_ns`` follow the faster clock.

        Raises:
            AudioFileError: the file is missing or unreadable, holds no samples while
                ``loop`` is asked, or lacks a channel listed in ``channels``.
            ValueError: ``period_frames`` < 1.
        """
        if period_frames < 1:
            raise ValueError(f"period_frames must be >= 1, got {period_frames}")
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = float(speed)
        self.path = Path(path)
        try:
            self._file = sf.SoundFile(str(self.path), mode="r")
        except (RuntimeError, OSError, ValueError, TypeError) as err:
            raise AudioFileError(f"{self.path}: cannot read audio file: {err}") from err
        n_file_ch = self._file.channels
        if channels is None:
            self._select: list[int] | None = None
            self.n_channels = n_file_ch
        else:
            bad = [c for c in channels if not 0 <= c < n_file_ch]
            if bad or not channels:
                self._file.close()
                raise AudioFileError(
                    f"{self.path}: has {n_file_ch} channel(s), cannot deliver channels "
                    f"{list(channels)}")
            self._select = list(channels)
            self.n_channels = len(channels)
        if loop and self._file.frames == 0:
            self._file.close()
            raise AudioFileError(f"{self.path}: holds no samples, cannot loop it")
        self.fs_hz = int(self._file.samplerate)
        self.period_frames = int(period_frames)
        self.realtime = realtime
        self.loop = loop
        self._seq = 0
        self._t0_ns: int | None = None
        self._eof = False
        self._closed = False
        self._lock = threading.Lock()
        log.info("wav source %s: %d ch (file %d), %d Hz, %d frames, period %d, %s%s",
                 self.path, self.n_channels, n_file_ch, self.fs_hz, self._file.frames,
                 self.period_frames, "realtime" if realtime else "fast",
                 ", loop" if loop else "")

    @property
    def xruns_total(self) -> int:
        """Always 0: a file cannot overrun."""
        return 0

    def _t_ns(self, seq: int) -> int:
        assert self._t0_ns is not None
        if self.speed != 1.0:
            return self._t0_ns + round(seq * self.period_frames * 1e9 / (self.fs_hz * self.speed))
        return self._t0_ns + seq * self.period_frames * 1_000_000_000 // self.fs_hz

    def _read_frames(self) -> np.ndarray | None:
        """The next period of file samples ``(period, n_file_ch)``; None once exhausted."""
        n = self.period_frames
        try:
            chunk = self._file.read(n, dtype="float32", always_2d=True)
            if len(chunk) == n:
                return chunk
            if self.loop:
                parts = [chunk]
                have = len(chunk)
                while have < n:
                    self._file.seek(0)
                    more = self._file.read(n - have, dtype="float32", always_2d=True)
                    parts.append(more)
                    have += len(more)
                return np.concatenate(parts)
        except (RuntimeError, OSError, ValueError) as err:
            raise AudioFileError(f"{self.path}: read failed: {err}") from err
        if len(chunk) == 0:
            return None
        padded = np.zeros((n, chunk.shape[1]), dtype=np.float32)
        padded[:len(chunk)] = chunk
        return padded

    def read(self) -> Block | None:
        """The next block (sleeping until it is due when ``realtime``); ``None`` at the end.

        Raises:
            AudioFileError: the source is closed or the file fails mid-way.
        """
        with self._lock:
            if self._closed:
                raise AudioFileError(f"{self.path}: read after close")
            if self._eof:
                return None
            if self._t0_ns is None:
                self._t0_ns = time.monotonic_ns()
            frames = self._read_frames()
            if frames is None:
                self._eof = True
                log.info("wav source %s: end of file after %d blocks", self.path, self._seq)
                return None
            seq = self._seq
            self._seq += 1
            t_capture = self._t_ns(seq)
            if self._select is not None:
                frames = frames[:, self._select]
            samples = np.ascontiguousarray(frames.T, dtype=np.float32)
            if self.realtime:
                delay = self._t_ns(seq + 1) - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
            return Block(samples=samples, seq=seq, t_capture_ns=t_capture)

    def close(self) -> None:
        """Close the file; idempotent (waits for a read in progress)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
