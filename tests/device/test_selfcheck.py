"""Capture self-checks: kernels against their numpy references, no allocation per block, and
a real 4-mic recording with two channels swapped, one zeroed and one clipped run through the
daemon with a real broker and subscriber: each fault reported for the right channel, the
swap with the order that fits."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mica.array_dsp.channels import (
    ChannelMonitor,
    channel_decide_kernel,
    channel_decide_reference,
    channel_stats_kernel,
    channel_stats_reference,
    dc_block_coefficient,
    dc_block_kernel,
    dc_block_reference,
)
from mica.device.config import replace
from mica.device.selfcheck import CaptureSelfCheck
from mica.device.service import Service
from mica.device.sources.wav import WavSource

FS = 16000
SPEECH = "multichannel/speechbrain_4mic_speech_-0.82918_0.55279_-0.082918"


def _speech(corpus_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 4-mic recording ``(4, n)`` and its geometry ``(4, 3)``."""
    x, fs = sf.read(corpus_dir / f"{SPEECH}.wav", dtype="float32", always_2d=True)
    assert fs == FS
    meta = json.loads((corpus_dir / f"{SPEECH}.json").read_text())
    return np.ascontiguousarray(x.T), np.array(meta["geometry_m"])


def _faulty(x: np.ndarray) -> np.ndarray:
    """Channels 0 and 1 swapped, channel 2 clipped (x40, ~2% of samples at full scale),
    channel 3 zeroed."""
    y = x.copy()
    y[[0, 1]] = y[[1, 0]]
    y[2] = np.clip(40.0 * y[2], -1.0, 1.0)
    y[3] = 0.0
    return y


