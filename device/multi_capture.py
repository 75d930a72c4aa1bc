"""One array from several capture devices, each with its own clock.

::

    device 0 (reference) ──capture thread──▶ queue ─┐
    device 1 ──────────────capture thread──▶ queue ─┼─▶ read(): align + resample ─▶ Block
    device 2 ──────────────capture thread──▶ queue ─┘         (geometry row order)

Each device has its own capture thread that only reads and enqueues (drop-oldest, counted).
:meth:`MultiCapture.read` (the service's capture loop calls it, like any :class:`Source`)
takes the next block of the reference device and, for every other device, enough of its
input to resample it onto the reference clock with its
:class:`~mica.array_dsp.drift.DriftCompensator` (offset by GCC-PHAT, drift online from the
signal, the ALSA-reported rates as a prior). The result is one block per reference period
with every microphone in geometry row order, carrying the reference's ``seq`` and
``t_capture_ns``. The aligning itself (no threads, no clocks) is :class:`DeviceAligner`,
which the offline path (:mod:`mica.device.multi_file`: ``mica enhance A.wav B.wav ...``,
``mica drift``) runs on files, so both give the same output. With the geometry and a look
direction (:meth:`DeviceAligner.set_look_direction`) the talker keeps its physical delays
between devices and the offset is measured on its bins (a louder noise source elsewhere
does not set it).

Timing: the first blocks' ``t_capture_ns`` give the initial offset guess between devices;
each device's frame count against its ``t_capture_ns`` gives its rate against
CLOCK_MONOTONIC, and the ratio of two devices' rates is the prior of their drift (the host
clock cancels).

Degradation: a non-reference device that fails (read error, unplugged, no input within
``wait_s``, or not there at open) is left out and the array goes on with the others: its
rows of each block are zeros (digital silence, which the Enhancer's dead-channel exclusion
leaves out of the beamformer), ``device_lost`` names it, a thread of its own reopens it with
backoff (:data:`REOPEN_BACKOFF_S`), and on its return (``device_back`` with the downtime)
its compensator restarts acquisition from the timestamps, keeping the drift estimate, so the
offset re-locks. The reference device carries the clock and the block timing: when it fails
the read raises :class:`DeviceError` and the service reopens the whole set (its own
``device_lost``/``device_back``, pausing audio), which re-acquires every offset.

Echo reference device (``role = "reference"``, :data:`ROLE_REFERENCE`): the playback
loopback of the loudspeaker's sound card (``hw:Loopback,1,0``, a ``dsnoop`` of the playback
device), with its own clock. Its channels come after every microphone in each block (the
layout :func:`mica.device.echo_stage.split_reference` cuts). It is not the same acoustic
signal as the microphones, so it gets no offset search: its compensator is rate-only
(:class:`~mica.array_dsp.drift.DriftCompensator` ``rate_only``): the starting offset from
the first blocks' capture times (physical time lines up; the echo canceller's bulk-delay
tracker absorbs the playback buffering), the drift from the ALSA-timestamp rate ratio
(:meth:`_RateMeter.fit`: least-squares line of frames over capture time, its standard
error; updated every :data:`RATE_ONLY_UPDATE_S`), so the loopback does not jump. Its rows
are zeros until both timestamp lines exist (:data:`RATE_ONLY_MIN_S`) and place it (the
first blocks' own capture times can be a period off); its read position is then checked
against the lines at each update and moved onto them when more than :data:`RESYNC_S` off
(after a reference overrun, or blocks a full queue dropped: counted from ``seq``), so
physical time stays lined up. Lost, it
degrades like any non-reference device (zeros: the canceller sees no playback and holds
its filter; reopened with backoff; ``device_lost``/``device_back`` with ``"role":
"reference"``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mica.array_dsp.drift import DriftCompensator, DriftEvent, DriftSettings, warmup_kernels
from mica.array_dsp.errors import DeviceError, MicaError
from mica.array_dsp.resample import FRAC_ONE
from mica.array_dsp.steering import SOUND_SPEED_M_S, far_field_delays_s
from mica.device.block import Block, Source
from mica.device.ring import DropOldestQueue

log = logging.getLogger(__name__)

_NS = 1_000_000_000
PRIOR_MIN_S = 2.0
"""Seconds of timestamps before a device's rate is used as the drift prior."""
PRIOR_JITTER_S = 2e-3
"""Assumed timestamp jitter (s) for the prior's uncertainty: ``2 * jitter / span``."""
REOPEN_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
"""Waits between attempts to reopen a lost non-reference device (the last one repeats)."""
NOMINAL_PRIOR_SIGMA_PPM = 5.0
"""Uncertainty given to a calibrated nominal drift (a crystal moves a few ppm with
temperature): combined with the ALSA-timestamp prior by inverse variance."""
ROLE_MICS = "mics"
"""A device of microphones (geometry rows; aligned by the acoustic offset search)."""
ROLE_REFERENCE = "reference"
"""The playback loopback device of the echo canceller (rate-only alignment, module doc)."""
ROLES = (ROLE_MICS, ROLE_REFERENCE)
RATE_ONLY_MIN_S = 0.5
"""Seconds of timestamps before a rate-only device's rate is used (its timestamps' line fit
is good to a few ppm after a second on the fake devices: 18 us jitter)."""
TIMESTAMP_OUTLIER_S = 0.02
"""A block's capture time this far (s) from its device's timestamp line is left out of it."""
TIMESTAMP_OUTLIER_MIN_S = 0.25
"""Seconds of line before outliers are looked for."""
TIMESTAMP_OUTLIER_RUN = 50
"""Outliers in a row that restart the line (the stream shifted for good)."""
RATE_ONLY_UPDATE_S = 0.25
"""How often (s of reference signal) a rate-only device's resampling rate follows its
timestamp fit."""
RESYNC_S = 0.02
"""A rate-only device whose read position is this far (s) from where the two devices'
timestamp lines put it (a loss nobody reported: the reported ones, overrun gaps and blocks
a full queue dropped, are skipped exactly) is moved there at once. Below, the rate alone
keeps it: a restarted stream's timestamps can be up to a period off its sound (10 ms
measured on the ioplug fake devices), and following them would move a loopback the
canceller had right."""


