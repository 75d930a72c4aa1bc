"""Capture self-checks while the daemon runs: DC offset, clipping, dead and swapped channels.

Per hop (DSP thread, no allocation): a :class:`~mica.array_dsp.channels.ChannelMonitor`
folds the raw microphone block into smoothed per-channel power, DC (mean) and clipping
share, and the hop is copied into a preallocated window when the array hears something
(median channel power above ``active_power``). Every ``check_interval_s`` of audio:

- **health**: a channel is ``dc_offset`` when its mean over the interval exceeds
  ``dc_limit`` (full scale) in each of ``dc_confirm`` intervals in a row, ``clipping`` when more
  than ``clip_limit`` of its samples were at full scale, ``dead`` when the monitor left it
  out (silent, stuck or far below its siblings). A change of these sets is the
  ``channel_health`` event. The first DC offset switches the DC blocker on
  (:func:`~mica.array_dsp.channels.dc_block_kernel`, all channels alike so their phases
  stay matched): the STFT chain passes DC straight through otherwise (measured: a 0.05 DC
  on every input left the Enhancer as a 0.05 DC on the output).
- **channel order**: once the window holds ``order_window_s`` of active audio it is handed
  to a side thread that runs :func:`mica.calibration.measure.check_channel_order` (GCC-PHAT
  delays fitted to the geometry under every candidate order) on the channels that are
  neither dead nor reference channels. An order other than the configured one, found with
  confidence ``order_min_confidence`` in ``order_confirm`` checks in a row, is the
  ``channel_order`` event, with the ``array.mic_channels`` that would fit. Limits: without a
  known source direction, orders that differ by a symmetry of the array (a rotation or
  reflection of a circular array) give the same delays and cannot be told apart; a swap
  that is not a symmetry (two neighbours of a ring, say) is found. Fewer than three checked
  channels: no order check. The first ``order_confirm`` windows are checked back to back,
  later ones every ``order_interval_s`` of audio.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mica.array_dsp.channels import (
    ChannelMonitor,
    ChannelParams,
    dc_block_coefficient,
    dc_block_kernel,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelfCheckParams:
    """Thresholds and rates of :class:`CaptureSelfCheck` (see the module doc)."""

    check_interval_s: float = 2.0
    dc_limit: float = 0.005
    """|mean| above this (full scale; -46 dBFS, 164 LSB of S16) is a DC offset..."""
    dc_confirm: int = 3
    """... in each of this many check intervals in a row, with one sign: a bias is steady,
    while the mean of (clipped, asymmetric) speech over one interval swings (measured on the
    corpus 4-mic speech clipped x40: 0.002-0.0065 per 2 s); it clears under half the
    limit."""
    clip_limit: float = 0.001
    """Share of samples at full scale above which a channel is clipping."""
    active_power: float = 3e-7
    """Median channel power (full scale squared, about -65 dBFS) for a hop to count."""
    order_window_s: float = 3.0
    order_interval_s: float = 30.0
    """Audio between order windows once ``order_confirm`` checks have run (the first ones
    run back to back). One check of 3 s costs 0.03 s of CPU for 4 mics, 0.04 s for 6 and
    0.45 s for 8 (every permutation; x86 laptop core), so 8 mics cost 1.5 % of a core."""
    order_min_confidence: float = 0.5
    order_confirm: int = 2
    dc_cutoff_hz: float = 20.0


class CaptureSelfCheck:
    """The self-checks of one array (module doc).

    Args:
        positions_m: ``(n_mics, 3)`` geometry, row order as the blocks deliver them.
        fs_hz: sample rate.
        hop: samples per block.
        mic_channels: capture channel of each row (for the suggested ``array.mic_channels``;
            ``None``: row ``i`` is capture channel ``i``).
        exclude_rows: rows left out of every check (playback-reference channels).
        on_event: ``(kind, payload)`` for ``channel_health`` and ``channel_order`` (called
            from the DSP thread and from the order thread).
    """

    def __init__(self, positions_m: np.ndarray, fs_hz: int, hop: int,
                 mic_channels: list[int] | None = None, exclude_rows: list[int] | None = None,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 params: SelfCheckParams | None = None) -> None:
        self.params = p = params or SelfCheckParams()
        self.positions_m = np.asarray(positions_m, np.float64)
        n = self.positions_m.shape[0]
        self.n_channels = n
        self.fs_hz = int(fs_hz)
        self.hop = int(hop)
        self.mic_channels = list(mic_channels) if mic_channels else list(range(n))
        self.exclude_rows = sorted(set(exclude_rows or ()))
        self._on_event = on_event
        self.monitor = ChannelMonitor(n, ChannelParams())
        # health window accumulators (float64, updated in place)
        self._dc_acc = np.zeros(n, np.float64)
        self._clip_acc = np.zeros(n, np.float64)
        self._acc_hops = 0
        self._hops_per_check = max(1, round(p.check_interval_s * fs_hz / hop))
        self.dc_offset = np.zeros(n, np.float64)
        self._dc_hist = np.zeros((n, p.dc_confirm), np.float64)
        self._n_checks = 0
        self._dc_flag = np.zeros(n, bool)
        self.health: dict[str, list[int]] = {"dead": [], "clipping": [], "dc_offset": []}
        # DC blocker
        self.dc_block = False
        self._r = dc_block_coefficient(fs_hz, p.dc_cutoff_hz)
        self._x_prev = np.zeros(n, np.float64)
        self._y_prev = np.zeros(n, np.float64)
        self._out = np.zeros((n, self.hop), np.float32)
        # channel-order window: two buffers, one filled here, one read by the order thread
        self._win_hops = max(1, round(p.order_window_s * fs_hz / hop))
        self._bufs = [np.zeros((n, self._win_hops * self.hop), np.float32) for _ in range(2)]
        self._fill_buf = 0
        self._fill_hops = 0
        self._skip_hops = 0  # hops to let pass before the next window (order_interval_s)
        self._interval_hops = round(p.order_interval_s * fs_hz / hop)
        self._windows = 0
        self._ready = threading.Event()
        self._busy = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live_rows: list[int] = []
        self._streak = 0
        self._streak_order: list[int] | None = None
        self.order_checks_total = 0
        self.order_ok: bool | None = None
        self.order_fit: list[int] | None = None
        """Suggested ``array.mic_channels`` after a confirmed wrong order (else ``None``)."""
        self.order_confidence: float | None = None

    # ------------------------------------------------------------------ DSP thread

    def process(self, block: np.ndarray) -> np.ndarray:
        """Account one raw ``(n_ch, hop)`` float32 block; returns it, or its DC-blocked copy
        (a preallocated buffer, valid until the next call) once the blocker is on."""
        m = self.monitor
        m.update(block)
        np.add(self._dc_acc, m.dc, out=self._dc_acc)
        np.add(self._clip_acc, m.clip_ratio, out=self._clip_acc)
        self._acc_hops += 1
        if self._acc_hops >= self._hops_per_check:
            self._check_health()
        if self._thread is not None and m.median_power() > self.params.active_power:
            self._collect(block)
        if not self.dc_block:
            return block
        dc_block_kernel(block, self._r, self._x_prev, self._y_prev, self._out)
        return self._out

    def _collect(self, block: np.ndarray) -> None:
        if self._skip_hops > 0:
            self._skip_hops -= 1
            return
        start = self._fill_hops * self.hop
        self._bufs[self._fill_buf][:, start:start + self.hop] = block
        self._fill_hops += 1
        if self._fill_hops < self._win_hops:
            return
        self._fill_hops = 0
        if self._busy:  # the order thread is still on the previous window: drop this one
            return
        self._windows += 1
        if self._windows >= self.params.order_confirm:
            self._skip_hops = self._interval_hops
        self._live_rows = [r for r in range(self.n_channels)
                           if not self.monitor.dead[r] and r not in self.exclude_rows]
        self._busy = True
        self._fill_buf ^= 1
        self._ready.set()

    def _check_health(self) -> None:
        """Every ``check_interval_s``: the health flags, the DC blocker, the event."""
        p = self.params
        self.dc_offset[:] = self._dc_acc
        self.dc_offset /= self._acc_hops
        clip = self._clip_acc / self._acc_hops
        self._dc_acc.fill(0.0)
        self._clip_acc.fill(0.0)
        self._acc_hops = 0
        rows = [r for r in range(self.n_channels) if r not in self.exclude_rows]
        self._dc_hist[:, self._n_checks % p.dc_confirm] = self.dc_offset
        self._n_checks += 1
        for r in rows:  # an offset must persist (a bias, not speech): the smallest of the
            h = self._dc_hist[r]  # last intervals' means, all of one sign; clears under half
            steady = float(np.min(np.abs(h))) if (np.all(h > 0) or np.all(h < 0)) else 0.0
            if self._n_checks >= p.dc_confirm and steady > p.dc_limit:
                self._dc_flag[r] = True
            elif steady < 0.5 * p.dc_limit:
                self._dc_flag[r] = False
        health = {"dead": [r for r in rows if self.monitor.dead[r]],
                  "clipping": [r for r in rows if clip[r] > p.clip_limit],
                  "dc_offset": [r for r in rows if self._dc_flag[r]]}
        if health["dc_offset"] and not self.dc_block:
            self.dc_block = True
            log.warning("DC offset on channel(s) %s (%s full scale): DC blocker on",
                        health["dc_offset"],
                        [round(float(self.dc_offset[r]), 4) for r in health["dc_offset"]])
        if health != self.health:
            self.health = health
            log.warning("channel health: %s", health)
            self._emit("channel_health", {**health, "dc_block": self.dc_block,
                                          "channel_dc_offset": self._dc_list()})

    def _dc_list(self) -> list[float]:
        return [round(float(v), 6) for v in self.dc_offset]

    # ------------------------------------------------------------------ order thread

    def start(self) -> None:
        """Start the channel-order thread (no order checks without it)."""
        if self._thread is None and len(self._candidate_rows()) >= 3:
            self._thread = threading.Thread(target=self._order_loop, name="mica-selfcheck",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 0.2) -> None:
        """Ask the order thread to end; waits at most ``timeout_s`` (a check in progress
        finishes on its own: the thread is a daemon and holds nothing to flush)."""
        self._stop.set()
        self._ready.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _candidate_rows(self) -> list[int]:
        return [r for r in range(self.n_channels) if r not in self.exclude_rows]

    def _order_loop(self) -> None:
        from mica.calibration.measure import CalibrationError, check_channel_order

        while True:
            self._ready.wait()
            self._ready.clear()
            if self._stop.is_set():
                return
            try:
                rows = list(self._live_rows)
                if len(rows) >= 3:
                    x = self._bufs[self._fill_buf ^ 1][rows]
                    result = check_channel_order(x, self.fs_hz, self.positions_m[rows])
                    self._order_result(rows, result)
            except CalibrationError as err:
                log.info("channel order check skipped: %s", err)
            except Exception:  # a bug here must not stop the checks or the daemon
                log.exception("channel order check failed")
            finally:
                self._busy = False

    def _order_result(self, rows: list[int], result: Any) -> None:
        """Fold one check in; announce a confirmed wrong order or its repair."""
        self.order_checks_total += 1
        # full mapping: row r carries mic mic_of_row[r] (unchecked rows: assumed in place)
        mic_of_row = list(range(self.n_channels))
        for i, r in enumerate(rows):
            mic_of_row[r] = rows[int(result.mic_of_channel[i])]
        confident = result.confidence >= self.params.order_min_confidence
        if result.is_identity or not confident:
            self._streak, self._streak_order = 0, None
            if result.is_identity and confident and self.order_ok is not True:
                was_wrong = self.order_ok is False
                self.order_ok, self.order_fit = True, None
                self.order_confidence = float(result.confidence)
                if was_wrong:
                    self._emit("channel_order", self._order_payload(rows, mic_of_row, result))
            return
        self._streak = self._streak + 1 if mic_of_row == self._streak_order else 1
        self._streak_order = mic_of_row
        if self._streak < self.params.order_confirm:
            return
        fit = list(self.mic_channels)
        for r, mic in enumerate(mic_of_row):
            fit[mic] = self.mic_channels[r]
        if self.order_ok is False and fit == self.order_fit:
            return  # already announced
        self.order_ok, self.order_fit = False, fit
        self.order_confidence = float(result.confidence)
        log.warning("channel order contradicts the geometry: rows carry mics %s; "
                    "array.mic_channels = %s would fit (confidence %.2f)", mic_of_row, fit,
                    result.confidence)
        self._emit("channel_order", self._order_payload(rows, mic_of_row, result))

    def _order_payload(self, rows: list[int], mic_of_row: list[int], result: Any
                       ) -> dict[str, Any]:
        return {"ok": bool(self.order_ok), "mic_of_channel": mic_of_row,
                "mic_channels": list(self.mic_channels),
                "suggested_mic_channels": self.order_fit,
                "checked_channels": rows, "confidence": round(float(result.confidence), 3),
                "rms_us": round(float(result.rms_us), 2),
                "equivalent": [[rows[int(k)] for k in e] for e in result.equivalent]}

    # ------------------------------------------------------------------ reporting

    def _emit(self, kind: str, payload: dict[str, Any]) -> None:
        if self._on_event is not None:
            self._on_event(kind, payload)

    def telemetry(self) -> dict[str, Any]:
        """Telemetry fields: DC offsets, DC blocker, health flags and the order verdict."""
        return {"channel_dc_offset": self._dc_list(), "dc_block": self.dc_block,
                "channel_clipping": list(self.health["clipping"]),
                "channel_order_ok": self.order_ok,
                "channel_order_suggested": self.order_fit,
                "channel_order_checks_total": self.order_checks_total}
