"""Process health from /proc, and the telemetry JSON the service publishes.

Readers take the /proc root as an argument so tests can build a fake tree. A source that is
missing or unreadable (no /proc/loadavg in a container, a field absent on an old kernel) is
left out of the result, never raised: telemetry must not take the service down.

:func:`telemetry_payload` builds the message from explicit values that the service gathers
(counters from the capture, DSP and MQTT threads), so it can be tested without any of them.
Field names carry their unit, Prometheus style (``_seconds``, ``_bytes``, ``_total``); a field
whose value is unknown is left out rather than sent as ``null``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mica.device.stage_stats import StageStats, StageSummary

log = logging.getLogger(__name__)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def _status_fields(text: str) -> dict[str, str]:
    """``Key:\\tvalue`` lines of /proc/<pid>/status."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


@dataclass(frozen=True, slots=True)
class _StatTimes:
    cpu_ticks: int
    """utime + stime, in clock ticks."""
    threads: int
    start_ticks: int
    """starttime: clock ticks after boot when the process started."""


def _parse_stat(text: str) -> _StatTimes | None:
    """utime, stime, num_threads and starttime from /proc/<pid>/stat.

    The command name (field 2) is in parentheses and may itself hold spaces and parentheses,
    so fields are counted after the last ``)``: field 3 (state) is index 0 there.
    """
    close = text.rfind(")")
    if close < 0:
        return None
    rest = text[close + 1:].split()
    try:
        # Fields 14 utime, 15 stime, 20 num_threads, 22 starttime (proc(5), 1-based).
        return _StatTimes(cpu_ticks=int(rest[11]) + int(rest[12]), threads=int(rest[17]),
                          start_ticks=int(rest[19]))
    except (IndexError, ValueError):
        return None


