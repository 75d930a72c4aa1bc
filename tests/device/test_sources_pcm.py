"""Integer PCM <-> float32 conversion."""

from __future__ import annotations

import numpy as np
import pytest

from mica.device.sources.pcm import float_to_pcm, float_to_s16le, frame_bytes, pcm_to_float


def test_s16_every_value_round_trips() -> None:
    ints = np.arange(-32768, 32768, dtype="<i2")
    data = np.stack([ints, ints[::-1]], axis=1).tobytes()       # 2 interleaved channels
    x = pcm_to_float(data, 2, "S16_LE")
    assert x.dtype == np.float32 and x.shape == (2, 65536)
    assert x[0, 0] == -1.0 and x[0, -1] == np.float32(32767 / 32768)
    np.testing.assert_array_equal(x[0], ints / 32768.0)
    np.testing.assert_array_equal(x[1], ints[::-1] / 32768.0)
    assert float_to_pcm(x, "S16_LE") == data


def test_s32_round_trips_and_extremes() -> None:
    rng = np.random.default_rng(1)
    ints = (rng.integers(-2 ** 23, 2 ** 23, size=(1000, 3)) << 8).astype("<i4")  # 24-bit exact
    ints[0] = [-2 ** 31, 2 ** 31 - 256, 0]
    data = ints.tobytes()
    x = pcm_to_float(data, 3, "S32_LE")
    assert x.shape == (3, 1000)
    np.testing.assert_array_equal(x, ints.T / 2.0 ** 31)
    assert x[0, 0] == -1.0 and x.max() < 1.0
    assert float_to_pcm(x, "S32_LE") == data
    full = np.array([[-2 ** 31, 2 ** 31 - 1]], dtype="<i4")
    assert np.all(np.abs(pcm_to_float(full.tobytes(), 2, "S32_LE")) <= 1.0)


def test_s24_3le_round_trips_with_sign_and_extremes() -> None:
    ints = np.array([0, 1, -1, 2**23 - 1, -(2**23), 0x123456, -0x123456], dtype=np.int64)
    packed = b"".join(int(v & 0xFFFFFF).to_bytes(3, "little") for v in ints)
    x = pcm_to_float(packed, 1, "S24_3LE")
    np.testing.assert_array_equal(x[0], (ints / 2**23).astype(np.float32))
    assert float_to_pcm(x, "S24_3LE") == packed
    assert frame_bytes("S24_3LE", 6) == 18
    assert float_to_pcm(np.array([2.0, -2.0]), "S24_3LE") == bytes.fromhex("ffff7f000080")


def test_channel_order_is_interleaved_frames() -> None:
    frames = np.array([[1, 2, 3], [4, 5, 6]], dtype="<i2")     # 2 frames of 3 channels
    x = pcm_to_float(frames.tobytes(), 3, "S16_LE") * 32768
    np.testing.assert_array_equal(x, [[1, 4], [2, 5], [3, 6]])
    sel = pcm_to_float(frames.tobytes(), 3, "S16_LE", select=[2, 0]) * 32768
    np.testing.assert_array_equal(sel, [[3, 6], [1, 4]])


def test_decode_into_preallocated_output() -> None:
    data = np.arange(8, dtype="<i2").tobytes()
    out = np.full((2, 4), 7.0, dtype=np.float32)
    res = pcm_to_float(data, 2, "S16_LE", out=out)
    assert res is out
    np.testing.assert_array_equal(out * 32768, [[0, 2, 4, 6], [1, 3, 5, 7]])
    with pytest.raises(ValueError):
        pcm_to_float(data, 2, "S16_LE", out=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError):
        pcm_to_float(data, 2, "S16_LE", out=np.zeros((2, 4), np.float64))


def test_encode_clips_rounds_and_cleans() -> None:
    x = np.array([1.0, -1.0, 2.0, -5.0, np.nan, np.inf, -np.inf, 0.5 / 32768, 1.4 / 32768],
                 dtype=np.float32)
    ints = np.frombuffer(float_to_s16le(x), dtype="<i2")
    np.testing.assert_array_equal(ints, [32767, -32768, 32767, -32768, 0, 32767, -32768, 0, 1])
    ints32 = np.frombuffer(float_to_pcm(x[:4], "S32_LE"), dtype="<i4")
    np.testing.assert_array_equal(ints32, [2 ** 31 - 1, -2 ** 31, 2 ** 31 - 1, -2 ** 31])


def test_mono_and_multichannel_encode() -> None:
    mono = np.linspace(-1, 1, 101, dtype=np.float32)
    assert len(float_to_s16le(mono)) == 202
    multi = np.array([[0.25, -0.25], [0.5, -0.5]], dtype=np.float32)   # 2 ch x 2 frames
    ints = np.frombuffer(float_to_pcm(multi), dtype="<i2")
    np.testing.assert_array_equal(ints, [8192, 16384, -8192, -16384])   # interleaved
    np.testing.assert_array_equal(pcm_to_float(float_to_pcm(multi), 2, "S16_LE"), multi)


def test_bad_inputs() -> None:
    assert frame_bytes("S16_LE", 4) == 8 and frame_bytes("S32_LE", 8) == 32
    with pytest.raises(ValueError, match="whole number"):
        pcm_to_float(b"\x00" * 7, 2, "S16_LE")
    with pytest.raises(ValueError, match="unsupported"):
        pcm_to_float(b"", 1, "S24_LE")
    with pytest.raises(ValueError, match="out of range"):
        pcm_to_float(b"\x00" * 8, 2, "S16_LE", select=[2])
    with pytest.raises(ValueError):
        float_to_pcm(np.zeros((1, 2, 3)))
