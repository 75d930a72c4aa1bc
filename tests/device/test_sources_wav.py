"""WavSource: a file replayed as the array (real files, real clock)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mica.array_dsp.errors import AudioFileError
from mica.device.config import CaptureConfig
from mica.device.sources.factory import open_source
from mica.device.sources.wav import WavSource

FS = 16000


def _write(path: Path, n_frames: int, n_ch: int = 3, fs: int = FS) -> np.ndarray:
    """A 16-bit file whose samples are exact in float32: channel c holds c/8 + ramp."""
    rng = np.random.default_rng(n_frames)
    ints = rng.integers(-20000, 20000, size=(n_frames, n_ch)).astype(np.int16)
    sf.write(path, ints, fs, subtype="PCM_16")
    return (ints.T / 32768.0).astype(np.float32)          # (n_ch, n)


def _read_all(src: WavSource, limit: int = 10_000) -> list:
    blocks = []
    while (b := src.read()) is not None:
        blocks.append(b)
        assert len(blocks) < limit
    return blocks


def test_fast_mode_reads_everything_zero_padded(tmp_path: Path) -> None:
    data = _write(tmp_path / "a.wav", 1000)
    src = WavSource(tmp_path / "a.wav", period_frames=160, realtime=False)
    assert (src.fs_hz, src.n_channels, src.period_frames, src.xruns_total) == (FS, 3, 160, 0)
    blocks = _read_all(src)
    assert [b.seq for b in blocks] == list(range(7))              # ceil(1000 / 160)
    assert all(b.samples.shape == (3, 160) and b.samples.dtype == np.float32 for b in blocks)
    assert all(b.gap_frames == 0 for b in blocks)
    got = np.concatenate([b.samples for b in blocks], axis=1)
    np.testing.assert_array_equal(got[:, :1000], data)
    assert not got[:, 1000:].any()                                 # last block zero-padded
    t0 = blocks[0].t_capture_ns
    assert [b.t_capture_ns - t0 for b in blocks] == [k * 10_000_000 for k in range(7)]
    assert src.read() is None                                      # stays at the end
    src.close()
    src.close()                                                    # idempotent
    with pytest.raises(AudioFileError, match="a.wav"):
        src.read()


def test_fast_mode_is_faster_than_real_time(tmp_path: Path) -> None:
    _write(tmp_path / "b.wav", 2 * FS)
    with WavSource(tmp_path / "b.wav", period_frames=160, realtime=False) as src:
        start = time.monotonic()
        blocks = _read_all(src)
        elapsed = time.monotonic() - start
    assert len(blocks) == 200
    assert elapsed < 0.5 * 2.0                       # a loose ratio against the 2 s of audio


def test_realtime_pacing_by_absolute_deadlines(tmp_path: Path) -> None:
    _write(tmp_path / "c.wav", FS)
    n = 40                                            # 40 x 10 ms
    with WavSource(tmp_path / "c.wav", period_frames=160, realtime=True) as src:
        start = time.monotonic_ns()
        blocks = []
        for k in range(n):
            if k == 10:
                time.sleep(0.05)                      # a slow reader catches up, no drift
            b = src.read()
            now = time.monotonic_ns()
            assert now >= b.t_capture_ns + 10_000_000  # never before its last sample is due
            blocks.append(b)
        elapsed = time.monotonic_ns() - start
    expected = n * 10_000_000
    assert 0.95 * expected <= elapsed <= 3.0 * expected
    t0 = blocks[0].t_capture_ns
    assert start <= t0 <= start + expected
    assert [b.t_capture_ns - t0 for b in blocks] == [k * 10_000_000 for k in range(n)]


def test_loop_is_seamless(tmp_path: Path) -> None:
    data = _write(tmp_path / "d.wav", 250, n_ch=2)
    with WavSource(tmp_path / "d.wav", period_frames=100, realtime=False, loop=True) as src:
        blocks = [src.read() for _ in range(12)]
    assert [b.seq for b in blocks] == list(range(12))
    got = np.concatenate([b.samples for b in blocks], axis=1)
    np.testing.assert_array_equal(got, np.tile(data, (1, 5))[:, :1200])


def test_channel_selection_and_reordering(tmp_path: Path) -> None:
    data = _write(tmp_path / "e.wav", 320, n_ch=4)
    with WavSource(tmp_path / "e.wav", period_frames=160, realtime=False,
                   channels=[3, 0]) as src:
        assert src.n_channels == 2
        b = src.read()
    np.testing.assert_array_equal(b.samples, data[[3, 0], :160])
    assert b.samples.flags.c_contiguous
    with pytest.raises(AudioFileError, match=r"e\.wav.*4 channel"):
        WavSource(tmp_path / "e.wav", channels=[0, 4])


def test_broken_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really a wav file")
    with pytest.raises(AudioFileError, match=r"broken\.wav"):
        WavSource(bad)
    with pytest.raises(AudioFileError, match=r"missing\.wav"):
        WavSource(tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 2), np.int16), FS, subtype="PCM_16")
    with pytest.raises(AudioFileError, match="no samples"):
        WavSource(empty, loop=True)
    with WavSource(empty, realtime=False) as src:
        assert src.read() is None


def test_factory_opens_wav_with_mic_channels(tmp_path: Path) -> None:
    data = _write(tmp_path / "f.wav", 480, n_ch=4)
    cfg = CaptureConfig(source="wav", wav_path=str(tmp_path / "f.wav"), channels=4,
                        period_frames=160, wav_realtime=False)
    src = open_source(cfg, [2, 1])
    try:
        assert isinstance(src, WavSource) and src.n_channels == 2 and not src.realtime
        np.testing.assert_array_equal(src.read().samples, data[[2, 1], :160])
    finally:
        src.close()
    with pytest.raises(ValueError):
        open_source(CaptureConfig(source="tape"), None)