def load_average(proc_root: str | Path = "/proc") -> tuple[float, float, float] | None:
    """1, 5 and 15 minute load averages from ``<proc_root>/loadavg``; ``None`` if unreadable."""
    text = _read_text(Path(proc_root) / "loadavg")
    if text is None:
        return None
    parts = text.split()
    try:
        return float(parts[0]), float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        log.debug("unparsable loadavg: %r", text[:80])
        return None


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One reading of the process; ``None`` where the source was missing."""

    cpu_percent: float | None
    """CPU time (user + system) over wall time since the previous sample, in percent of one
    core (200 = two cores busy)."""
    rss_bytes: int | None
    """Resident set size (VmRSS)."""
    threads: int | None
    """Threads in the process."""
    uptime_s: float | None
    """Seconds since the process started (stat starttime against /proc/uptime)."""
    load1: float | None = None
    """System load average over 1 minute (/proc/loadavg)."""


class ProcessSampler:
    """CPU, memory and threads of one process, from ``<proc_root>/<pid>/{stat,status}``, and
    the system's load average.

    The first CPU figure covers the time since the sampler was created; each later one the
    time since the previous :meth:`sample`. The kernel counts CPU time in clock ticks (10 ms
    at the usual 100 Hz), so a sample taken less than ``min_interval_s`` after the previous
    one repeats the previous figure instead of measuring a window a few ticks long.

    Args:
        proc_root: the /proc mount (a fake tree in tests).
        pid: process to watch; ``"self"`` is this process.
        clk_tck: clock ticks per second of the stat times; ``None`` asks ``sysconf``.
        clock: monotonic wall clock in seconds (injectable for tests).
        min_interval_s: shortest window the CPU figure is measured over.
    """

    def __init__(self, proc_root: str | Path = "/proc", pid: int | str = "self", *,
                 clk_tck: int | None = None, clock: Any = time.monotonic,
                 min_interval_s: float = 0.25) -> None:
        self.proc_root = Path(proc_root)
        self._dir = self.proc_root / str(pid)
        self._clk_tck = clk_tck or os.sysconf("SC_CLK_TCK")
        self._clock = clock
        self._min_interval_s = min_interval_s
        stat = self._stat()
        self._last = (clock(), stat.cpu_ticks if stat else None)
        self._last_cpu_percent: float | None = None

    def _stat(self) -> _StatTimes | None:
        text = _read_text(self._dir / "stat")
        return _parse_stat(text) if text is not None else None

    def _uptime_s(self, stat: _StatTimes) -> float | None:
        text = _read_text(self.proc_root / "uptime")
        try:
            system_up_s = float(text.split()[0]) if text else None
        except (IndexError, ValueError):
            system_up_s = None
        if system_up_s is None:
            return None
        return max(0.0, system_up_s - stat.start_ticks / self._clk_tck)

    def sample(self) -> ProcessSample:
        """Read the process now."""
        now = self._clock()
        stat = self._stat()
        cpu_percent = None
        if stat is not None:
            last_t, last_ticks = self._last
            if last_ticks is not None and now - last_t < self._min_interval_s:
                cpu_percent = self._last_cpu_percent
            else:
                if last_ticks is not None:
                    cpu_s = (stat.cpu_ticks - last_ticks) / self._clk_tck
                    cpu_percent = max(0.0, 100.0 * cpu_s / (now - last_t))
                self._last = (now, stat.cpu_ticks)
                self._last_cpu_percent = cpu_percent
        status_text = _read_text(self._dir / "status")
        status = _status_fields(status_text) if status_text is not None else {}
        rss_bytes = _kib_to_bytes(status.get("VmRSS"))
        threads = _int_or_none(status.get("Threads"))
        if threads is None and stat is not None:
            threads = stat.threads
        load = load_average(self.proc_root)
        return ProcessSample(cpu_percent=cpu_percent, rss_bytes=rss_bytes, threads=threads,
                             uptime_s=self._uptime_s(stat) if stat is not None else None,
                             load1=load[0] if load is not None else None)


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _kib_to_bytes(text: str | None) -> int | None:
    """``"12345 kB"`` -> 12641280."""
    if text is None:
        return None
    number, _, unit = text.partition(" ")
    kib = _int_or_none(number)
    if kib is None or unit.strip() not in ("kB", ""):
        return None
    return kib * 1024


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


TELEMETRY_FIELDS = frozenset({
    "seq", "uptime_seconds", "load1", "real_time_factor", "xruns_total",
    "dropped_blocks_total", "dropped_audio_total", "blocks_total", "latency_seconds",
    "process_cpu_percent", "process_rss_bytes", "process_threads", "dsp_block_seconds",
})
"""Names :func:`telemetry_payload` sets itself (``extra`` fields may not reuse them)."""


def telemetry_payload(*, seq: int, uptime_seconds: float | None = None,
                      process: ProcessSample | None = None, load1: float | None = None,
                      dsp: StageStats | StageSummary | None = None,
                      real_time_factor: float | None = None, xruns_total: int | None = None,
                      dropped_blocks_total: int | None = None,
                      dropped_audio_total: int | None = None, blocks_total: int | None = None,
                      latency_seconds: float | None = None, **extra: Any) -> dict[str, Any]:
    """The ``<base>/telemetry`` JSON object (fields and units: docs/mqtt.md).

    Every argument is a value the caller has already gathered; ``None`` leaves its field out.

    Args:
        seq: message counter (0, 1, 2, ... per run).
        process: a :meth:`ProcessSampler.sample`; gives ``process_*`` and, unless ``load1`` is
            given, ``load1``.
        dsp: DSP block timing: a :class:`StageStats` (summarised now) or its summary; gives
            ``dsp_block_seconds`` and, unless ``real_time_factor`` is given, the real-time
            factor over its window.
        **extra: more fields from other collectors (``device_errors_total``, temperatures,
            ...), JSON-serialisable, named with their unit.

    Raises:
        ValueError: an ``extra`` field reuses a built-in name.
    """
    clash = sorted(set(extra) & TELEMETRY_FIELDS)
    if clash:
        raise ValueError(f"extra telemetry fields clash with built-in ones: {clash}")
    summary = dsp.summary() if isinstance(dsp, StageStats) else dsp
    if real_time_factor is None and summary is not None:
        real_time_factor = summary.real_time_factor
    if load1 is None and process is not None:
        load1 = process.load1
    fields: dict[str, Any] = {
        "seq": int(seq),
        "uptime_seconds": _round(uptime_seconds, 3),
        "load1": _round(load1, 2),
        "real_time_factor": _round(real_time_factor, 5),
        "xruns_total": xruns_total,
        "dropped_blocks_total": dropped_blocks_total,
        "dropped_audio_total": dropped_audio_total,
        "blocks_total": blocks_total,
        "latency_seconds": _round(latency_seconds, 6),
    }
    if process is not None:
        fields["process_cpu_percent"] = _round(process.cpu_percent, 2)
        fields["process_rss_bytes"] = process.rss_bytes
        fields["process_threads"] = process.threads
    if summary is not None:
        fields["dsp_block_seconds"] = {k: round(v, 7) for k, v in summary.as_dict().items()}
    payload = {k: v for k, v in fields.items() if v is not None}
    payload.update(extra)
    return payload


class ChannelLevels:
    """Per-channel level of the raw microphone blocks over a telemetry window.

    The DSP thread calls :meth:`add` with each ``(n_ch, n)`` input block (a few vectorised
    reductions, no allocation beyond small ``(n_ch,)`` arrays); the telemetry timer calls
    :meth:`take`, which returns the window's figures and starts a new window. Both hold a
    lock for a handful of array operations only.

    A channel is *dead* when its samples did not change at all during the window (stuck or
    digital silence) or, with two channels or more, when its RMS is more than
    ``dead_below_db`` under the median RMS of the array (a broken or covered capsule).

    Args:
        n_channels: channels per block.
        clip_level: absolute sample value counted as clipping (full scale is 1.0).
        dead_below_db: how far under the array's median RMS a live channel never falls.
    """

    def __init__(self, n_channels: int, clip_level: float = 0.999,
                 dead_below_db: float = 30.0) -> None:
        self.n_channels = int(n_channels)
        self.clip_level = float(clip_level)
        self._dead_ratio = 10.0 ** (-dead_below_db / 20.0)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        n = self.n_channels
        self._sumsq = np.zeros(n, np.float64)
        self._min = np.full(n, np.inf)
        self._max = np.full(n, -np.inf)
        self._clipped = np.zeros(n, np.int64)
        self._samples = 0

    def add(self, block: np.ndarray) -> None:
        """Account one ``(n_channels, n)`` float block."""
        lo = block.min(axis=1)
        hi = block.max(axis=1)
        sumsq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        clipped = np.count_nonzero(np.abs(block) >= self.clip_level, axis=1)
        with self._lock:
            self._sumsq += sumsq
            np.minimum(self._min, lo, out=self._min)
            np.maximum(self._max, hi, out=self._max)
            self._clipped += clipped
            self._samples += block.shape[1]

    def take(self) -> dict[str, Any]:
        """The window's ``channel_*`` telemetry fields (empty before the first block)."""
        with self._lock:
            sumsq, lo, hi, clipped, n = (self._sumsq, self._min, self._max, self._clipped,
                                         self._samples)
            self._reset()
        if n == 0:
            return {}
        rms = np.sqrt(sumsq / n)
        peak = np.maximum(np.abs(lo), np.abs(hi))
        dead = hi <= lo
        if self.n_channels >= 2:
            dead |= rms < np.median(rms) * self._dead_ratio
        return {
            "channel_rms_ratio": [round(float(v), 6) for v in rms],
            "channel_peak_ratio": [round(float(v), 6) for v in peak],
            "channel_clipping_ratio": [round(float(c) / n, 6) for c in clipped],
            "channel_dead": [bool(d) for d in dead],
        }
