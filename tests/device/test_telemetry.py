"""ProcessSampler on a fake /proc tree and on the real one; StageStats; the telemetry JSON."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mica.device.stage_stats import StageStats, StageSummary, real_time_factor
from mica.device.telemetry import (
    TELEMETRY_FIELDS,
    ProcessSample,
    ProcessSampler,
    load_average,
    telemetry_payload,
)

CLK_TCK = 100


def stat_line(utime: int, stime: int, threads: int = 7, start_ticks: int = 5000,
              comm: str = "python3") -> str:
    """A /proc/<pid>/stat line: fields 14/15 utime/stime, 20 threads, 22 starttime."""
    fields = ["S", "1", "1", "1", "0", "-1", "4194304", "10", "0", "0", "0",
              str(utime), str(stime), "0", "0", "20", "0", str(threads), "0",
              str(start_ticks), "123456789", "1000"] + ["0"] * 30
    return f"4242 ({comm}) " + " ".join(fields) + "\n"


class FakeProc:
    """A /proc tree with a ``self`` folder, rewritten between samples."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "self").mkdir(parents=True)
        self.now = 1000.0

    def set(self, utime: int, stime: int, rss_kib: int = 20480, threads: int = 7,
            comm: str = "python3") -> None:
        (self.root / "self" / "stat").write_text(stat_line(utime, stime, threads, comm=comm))
        (self.root / "self" / "status").write_text(
            f"Name:\t{comm}\nState:\tS (sleeping)\nVmPeak:\t  99999 kB\n"
            f"VmRSS:\t  {rss_kib} kB\nThreads:\t{threads}\n")
        (self.root / "uptime").write_text("150.00 500.00\n")
        (self.root / "loadavg").write_text("0.52 0.40 0.30 2/345 6789\n")

    def clock(self) -> float:
        return self.now


