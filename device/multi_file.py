"""Offline multi-device alignment: several recordings, each from a device with its own clock.

``mica enhance A.wav B.wav ... OUT.wav`` and ``mica drift A.wav B.wav ...`` treat each file
as one capture device: the first file is the clock reference, the others are resampled onto
it block by block by the same :class:`~mica.device.multi_capture.DeviceAligner` the
daemon's :class:`~mica.device.multi_capture.MultiCapture` runs (GCC-PHAT offset, online
coherence-drift estimate, fixed-point polyphase resampler), so a file pair gives the
output and the estimates the daemon would have given live. Files are taken to start at
about the same time (acquisition searches ``+-max_offset_s``); no rate prior is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mica.array_dsp.drift import LOCKED, DriftEvent, DriftSettings
from mica.array_dsp.errors import AudioFileError
from mica.device.multi_capture import DeviceAligner

PERIOD_FRAMES = 160
"""Block length of the offline alignment (the daemon's default period at 16 kHz)."""


def read_device_files(paths: list[Path]) -> tuple[list[np.ndarray], int]:
    """Read one multichannel file per device: ``([(n_ch_i, n_i) float32], fs_hz)``.

    Raises :class:`AudioFileError` naming the file if one is missing or unreadable, or if
    its sample rate differs from the first file's (devices share one nominal rate).
    """
    from mica.device.enhance_file import read_wav

    signals: list[np.ndarray] = []
    fs_hz = 0
    for i, path in enumerate(paths):
        signal, fs = read_wav(path)
        if i == 0:
            fs_hz = fs
        elif fs != fs_hz:
            raise AudioFileError(
                f"{path}: sample rate {fs} Hz differs from {paths[0]}'s "
                f"{fs_hz} Hz (every device file must have the same "
                "nominal rate)"
            )
        signals.append(signal)
    return signals, fs_hz


def device_names(paths: list[Path]) -> list[str]:
    """A name per file for reports: the file name, or the path where names repeat."""
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return names


@dataclass
class AlignedRecording:
    """What :func:`align_recordings` returns."""

    samples: np.ndarray
    """``(n_channels, n)`` float32, every device on the reference clock, in geometry row
    order; ``n`` is the reference file's length."""
    per_second: list[dict[str, Any]] = field(default_factory=list)
    """One row per second and non-reference device: ``t_s``, ``device``, ``drift_ppm``,
    ``offset_samples`` (device sample index minus reference index), ``lock``, ``locked``."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """Drift events (``acquired``, ``locked``, ``jump``, ``relock``) with ``t_s``."""


RESYNC_EVENTS = ("acquired", "relock")
"""Drift events after which a device sits at a new offset: the beamformer's spatial
statistics, learned on the old alignment, are stale."""


def resync_samples(events: list[dict[str, Any]], fs_hz: int) -> list[int]:
    """Sample indices (at ``fs_hz``, reference clock) of the :data:`RESYNC_EVENTS` in
    :attr:`AlignedRecording.events`: where to :meth:`~mica.array_dsp.enhancer.Enhancer.
    reset_spatial`."""
    return [round(e["t_s"] * fs_hz) for e in events if e["kind"] in RESYNC_EVENTS]


def align_recordings(
    signals: list[np.ndarray],
    names: list[str],
    fs_hz: int,
    settings: DriftSettings | None = None,
    geometry_m: np.ndarray | None = None,
    steer_azimuth_deg: float = 0.0,
    steer_elevation_deg: float = 0.0,
    rows: list[list[int]] | None = None,
    compensate: bool = True,
    period_frames: int = PERIOD_FRAMES,
    on_second: Callable[[dict[str, Any]], None] | None = None,
    look_mask: bool = True,
) -> AlignedRecording:
    """Resample ``signals[1:]`` onto ``signals[0]``'s clock, streaming like the daemon.

    Args:
        signals: per device ``(n_ch_i, n_i)`` float32 at the nominal ``fs_hz``.
        names: per device name (reports, events).
        settings: drift estimation settings (the daemon's defaults if ``None``).
        geometry_m: ``(n_mics, 3)`` positions (rows as ``rows``): with it, the talker in
            the look direction ``steer_azimuth_deg``/``steer_elevation_deg`` keeps its
            physical delays between devices, and the offset is measured on the bins where
            the reference device sees that direction
            (:meth:`~mica.device.multi_capture.DeviceAligner.set_look_direction`).
        rows: geometry rows per device (default: the devices' channels in file order).
        compensate: resample (True) or only estimate (False: the output is the raw input).
        period_frames: block length.
        on_second: called with each ``per_second`` row as it is made.
        look_mask: with ``geometry_m``, measure the offset on the look direction's bins
            (off when the look direction is only a guess, e.g. ``--steer auto``).

    A device file that ends before the reference is continued with zeros.
    """
    if rows is None:
        rows, start = [], 0
        for sig in signals:
            rows.append(list(range(start, start + sig.shape[0])))
            start += sig.shape[0]
    events: list[dict[str, Any]] = []

    def on_event(name: str, event: DriftEvent, lock: str) -> None:
        events.append(
            {
                "t_s": round(event.t_s, 3),
                "device": name,
                "kind": event.kind,
                "drift_ppm": round(event.drift_ppm, 3),
                "previous_ppm": round(event.previous_ppm, 3),
                "offset_samples": round(event.offset_samples, 3),
                "lock": lock,
            }
        )

    aligner = DeviceAligner(
        names, rows, 0, fs_hz, period_frames, settings, compensate, on_event=on_event
    )
    if geometry_m is not None:
        aligner.set_look_direction(
            geometry_m, steer_azimuth_deg, steer_elevation_deg, mask=look_mask
        )
    ref = signals[0]
    n = ref.shape[1]
    n_blocks = math.ceil(n / period_frames)
    out = np.zeros((aligner.n_channels, n_blocks * period_frames), np.float32)
    ref_block = np.zeros((ref.shape[0], period_frames), np.float32)
    pushed = [0] * len(signals)
    result = AlignedRecording(out)
    blocks_per_s = max(1, round(fs_hz / period_frames))
    for i in range(1, len(signals)):
        aligner.start(i, 0.0)
    for b in range(n_blocks):
        lo = b * period_frames
        ref_block.fill(0.0)
        ref_block[:, : min(period_frames, n - lo)] = ref[:, lo : lo + period_frames]
        for i in range(1, len(signals)):
            sig = signals[i]
            while aligner.needs_input(i):
                chunk = np.zeros((sig.shape[0], period_frames), np.float32)
                take = sig[:, pushed[i] : pushed[i] + period_frames]
                chunk[:, : take.shape[1]] = take
                aligner.push(i, chunk)
                pushed[i] += period_frames
        out[:, lo : lo + period_frames] = aligner.align(ref_block)
        if (b + 1) % blocks_per_s == 0:
            t_s = (b + 1) * period_frames / fs_hz
            for i in range(1, len(signals)):
                st = aligner.status(i)
                row = {
                    "t_s": round(t_s, 3),
                    "device": names[i],
                    "drift_ppm": st["drift_ppm"],
                    "offset_samples": st["offset_samples"],
                    "lock": st["lock"],
                    "locked": st["lock"] == LOCKED,
                }
                result.per_second.append(row)
                if on_second is not None:
                    on_second(row)
    result.samples = out[:, :n]
    result.events = events
    return result


def align_device_files(
    paths: list[Path],
    geometry: Any | None = None,
    geometry_path: Path | None = None,
    fs_hz: int | None = None,
    steer_azimuth_deg: float = 0.0,
    steer_elevation_deg: float = 0.0,
    settings: DriftSettings | None = None,
    on_second: Callable[[dict[str, Any]], None] | None = None,
    look_mask: bool = True,
) -> tuple[np.ndarray, int, AlignedRecording]:
    """Read one file per device, bring each to ``fs_hz`` and align them onto the first.

    ``geometry``: the :class:`~mica.array_dsp.geometry.ArrayGeometry` whose rows are the
    files' channels in order (read from ``geometry_path``); with it the talker's delays for
    the look direction are kept between devices and the offset is measured on the talker,
    as the daemon does; without it the offset includes whichever source dominates.
    ``fs_hz``: rate to align at (``None``: the files' own). Returns ``(samples (n_mics, n)
    at fs_hz, the files' rate, the alignment with its per-second estimates)``.

    Raises :class:`AudioFileError` naming the file: missing or unreadable, a rate unlike
    the first file's, or channels that do not add up to the geometry's microphones.
    """
    from mica.device.enhance_file import resample_to

    signals, fs_in_hz = read_device_files(paths)
    counts = [s.shape[0] for s in signals]
    if geometry is not None and sum(counts) != geometry.n_channels:
        parts = " + ".join(f"{p} ({c} ch)" for p, c in zip(paths, counts, strict=True))
        raise AudioFileError(
            f"{parts} = {sum(counts)} channel(s), but geometry "
            f"{geometry_path} has {geometry.n_channels} microphone(s)"
        )
    fs_hz = fs_in_hz if fs_hz is None else fs_hz
    signals = [np.ascontiguousarray(resample_to(s, fs_in_hz, fs_hz), np.float32) for s in signals]
    names = device_names(paths)
    rows, start = [], 0
    for c in counts:
        rows.append(list(range(start, start + c)))
        start += c
    aligned = align_recordings(
        signals,
        names,
        fs_hz,
        settings,
        None if geometry is None else geometry.positions_m,
        steer_azimuth_deg,
        steer_elevation_deg,
        rows,
        on_second=on_second,
        look_mask=look_mask,
    )
    return aligned.samples, fs_in_hz, aligned
