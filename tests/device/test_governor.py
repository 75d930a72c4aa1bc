"""The quality governor on a fake Raspberry Pi sysfs tree, with a real DSP load."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mica.array_dsp.enhancer import Enhancer
from mica.array_dsp.errors import ConfigError
from mica.device.config import parse_config
from mica.device.governor import (
    DspLoadMeter,
    Governor,
    GovernorLoop,
    GovernorSettings,
    Reading,
    apply_level,
    available_chains,
    board_sensors,
    default_levels,
    resolve_levels,
)
from mica.device.service import Service
from mica.device.stage_stats import StageStats

LEVELS = ["mvdr", "superdirective", "das"]
THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _pi_tree(root: Path, temp_c: float = 50.0, throttled: str = "0") -> Path:
    for n, kind in enumerate(("cpu-thermal", "gpu-thermal")):
        zone = root / "sys/class/thermal" / f"thermal_zone{n}"
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "type").write_text(kind + "\n")
    _set_temp(root, temp_c)
    (root / THROTTLED).parent.mkdir(parents=True, exist_ok=True)
    (root / THROTTLED).write_text(throttled + "\n")
    return root


def _set_temp(root: Path, temp_c: float) -> None:
    (root / "sys/class/thermal/thermal_zone0/temp").write_text(f"{int(temp_c * 1000)}\n")
    (root / "sys/class/thermal/thermal_zone1/temp").write_text(f"{int(temp_c * 1000) - 3000}\n")


def _loop(root: Path, clock: Clock, dsp_load=lambda: None, **settings):
    gov = Governor(LEVELS, GovernorSettings(**settings), clock=clock)
    events = []
    temperature, throttled = board_sensors(root)
    return gov, GovernorLoop(gov, temperature, throttled, dsp_load, events.append), events


def test_heat_lowers_the_level_and_cooling_raises_it_after_the_dwell(tmp_path: Path) -> None:
    root = _pi_tree(tmp_path, temp_c=60.0)
    clock = Clock()
    gov, loop, events = _loop(root, clock, temp_high_c=75.0, temp_hysteresis_c=5.0,
                              min_dwell_s=30.0, down_dwell_s=3.0)
    assert loop.poll() is None and gov.level_name == "mvdr"
    assert loop.last.temp_c == 60.0

    _set_temp(root, 78.0)  # past the threshold: one step down at once
    clock.t += 1
    change = loop.poll()
    assert change is not None and gov.level_name == "superdirective"
    assert change.event() == {"level": "superdirective", "level_index": 1,
                              "previous": "mvdr", "previous_index": 0,
                              "reason": "temperature 78.0 C >= 75.0 C"}
    clock.t += 1  # still hot, but the new level is measured for down_dwell_s first
    assert loop.poll() is None
    clock.t += 2.5
    assert loop.poll() is not None and gov.level_name == "das"
    clock.t += 10
    assert loop.poll() is None and gov.level_name == "das"  # nothing lower

    _set_temp(root, 72.0)  # below the threshold but inside the hysteresis: stays
    clock.t += 60
    assert loop.poll() is None
    _set_temp(root, 65.0)  # clearly cool: up one step (held > 30 s already)
    assert loop.poll() is not None and gov.level_name == "superdirective"
    clock.t += 29  # the dwell holds it there
    assert loop.poll() is None
    clock.t += 2
    assert loop.poll() is not None and gov.level_name == "mvdr"
    assert [e.name for e in events] == ["superdirective", "das", "superdirective", "mvdr"]


def test_throttling_now_lowers_since_boot_does_not(tmp_path: Path) -> None:
    root = _pi_tree(tmp_path, throttled="50000")  # under-voltage/throttled since boot only
    clock = Clock()
    gov, loop, _ = _loop(root, clock, min_dwell_s=5.0)
    clock.t += 10
    assert loop.poll() is None and loop.last.throttled == 0x50000
    (root / THROTTLED).write_text("50005\n")  # under-voltage + throttled now
    clock.t += 1
    change = loop.poll()
    assert change is not None and "throttled 0x50005" in change.reason
    (root / THROTTLED).write_text("50000\n")
    clock.t += 6
    assert loop.poll() is not None and gov.level == 0


def test_missing_sensors_are_no_pressure(tmp_path: Path) -> None:
    clock = Clock()
    gov, loop, _ = _loop(tmp_path, clock)  # an empty tree: no thermal zone, not a Pi
    clock.t += 100
    assert loop.poll() is None and loop.last == Reading(None, None, None)


def test_a_slowed_dsp_lowers_the_level(tmp_path: Path) -> None:
    """Real blocks through the Enhancer, slowed to ~80 % of the hop: over the 50 % budget."""
    stats = StageStats(window=1000)
    meter = DspLoadMeter(stats, min_blocks=20, recent_blocks=30)
    clock = Clock()
    gov, loop, events = _loop(_pi_tree(tmp_path), clock, dsp_budget=0.5, dsp_recover=0.35,
                              down_dwell_s=0.0, min_dwell_s=0.0,
                              dsp_load=lambda: meter.load(0.01))
    loop._on_change = lambda change: (events.append(change), meter.restart())
    enh = Enhancer(np.array([[0.03, 0, 0], [-0.03, 0, 0]]))
    enh.warmup()
    block = np.zeros((2, 160), np.float32)

    def run(n: int, extra_s: float) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            enh.process(block)
            if extra_s:
                time.sleep(extra_s)
            stats.record(time.perf_counter() - t0, 0.01)

    run(30, 0.0)
    assert loop.poll() is None and loop.last.dsp_load < 0.35
    run(30, 0.008)
    change = loop.poll()
    assert change is not None and gov.level_name == "superdirective"
    assert change.reason.startswith("DSP load 0.") and "> budget 0.50" in change.reason
    assert loop.poll() is None and loop.last.dsp_load is None  # the new level is unmeasured
    run(30, 0.0)  # fast again: back up
    assert loop.poll() is not None and gov.level == 0


def test_levels_come_from_config_and_are_checked() -> None:
    assert default_levels(["das", "mvdr", "superdirective"]) == LEVELS
    assert default_levels(["das", "mvdr", "superdirective"], best="superdirective") == \
        ["superdirective", "das"]
    assert resolve_levels([], ["das", "mvdr"], best="das") == ["das"]
    assert resolve_levels([], ["das"]) == ["das"]
    assert resolve_levels(["das"], ["das", "mvdr"]) == ["das"]
    with pytest.raises(ConfigError, match=r"governor.levels\[1\]: unknown chain 'nope'"):
        resolve_levels(["das", "nope"], ["das"])
    with pytest.raises(ConfigError, match="twice"):
        resolve_levels(["das", "das"], ["das"])
    assert "das" in available_chains()


def test_apply_level_switches_an_enhancer_that_offers_chains() -> None:
    class TwoChains:
        beamformer = "a"

        def set_beamformer(self, name: str) -> None:
            self.beamformer = name

    e = TwoChains()
    assert apply_level(e, "b") and e.beamformer == "b"
    assert apply_level(Enhancer(np.array([[0.03, 0, 0], [-0.03, 0, 0]])), "das")


def test_service_reports_the_level_and_the_dsp_budget(tmp_path: Path) -> None:
    """A real service whose DSP is slowed by a hook: the governor sees the load over budget;
    the level is in telemetry and info."""
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros((16000, 2), np.float32), 16000, subtype="PCM_16")
    root = _pi_tree(tmp_path / "root", temp_c=55.0)
    cfg = parse_config({
        "capture": {"source": "wav", "wav_path": str(wav), "wav_loop": True, "channels": 2},
        "array": {"geometry_m": [[0.03, 0, 0], [-0.03, 0, 0]]},
        "mqtt": {"enabled": False},
        "governor": {"interval_s": 0.1, "root": str(root), "vcgencmd": ""},
    }, tmp_path)
    svc = Service(cfg, dsp_hook=lambda _b: time.sleep(0.007))
    t_start = time.monotonic()
    svc.start()
    start_s = time.monotonic() - t_start
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not svc.governor.reasons:
            time.sleep(0.1)
        assert svc.governor_loop.last.temp_c == 55.0
        assert svc.governor_loop.last.dsp_load > 0.5
        assert any(r.startswith("DSP load") for r in svc.governor.reasons)
        t = svc.telemetry(0)
        assert t["quality_level"] == svc.governor.level_name
        assert t["quality_level_index"] == svc.governor.level
        info = svc.info
        assert info["quality_levels"] == svc.governor.levels
        # the process's age at READY: here the whole test session's, at least start()'s time
        assert info["startup_seconds"] >= start_s - 0.01
    finally:
        svc.request_stop()
        svc.stop()