def test_sampler_on_fake_tree(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.set(utime=100, stime=50)
    sampler = ProcessSampler(tmp_path, clk_tck=CLK_TCK, clock=proc.clock)
    proc.now += 2.0
    proc.set(utime=180, stime=70, rss_kib=30000, threads=9)  # 100 ticks = 1 s CPU in 2 s
    s = sampler.sample()
    assert s.cpu_percent == pytest.approx(50.0)
    assert s.rss_bytes == 30000 * 1024
    assert s.threads == 9
    assert s.uptime_s == pytest.approx(150.0 - 5000 / CLK_TCK)
    assert s.load1 == pytest.approx(0.52)
    proc.now += 1.0
    proc.set(utime=330, stime=120)  # 200 ticks = 2 s CPU in 1 s: two cores busy
    assert sampler.sample().cpu_percent == pytest.approx(200.0)
    proc.now += 0.01  # too short a window: the previous figure again
    proc.set(utime=331, stime=120)
    assert sampler.sample().cpu_percent == pytest.approx(200.0)
    proc.now += 0.99  # measured from the last real window: 1 tick in 1 s
    assert sampler.sample().cpu_percent == pytest.approx(1.0)


def test_sampler_parses_awkward_command_names(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.set(utime=0, stime=0, comm="a) b (c")
    sampler = ProcessSampler(tmp_path, clk_tck=CLK_TCK, clock=proc.clock)
    proc.now += 1.0
    proc.set(utime=10, stime=0, comm="a) b (c")
    assert sampler.sample().cpu_percent == pytest.approx(10.0)


def test_sampler_omits_missing_sources(tmp_path: Path) -> None:
    empty = ProcessSampler(tmp_path / "nothing", clk_tck=CLK_TCK)
    assert empty.sample() == ProcessSample(None, None, None, None, None)
    assert load_average(tmp_path / "nothing") is None
    # Only a status file, and a loadavg that is garbage.
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "status").write_text("VmRSS:\t 12 kB\nThreads:\tlots\n")
    (tmp_path / "loadavg").write_text("not numbers\n")
    s = ProcessSampler(tmp_path, clk_tck=CLK_TCK).sample()
    assert s == ProcessSample(cpu_percent=None, rss_bytes=12 * 1024, threads=None,
                              uptime_s=None, load1=None)
    (tmp_path / "self" / "stat").write_text("garbage without fields\n")
    assert ProcessSampler(tmp_path, clk_tck=CLK_TCK).sample().cpu_percent is None


def test_sampler_on_real_proc() -> None:
    sampler = ProcessSampler(min_interval_s=0.05)
    t_end = time.process_time() + 0.2
    while time.process_time() < t_end:  # burn CPU on this core
        pass
    s = sampler.sample()
    assert s.cpu_percent is not None and 30.0 < s.cpu_percent < 150.0 * os.cpu_count()
    assert s.rss_bytes is not None and s.rss_bytes > 10 * 2**20
    assert s.threads is not None and s.threads >= threading.active_count()
    assert s.uptime_s is not None and s.uptime_s > 0
    assert s.load1 is not None and s.load1 >= 0
    load = load_average()
    assert load is not None and len(load) == 3


# --------------------------------------------------------------------------- StageStats


@pytest.mark.parametrize("window, n", [(1, 1), (10, 3), (100, 100), (100, 357), (1000, 5000)])
def test_stage_stats_percentiles_match_numpy(window: int, n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.gamma(2.0, 0.001, n)
    stats = StageStats(window=window)
    for v in values:
        stats.record(float(v), 0.01)
    kept = values[-window:]
    s = stats.summary()
    assert s is not None
    assert s.count == kept.size and s.count_total == n == stats.count_total
    np.testing.assert_allclose([s.p50_s, s.p95_s, s.p99_s],
                               np.percentile(kept, [50, 95, 99]), rtol=1e-12)
    assert s.max_s == kept.max() and s.mean_s == pytest.approx(kept.mean())
    assert s.real_time_factor == pytest.approx(kept.sum() / (0.01 * kept.size))
    np.testing.assert_array_equal(stats.snapshot(), kept)


def test_stage_stats_empty_and_rtf() -> None:
    stats = StageStats(window=4)
    assert stats.summary() is None and stats.real_time_factor() is None
    assert stats.snapshot().size == 0
    stats.record(0.002)  # no audio time given
    assert stats.real_time_factor() is None
    assert stats.real_time_factor(block_audio_s=0.01) == pytest.approx(0.2)
    with stats.measure(audio_s=0.01):
        time.sleep(0.001)
    assert stats.count_total == 2 and stats.snapshot()[1] >= 0.001
    assert real_time_factor(0.5, 2.0) == 0.25
    with pytest.raises(ValueError):
        real_time_factor(1.0, 0.0)
    with pytest.raises(ValueError):
        StageStats(window=0)


def test_stage_stats_one_writer_one_reader() -> None:
    """Every value a reader sees was written whole (all writes are 1.0 or 2.0)."""
    stats = StageStats(window=2000)
    done = threading.Event()

    def writer() -> None:
        for i in range(100_000):
            stats.record(1.0 + (i & 1), 1.0)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = 0
    while not done.is_set():
        snap = stats.snapshot()
        assert set(np.unique(snap)) <= {1.0, 2.0}
        s = stats.summary()
        if s is not None:
            assert 1.0 <= s.p50_s <= 2.0 and s.count <= 2000
        seen += 1
    thread.join()
    assert seen > 0 and stats.count_total == 100_000


# --------------------------------------------------------------------------- payload


def test_telemetry_payload_fields_and_units() -> None:
    stats = StageStats(window=10)
    for v in (0.001, 0.002, 0.003, 0.004):
        stats.record(v, 0.01)
    process = ProcessSample(cpu_percent=12.345, rss_bytes=50_000_000, threads=6,
                            uptime_s=99.0, load1=0.75)
    p = telemetry_payload(seq=7, uptime_seconds=12.3456, process=process, dsp=stats,
                          xruns_total=1, dropped_blocks_total=2, dropped_audio_total=3,
                          blocks_total=400, latency_seconds=0.032, device_errors_total=0)
    assert set(p) == TELEMETRY_FIELDS | {"device_errors_total"}
    assert p["seq"] == 7 and p["uptime_seconds"] == 12.346
    assert p["process_cpu_percent"] == 12.35 and p["process_rss_bytes"] == 50_000_000
    assert p["process_threads"] == 6 and p["load1"] == 0.75
    assert p["dsp_block_seconds"] == pytest.approx(
        dict(zip(("p50", "p95", "p99", "max"),
                 [*np.percentile([0.001, 0.002, 0.003, 0.004], [50, 95, 99]), 0.004],
                 strict=True)))
    assert p["real_time_factor"] == pytest.approx(0.25)
    assert (p["xruns_total"], p["dropped_blocks_total"], p["dropped_audio_total"],
            p["blocks_total"]) == (1, 2, 3, 400)
    assert p["latency_seconds"] == 0.032 and p["device_errors_total"] == 0
    assert json.loads(json.dumps(p)) == p


def test_telemetry_payload_omits_unknowns_and_takes_explicit_values() -> None:
    p = telemetry_payload(seq=0)
    assert p == {"seq": 0}
    summary = StageSummary(count=1, count_total=5, p50_s=0.001, p95_s=0.002, p99_s=0.003,
                           max_s=0.004, mean_s=0.0015, real_time_factor=0.15)
    p = telemetry_payload(seq=1, dsp=summary, real_time_factor=0.2, load1=1.5,
                          process=ProcessSample(None, 1024, None, None, 0.5),
                          dropped_audio_total=0)
    assert p["real_time_factor"] == 0.2 and p["load1"] == 1.5
    assert p["process_rss_bytes"] == 1024 and "process_cpu_percent" not in p
    assert p["dsp_block_seconds"]["max"] == 0.004 and p["dropped_audio_total"] == 0
    assert telemetry_payload(seq=2, dsp=StageStats(4)) == {"seq": 2}
    with pytest.raises(ValueError, match="process_rss_bytes"):
        telemetry_payload(seq=3, process_rss_bytes=1)