@dataclass
class DeviceSpec:
    """One capture device of the array."""

    name: str
    """Name for logs, telemetry and events (the ALSA PCM name)."""
    open: Callable[[], Source]
    """Opens the device (delivering the listed microphone channels, in order)."""
    geometry_rows: list[int]
    """Geometry row of each delivered channel; for a :data:`ROLE_REFERENCE` device its rows
    of the delivered block, after every microphone."""
    role: str = ROLE_MICS
    """:data:`ROLE_MICS` or :data:`ROLE_REFERENCE` (the echo canceller's playback loopback)."""


def clock_reference_index(devices: list[Any]) -> int:
    """Index of the clock-reference device among ``[[capture.devices]]`` tables: the one with
    ``reference = true``, else the first microphone device (never a reference-role one)."""
    flagged = [i for i, d in enumerate(devices) if getattr(d, "reference", False)]
    if flagged:
        return flagged[0]
    mics = [i for i, d in enumerate(devices) if getattr(d, "role", ROLE_MICS) == ROLE_MICS]
    return mics[0] if mics else 0


class _RateMeter:
    """A device's frame rate against CLOCK_MONOTONIC from its blocks' capture times.

    Frames are counted from the first block (gaps included); the line of frame index over
    capture time leaves out timestamps more than :data:`TIMESTAMP_OUTLIER_S` off it (a
    stream restarting after an overrun can report one far off), and starts again from the
    current block after :data:`TIMESTAMP_OUTLIER_RUN` of them in a row (the stream shifted;
    frames keep counting)."""

    def __init__(self) -> None:
        self.t0_ns: int | None = None
        self.frames = 0
        self.t_last_ns = 0
        self.frames_last = 0
        """Frame index of the newest block's first frame."""
        self.outliers_total = 0
        self._f0 = 0  # frame index at t0 (the line's first point)
        self._f_fit_last = 0  # frame index of the newest point on the line
        self._run = 0
        self._sums = np.zeros(6, np.float64)  # n, sum t, sum f, sum t^2, sum t f, sum f^2

    def add(self, block: Block, dropped_frames: int = 0) -> None:
        """Count ``block`` (after its ``gap_frames`` and ``dropped_frames`` lost ones)."""
        if self.t0_ns is None:
            self.t0_ns = block.t_capture_ns
            self.frames = 0
        self.frames += block.gap_frames + dropped_frames
        self.frames_last = self.frames
        self.frames += block.n_samples
        f = float(self.frames_last)
        line = self._line(TIMESTAMP_OUTLIER_MIN_S)
        if line is not None and abs((block.t_capture_ns - self.t0_ns) / _NS
                                    - (f - line[1]) / line[0]) > TIMESTAMP_OUTLIER_S:
            self.outliers_total += 1
            self._run += 1
            if self._run < TIMESTAMP_OUTLIER_RUN:
                return
            self._sums.fill(0.0)  # the stream shifted: a new line from here
            self.t0_ns, self._f0 = block.t_capture_ns, self.frames_last
        self._run = 0
        self.t_last_ns = block.t_capture_ns
        self._f_fit_last = self.frames_last
        t = (block.t_capture_ns - self.t0_ns) / _NS
        self._sums += (1.0, t, f, t * t, t * f, f * f)

    def fit(self, min_span_s: float = PRIOR_MIN_S) -> tuple[float, float, float] | None:
        """Least-squares line of frame index over capture time: ``(frames per second, its
        standard error, span in s)``, or None before ``min_span_s``. The slope's error is
        ``s / sqrt(sum (t - mean t)^2)`` with ``s`` the residual spread (in frames): the
        timestamps' own jitter, not an assumed one."""
        line = self._line(min_span_s)
        return None if line is None else (line[0], line[2], line[3])

    def frame_at(self, t_ns: int, min_span_s: float = PRIOR_MIN_S) -> float | None:
        """The frame index captured at CLOCK_MONOTONIC ``t_ns`` on the fitted line (frames
        counted from this meter's first block, gaps included), or None before
        ``min_span_s``."""
        line = self._line(min_span_s)
        if line is None or self.t0_ns is None:
            return None
        return line[1] + line[0] * (t_ns - self.t0_ns) / _NS

    def _line(self, min_span_s: float) -> tuple[float, float, float, float] | None:
        """``(slope, intercept, slope's standard error, span)`` of the fit (see :meth:`fit`)."""
        if self.t0_ns is None:
            return None
        span_s = (self.t_last_ns - self.t0_ns) / _NS
        n, st, sf, stt, stf, sff = self._sums
        if span_s < min_span_s or n < 3:
            return None
        sxx = stt - st * st / n
        sxy = stf - st * sf / n
        syy = sff - sf * sf / n
        if sxx <= 0:
            return None
        slope = sxy / sxx
        resid = max(syy - slope * sxy, 0.0) / (n - 2)
        return float(slope), float((sf - slope * st) / n), float(np.sqrt(resid / sxx)), span_s

    def rate(self) -> tuple[float, float] | None:
        """``(frames per second, span in s)`` or None before :data:`PRIOR_MIN_S`."""
        if self.t0_ns is None:
            return None
        span_s = (self.t_last_ns - self.t0_ns) / _NS
        if span_s < PRIOR_MIN_S:
            return None
        return (self._f_fit_last - self._f0) / span_s, span_s


class _Device:
    def __init__(self, spec: DeviceSpec, source: Source | None, queue_blocks: int) -> None:
        self.spec = spec
        self.source = source
        self.queue: DropOldestQueue[Block] = DropOldestQueue(queue_blocks)
        self.error: str | None = None
        self.rate = _RateMeter()
        self.comp: DriftCompensator | None = None
        self.first: Block | None = None
        self.thread: threading.Thread | None = None
        self.up = source is not None
        self.lost_at: float | None = None
        self.pending: Source | None = None  # reopened by the reopen thread, not yet in use
        self.attempts = 0
        self.xruns_closed = 0  # overruns of the connections closed so far
        self.last_seq: int | None = None  # of the connection in use (dropped blocks: a gap)
        self.resyncs = 0  # rate-only: read position moved onto the timestamp lines
        self.timed = False  # rate-only: positioned on the timestamp lines since (re)start
        self.dropped_frames = 0  # frames of the blocks the queue dropped before the last one


