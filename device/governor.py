"""The quality governor: picks how much DSP the board can afford right now.

Quality levels are chain names, best first (``["mvdr", "superdirective", "das"]``; only
``das``, delay-and-sum, exists in every build). Three pressures push the level down:

- temperature: the hottest sysfs thermal zone (``<root>/sys/class/thermal/thermal_zone*``)
  at or above ``temp_high_c``;
- throttling: Raspberry Pi firmware flags (``get_throttled``) with any *current* bit set
  (0 under-voltage, 1 ARM frequency capped, 2 throttled, 3 soft temperature limit), from
  the firmware's sysfs attribute under the root or ``vcgencmd get_throttled``;
- the DSP's own budget: time per block over the hop's audio time, measured on the blocks
  processed at the current level, above ``dsp_budget`` (0.5 = half of one core), so the
  wake-word engine on the same board keeps its headroom.

Hysteresis: the level goes back up only when every pressure is clearly gone (temperature
``temp_hysteresis_c`` below the threshold, no current throttle bit, DSP load below
``dsp_recover``) and the current level has been held ``min_dwell_s``; two steps down are at
least ``down_dwell_s`` apart so a new level is measured before the next one is taken.

The governor only decides; :meth:`Governor.level` is read by the DSP thread, which applies a
change between two blocks (:func:`apply_level`). Readers never raise: a missing sensor is
"no pressure from it".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mica.array_dsp.errors import ConfigError
from mica.device.sysfs import pi_throttled, thermal_zones

log = logging.getLogger(__name__)

THROTTLE_NOW_MASK = 0xF
"""get_throttled bits 0-3: under-voltage, frequency capped, throttled, soft temp limit (now)."""

PREFERENCE = ("mvdr", "superdirective", "das", "delay_and_sum")
"""Best first: how the default level list orders the beamformers the enhancer offers."""


def available_chains() -> tuple[str, ...]:
    """Chain names the enhancer offers (its ``BEAMFORMERS``; ``("das",)`` before it had any)."""
    from mica.array_dsp import enhancer

    return tuple(getattr(enhancer, "BEAMFORMERS", ("das",)))


def default_levels(available: Sequence[str], best: str | None = None) -> list[str]:
    """Every available chain, best first; from ``best`` (the configured chain) down if given."""
    rank = {name: i for i, name in enumerate(PREFERENCE)}
    ordered = sorted(available, key=lambda n: rank.get(n, len(rank)))
    return ordered[ordered.index(best):] if best in ordered else ordered


def resolve_levels(configured: Sequence[str], available: Sequence[str] | None = None,
                   best: str | None = None) -> list[str]:
    """The configured level list (empty: :func:`default_levels` from ``best`` down), checked
    against the chains the enhancer offers.

    Raises:
        ConfigError: a name the enhancer does not know, or a name listed twice.
    """
    available = available_chains() if available is None else tuple(available)
    levels = list(configured) or default_levels(available, best)
    problems = [f"governor.levels[{i}]: unknown chain {name!r} (this build has "
                f"{list(available)})" for i, name in enumerate(levels) if name not in available]
    if len(set(levels)) != len(levels):
        problems.append("governor.levels: lists a chain twice")
    if problems:
        raise ConfigError(problems)
    return levels


def apply_level(enhancer: Any, name: str) -> bool:
    """Switch the enhancer's chain to ``name`` (called between blocks, in the DSP thread).

    Uses the enhancer's ``set_beamformer(name)``; an enhancer without it keeps its chain
    (logged). Returns True when the enhancer now runs ``name``.
    """
    if getattr(enhancer, "beamformer", None) == name:
        return True
    setter = getattr(enhancer, "set_beamformer", None)
    if setter is None:
        log.warning("quality level %r: this enhancer cannot switch its chain at run time; "
                    "it keeps %r", name, getattr(enhancer, "beamformer", "das"))
        return False
    setter(name)
    return True


# --------------------------------------------------------------------------- sensors


def board_sensors(root: str | Path = "/", vcgencmd: str | None = "vcgencmd"
                  ) -> tuple[Callable[[], float | None], Callable[[], int | None]]:
    """(hottest thermal zone in deg C, Pi throttling word) readers over ``<root>/sys``.

    ``vcgencmd`` is run only when the firmware's sysfs attribute is missing and the root is
    the real ``/`` (a fake tree never runs a command of the host).
    """
    sys_root = Path(root) / "sys"
    command = vcgencmd if Path(root) == Path("/") else None

    def temperature() -> float | None:
        zones = thermal_zones(sys_root)
        return max(zones.values()) if zones else None

    def throttled() -> int | None:
        return pi_throttled(sys_root, command)

    return temperature, throttled


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class GovernorSettings:
    """The policy's numbers (the ``[governor]`` config section carries the same names)."""

    temp_high_c: float = 75.0
    temp_hysteresis_c: float = 5.0
    dsp_budget: float = 0.5
    dsp_recover: float = 0.35
    min_dwell_s: float = 30.0
    down_dwell_s: float = 3.0
    min_blocks: int = 50
    """Blocks measured at a level before its DSP load counts."""


@dataclass(frozen=True)
class Reading:
    """One look at the board: ``None`` where a sensor is missing."""

    temp_c: float | None = None
    throttled: int | None = None
    dsp_load: float | None = None
    """Mean processing time per block over the block's audio time, at the current level."""


