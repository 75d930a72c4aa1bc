"""Board readers on a fake Raspberry Pi tree (and on this machine's real one), and the
per-channel levels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mica.device.sysfs import (
    BoardSampler,
    CpuUsage,
    cpu_frequencies,
    decode_throttled,
    disk_free_bytes,
    memory,
    pi_throttled,
    thermal_zones,
)
from mica.device.telemetry import ChannelLevels

MEMINFO = """MemTotal:        3884376 kB
MemFree:          123456 kB
MemAvailable:    2993700 kB
Buffers:           12345 kB
SwapTotal:        102396 kB
SwapFree:         100348 kB
"""


def proc_stat(per_core: list[tuple[int, int]]) -> str:
    """/proc/stat with ``(busy, idle)`` jiffies per core (busy all in user)."""
    busy = sum(b for b, _ in per_core)
    idle = sum(i for _, i in per_core)
    lines = [f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0"]
    lines += [f"cpu{n} {b} 0 0 {i} 0 0 0 0 0 0" for n, (b, i) in enumerate(per_core)]
    return "\n".join(lines + ["intr 1 2 3", "ctxt 99", "btime 1700000000"]) + "\n"


class FakePi:
    """A Raspberry Pi 4 as /sys and /proc show it: one thermal zone, 4 cores with cpufreq,
    the firmware's get_throttled."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sys = root / "sys"
        self.proc = root / "proc"
        self.proc.mkdir(parents=True)
        self.set_zone(0, "cpu-thermal", 48_686)
        for n in range(4):
            self.set_freq(n, 1_500_000, 1_800_000)
        self.set_throttled("50005")
        (self.proc / "meminfo").write_text(MEMINFO)
        (self.proc / "loadavg").write_text("0.52 0.40 0.30 2/345 6789\n")
        (self.proc / "uptime").write_text("1234.56 4000.00\n")
        self.set_stat([(100, 900)] * 4)

    def set_zone(self, n: int, kind: str, milli_c: int) -> None:
        zone = self.sys / "class" / "thermal" / f"thermal_zone{n}"
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{milli_c}\n")

    def set_freq(self, n: int, cur_khz: int, max_khz: int) -> None:
        freq = self.sys / "devices" / "system" / "cpu" / f"cpu{n}" / "cpufreq"
        freq.mkdir(parents=True, exist_ok=True)
        (freq / "scaling_cur_freq").write_text(f"{cur_khz}\n")
        (freq / "scaling_max_freq").write_text(f"{max_khz}\n")

    def set_throttled(self, hex_text: str) -> None:
        path = self.sys / "devices" / "platform" / "soc" / "soc:firmware" / "get_throttled"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(hex_text + "\n")

    def set_stat(self, per_core: list[tuple[int, int]]) -> None:
        (self.proc / "stat").write_text(proc_stat(per_core))


@pytest.fixture
def pi(tmp_path: Path) -> FakePi:
    return FakePi(tmp_path)


def test_thermal_zones_every_zone_by_type(pi: FakePi) -> None:
    pi.set_zone(1, "gpu-thermal", 51_000)
    pi.set_zone(2, "cpu-thermal", 47_000)  # same type twice: numbered
    (pi.sys / "class" / "thermal" / "cooling_device0").mkdir()  # not a zone
    zone3 = pi.sys / "class" / "thermal" / "thermal_zone3"
    zone3.mkdir()
    (zone3 / "type").write_text("broken\n")  # no temp: left out
    assert thermal_zones(pi.sys) == {"cpu_thermal": 48.686, "gpu_thermal": 51.0,
                                     "cpu_thermal_2": 47.0}


def test_cpufreq_cur_and_max_per_core_in_hertz(pi: FakePi) -> None:
    pi.set_freq(2, 600_000, 1_800_000)
    freqs = cpu_frequencies(pi.sys)
    assert freqs["cpu2"] == {"cur": 600_000_000, "max": 1_800_000_000}
    assert sorted(freqs) == ["cpu0", "cpu1", "cpu2", "cpu3"]


@pytest.mark.parametrize(("word", "now", "since_boot"), [
    (0x0, set(), set()),
    (0x50005, {"under_voltage", "throttled"}, {"under_voltage", "throttled"}),
    (0x80008, {"soft_temperature_limit"}, {"soft_temperature_limit"}),
    (0x20000, set(), {"frequency_capped"}),
    (0xF000F, {"under_voltage", "frequency_capped", "throttled", "soft_temperature_limit"},
     {"under_voltage", "frequency_capped", "throttled", "soft_temperature_limit"}),
])
def test_throttled_bits(word: int, now: set, since_boot: set) -> None:
    flags = decode_throttled(word)
    assert {k for k, v in flags.items() if v and not k.endswith("_since_boot")} == now
    assert {k.removesuffix("_since_boot") for k, v in flags.items()
            if v and k.endswith("_since_boot")} == since_boot
    assert len(flags) == 8