EventCallback = Callable[[str, DriftEvent, str], None]
"""``on_event(device name, event, lock state)``."""


class DeviceAligner:
    """The alignment core: several devices' samples onto the reference clock, one reference
    block at a time, with one :class:`~mica.array_dsp.drift.DriftCompensator` per
    non-reference device. No threads, no clocks: :class:`MultiCapture` feeds it from its
    capture queues, :func:`align_recordings` from files; both get the same output.

    Per reference block: :meth:`start` each device once (its initial offset guess), then
    :meth:`push` its input while :meth:`needs_input`, then :meth:`align` the block.

    Args:
        names: device names (logs, events, status).
        rows: geometry row of each channel of each device.
        reference: index of the reference device.
        fs_hz: nominal rate of every device.
        period_frames: samples per reference block.
        settings: drift estimation settings (copied per device).
        compensate: resample (True) or only measure (False).
        analysis_row: which channel of each device the estimator compares.
        on_event: called with each drift event.
        rate_only: per device, True for an echo reference device (:data:`ROLE_REFERENCE`):
            no offset search, resampled at the rate :meth:`set_rate` gives; its rows must
            come after every microphone row.
    """

    def __init__(
        self,
        names: list[str],
        rows: list[list[int]],
        reference: int,
        fs_hz: int,
        period_frames: int,
        settings: DriftSettings | None = None,
        compensate: bool = True,
        analysis_row: int = 0,
        on_event: EventCallback | None = None,
        rate_only: list[bool] | None = None,
    ) -> None:
        if len(names) != len(rows):
            raise ValueError(f"{len(names)} device names for {len(rows)} row lists")
        if not 0 <= reference < len(names):
            raise ValueError(f"reference {reference} is not one of {len(names)} devices")
        flat = sorted(r for dev_rows in rows for r in dev_rows)
        if flat != list(range(len(flat))):
            raise ValueError(f"geometry rows {flat} must be 0..{len(flat) - 1}, each once")
        self.rate_only = [bool(v) for v in (rate_only or [False] * len(names))]
        if len(self.rate_only) != len(names):
            raise ValueError(f"{len(self.rate_only)} rate_only flags for {len(names)} devices")
        if self.rate_only[reference]:
            raise ValueError("the clock reference cannot be a rate-only (echo reference) device")
        ref_rows = [r for dev_rows, ro in zip(rows, self.rate_only, strict=True) if ro
                    for r in dev_rows]
        self.n_mics = len(flat) - len(ref_rows)
        """Microphone rows (the first ones); the rate-only devices' rows follow."""
        if ref_rows and min(ref_rows) < self.n_mics:
            raise ValueError(f"rate-only rows {sorted(ref_rows)} must come after the "
                             f"{self.n_mics} microphone rows")
        self.names = list(names)
        self.rows = [list(r) for r in rows]
        self.reference = int(reference)
        self.fs_hz = int(fs_hz)
        self.period_frames = int(period_frames)
        self.n_channels = len(flat)
        self.analysis_row = int(analysis_row)
        self._settings = settings or DriftSettings()
        self.max_drift_ppm = self._settings.max_drift_ppm
        """Largest drift a rate-only device's timestamps may show (more: not believed)."""
        self._compensate = compensate
        self._on_event = on_event
        self._expected: dict[str, float] = {}
        self._aux: tuple[int, float] | None = None
        self.comps: list[DriftCompensator | None] = [None] * len(names)
        self._absent: set[int] = set()
        self._muted: set[int] = set()
        self._merged = np.zeros((self.n_channels, self.period_frames), np.float32)
        self._outs = [np.zeros((len(r), self.period_frames), np.float32) for r in self.rows]

    def started(self, i: int) -> bool:
        """Device ``i`` has its compensator (the reference always counts as started)."""
        return i == self.reference or (self.comps[i] is not None and i not in self._absent)

    def drop(self, i: int) -> None:
        """Device ``i`` is gone: :meth:`align` gives zeros for its rows until :meth:`start`
        again (its compensator and drift estimate are kept for the return)."""
        if i == self.reference:
            raise ValueError("the reference device cannot be dropped")
        self._absent.add(i)

    def mute(self, i: int, muted: bool = True) -> None:
        """Device ``i``'s rows are zeros while muted (it is still resampled, so its timeline
        goes on): a rate-only device until its timing is known."""
        if muted:
            self._muted.add(i)
        else:
            self._muted.discard(i)

    def present(self, i: int) -> bool:
        """Device ``i`` delivers (not :meth:`drop`-ped since its last :meth:`start`)."""
        return i not in self._absent

    def start(self, i: int, initial_offset_samples: float = 0.0) -> DriftCompensator:
        """Create device ``i``'s compensator: its sample index ``initial_offset_samples``
        lines up with the reference's first sample (a guess; acquisition refines it). For a
        device back after :meth:`drop`: the same compensator, reset to acquisition with the
        new guess (lined up with the next reference block), its drift estimate kept."""
        comp = self.comps[i]
        was_absent = i in self._absent
        self._absent.discard(i)
        if comp is not None and was_absent:
            comp.reset(initial_offset_samples)
            log.info("drift: device %r back, re-acquiring %.1f samples after the reference",
                     self.names[i], -initial_offset_samples)
            return comp
        settings = DriftSettings(**vars(self._settings))
        comp = DriftCompensator(
            len(self.rows[i]),
            self.fs_hz,
            settings,
            analysis_channel=self.analysis_row,
            initial_offset_samples=initial_offset_samples,
            compensate=self._compensate,
            rate_only=self.rate_only[i],
        )
        comp.expected_delay_samples = self._expected.get(self.names[i], 0.0)
        comp.aux_delay_samples = None if self._aux is None else self._aux[1]
        self.comps[i] = comp
        log.info(
            "drift: device %r starts %.1f samples after the reference",
            self.names[i],
            -initial_offset_samples,
        )
        return comp

    def needs_input(self, i: int) -> bool:
        """Device ``i`` needs more input (or :meth:`start`) before the next block."""
        comp = self.comps[i]
        return comp is None or i in self._absent or not comp.ready(self.period_frames)

    def push(self, i: int, samples: np.ndarray, gap_frames: int = 0) -> None:
        """Device ``i``'s next ``(n_ch_i, n)`` float32 samples, after ``gap_frames`` lost
        ones (counted as zeros, so the device's sample count stays right)."""
        comp = self.comps[i]
        if comp is None:
            raise ValueError(f"device {self.names[i]!r}: start() before push()")
        if gap_frames:
            comp.resampler.skip_input(gap_frames)
        comp.push(samples)

    def set_rate(self, i: int, drift_ppm: float, sigma_ppm: float) -> None:
        """Rate-only device ``i``'s clock against the reference (ppm, positive: its clock is
        fast) and the standard error of that rate; the resampler follows it from now on (its
        read position moves on, no jump)."""
        if not self.rate_only[i]:
            raise ValueError(f"device {self.names[i]!r} is not rate-only")
        comp = self.comps[i]
        if comp is None:
            raise ValueError(f"device {self.names[i]!r}: start() before set_rate()")
        comp.set_prior(drift_ppm, sigma_ppm)

    def align(self, ref_samples: np.ndarray) -> np.ndarray:
        """The reference block ``(n_ch_ref, period)`` and every other device resampled onto
        it: ``(n_channels, period)`` float32 in geometry row order (reused buffer; copy it
        to keep it). Every other device must be ready (:meth:`needs_input` False)."""
        ref_mono = np.ascontiguousarray(ref_samples[self.analysis_row])
        ref_aux = None if self._aux is None else np.ascontiguousarray(ref_samples[self._aux[0]])
        for i, dev_rows in enumerate(self.rows):
            out = self._outs[i]
            if i == self.reference:
                out[...] = ref_samples
            elif i in self._absent:
                out.fill(0.0)  # a lost device: digital silence, left out as dead channels
            else:
                comp = self.comps[i]
                assert comp is not None
                for event in comp.process(ref_mono, out, ref_aux):
                    log.info(
                        "drift %s on %r: %.2f ppm (was %.2f), offset %.2f samples",
                        event.kind,
                        self.names[i],
                        event.drift_ppm,
                        event.previous_ppm,
                        event.offset_samples,
                    )
                    if self._on_event is not None:
                        self._on_event(self.names[i], event, comp.state)
                if i in self._muted:
                    out.fill(0.0)
            self._merged[dev_rows] = out
        return self._merged

    def set_expected_delays(
        self, delays_samples: dict[str, float], aux: tuple[int, float] | None = None
    ) -> None:
        """Acoustic delay of each device's analysis channel behind the reference's, for the
        look direction (samples); aligning subtracts it. ``aux``: ``(channel of the
        reference device, the talker's delay there behind its analysis channel)``: the
        offset is then measured where that synchronous pair sees the look direction (the
        talker's bins, not a louder noise source's)."""
        self._expected.update(delays_samples)
        if aux is not None:
            self._aux = (int(aux[0]), float(aux[1]))
        for name, comp in zip(self.names, self.comps, strict=True):
            if comp is not None and name in delays_samples:
                comp.expected_delay_samples = float(delays_samples[name])
            if comp is not None and self._aux is not None:
                comp.aux_delay_samples = self._aux[1]

    def set_look_direction(
        self,
        geometry_m: np.ndarray,
        azimuth_deg: float,
        elevation_deg: float = 0.0,
        sound_speed_m_s: float = SOUND_SPEED_M_S,
        mask: bool = True,
    ) -> None:
        """The talker's delays for a look direction (:func:`look_delays`); ``mask``: also
        measure the offset on the bins from that direction only (off when the look
        direction is not the talker's, e.g. while the beam follows a tracked DOA)."""
        mics = [i for i, ro in enumerate(self.rate_only) if not ro]  # echo references: no geometry
        delays, aux = look_delays(
            geometry_m,
            [self.rows[i] for i in mics],
            mics.index(self.reference),
            [self.names[i] for i in mics],
            self.fs_hz,
            azimuth_deg,
            elevation_deg,
            sound_speed_m_s,
            self.analysis_row,
        )
        if not mask:
            self._aux = None
            for comp in self.comps:
                if comp is not None:
                    comp.aux_delay_samples = None
        self.set_expected_delays(delays, aux if mask else None)

    def status(self, i: int) -> dict[str, Any]:
        """Device ``i``: drift (ppm), offset, lock state (the reference says so)."""
        if i == self.reference:
            return {"reference": True, "drift_ppm": 0.0, "offset_samples": 0.0,
                    "lock": "reference", "role": ROLE_MICS}
        comp = self.comps[i]
        entry: dict[str, Any] = (
            {"drift_ppm": None, "lock": "waiting"} if comp is None else comp.status()
        )
        if i in self._absent:
            entry["lock"] = "lost"
        entry["reference"] = False
        entry["role"] = ROLE_REFERENCE if self.rate_only[i] else ROLE_MICS
        return entry