@dataclass(frozen=True)
class LevelChange:
    """A decision: ``index`` into the levels (0 = best), and why."""

    index: int
    previous: int
    name: str
    previous_name: str
    reason: str

    def event(self) -> dict[str, Any]:
        """The ``event/quality`` payload."""
        return {"level": self.name, "level_index": self.index, "previous": self.previous_name,
                "previous_index": self.previous, "reason": self.reason}


class Governor:
    """Chooses the quality level from :class:`Reading` s (see the module doc).

    Args:
        levels: chain names, best first.
        settings: thresholds, hysteresis and dwell.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, levels: Sequence[str], settings: GovernorSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not levels:
            raise ValueError("at least one level is needed")
        self.levels = list(levels)
        self.settings = settings or GovernorSettings()
        self._clock = clock
        self.level = 0
        """Index of the current level (0 = best); read by the DSP thread."""
        self._changed_at = float("-inf")  # the first step down is never held back
        self._dsp_measured = False
        self.reasons: list[str] = []
        """The pressures seen at the last :meth:`update`."""

    @property
    def level_name(self) -> str:
        return self.levels[self.level]

    def pressures(self, r: Reading) -> tuple[list[str], bool]:
        """(reasons to go down, whether every pressure is clearly gone)."""
        s = self.settings
        down: list[str] = []
        clear = True
        if r.temp_c is not None:
            if r.temp_c >= s.temp_high_c:
                down.append(f"temperature {r.temp_c:.1f} C >= {s.temp_high_c:.1f} C")
            if r.temp_c > s.temp_high_c - s.temp_hysteresis_c:
                clear = False
        if r.throttled is not None and r.throttled & THROTTLE_NOW_MASK:
            down.append(f"throttled 0x{r.throttled:x}")
            clear = False
        if r.dsp_load is None:
            clear = clear and not self._dsp_measured  # a level not measured yet is not clear
        else:
            self._dsp_measured = True
            if r.dsp_load > s.dsp_budget:
                down.append(f"DSP load {r.dsp_load:.2f} > budget {s.dsp_budget:.2f}")
            if r.dsp_load >= s.dsp_recover:
                clear = False
        return down, clear

    def update(self, reading: Reading) -> LevelChange | None:
        """Take one reading; return the change it causes, if any."""
        now = self._clock()
        down, clear = self.pressures(reading)
        self.reasons = down
        held_s = now - self._changed_at
        old = self.level
        if down and self.level < len(self.levels) - 1 and held_s >= self.settings.down_dwell_s:
            self.level += 1
            reason = "; ".join(down)
        elif not down and clear and self.level > 0 and held_s >= self.settings.min_dwell_s:
            self.level -= 1
            reason = f"pressure gone for {held_s:.0f} s"
        else:
            return None
        self._changed_at = now
        change = LevelChange(self.level, old, self.levels[self.level], self.levels[old], reason)
        log.warning("quality level %s -> %s: %s", change.previous_name, change.name, reason)
        return change

    def set_level(self, index: int, reason: str = "requested") -> LevelChange | None:
        """Force a level (a command); the dwell starts again."""
        if not 0 <= index < len(self.levels):
            raise ValueError(f"level index must be in [0, {len(self.levels) - 1}], got {index}")
        if index == self.level:
            return None
        old, self.level = self.level, index
        self._changed_at = self._clock()
        return LevelChange(index, old, self.levels[index], self.levels[old], reason)


class DspLoadMeter:
    """DSP load (time per block / audio per block) over the latest blocks since the last level
    change, from the service's :class:`~mica.device.stage_stats.StageStats` ring.

    Args:
        stats: the DSP stage statistics.
        min_blocks: fewer blocks at the current level than this: no figure yet.
        recent_blocks: the figure covers at most this many of the latest blocks.
    """

    def __init__(self, stats: Any, min_blocks: int = 50, recent_blocks: int = 100) -> None:
        self.stats = stats
        self.min_blocks = min_blocks
        self.recent_blocks = recent_blocks
        self._since = stats.count_total

    def restart(self) -> None:
        """Forget the blocks so far (the level changed)."""
        self._since = self.stats.count_total

    def load(self, block_audio_s: float) -> float | None:
        total = self.stats.count_total
        n = min(total - self._since, self.stats.window, self.recent_blocks)
        if n < self.min_blocks:
            return None
        durations = self.stats.snapshot()[-n:]
        return float(durations.mean()) / block_audio_s


class GovernorLoop:
    """Reads the sensors every ``interval_s`` in its own thread and feeds a :class:`Governor`.

    Args:
        governor: the policy.
        temperature: returns deg C or ``None``.
        throttled: returns the flags or ``None``.
        dsp_load: returns the DSP load at the current level or ``None``.
        on_change: called (in this thread) with each :class:`LevelChange`.
        interval_s: seconds between readings.
    """

    def __init__(self, governor: Governor, temperature: Callable[[], float | None],
                 throttled: Callable[[], int | None], dsp_load: Callable[[], float | None],
                 on_change: Callable[[LevelChange], None], interval_s: float = 1.0) -> None:
        self.governor = governor
        self._temperature = temperature
        self._throttled = throttled
        self._dsp_load = dsp_load
        self._on_change = on_change
        self.interval_s = interval_s
        self.last: Reading = Reading()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> LevelChange | None:
        """One reading and decision."""
        self.last = Reading(self._temperature(), self._throttled(), self._dsp_load())
        change = self.governor.update(self.last)
        if change is not None:
            self._on_change(change)
        return change

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # a sensor bug must not stop the governor or the service
                log.exception("governor poll failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mica-governor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