@pytest.mark.parametrize("n_ch", [1, 2, 4, 8])
@pytest.mark.parametrize("n", [1, 160, 257])
def test_stats_and_dc_block_kernels_match_references(n_ch: int, n: int) -> None:
    rng = np.random.default_rng(n_ch * 1000 + n)
    state = [np.zeros(n_ch, np.float32)] + [np.zeros(n_ch) for _ in range(4)]
    ref = [s.copy() for s in state]
    xp, yp = np.zeros(n_ch), np.zeros(n_ch)
    rxp, ryp = xp.copy(), yp.copy()
    r = dc_block_coefficient(FS)
    out = np.zeros((n_ch, n), np.float32)
    for _ in range(20):
        block = (0.5 * rng.standard_normal((n_ch, n)) + 0.2).clip(-1, 1).astype(np.float32)
        channel_stats_kernel(block, 0.9, 0.999, *state)
        ref = list(channel_stats_reference(block, 0.9, 0.999, *ref))
        dc_block_kernel(block, r, xp, yp, out)
        ref_out, rxp, ryp = dc_block_reference(block, r, rxp, ryp)
        np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
    for got, want in zip(state, ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(yp, ryp, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_ch", [2, 3, 4, 8])
def test_decide_kernel_matches_reference(n_ch: int) -> None:
    rng = np.random.default_rng(n_ch)
    bad, good = np.zeros(n_ch, np.int64), np.zeros(n_ch, np.int64)
    dead = np.zeros(n_ch, bool)
    rb, rg, rd = bad.copy(), good.copy(), dead.copy()
    scratch = np.zeros(n_ch)
    changes = 0
    for step in range(400):
        power = rng.uniform(1e-4, 1e-3, n_ch)
        diff = rng.uniform(1e-4, 1e-3, n_ch)
        if step % 100 < 60:  # channel 0 far below the others for a while, then back
            power[0] = 1e-9
        if step % 50 < 30:  # channel 1 stuck now and then
            diff[n_ch - 1] = 0.0
        if step in (10, 11):  # every channel silent: no decision
            power[:] = 1e-16
        got = channel_decide_kernel(power, diff, 1e-3, 1e-6, 1e-14, 5, 8, bad, good, dead,
                                    scratch)
        want, rb, rg, rd = channel_decide_reference(power, diff, 1e-3, 1e-6, 1e-14, 5, 8,
                                                    rb, rg, rd)
        assert got == want
        np.testing.assert_array_equal(bad, rb)
        np.testing.assert_array_equal(good, rg)
        np.testing.assert_array_equal(dead, rd)
        changes += int(got)
    assert changes >= 4  # the channels really went dead and came back


def _traced(fn, n: int) -> tuple[int, int]:
    """(bytes kept, peak bytes above the start) over ``n`` calls."""
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for i in range(n):
            fn(i)
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return end - start, peak - start


def test_monitor_and_selfcheck_allocate_nothing_per_block() -> None:
    """Big blocks (8 x 512: 16 KB as float32), so that any block-sized temporary shows in the
    peak; Numba's argument dispatch alone peaks at about 2 KB and keeps nothing."""
    rng = np.random.default_rng(0)
    blocks = [(0.1 * rng.standard_normal((8, 512)) + 0.02).astype(np.float32)
              for _ in range(16)]
    mon = ChannelMonitor(8)
    for i in range(50):
        mon.update(blocks[i % 16])
    kept, peak = _traced(lambda i: mon.update(blocks[i % 16]), 2000)
    assert kept < 512 and peak < 4096, (kept, peak)
    geometry = np.array([[0.05 * np.cos(a), 0.05 * np.sin(a), 0.0]
                         for a in np.linspace(0, 2 * np.pi, 8, endpoint=False)])
    check = CaptureSelfCheck(geometry, FS, 512)  # no order thread: the per-block path only
    for i in range(300):  # past the DC flag: the blocker runs too
        check.process(blocks[i % 16])
    assert check.dc_block
    kept, peak = _traced(lambda i: check.process(blocks[(i * 7) % 16]), 2000)
    assert kept < 512 and peak < 4096, (kept, peak)


def _feed(check: CaptureSelfCheck, x: np.ndarray, passes: int = 1) -> np.ndarray:
    outs = []
    for _ in range(passes):
        for i in range(0, x.shape[1] - 159, 160):
            outs.append(check.process(np.ascontiguousarray(x[:, i:i + 160])).copy())
            time.sleep(0)  # let the order thread run
    return np.concatenate(outs, axis=1)


def test_dc_offset_is_reported_and_removed(corpus_dir: Path) -> None:
    x, geometry = _speech(corpus_dir)
    events: list[tuple[str, dict]] = []
    clean = CaptureSelfCheck(geometry, FS, 160, on_event=lambda k, p: events.append((k, p)))
    _feed(clean, x)
    assert not events and not clean.dc_block  # clean speech: nothing to report
    y = x.copy()
    y[1] += 0.01  # -40 dBFS offset on channel 1
    check = CaptureSelfCheck(geometry, FS, 160, on_event=lambda k, p: events.append((k, p)))
    out = _feed(check, y)
    health = [p for k, p in events if k == "channel_health"]
    assert health and health[0]["dc_offset"] == [1] and health[0]["dead"] == []
    assert check.dc_block and abs(check.dc_offset[1] - 0.01) < 2e-3
    tail = out[:, -FS:]
    assert np.abs(tail.mean(axis=1)).max() < 5e-4  # the offset is gone from the output
    assert np.abs(y[:, -FS:].mean(axis=1)).max() > 9e-3


def test_clean_recording_keeps_its_order(corpus_dir: Path) -> None:
    x, geometry = _speech(corpus_dir)
    events: list[tuple[str, dict]] = []
    check = CaptureSelfCheck(geometry, FS, 160, on_event=lambda k, p: events.append((k, p)))
    check.start()
    try:
        _feed(check, x)
        deadline = time.monotonic() + 10
        while check.order_checks_total < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        check.stop()
    assert check.order_checks_total >= 2 and check.order_ok is True
    assert events == []


def test_daemon_reports_swapped_dead_and_clipped_channels(corpus_dir: Path, tmp_path: Path,
                                                          mqtt_config, mqtt_subscriber) -> None:
    x, geometry = _speech(corpus_dir)
    wav = tmp_path / "faulty.wav"
    sf.write(wav, _faulty(x).T, FS, subtype="PCM_16")
    cfg = mqtt_config(telemetry_interval_s=0.5)
    cfg = replace(cfg, capture={"source": "wav", "wav_path": str(wav), "channels": 4},
                  array={"geometry_m": geometry.tolist()})
    base = cfg.topic_base
    sub = mqtt_subscriber(f"{base}/#")
    service = Service(cfg, source_factory=lambda: WavSource(wav, 160, realtime=True,
                                                             loop=True, speed=4.0))
    service.start()
    try:
        order = sub.wait_count(f"{base}/event/channel_order", 1, timeout_s=30)
        health = [json.loads(m.payload) for m in sub.messages(f"{base}/event/channel_health")]
        telemetry = sub.wait_for(lambda ms: any(
            m.topic == f"{base}/telemetry" and json.loads(m.payload).get("channel_order_ok")
            is False for m in ms), timeout_s=5)
    finally:
        service.request_stop()
        service.stop()
    swap = json.loads(order[0].payload)
    assert swap["ok"] is False
    assert swap["mic_of_channel"] == [1, 0, 2, 3]          # channels 0 and 1 carry mics 1, 0
    assert swap["suggested_mic_channels"] == [1, 0, 2, 3]  # the array.mic_channels that fits
    assert swap["checked_channels"] == [0, 1, 2]           # the dead channel is left out
    assert health and health[0]["dead"] == [3] and health[0]["clipping"] == [2]
    assert all(h["dc_offset"] == [] for h in health)       # clipping is not a DC offset
    last = [json.loads(m.payload) for m in telemetry if m.topic == f"{base}/telemetry"][-1]
    assert last["channel_order_suggested"] == [1, 0, 2, 3]
    assert last["channel_clipping"] == [2] and last["dead_channels"] == [3]
    assert last["channel_dead"][3] is True and last["channel_clipping_ratio"][2] > 0.005


@pytest.mark.parametrize("echo", [True, False])
def test_reference_channels_are_not_checked(corpus_dir: Path, tmp_path: Path, mqtt_config,
                                            mqtt_subscriber, echo: bool) -> None:
    """Loopback channels (silent: nothing plays) beside 4 good mics: no channel is dead, the
    order of the 4 mics is checked and fits. With echo on the references are split off
    before the checks; with echo off and no mic_channels they reach the self-check as rows
    and are left out by array.reference_channels."""
    x, geometry = _speech(corpus_dir)
    wav = tmp_path / "refs.wav"
    sf.write(wav, np.concatenate([x, np.zeros((2, x.shape[1]), np.float32)]).T, FS,
             subtype="PCM_16")
    cfg = mqtt_config(telemetry_interval_s=0.5)
    mics = [0, 1, 2, 3] if echo else []
    geo = geometry.tolist() if echo else geometry.tolist() + [[0.0, 0.0, 0.0], [0.0, 0.0, 0.01]]
    cfg = replace(cfg, capture={"source": "wav", "wav_path": str(wav), "channels": 6},
                  array={"geometry_m": geo, "mic_channels": mics, "reference_channels": [4, 5]},
                  echo={"enabled": echo})
    base = cfg.topic_base
    sub = mqtt_subscriber(f"{base}/#")
    chans = [0, 1, 2, 3, 4, 5] if echo else None
    service = Service(cfg, source_factory=lambda: WavSource(wav, 160, realtime=True, loop=True,
                                                             speed=4.0, channels=chans))
    service.start()
    try:
        tel = sub.wait_for(lambda ms: any(
            m.topic == f"{base}/telemetry" and json.loads(m.payload).get("channel_order_ok")
            is True for m in ms), timeout_s=30)
    finally:
        service.request_stop()
        service.stop()
    assert service.selfcheck.n_channels == (4 if echo else 6)
    assert service.selfcheck.exclude_rows == ([] if echo else [4, 5])
    assert sub.messages(f"{base}/event/channel_health") == []
    assert sub.messages(f"{base}/event/channel_order") == []
    last = [json.loads(m.payload) for m in tel if m.topic == f"{base}/telemetry"][-1]
    assert last["channel_order_checks_total"] >= 1 and last["channel_clipping"] == []
