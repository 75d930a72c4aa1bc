"""Integer PCM bytes <-> float32 blocks: the only place mica touches integer samples.

Interleaved little-endian PCM (``S16_LE``, ``S24_3LE`` — packed 3-byte samples, as USB arrays
and I2S codecs deliver them — or ``S32_LE``) decodes to ``(n_ch, n)`` float32 by dividing by
``2**15`` / ``2**23`` / ``2**31``, so full scale maps to [-1, 1). Encoding multiplies back,
rounds to nearest and clips to the integer range (NaN encodes as 0), so
``pcm_to_float(float_to_pcm(x))`` returns ``x`` exactly when ``x`` is already on the integer
grid and inside [-1, 1).
"""

from __future__ import annotations

import numpy as np

#: ALSA format name -> (numpy dtype of one sample, bytes per sample, full-scale exponent).
FORMATS: dict[str, tuple[str, int, int]] = {
    "S16_LE": ("<i2", 2, 15),
    "S24_3LE": ("<i4", 3, 23),  # packed: widened to int32 on decode, narrowed on encode
    "S32_LE": ("<i4", 4, 31),
}


def _unpack_s24_3le(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Packed little-endian 24-bit samples -> sign-extended int32 ``(n_samples,)``."""
    b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
    ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    return (ints << 8) >> 8  # arithmetic shift restores the sign of bit 23


def _pack_s24_3le(ints: np.ndarray) -> bytes:
    """int32 samples in the 24-bit range -> packed little-endian 3-byte samples."""
    return ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()


def _format(fmt: str) -> tuple[str, int, int]:
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unsupported PCM format {fmt!r}; use one of {sorted(FORMATS)}") from None


def frame_bytes(fmt: str, n_channels: int) -> int:
    """Bytes of one interleaved frame of ``n_channels`` samples in ``fmt``."""
    return _format(fmt)[1] * n_channels


def pcm_to_float(data: bytes | bytearray | memoryview, n_channels: int, fmt: str,
                 out: np.ndarray | None = None,
                 select: list[int] | None = None) -> np.ndarray:
    """Decode interleaved PCM into a ``(n_out_ch, n_frames)`` float32 array in [-1, 1].

    Args:
        data: whole frames of interleaved samples (``n_channels`` per frame).
        n_channels: channels interleaved in ``data``.
        fmt: ``"S16_LE"``, ``"S24_3LE"`` or ``"S32_LE"``.
        out: optional preallocated C-contiguous float32 ``(n_out_ch, n_frames)`` array to
            fill (no other array is allocated then); a new one is made when ``None``.
        select: channels of ``data`` to keep, in this order (``None``: all, in order).

    Returns:
        ``out`` (or the new array).

    Raises:
        ValueError: unknown format, a partial frame, a channel out of range or an ``out``
            of the wrong shape or dtype.
    """
    dtype, width, bits = _format(fmt)
    fb = width * n_channels
    if len(data) % fb:
        raise ValueError(f"{len(data)} bytes is not a whole number of {fb}-byte frames")
    flat = _unpack_s24_3le(data) if width == 3 else np.frombuffer(data, dtype=dtype)
    ints = flat.reshape(-1, n_channels)
    if select is not None:
        bad = [c for c in select if not 0 <= c < n_channels]
        if bad:
            raise ValueError(f"channels {bad} out of range for {n_channels}-channel data")
        ints = ints[:, select]
    shape = (ints.shape[1], ints.shape[0])
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
    # Cast then scale by a power of two: exact for S16, float32-rounded for S32, no temporary.
    np.copyto(out, ints.T, casting="unsafe")
    out *= np.float32(2.0 ** -bits)
    return out


def float_to_pcm(samples: np.ndarray, fmt: str = "S16_LE") -> bytes:
    """Encode float samples as interleaved little-endian PCM bytes, clipping to full scale.

    Args:
        samples: ``(n,)`` mono or ``(n_ch, n)`` multichannel, nominally in [-1, 1].
        fmt: ``"S16_LE"`` (the MQTT audio format), ``"S24_3LE"`` or ``"S32_LE"``.

    Returns:
        ``n * n_ch * bytes_per_sample`` bytes, frame-interleaved. Values beyond full scale
        clip to the largest/smallest integer; NaN becomes 0.
    """
    dtype, _, bits = _format(fmt)
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[np.newaxis, :]
    elif x.ndim != 2:
        raise ValueError(f"samples must be (n,) or (n_ch, n), got shape {x.shape}")
    scaled = np.nan_to_num(x.T.astype(np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    scaled *= 2.0 ** bits
    np.rint(scaled, out=scaled)
    np.clip(scaled, -(2.0 ** bits), 2.0 ** bits - 1, out=scaled)
    if fmt == "S24_3LE":
        return _pack_s24_3le(scaled.astype(np.int32).reshape(-1))
    return np.ascontiguousarray(scaled.astype(dtype)).tobytes()


def float_to_s16le(samples: np.ndarray) -> bytes:
    """Mono (or multichannel) float32 -> s16le bytes for the MQTT audio topic (clipped)."""
    return float_to_pcm(samples, "S16_LE")