def look_delays(
    geometry_m: np.ndarray,
    rows: list[list[int]],
    reference: int,
    names: list[str],
    fs_hz: float,
    azimuth_deg: float,
    elevation_deg: float = 0.0,
    sound_speed_m_s: float = SOUND_SPEED_M_S,
    analysis_row: int = 0,
) -> tuple[dict[str, float], tuple[int, float] | None]:
    """What aligning needs of a look direction: :func:`expected_delays_samples`, and the
    reference device's channel farthest from its analysis channel with the talker's delay
    there behind it (samples), or ``None`` for a one-channel reference device."""
    delays = expected_delays_samples(
        geometry_m,
        rows,
        reference,
        names,
        fs_hz,
        azimuth_deg,
        elevation_deg,
        sound_speed_m_s,
        analysis_row,
    )
    ref_rows = rows[reference]
    if len(ref_rows) < 2:
        return delays, None
    pos = np.asarray(geometry_m, np.float64)
    dist = np.linalg.norm(pos[ref_rows] - pos[ref_rows[analysis_row]], axis=1)
    aux = int(np.argmax(dist))
    tau_s = far_field_delays_s(
        pos, azimuth_deg, elevation_deg, sound_speed_m_s, reference_channel=ref_rows[analysis_row]
    )
    return delays, (aux, float(tau_s[ref_rows[aux]]) * fs_hz)


