"""Offline enhancement of a multichannel WAV file through the streaming :class:`Enhancer`.

Used by ``mica enhance IN OUT --array GEOM``: reads the file, resamples it to 16 kHz,
streams it block by block through the same chain the service runs, removes the
algorithmic latency (so the output is time-aligned with the input and exactly as long) and
writes a 16 kHz mono PCM_16 WAV.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal
import soundfile as sf

from mica.array_dsp.enhancer import Enhancer
from mica.array_dsp.errors import AudioFileError
from mica.array_dsp.geometry import load_geometry_json

log = logging.getLogger(__name__)

OUTPUT_FS_HZ = 16000
"""Rate the enhancer runs at and the output file is written at (Hz)."""


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a multichannel audio file as ``((n_ch, n_samples) float32, fs_hz)``.

    Raises :class:`AudioFileError` naming the file if it is missing, unreadable, broken or
    empty.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"{path}: audio file not found")
    try:
        data, fs_hz = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as err:
        raise AudioFileError(f"{path}: cannot read audio file: {err}") from err
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: audio file has no samples")
    if not np.isfinite(data).all():
        raise AudioFileError(f"{path}: audio file contains non-finite samples")
    return np.ascontiguousarray(data.T), int(fs_hz)


def resample_to(signal: np.ndarray, fs_in_hz: int, fs_out_hz: int) -> np.ndarray:
    """Polyphase resampling along the last axis (``scipy.signal.resample_poly``), float32.

    ``(..., n)`` -> ``(..., ceil(n * fs_out / fs_in))``; a no-op when the rates agree.
    """
    if fs_in_hz == fs_out_hz:
        return signal
    g = math.gcd(fs_in_hz, fs_out_hz)
    out = scipy.signal.resample_poly(signal, fs_out_hz // g, fs_in_hz // g, axis=-1)
    return out.astype(np.float32)


def enhance_signal(signal: np.ndarray, enhancer: Enhancer) -> np.ndarray:
    """Stream ``(n_ch, n)`` float32 through ``enhancer``; return ``(n,)`` float32 aligned.

    The input is zero-padded by the latency (and to whole blocks); the first
    ``latency_samples`` output samples are dropped, so ``out[n]`` matches ``signal[:, n]``.
    """
    n_ch, n = signal.shape
    hop = enhancer.hop_samples
    latency = enhancer.latency_samples
    n_blocks = -(-(n + latency) // hop)
    padded = np.zeros((n_ch, n_blocks * hop), np.float32)
    padded[:, :n] = signal
    out = np.empty(n_blocks * hop, np.float32)
    for b in range(n_blocks):
        out[b * hop:(b + 1) * hop] = enhancer.process(padded[:, b * hop:(b + 1) * hop])
    return out[latency:latency + n]


def enhance_file(
    in_path: str | Path,
    out_path: str | Path,
    geometry_path: str | Path,
    steer_azimuth_deg: float | None = None,
    steer_elevation_deg: float = 0.0,
    hop_samples: int = 160,
) -> dict[str, Any]:
    """Enhance ``in_path`` (multichannel WAV) into ``out_path`` (16 kHz mono PCM_16 WAV).

    Args:
        in_path: audio file, one channel per row of the geometry, any sample rate.
        out_path: output WAV, same duration as the input, time-aligned with it.
        geometry_path: JSON sidecar with ``geometry_m`` (see ``load_geometry_json``).
        steer_azimuth_deg: look azimuth (degrees); ``None`` means 0 until DOA exists.
        steer_elevation_deg: look elevation (degrees).
        hop_samples: enhancer block length at 16 kHz.

    Returns a summary: ``duration_s``, ``in_fs_hz``, ``out_fs_hz``, ``n_channels``,
    ``latency_samples``, ``latency_s``, ``steer_azimuth_deg``, ``steer_elevation_deg``,
    ``hop_samples``, ``realtime_factor``.

    Raises :class:`GeometryError` for a bad geometry file and :class:`AudioFileError`
    (naming the file(s)) for an unreadable input, a channel count that does not match the
    geometry, or an output that cannot be written.
    """
    in_path, out_path, geometry_path = Path(in_path), Path(out_path), Path(geometry_path)
    geometry = load_geometry_json(geometry_path)
    signal, fs_in_hz = read_wav(in_path)
    if signal.shape[0] != geometry.n_channels:
        raise AudioFileError(
            f"{in_path} has {signal.shape[0]} channel(s) but geometry {geometry_path} has "
            f"{geometry.n_channels} microphone(s)"
        )
    azimuth_deg = 0.0 if steer_azimuth_deg is None else float(steer_azimuth_deg)
    if steer_azimuth_deg is None:
        log.info("no steering azimuth given: using 0 deg")
    n_in = signal.shape[1]
    signal = resample_to(signal, fs_in_hz, OUTPUT_FS_HZ)
    if fs_in_hz != OUTPUT_FS_HZ:
        log.info("resampled %s from %d Hz to %d Hz", in_path, fs_in_hz, OUTPUT_FS_HZ)
    enhancer = Enhancer(
        geometry,
        fs_hz=OUTPUT_FS_HZ,
        hop_samples=hop_samples,
        steer_azimuth_deg=azimuth_deg,
        steer_elevation_deg=steer_elevation_deg,
    )
    enhancer.warmup()
    t0 = time.perf_counter()
    out = enhance_signal(signal, enhancer)
    elapsed_s = time.perf_counter() - t0
    np.clip(out, -1.0, 1.0, out=out)
    try:
        sf.write(str(out_path), out, OUTPUT_FS_HZ, subtype="PCM_16", format="WAV")
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise AudioFileError(f"{out_path}: cannot write output WAV: {err}") from err
    duration_s = n_in / fs_in_hz
    summary: dict[str, Any] = {
        "duration_s": duration_s,
        "in_fs_hz": fs_in_hz,
        "out_fs_hz": OUTPUT_FS_HZ,
        "n_channels": geometry.n_channels,
        "latency_samples": enhancer.latency_samples,
        "latency_s": enhancer.latency_s,
        "steer_azimuth_deg": azimuth_deg,
        "steer_elevation_deg": float(steer_elevation_deg),
        "hop_samples": enhancer.hop_samples,
        "realtime_factor": elapsed_s / duration_s,
    }
    log.info("enhanced %s -> %s: %s", in_path, out_path, summary)
    return summary
