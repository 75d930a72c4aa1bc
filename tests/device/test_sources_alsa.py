"""AlsaSource on real ALSA capture PCMs (the fakemic plugin, see tests/fixtures_alsa.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf

from mica.array_dsp.errors import DeviceError
from mica.device.config import CaptureConfig
from mica.device.sources.alsa import AlsaSource, list_capture_devices
from mica.device.sources.factory import open_source
from mica.device.sources.wav import WavSource
from tests.fixtures_alsa import FakeAlsa, marker_frame_index

FS = 16000


def _read(src: AlsaSource, n: int) -> list:
    return [src.read() for _ in range(n)]


def _check_stream(blocks: list, n_ch: int, period: int) -> np.ndarray:
    """Shape, seq, timing and marker continuity; returns the first marker frame per block."""
    assert all(b.samples.shape == (n_ch, period) and b.samples.dtype == np.float32
               for b in blocks)
    assert [b.seq for b in blocks] == list(range(len(blocks)))
    assert all(b.gap_frames == 0 for b in blocks)
    idx = np.concatenate([marker_frame_index(b.samples) for b in blocks])
    assert idx[0] == 0                                    # a fresh open starts at frame 0
    assert np.all(np.diff(idx) == 1)                      # every frame, in order, once
    for c in range(2, n_ch):                              # constant marker channels
        assert np.all(np.rint(np.concatenate([b.samples[c] for b in blocks]) * 32768)
                      == c * 1000)
    t = np.array([b.t_capture_ns for b in blocks], dtype=np.int64)
    dt = np.diff(t) / 1e9 * FS                            # in frames
    assert abs(np.median(dt) - period) < 0.02 * period
    assert np.all(np.abs(dt - period) < 0.5 * period)
    # The capture times agree with the frames' positions in the stream.
    drift = (t - t[0]) / 1e9 * FS - (idx[::period] - idx[0])
    assert np.all(np.abs(drift) < 0.5 * period), drift
    now = time.monotonic_ns()
    assert 0 < now - blocks[-1].t_capture_ns < 500_000_000
    return idx[::period]


def test_mic4_s16(fake_alsa: FakeAlsa) -> None:
    with AlsaSource("mic4", channels=4, fs_hz=FS, format="S16_LE", period_frames=160) as src:
        assert (src.fs_hz, src.n_channels, src.period_frames) == (FS, 4, 160)
        _check_stream(_read(src, 40), 4, 160)
        assert src.xruns_total == 0


def test_mic8_s32(fake_alsa: FakeAlsa) -> None:
    with AlsaSource("mic8", channels=8, fs_hz=FS, format="S32_LE", period_frames=256,
                    periods=4) as src:
        _check_stream(_read(src, 25), 8, 256)


def test_clock_timestamps_when_alsa_ones_are_not_used(fake_alsa: FakeAlsa) -> None:
    with AlsaSource("mic4", 4, FS, "S16_LE", 160, alsa_timestamps=False) as src:
        _check_stream(_read(src, 30), 4, 160)


def test_blocks_are_recut_when_the_device_period_differs(fake_alsa: FakeAlsa) -> None:
    # fakemic periods are at least 64 bytes = 8 frames of 4 x S16: ask for 5-frame blocks.
    with AlsaSource("mic4", 4, FS, "S16_LE", period_frames=5, periods=64) as src:
        assert src.device_period_frames != 5
        blocks = _read(src, 300)
    idx = np.concatenate([marker_frame_index(b.samples) for b in blocks])
    assert np.all(np.diff(idx) == 1) and idx[0] == 0
    assert all(b.samples.shape == (4, 5) for b in blocks)
    t = np.array([b.t_capture_ns for b in blocks])
    drift = (t - t[0]) / 1e9 * FS - (idx[::5] - idx[0])
    assert np.all(np.abs(drift) < 8)


def test_overrun_is_counted_and_the_gap_measured(fake_alsa: FakeAlsa) -> None:
    with AlsaSource("mic4", 4, FS, "S16_LE", period_frames=160, periods=4) as src:
        before = _read(src, 20)
        stall_s = 0.5                                     # >> the 40 ms buffer
        time.sleep(stall_s)
        after = _read(src, 20)
        assert src.xruns_total == 1
    blocks = before + after
    assert [b.seq for b in blocks] == list(range(40))     # seq never skips
    gaps = [b.gap_frames for b in blocks]
    assert all(g == 0 for i, g in enumerate(gaps) if i != 20)
    first = [int(marker_frame_index(b.samples)[0]) for b in blocks]
    true_lost = first[20] - (first[19] + 160)             # frames the device skipped
    assert true_lost > 0.5 * stall_s * FS
    assert abs(gaps[20] - true_lost) <= 16                # within 1 ms of the truth
    assert 0.8 * stall_s * FS < gaps[20] < 2.0 * stall_s * FS
    expected_t = blocks[19].t_capture_ns + 10_000_000 + gaps[20] * 1_000_000_000 // FS
    assert abs(blocks[20].t_capture_ns - expected_t) < 1_000_000
    idx_after = np.concatenate([marker_frame_index(b.samples) for b in after])
    assert np.all(np.diff(idx_after) == 1)                # continuous again after the gap


def test_channel_selection(fake_alsa: FakeAlsa) -> None:
    with AlsaSource("mic8", 8, FS, "S32_LE", 160, select=[7, 2, 1]) as src:
        b = src.read()
    assert b.samples.shape == (3, 160)
    np.testing.assert_array_equal(np.rint(b.samples[0] * 32768), 7000)
    np.testing.assert_array_equal(np.rint(b.samples[1] * 32768), 2000)
    np.testing.assert_array_equal(np.rint(b.samples[2] * 32768), np.arange(160) % 100)


def test_missing_device_and_refused_parameters(fake_alsa: FakeAlsa) -> None:
    with pytest.raises(DeviceError, match="no_such_pcm"):
        AlsaSource("no_such_pcm", 4, FS, "S16_LE", 160)
    with pytest.raises(DeviceError, match=r"'mic4'.*2 channels"):
        AlsaSource("mic4", 2, FS, "S16_LE", 160)
    with pytest.raises(DeviceError, match=r"'mic4'.*rate 48000"):
        AlsaSource("mic4", 4, 48000, "S16_LE", 160)
    with pytest.raises(DeviceError, match=r"'mic8'.*format S16_LE"):
        AlsaSource("mic8", 8, FS, "S16_LE", 160)
    with pytest.raises(ValueError):
        AlsaSource("mic4", 4, FS, "U8", 160)


def test_close_is_idempotent_and_final(fake_alsa: FakeAlsa) -> None:
    src = AlsaSource("mic4", 4, FS, "S16_LE", 160)
    src.read()
    src.close()
    src.close()
    with pytest.raises(DeviceError, match="mic4"):
        src.read()


def test_list_capture_devices(fake_alsa: FakeAlsa) -> None:
    names = list_capture_devices()
    assert "mic4" in names and "mic8" in names


def test_added_pcm_plays_real_speech(fake_alsa: FakeAlsa, corpus_dir) -> None:
    """A PCM added after others were opened plays a real 8-mic recording sample-exactly."""
    path = corpus_dir / "multichannel" / "mcwsjav_T10c0201_uca8.wav"
    speech, fs = sf.read(path, dtype="float32", frames=FS, always_2d=True)
    name = fake_alsa.add_pcm_from_samples("speech8", speech.T, fs, "S32_LE", loop=True)
    assert name in list_capture_devices()
    with AlsaSource(name, 8, fs, "S32_LE", 160) as src:
        got = np.concatenate([b.samples for b in _read(src, 30)], axis=1)
    with WavSource(path, period_frames=160, realtime=False) as wav:
        ref = np.concatenate([wav.read().samples for _ in range(30)], axis=1)
    np.testing.assert_array_equal(got, ref)
    assert np.abs(ref).max() > 0.01                       # not silence


def test_factory_opens_alsa(fake_alsa: FakeAlsa) -> None:
    cfg = CaptureConfig(source="alsa", alsa_device="mic4", channels=4, fs_hz=FS,
                        format="S16_LE", period_frames=320)
    src = open_source(cfg, [1, 0])
    try:
        assert isinstance(src, AlsaSource) and src.n_channels == 2
        b = src.read()
    finally:
        src.close()
    assert b.samples.shape == (2, 320)
    np.testing.assert_array_equal(np.rint(b.samples[0] * 32768), np.arange(320) % 100)


def test_buffer_length_follows_capture_periods(fake_alsa: FakeAlsa) -> None:
    """``capture.periods`` sets the ALSA buffer: periods x period_frames frames."""
    sizes = {}
    for periods in (2, 8):
        cfg = CaptureConfig(source="alsa", alsa_device="mic4", channels=4, fs_hz=FS,
                            format="S16_LE", period_frames=160, periods=periods)
        src = open_source(cfg)
        try:
            sizes[periods] = (src.buffer_frames, src.device_period_frames)
        finally:
            src.close()
    for periods, (buffer_frames, period) in sizes.items():
        assert buffer_frames == periods * period, sizes
    assert sizes[8][0] > sizes[2][0]