def expected_delays_samples(
    geometry_m: np.ndarray,
    rows: list[list[int]],
    reference: int,
    names: list[str],
    fs_hz: float,
    azimuth_deg: float,
    elevation_deg: float = 0.0,
    sound_speed_m_s: float = SOUND_SPEED_M_S,
    analysis_row: int = 0,
) -> dict[str, float]:
    """Far-field delay (samples) of a talker at ``azimuth_deg``/``elevation_deg`` at each
    device's analysis channel behind the reference device's (:meth:`DeviceAligner.
    set_expected_delays`). ``geometry_m``: ``(n_mics, 3)``."""
    tau_s = far_field_delays_s(
        np.asarray(geometry_m, np.float64),
        azimuth_deg,
        elevation_deg,
        sound_speed_m_s,
        reference_channel=rows[reference][analysis_row],
    )
    return {
        name: float(tau_s[r[analysis_row]]) * fs_hz for name, r in zip(names, rows, strict=True)
    }


class MultiCapture:
    """A :class:`Source` made of several devices, drift-corrected onto the reference.

    Args:
        specs: the devices; ``specs[reference]`` is the clock reference.
        reference: index of the reference device in ``specs``.
        fs_hz: nominal rate of every device.
        period_frames: samples per block (the reference's period).
        settings: drift estimation settings (copied per device).
        compensate: resample (True) or only measure (False).
        use_prior: use the ALSA-timestamp rates as the drift prior.
        on_event: called (in the reading thread) with each drift event as a dict.
        queue_blocks: per-device capture queue length.
        wait_s: how long a read waits for a late non-reference device.
        analysis_row: which delivered channel of each device the estimator compares.
        nominal_drift_ppm: calibrated drift of devices by name (``mica calibrate``), the
            prior of their estimate (+- :data:`NOMINAL_PRIOR_SIGMA_PPM`).
        on_device_event: called with ``("device_lost" | "device_back", payload)`` when a
            non-reference device is lost or back (module doc, "Degradation").

    Raises:
        DeviceError: the reference device cannot be opened (the others are closed again).
    """

    def __init__(
        self,
        specs: list[DeviceSpec],
        reference: int,
        fs_hz: int,
        period_frames: int,
        settings: DriftSettings | None = None,
        compensate: bool = True,
        use_prior: bool = True,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        queue_blocks: int = 64,
        wait_s: float = 1.0,
        analysis_row: int = 0,
        nominal_drift_ppm: dict[str, float] | None = None,
        on_device_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self._on_device_event = on_device_event
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._queue_blocks = queue_blocks
        self._nominal = dict(nominal_drift_ppm or {})
        self.aligner = DeviceAligner(
            [s.name for s in specs],
            [list(s.geometry_rows) for s in specs],
            reference,
            fs_hz,
            period_frames,
            settings,
            compensate,
            analysis_row,
            on_event=self._emit,
            rate_only=[s.role == ROLE_REFERENCE for s in specs],
        )
        self.fs_hz = int(fs_hz)
        self.period_frames = int(period_frames)
        self.n_channels = self.aligner.n_channels
        self._use_prior = use_prior
        self._on_event = on_event
        self._wait_s = wait_s
        self._reference = reference
        self._closed = False
        self._devices: list[_Device] = []
        warmup_kernels()  # compile before any device runs: compiling holds the GIL
        missing: list[tuple[int, str]] = []
        try:
            for i, spec in enumerate(specs):
                try:
                    source = _open_checked(spec)
                except MicaError as err:
                    if i == reference:
                        raise
                    missing.append((i, str(err)))  # the array starts without it
                    source = None
                self._devices.append(_Device(spec, source, queue_blocks))
        except BaseException:
            self.close()
            raise
        self._last_prior_s = 0.0
        self._rate_frames = 0  # reference frames since the last rate-only update
        for dev in self._devices:
            if dev.source is not None:
                self._start_thread(dev)
        for i, reason in missing:
            self._lose(i, self._devices[i], reason)

    def _start_thread(self, dev: _Device) -> None:
        dev.thread = threading.Thread(
            target=self._capture,
            args=(dev, dev.source, dev.queue),
            name=f"mica-capture-{dev.spec.name}",
            daemon=True,
        )
        dev.thread.start()

    # ------------------------------------------------------------------ capture threads

    def _capture(self, dev: _Device, source: Source, queue: DropOldestQueue[Block]) -> None:
        """Read one device and enqueue; never waits on anything else. Ends with the device,
        or when the device was given up (:meth:`_lose`: then it closes the source itself)."""
        try:
            while not self._closed and dev.source is source:
                block = source.read()
                if block is None:
                    break
                queue.put(block)
        except MicaError as err:
            if not self._closed and dev.source is source:
                dev.error = str(err)
                log.error("capture device %r failed: %s", dev.spec.name, err)
        finally:
            queue.close()
            with self._lock:
                retired = dev.source is not source
            if retired:
                _close_quietly(dev, source)

    # ------------------------------------------------------------------ Source

    @property
    def xruns_total(self) -> int:
        """Overruns of every device (closed connections included)."""
        return sum(d.xruns_closed + (d.source.xruns_total if d.source is not None else 0)
                   for d in self._devices)

    @property
    def dropped_total(self) -> int:
        """Blocks dropped because a device queue was full."""
        return sum(d.queue.dropped_total for d in self._devices)

    def _get(self, dev: _Device, timeout_s: float) -> Block | None:
        block = dev.queue.get(timeout_s=timeout_s)
        if block is None and dev.error is not None:
            raise DeviceError(f"capture device {dev.spec.name!r}: {dev.error}")
        if block is not None:
            # blocks the full queue dropped (seq skipped): frames of the timestamp line; for
            # a rate-only device also a gap of its input (its sample index stays right)
            last, dev.last_seq = dev.last_seq, block.seq
            lost = 0 if last is None else max(block.seq - last - 1, 0) * block.n_samples
            dev.dropped_frames = lost
            dev.rate.add(block, lost)
            if lost and dev.spec.role == ROLE_REFERENCE:
                block = Block(block.samples, block.seq, block.t_capture_ns,
                              block.gap_frames + lost)
        return block

    def read(self) -> Block | None:
        """The next aligned block of every microphone, in geometry row order.

        Raises:
            DeviceError: a device failed or stalled (longer than ``wait_s``).
        """
        ref = self._devices[self._reference]
        block = None
        while block is None:
            block = self._get(ref, 0.1)
            if block is None and ref.queue.closed:
                return None
            if self._closed:
                return None
        if ref.first is None:
            ref.first = block
        if block.n_samples != self.period_frames:
            raise DeviceError(
                f"capture device {ref.spec.name!r}: block of "
                f"{block.n_samples} frames, expected {self.period_frames}"
            )
        if block.gap_frames or ref.dropped_frames:  # reference time lost: loopbacks skip it
            self._skip_rate_only(block.gap_frames + ref.dropped_frames)
        for i, dev in enumerate(self._devices):
            if i == self._reference:
                continue
            if not dev.up and dev.pending is not None:
                self._back(dev)
            if dev.up:
                try:
                    self._fill_device(i, dev, block)
                except DeviceError as err:
                    self._lose(i, dev, str(err))
        merged = self.aligner.align(block.samples)
        self._maybe_update_priors()
        self._maybe_update_rates(block)
        return Block(merged.copy(), block.seq, block.t_capture_ns, block.gap_frames)

    def _skip_rate_only(self, gap_frames: int) -> None:
        """The reference lost ``gap_frames`` (an overrun, or blocks its full queue dropped):
        every rate-only device skips the
        same stretch of time at once (the timestamp check would find it only later, after
        the canceller adapted on a misaligned loopback); a gap longer than the kept input
        restarts it from its timestamps."""
        for i, dev in enumerate(self._devices):
            comp = dev.comp
            if not self.aligner.rate_only[i] or comp is None or not self.aligner.started(i):
                continue
            if gap_frames * (1 + 1e-6 * comp.drift_ppm) < comp.resampler.history_samples:
                comp.skip(gap_frames)
            else:
                dev.rate = _RateMeter()
                self.aligner.drop(i)

    def _fill_device(self, i: int, dev: _Device, ref_block: Block) -> None:
        """Queue device ``i``'s input into the aligner until it can make the next block
        (``ref_block``: the reference block it is for)."""
        deadline = time.monotonic() + self._wait_s
        while self.aligner.needs_input(i):
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceError(
                    f"capture device {dev.spec.name!r} stalled: no input for {self._wait_s:.1f} s"
                )
            other = self._get(dev, min(left, 0.1))
            if other is None:
                if dev.queue.closed:
                    raise DeviceError(f"capture device {dev.spec.name!r} ended")
                continue
            if not self.aligner.started(i):
                # device sample index captured at the first reference sample it aligns to
                # (the stream's first block; after a return, this one)
                guess = (ref_block.t_capture_ns - other.t_capture_ns) * self.fs_hz / _NS
                dev.comp = self.aligner.start(i, guess)
                if self.aligner.rate_only[i]:  # zeros until the timestamp lines place it
                    dev.timed = False
                    self.aligner.mute(i, True)
                if dev.spec.name in self._nominal:
                    dev.comp.set_prior(self._nominal[dev.spec.name], NOMINAL_PRIOR_SIGMA_PPM)
            self.aligner.push(i, other.samples, other.gap_frames)

    # ------------------------------------------------------------------ degradation

    def _lose(self, i: int, dev: _Device, reason: str) -> None:
        """Leave device ``i`` out (zeros), announce it and start reopening it."""
        with self._lock:
            source, dev.source = dev.source, None  # retired: its capture thread stops
        if source is not None:
            dev.xruns_closed += source.xruns_total
            if dev.thread is not None:
                dev.thread.join(timeout=0.2)  # a failed read ends it at once
            if dev.thread is None or not dev.thread.is_alive():
                _close_quietly(dev, source)  # else the thread closes it when its read returns
        dev.up = False
        dev.lost_at = time.monotonic()
        dev.attempts = 0
        dev.rate = _RateMeter()
        if hasattr(dev, "prior"):
            del dev.prior
        self.aligner.drop(i)
        rows = list(dev.spec.geometry_rows)
        payload: dict[str, Any] = {"device": dev.spec.name, "reason": reason,
                                   "reference": False, "role": dev.spec.role}
        if dev.spec.role == ROLE_REFERENCE:
            log.error("capture device %r (echo reference) lost (%s): the echo canceller sees "
                      "no playback (block rows %s are zeros); reopening with backoff",
                      dev.spec.name, reason, rows)
            payload["geometry_rows"] = []
        else:
            log.error("capture device %r lost (%s): the array goes on without geometry rows "
                      "%s; reopening with backoff", dev.spec.name, reason, rows)
            payload["geometry_rows"] = rows
        payload["t_ns"] = time.monotonic_ns()
        self._device_event("device_lost", payload)
        threading.Thread(target=self._reopen, args=(dev,), daemon=True,
                         name=f"mica-reopen-{dev.spec.name}").start()

    def _reopen(self, dev: _Device) -> None:
        """Reopen thread: try to open ``dev`` again with backoff; leave it in ``pending``."""
        attempt = 0
        while not self._closed:
            if self._closing.wait(REOPEN_BACKOFF_S[min(attempt, len(REOPEN_BACKOFF_S) - 1)]):
                return
            attempt += 1
            try:
                source = _open_checked(dev.spec)
            except MicaError as err:
                log.warning("reopen of %r, attempt %d failed: %s", dev.spec.name, attempt, err)
                continue
            with self._lock:
                if not self._closed:
                    dev.attempts = attempt
                    dev.pending = source
                    return
            _close_quietly(dev, source)  # closed meanwhile
            return

    def _back(self, dev: _Device) -> None:
        """Reading thread: put the reopened ``dev`` in use (the aligner re-acquires it)."""
        with self._lock:
            dev.source, dev.pending = dev.pending, None
        dev.queue = DropOldestQueue(self._queue_blocks)
        dev.error = None
        dev.last_seq = None
        dev.up = True
        self._start_thread(dev)
        downtime_s = time.monotonic() - (dev.lost_at or time.monotonic())
        dev.lost_at = None
        log.info("capture device %r back after %.2f s (%d attempt(s))", dev.spec.name,
                 downtime_s, dev.attempts)
        self._device_event("device_back", {"device": dev.spec.name, "reference": False,
                                           "role": dev.spec.role,
                                           "downtime_seconds": round(downtime_s, 3),
                                           "attempts": dev.attempts,
                                           "t_ns": time.monotonic_ns()})

    def _device_event(self, kind: str, payload: dict[str, Any]) -> None:
        if self._on_device_event is not None:
            try:
                self._on_device_event(kind, payload)
            except Exception:  # a failing listener must not stop the capture
                log.exception("device event listener failed")

    def _maybe_update_priors(self) -> None:
        """Once per second: the ALSA-timestamp rate ratio of each device (reported as
        ``prior_ppm``; the drift prior when ``use_prior``)."""
        ref = self._devices[self._reference]
        now = time.monotonic()
        if now - self._last_prior_s < 1.0:
            return
        self._last_prior_s = now
        ref_rate = ref.rate.rate()
        if ref_rate is None:
            return
        for dev in self._devices:
            rate = dev.rate.rate()
            if dev is ref or dev.comp is None or rate is None or dev.comp.rate_only:
                continue  # a rate-only device's rate: _maybe_update_rates
            ppm = (rate[0] / ref_rate[0] - 1.0) * 1e6
            sigma = 1e6 * 2 * PRIOR_JITTER_S / min(rate[1], ref_rate[1])
            if dev.spec.name in self._nominal:  # the calibrated drift, by inverse variance
                w_a, w_n = sigma**-2, NOMINAL_PRIOR_SIGMA_PPM**-2
                ppm = (w_a * ppm + w_n * self._nominal[dev.spec.name]) / (w_a + w_n)
                sigma = (w_a + w_n) ** -0.5
            if self._use_prior:
                dev.comp.set_prior(ppm, sigma)
            dev.prior = (ppm, sigma)  # type: ignore[attr-defined]

    def _maybe_update_rates(self, ref_block: Block) -> None:
        """Every :data:`RATE_ONLY_UPDATE_S`: each rate-only (echo reference) device's drift
        from the least-squares fits of both devices' timestamps, ``(r_dev / r_ref - 1) 1e6``
        ppm, with the two fits' standard errors combined (combined with a calibrated nominal
        drift by inverse variance, as the priors are); the resampler follows it. Every
        block: its read position is checked against the lines (:meth:`_resync`).
        ``ref_block``: the reference block just aligned."""
        self._rate_frames += ref_block.n_samples  # stream time: a backlog read at once counts
        update = self._rate_frames >= RATE_ONLY_UPDATE_S * self.fs_hz
        if update:
            self._rate_frames = 0
        ref_meter = self._devices[self._reference].rate
        ref_fit = ref_meter.fit(RATE_ONLY_MIN_S)
        if ref_fit is None:
            return
        for i, dev in enumerate(self._devices):
            if not self.aligner.rate_only[i] or not dev.up or dev.comp is None:
                continue
            if not update:  # between rate updates: only the (cheap) timestamp check
                if dev.timed:
                    self._resync(i, dev, ref_meter, ref_block, ref_fit[0])
                continue
            fit = dev.rate.fit(RATE_ONLY_MIN_S)
            if fit is None:
                continue
            ratio = fit[0] / ref_fit[0]
            ppm = (ratio - 1.0) * 1e6
            sigma = 1e6 * ratio * float(np.hypot(fit[1] / fit[0], ref_fit[1] / ref_fit[0]))
            if not abs(ppm) <= self.aligner.max_drift_ppm:  # implausible timestamps: skip
                log.warning("capture device %r (echo reference): timestamp rate %.6g frames/s "
                            "against %.6g on the reference (%.4g ppm) is implausible; kept "
                            "%.2f ppm", dev.spec.name, fit[0], ref_fit[0], ppm,
                            dev.comp.drift_ppm)
                continue
            if dev.spec.name in self._nominal:
                w_a, w_n = max(sigma, 1e-3) ** -2, NOMINAL_PRIOR_SIGMA_PPM**-2
                ppm = (w_a * ppm + w_n * self._nominal[dev.spec.name]) / (w_a + w_n)
                sigma = (w_a + w_n) ** -0.5
            self.aligner.set_rate(i, ppm, sigma)
            dev.prior = (ppm, sigma)  # type: ignore[attr-defined]
            self._resync(i, dev, ref_meter, ref_block, ref_fit[0])

    def _resync(self, i: int, dev: _Device, ref_meter: _RateMeter, ref_block: Block,
                ref_rate: float) -> None:
        """Put rate-only device ``i``'s read position where the timestamps say: the first
        time after a (re)start (its rows were zeros until then: the first blocks' own capture
        times can be a period off, and a jump after the canceller began to learn costs more
        than a late start), later only if it is more than :data:`RESYNC_S` away. The next
        output lines up with the reference sample after ``ref_block``: on the reference's
        line it was captured at ``t``; the device's line gives its frame index then (both
        counted from their meters' first blocks, which are the resampler's sample 0 and the
        aligner's first block)."""
        comp = dev.comp
        if comp is None:
            return
        k_next = ref_meter.frames_last + ref_block.n_samples  # frames incl. gaps
        ref_line_t0 = ref_meter.frame_at(ref_meter.t0_ns or 0, RATE_ONLY_MIN_S)
        if ref_line_t0 is None:
            return
        t_ns = (ref_meter.t0_ns or 0) + int((k_next - ref_line_t0) / ref_rate * _NS)
        want = dev.rate.frame_at(t_ns, RATE_ONLY_MIN_S)
        if want is None:
            return
        error = comp.resampler.position - want
        if dev.timed and abs(error) <= RESYNC_S * self.fs_hz:
            return
        try:
            comp.resampler.set_position_q(int(round(want * FRAC_ONE)))
        except MicaError:  # older than the kept input: start over from the next block
            dev.rate = _RateMeter()
            self.aligner.drop(i)
            return
        if not dev.timed:
            dev.timed = True
            self.aligner.mute(i, False)
            log.info("capture device %r (echo reference): placed on the timestamp lines "
                     "(%.1f samples from the first blocks' guess)", dev.spec.name, -error)
            return
        dev.resyncs += 1
        log.warning("capture device %r (echo reference): read position %.1f samples off its "
                    "timestamps (a gap, dropped blocks or a restart): moved back (#%d)",
                    dev.spec.name, error, dev.resyncs)

    def _emit(self, name: str, event: DriftEvent, lock: str) -> None:
        if self._on_event is not None:
            self._on_event(
                {
                    "device": name,
                    "kind": event.kind,
                    "drift_ppm": round(event.drift_ppm, 3),
                    "previous_ppm": round(event.previous_ppm, 3),
                    "offset_samples": round(event.offset_samples, 3),
                    "lock": lock,
                    "t_ns": time.monotonic_ns(),
                }
            )

    def set_expected_delays(
        self, delays_samples: dict[str, float], aux: tuple[int, float] | None = None
    ) -> None:
        """:meth:`DeviceAligner.set_expected_delays`."""
        self.aligner.set_expected_delays(delays_samples, aux)

    def drift_status(self) -> dict[str, dict[str, Any]]:
        """Per device: drift (ppm), offset, lock state, prior; the reference says so."""
        status: dict[str, dict[str, Any]] = {}
        for i, dev in enumerate(self._devices):
            entry = self.aligner.status(i)
            if i != self._reference:
                prior = getattr(dev, "prior", None)
                entry["prior_ppm"] = None if prior is None else round(prior[0], 2)
            if self.aligner.rate_only[i]:
                entry["timed"] = dev.timed
                entry["resyncs"] = dev.resyncs
            entry["up"] = dev.up
            status[dev.spec.name] = entry
        return status

    def close(self) -> None:
        """Close every device (idempotent); capture threads end with their device."""
        self._closed = True
        self._closing.set()
        for dev in self._devices:
            with self._lock:
                sources = [s for s in (dev.source, dev.pending) if s is not None]
                dev.pending = None
            for source in sources:
                _close_quietly(dev, source)
        for dev in self._devices:
            if dev.thread is not None and dev.thread is not threading.current_thread():
                dev.thread.join(timeout=1.0)


def _open_checked(spec: DeviceSpec) -> Source:
    """Open ``spec``'s device; :class:`DeviceError` if its channel count is wrong."""
    source = spec.open()
    if source.n_channels != len(spec.geometry_rows):
        source.close()
        raise DeviceError(
            f"capture device {spec.name!r} delivers {source.n_channels} channel(s) for "
            f"{len(spec.geometry_rows)} geometry row(s)"
        )
    return source


def _close_quietly(dev: _Device, source: Source) -> None:
    try:
        source.close()
    except Exception:  # one broken device must not keep the others open
        log.exception("closing capture device %r failed", dev.spec.name)


def open_multi_capture(
    cfg: Any,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    geometry_m: np.ndarray | None = None,
    nominal_drift_ppm: dict[str, float] | None = None,
    on_device_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> MultiCapture:
    """The :class:`MultiCapture` that ``cfg.capture.devices`` and ``cfg.drift`` describe.

    ``nominal_drift_ppm``: calibrated drift per device name, the prior of its estimate.

    With ``geometry_m``, each device is aligned so that the talker in the look direction
    (``cfg.dsp``) keeps its physical delay between the devices' analysis channels.
    """
    from mica.device.sources.alsa import AlsaSource

    cap = cfg.capture
    specs = []
    n_mic_rows = sum(len(dev.geometry_rows) for dev in cap.devices
                     if getattr(dev, "role", ROLE_MICS) == ROLE_MICS)
    next_ref_row = n_mic_rows  # echo reference channels follow every microphone
    for dev in cap.devices:
        role = getattr(dev, "role", ROLE_MICS)
        mics = list(dev.mic_channels) or list(range(dev.channels))
        if role == ROLE_REFERENCE:  # every channel is playback; rows after the microphones
            rows = list(range(next_ref_row, next_ref_row + len(mics)))
            next_ref_row += len(mics)
        else:
            rows = list(dev.geometry_rows)

        def opener(dev: Any = dev, mics: list[int] = mics) -> Source:
            return AlsaSource(
                dev.alsa_device,
                channels=dev.channels,
                fs_hz=cap.fs_hz,
                format=dev.format,
                period_frames=cap.period_frames,
                periods=cap.periods,
                select=mics,
            )

        specs.append(DeviceSpec(dev.alsa_device, opener, rows, role))
    d = cfg.drift
    settings = DriftSettings(
        update_s=d.update_s,
        max_offset_s=d.max_offset_ms / 1e3,
        memory_s=d.memory_s,
        event_jump_ppm=d.event_jump_ppm,
    )
    ref = clock_reference_index(cap.devices)
    multi = MultiCapture(
        specs,
        ref,
        cap.fs_hz,
        cap.period_frames,
        settings,
        compensate=d.enabled,
        use_prior=d.alsa_prior,
        on_event=on_event,
        queue_blocks=cfg.service.ring_blocks,
        wait_s=d.wait_ms / 1e3,
        nominal_drift_ppm=nominal_drift_ppm,
        on_device_event=on_device_event,
    )
    if geometry_m is not None:
        steer = getattr(cfg.dsp, "steer", "fixed")
        azimuth_deg, elevation_deg = cfg.dsp.steer_azimuth_deg, cfg.dsp.steer_elevation_deg
        if steer.startswith("zone:"):
            azimuth_deg, elevation_deg = cfg.dsp.zones[steer[5:]]
        multi.aligner.set_look_direction(
            geometry_m,
            float(azimuth_deg),
            float(elevation_deg),
            cfg.dsp.sound_speed_m_s,
            mask=steer != "auto",
        )
    return multi