def test_throttled_from_sysfs_and_from_vcgencmd(pi: FakePi, tmp_path: Path) -> None:
    assert pi_throttled(pi.sys) == 0x50005
    empty = tmp_path / "empty"
    empty.mkdir()
    assert pi_throttled(empty) is None
    fake = tmp_path / "vcgencmd"
    fake.write_text("#!/bin/sh\necho throttled=0x80000\n")
    fake.chmod(0o755)
    assert pi_throttled(empty, vcgencmd=str(fake)) == 0x80000
    assert pi_throttled(empty, vcgencmd=str(tmp_path / "missing")) is None


def test_cpu_usage_per_core_between_samples(pi: FakePi) -> None:
    usage = CpuUsage(pi.proc)
    pi.set_stat([(150, 950), (100, 1000), (200, 900), (100, 900)])  # core 3 did not advance
    got = usage.sample()
    assert got["cpu0"] == 0.5 and got["cpu1"] == 0.0 and got["cpu2"] == 1.0
    assert "cpu3" not in got
    assert got["cpu"] == pytest.approx(200 / 400)


def test_memory_from_meminfo(pi: FakePi) -> None:
    assert memory(pi.proc) == {"memory_total_bytes": 3884376 * 1024,
                               "memory_available_bytes": 2993700 * 1024,
                               "swap_used_bytes": 2048 * 1024}


def test_board_sampler_on_a_fake_pi(pi: FakePi, tmp_path: Path) -> None:
    board = BoardSampler(pi.root, spool_dir=tmp_path / "spool" / "not-yet")
    pi.set_stat([(200, 1000)] * 4)
    s = board.sample()
    assert s["thermal_celsius"] == {"cpu_thermal": 48.686}
    assert s["cpu_frequency_hertz"] == {f"cpu{n}": 1_500_000_000 for n in range(4)}
    assert s["cpu_frequency_max_hertz"]["cpu3"] == 1_800_000_000
    assert s["throttled"]["under_voltage"] and s["throttled"]["throttled_since_boot"]
    assert not s["throttled"]["frequency_capped"]
    assert s["throttled_raw"] == 0x50005
    assert s["cpu_usage_ratio"]["cpu0"] == 0.5
    assert (s["load1"], s["load5"], s["load15"]) == (0.52, 0.40, 0.30)
    assert s["memory_available_bytes"] == 2993700 * 1024
    assert s["system_uptime_seconds"] == 1234.56
    assert s["spool_disk_free_bytes"] == disk_free_bytes(tmp_path)


def test_missing_sources_are_omitted_never_raised(tmp_path: Path) -> None:
    assert BoardSampler(tmp_path / "nothing", vcgencmd=None).sample() == {}
    junk = tmp_path / "junk"
    (junk / "proc").mkdir(parents=True)
    zone = junk / "sys" / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("hot\n")
    (junk / "proc" / "stat").write_text("cpu a b c\n")
    (junk / "proc" / "meminfo").write_text("MemTotal: lots\n")
    (junk / "proc" / "loadavg").write_text("\n")
    freq = junk / "sys" / "devices" / "system" / "cpu" / "cpu0" / "cpufreq"
    freq.mkdir(parents=True)
    (freq / "scaling_cur_freq").write_text("fast\n")
    path = junk / "sys" / "devices" / "platform" / "soc" / "soc:firmware" / "get_throttled"
    path.parent.mkdir(parents=True)
    path.write_text("zz\n")
    assert BoardSampler(junk, vcgencmd=None).sample() == {}


def test_board_sampler_on_this_machine() -> None:
    s = BoardSampler("/", spool_dir="/tmp").sample()
    assert s["memory_total_bytes"] > 0 and s["spool_disk_free_bytes"] > 0
    assert s["load1"] >= 0 and s["system_uptime_seconds"] > 0


def test_channel_levels_rms_peak_clipping_dead() -> None:
    levels = ChannelLevels(4)
    assert levels.take() == {}
    rng = np.random.default_rng(0)
    for _ in range(10):
        block = np.zeros((4, 160), np.float32)
        block[0] = 0.1 * np.sin(np.arange(160) * 0.3)
        block[1] = rng.uniform(-1.2, 1.2, 160).clip(-1, 1)  # clips often
        block[2] = 1e-4 * rng.standard_normal(160)  # 60 dB under channel 0: dead
        block[3] = 0.0  # stuck at zero: dead
        levels.add(block)
    got = levels.take()
    assert got["channel_rms_ratio"][0] == pytest.approx(0.1 / np.sqrt(2), rel=0.02)
    assert got["channel_peak_ratio"][0] == pytest.approx(0.1, rel=1e-3)
    assert got["channel_peak_ratio"][1] == 1.0
    assert 0.05 < got["channel_clipping_ratio"][1] < 0.3
    assert got["channel_clipping_ratio"][0] == 0.0
    assert got["channel_dead"] == [False, False, True, True]
    assert levels.take() == {}  # a new window
