"""Capture from an ALSA PCM with pyalsaaudio: exact-size blocks, capture times, overruns.

Timing: each block's ``t_capture_ns`` is the CLOCK_MONOTONIC time of its first frame. After
every successful ``read`` the source asks ALSA for ``snd_pcm_htimestamp`` (pyalsaaudio's
``PCM.htimestamp()``: the time of the last hardware-pointer update and the frames available
at that moment), with timestamps switched to ``CLOCK_MONOTONIC``; the first frame of the
frames just read was then captured ``(avail + n) / fs`` earlier. If the device gives no
plausible monotonic timestamps (zero, or more than a second away from the clock), the source
falls back, for good, to the time the read returned and ``PCM.avail()`` — the same formula,
with the read's scheduling jitter in it.

Overruns: pyalsaaudio answers a read that hit an overrun with ``(-EPIPE, b"")`` after it has
already re-prepared the stream. The source counts it in :attr:`AlsaSource.xruns_total`,
drops any frames it was accumulating, reads on, and sets ``gap_frames`` on the next block to
the frames lost, measured on the capture timeline: ``(t_capture of that block - (t_capture
of the previous block + period)) * fs``; an overrun before the first block has nothing to
measure against and gives 0. ``seq`` never skips.

Every other read failure raises :class:`DeviceError` (naming the device): reopening is the
caller's decision.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from typing import Self

from mica.array_dsp.errors import DeviceError
from mica.device.block import Block
from mica.device.sources.pcm import FORMATS, frame_bytes, pcm_to_float

try:
    import alsaaudio
except ImportError:  # pragma: no cover - pyalsaaudio is a dependency; keep wav-only use alive
    alsaaudio = None

log = logging.getLogger(__name__)

_NS = 1_000_000_000
_MAX_EMPTY_READS = 1000
"""Consecutive reads returning no frames and no error before the device counts as stalled."""


def _require_alsaaudio() -> None:
    if alsaaudio is None:
        raise DeviceError("ALSA capture needs pyalsaaudio (pip install pyalsaaudio)")


def list_capture_devices() -> list[str]:
    """Names of the PCMs ALSA offers for capture (as ``arecord -L`` lists them).

    Raises:
        DeviceError: pyalsaaudio is missing or ALSA cannot enumerate its PCMs.
    """
    _require_alsaaudio()
    try:
        return list(alsaaudio.pcms(alsaaudio.PCM_CAPTURE))
    except alsaaudio.ALSAAudioError as err:
        raise DeviceError(f"cannot list ALSA capture devices: {err}") from err


class AlsaSource:
    """A capture PCM read in blocks of exactly ``period_frames`` frames (see the module doc).

    ``read()`` blocks until the next block is complete. ``close()`` may be called from another
    thread: it waits for a read in progress to return (at most about one device period on a
    working device), then closes the PCM.
    """

    def __init__(self, device: str, channels: int, fs_hz: int, format: str,
                 period_frames: int, periods: int = 4, select: list[int] | None = None,
                 alsa_timestamps: bool = True) -> None:
        """Open and configure ``device``; check that it took the parameters asked for.

        Args:
            device: ALSA PCM name (``hw:CARD=...,DEV=0``, ``plughw:1,0``, ``default``...).
            channels: channels to capture.
            fs_hz: sample rate (Hz).
            format: ``"S16_LE"`` or ``"S32_LE"``.
            period_frames: frames per block (also asked of ALSA as its period size; if the
                device picks another period, reads are re-cut to this size).
            periods: ALSA periods per buffer (the buffer is what absorbs a late reader).
            select: captured channels to deliver, in this order (``None``: all).
            alsa_timestamps: use ALSA's own timestamps when the device gives plausible ones
                (``False``: always the read-return clock).

        Raises:
            DeviceError: the device cannot be opened, or it refuses the rate, channel count
                or format (the message names the device and the values).
            ValueError: a format, channel selection or size that cannot work at all.
        """
        _require_alsaaudio()
        if format not in FORMATS:
            raise ValueError(f"unsupported format {format!r}; use one of {sorted(FORMATS)}")
        if period_frames < 1 or periods < 2 or channels < 1 or fs_hz < 1:
            raise ValueError(f"bad capture sizes: channels={channels} fs_hz={fs_hz} "
                             f"period_frames={period_frames} periods={periods}")
        if select is not None and (not select or any(not 0 <= c < channels for c in select)):
            raise ValueError(f"select={select} does not fit {channels} captured channels")
        self.device = device
        self.fs_hz = int(fs_hz)
        self.format = format
        self.period_frames = int(period_frames)
        self._capture_channels = int(channels)
        self._select = list(select) if select is not None else None
        self.n_channels = len(self._select) if self._select is not None else self._capture_channels
        self._frame_bytes = frame_bytes(format, channels)
        self._period_ns = self.period_frames * _NS // self.fs_hz
        fmt_code = {"S16_LE": alsaaudio.PCM_FORMAT_S16_LE,
                    "S24_3LE": alsaaudio.PCM_FORMAT_S24_3LE,
                    "S32_LE": alsaaudio.PCM_FORMAT_S32_LE}[format]
        try:
            pcm = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, alsaaudio.PCM_NORMAL, device=device,
                                channels=channels, rate=fs_hz, format=fmt_code,
                                periodsize=period_frames, periods=periods)
        except alsaaudio.ALSAAudioError as err:
            raise DeviceError(f"ALSA capture device {device!r}: cannot open: {err}") from err
        try:
            info = pcm.info()
            refused = []
            if info["rate"] != fs_hz:
                refused.append(f"rate {fs_hz} Hz (got {info['rate']})")
            if info["channels"] != channels:
                refused.append(f"{channels} channels (got {info['channels']})")
            if info["format_name"] != format:
                refused.append(f"format {format} (got {info['format_name']})")
            if refused:
                raise DeviceError(f"ALSA capture device {device!r} refused "
                                  + ", ".join(refused))
        except BaseException:
            pcm.close()
            raise
        self._pcm = pcm
        self.device_period_frames = int(info["period_size"])
        self.buffer_frames = int(info["buffer_size"])
        self._use_hts = alsa_timestamps and self._enable_timestamps()
        self._hts_checked = False
        self._acc = bytearray()
        self._acc_t0_ns: int | None = None
        self._next_t_ns: int | None = None
        self._gap_pending = False
        self._seq = 0
        self._xruns = 0
        self._closed = False
        self._lock = threading.Lock()
        log.info("alsa source %r: %d ch %s %d Hz, period %d (device %d), buffer %d frames, "
                 "timestamps: %s", device, channels, format, fs_hz, period_frames,
                 self.device_period_frames, self.buffer_frames,
                 "alsa" if self._use_hts else "clock")

    def _enable_timestamps(self) -> bool:
        """Ask for CLOCK_MONOTONIC ALSA timestamps; True when the device took them."""
        try:
            self._pcm.set_tstamp_mode(alsaaudio.PCM_TSTAMP_ENABLE)
            self._pcm.set_tstamp_type(alsaaudio.PCM_TSTAMP_TYPE_MONOTONIC)
            return self._pcm.get_tstamp_type() == alsaaudio.PCM_TSTAMP_TYPE_MONOTONIC
        except (alsaaudio.ALSAAudioError, AttributeError) as err:
            log.info("alsa source %r: no ALSA timestamps (%s), using the clock",
                     self.device, err)
            return False

    @property
    def xruns_total(self) -> int:
        """Overruns seen since open."""
        return self._xruns

    def _first_frame_ns(self, n: int) -> int:
        """Capture time of the first of the ``n`` frames the last read returned."""
        if self._use_hts:
            sec, nsec, avail = self._pcm.htimestamp()
            ts = sec * _NS + nsec
            if not self._hts_checked:
                self._hts_checked = True
                if ts <= 0 or abs(ts - time.monotonic_ns()) > _NS:
                    log.warning("alsa source %r: implausible ALSA timestamp %d ns, using the "
                                "clock instead", self.device, ts)
                    self._use_hts = False
        if not self._use_hts:
            ts = time.monotonic_ns()
            avail = self._pcm.avail()
        return ts - (max(int(avail), 0) + n) * _NS // self.fs_hz

    def _read_chunk(self) -> None:
        """One ``PCM.read()``: append its frames to the accumulator, or handle an overrun."""
        empty = 0
        while True:
            try:
                n, data = self._pcm.read()
            except alsaaudio.ALSAAudioError as err:
                raise DeviceError(f"ALSA capture device {self.device!r}: read failed: "
                                  f"{err}") from err
            if n > 0:
                break
            if n == -errno.EPIPE:
                self._xruns += 1
                log.warning("alsa source %r: overrun #%d, recovered (%d accumulated frames "
                            "dropped)", self.device, self._xruns,
                            len(self._acc) // self._frame_bytes)
                self._acc.clear()
                self._acc_t0_ns = None
                self._gap_pending = True
                return
            if n < 0:
                raise DeviceError(f"ALSA capture device {self.device!r}: read failed: "
                                  f"{os.strerror(-n)} ({n})")
            empty += 1
            if empty >= _MAX_EMPTY_READS:
                raise DeviceError(f"ALSA capture device {self.device!r}: stalled, "
                                  f"{empty} reads returned no frames")
        t_first = self._first_frame_ns(n)
        if not self._acc:
            self._acc_t0_ns = t_first
        self._acc += data[:n * self._frame_bytes]

    def read(self) -> Block:
        """The next block of exactly ``period_frames`` frames (blocks until it is complete).

        Raises:
            DeviceError: a read error other than an overrun, or the source is closed.
        """
        with self._lock:
            if self._closed:
                raise DeviceError(f"ALSA capture device {self.device!r}: read after close")
            need = self.period_frames * self._frame_bytes
            while len(self._acc) < need:
                self._read_chunk()
            t_block = self._acc_t0_ns
            assert t_block is not None
            gap = 0
            if self._gap_pending:
                self._gap_pending = False
                if self._next_t_ns is not None:
                    gap = max(0, round((t_block - self._next_t_ns) * self.fs_hz / _NS))
                log.info("alsa source %r: block %d follows an overrun, %d frames lost",
                         self.device, self._seq, gap)
            samples = pcm_to_float(self._acc[:need], self._capture_channels, self.format,
                                   select=self._select)
            del self._acc[:need]
            self._next_t_ns = t_block + self._period_ns
            self._acc_t0_ns = self._next_t_ns if self._acc else None
            block = Block(samples=samples, seq=self._seq, t_capture_ns=t_block,
                          gap_frames=gap)
            self._seq += 1
            return block

    def close(self) -> None:
        """Close the PCM; idempotent (waits for a read in progress to return)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._pcm.close()
                log.info("alsa source %r closed after %d blocks, %d overruns",
                         self.device, self._seq, self._xruns)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
