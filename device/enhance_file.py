"""Offline enhancement of a multichannel WAV file through the streaming :class:`Enhancer`.

Used by ``mica enhance IN OUT --array GEOM``: reads the file, resamples it to 16 kHz,
streams it block by block through the same chain the service runs, removes the
algorithmic latency (so the output is time-aligned with the input and exactly as long) and
writes a 16 kHz mono PCM_16 WAV. Optionally writes a JSON report with, per second, the DOA
estimate, the speech presence and the microphones in use.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal
import soundfile as sf

from mica.array_dsp.echo import EchoControl
from mica.array_dsp.enhancer import BEAMFORMERS, Enhancer
from mica.array_dsp.errors import AudioFileError, ConfigError
from mica.array_dsp.geometry import load_geometry_json
from mica.models.postfilter import make_postfilter

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


def enhance_signal(
    signal: np.ndarray,
    enhancer: Enhancer,
    on_block: Callable[[int, Enhancer], None] | None = None,
    reference: np.ndarray | None = None,
    reset_spatial_at: Sequence[int] = (),
) -> np.ndarray:
    """Stream ``(n_ch, n)`` float32 through ``enhancer``; return ``(n,)`` float32 aligned.

    The input is zero-padded by the latency (and to whole blocks); the first
    ``latency_samples`` output samples are dropped, so ``out[n]`` matches ``signal[:, n]``.
    ``on_block(b, enhancer)`` is called after block ``b`` (e.g. to read its DOA).
    ``reference``: ``(n_ref, n)`` float32 playback loopback for the enhancer's echo stage.
    ``reset_spatial_at``: input sample indices where the array's geometry changed (a
    device's offset (re-)acquired, :func:`~mica.device.multi_file.resync_samples`): the
    enhancer's spatial statistics are reset (:meth:`Enhancer.reset_spatial`) before the
    block holding each.
    """
    n_ch, n = signal.shape
    hop = enhancer.hop_samples
    latency = enhancer.latency_samples
    n_blocks = -(-(n + latency) // hop)
    padded = np.zeros((n_ch, n_blocks * hop), np.float32)
    padded[:, :n] = signal
    ref = None
    if reference is not None:
        ref = np.zeros((reference.shape[0], n_blocks * hop), np.float32)
        ref[:, :n] = reference
    out = np.empty(n_blocks * hop, np.float32)
    reset_blocks = {int(s) // hop for s in reset_spatial_at}
    for b in range(n_blocks):
        sl = slice(b * hop, (b + 1) * hop)
        if b in reset_blocks:
            enhancer.reset_spatial()
        out[sl] = enhancer.process(padded[:, sl], reference=None if ref is None else ref[:, sl])
        if on_block is not None:
            on_block(b, enhancer)
    return out[latency:latency + n]


def resolve_steer(
    steer: str | float | None, zones: Mapping[str, tuple[float, float]] | None = None
) -> tuple[bool, float | None, float | None, str]:
    """Parse a steering choice: ``auto``, an azimuth in degrees, or ``zone:NAME``.

    Returns ``(auto, azimuth_deg, elevation_deg, label)``; ``azimuth``/``elevation`` are
    ``None`` where the choice does not fix them. ``zones`` maps names to ``(azimuth_deg,
    elevation_deg)``. Raises :class:`ConfigError` for an unknown zone or a malformed value.
    """
    if steer is None:
        return False, None, None, "fixed"
    if isinstance(steer, (int, float)) and not isinstance(steer, bool):
        return False, float(steer), None, f"{float(steer):g}"
    text = str(steer).strip()
    if text == "auto":
        return True, None, None, "auto"
    if text.startswith("zone:"):
        name = text[5:]
        if not zones or name not in zones:
            known = ", ".join(sorted(zones or {})) or "none configured"
            raise ConfigError([f"steer: unknown zone {name!r} (zones: {known})"])
        az, el = zones[name]
        return False, float(az), float(el), text
    try:
        az = float(text)
    except ValueError as err:
        raise ConfigError([f"steer: expected auto, an azimuth in degrees or zone:NAME, "
                           f"got {text!r}"]) from err
    if not math.isfinite(az):
        raise ConfigError([f"steer: azimuth must be finite, got {text!r}"])
    return False, az, None, f"{az:g}"


class BlockReport:
    """Collects per-block DOA, speech presence and channels; summarises them per second."""

    def __init__(self, fs_hz: int, hop_samples: int, latency_samples: int) -> None:
        self._blocks_per_s = max(1, round(fs_hz / hop_samples))
        self._latency_blocks = latency_samples // hop_samples
        self.rows: list[tuple[float, float, bool, tuple[int, ...], float]] = []

    def __call__(self, b: int, enhancer: Enhancer) -> None:
        self.rows.append((enhancer.doa_azimuth_deg, enhancer.speech_probability,
                          enhancer.speech_active, enhancer.active_channels,
                          enhancer.steer_azimuth_deg))

    def per_second(self, duration_s: float) -> list[dict[str, Any]]:
        """One dict per started second of input: ``t_s``, ``doa_azimuth_deg`` (last tracked
        value in that second, ``None`` if none yet), ``speech_probability`` (mean),
        ``speech_active_fraction``, ``steer_azimuth_deg``, ``active_channels``."""
        out = []
        n_s = max(1, math.ceil(duration_s))
        for sec in range(n_s):
            lo = sec * self._blocks_per_s
            rows = self.rows[lo:lo + self._blocks_per_s]
            if not rows:
                break
            doa = rows[-1][0]
            out.append({
                "t_s": float(sec),
                "doa_azimuth_deg": None if math.isnan(doa) else round(doa, 2),
                "speech_probability": round(float(np.mean([r[1] for r in rows])), 4),
                "speech_active_fraction": round(float(np.mean([r[2] for r in rows])), 4),
                "steer_azimuth_deg": round(rows[-1][4], 2),
                "active_channels": list(rows[-1][3]),
            })
        return out


def split_reference_channels(signal: np.ndarray, reference_channels: list[int] | None,
                             path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(microphones, reference or None)`` of a ``(n_ch, n)`` file; raises
    :class:`AudioFileError` naming the file for a channel it does not have."""
    if not reference_channels:
        return signal, None
    bad = [c for c in reference_channels if not 0 <= c < signal.shape[0]]
    if bad or len(set(reference_channels)) != len(reference_channels):
        raise AudioFileError(f"{path}: reference channels {list(reference_channels)} must be "
                             f"distinct channels of its {signal.shape[0]}")
    mics = [c for c in range(signal.shape[0]) if c not in reference_channels]
    return (np.ascontiguousarray(signal[mics]),
            np.ascontiguousarray(signal[list(reference_channels)]))


def enhance_file(
    in_path: str | Path | list[str | Path],
    out_path: str | Path,
    geometry_path: str | Path,
    steer_azimuth_deg: float | None = None,
    steer_elevation_deg: float = 0.0,
    hop_samples: int = 160,
    denoiser: str = "off",
    beamformer: str = "das",
    steer: str | float | None = None,
    zones: Mapping[str, tuple[float, float]] | None = None,
    report_path: str | Path | None = None,
    reference_channels: list[int] | None = None,
) -> dict[str, Any]:
    """Enhance ``in_path`` (multichannel WAV) into ``out_path`` (16 kHz mono PCM_16 WAV).

    Args:
        in_path: audio file, one channel per row of the geometry, any sample rate; or a
            list of files, one per capture device with its own clock (channels in
            geometry row order: the first file's, then the next's; one rate for all):
            each is aligned onto the first one's clock as the daemon does
            (:func:`~mica.device.multi_file.align_device_files`), and the report gets each
            device's drift estimate per second.
        out_path: output WAV, same duration as the input, time-aligned with it.
        geometry_path: JSON sidecar with ``geometry_m`` (see ``load_geometry_json``).
        steer_azimuth_deg: look azimuth (degrees); ``None`` means 0 until DOA exists.
        steer_elevation_deg: look elevation (degrees).
        hop_samples: enhancer block length at 16 kHz.
        denoiser: post-filter on the beam output: ``off``, ``mmse`` (statistical) or
            ``model`` (the learned denoiser shipped in ``mica.models``).
        beamformer: one of ``BEAMFORMERS`` (``das``, ``superdirective``, ``mvdr``).
        steer: ``"auto"`` (follow the tracked talker), an azimuth, or ``"zone:NAME"``
            (a name in ``zones``); overrides ``steer_azimuth_deg`` when given.
        zones: named look directions, ``{name: (azimuth_deg, elevation_deg)}``.
        report_path: where to write the JSON report (``None``: no report).
        reference_channels: channels of the (single) input that carry the playback
            loopback: they feed the echo canceller (per microphone, before the beamformer,
            with residual-echo suppression) and the other channels are the microphones.

    Returns a summary: ``duration_s``, ``in_fs_hz``, ``out_fs_hz``, ``n_channels``,
    ``latency_samples``, ``latency_s``, ``steer_azimuth_deg`` (the final look direction),
    ``steer_elevation_deg``, ``hop_samples``, ``realtime_factor``, ``beamformer``, ``steer``,
    ``doa_azimuth_deg`` (last tracked DOA or ``None``), ``dead_channels``.

    Raises :class:`GeometryError` for a bad geometry file, :class:`ConfigError` for an
    unknown beamformer or zone, and :class:`AudioFileError` (naming the file(s)) for an
    unreadable input, a channel count that does not match the geometry, or an output or
    report that cannot be written.
    """
    if beamformer not in BEAMFORMERS:
        raise ConfigError([f"beamformer: must be one of {list(BEAMFORMERS)}, "
                           f"got {beamformer!r}"])
    auto, zone_az, zone_el, steer_label = resolve_steer(steer, zones)
    if zone_az is not None:
        steer_azimuth_deg = zone_az
    if zone_el is not None:
        steer_elevation_deg = zone_el
    in_paths = ([Path(p) for p in in_path] if isinstance(in_path, (list, tuple))
                else [Path(in_path)])
    in_path, out_path, geometry_path = in_paths[0], Path(out_path), Path(geometry_path)
    geometry = load_geometry_json(geometry_path)
    azimuth_deg = 0.0 if steer_azimuth_deg is None else float(steer_azimuth_deg)
    if steer_azimuth_deg is None and not auto:
        log.info("no steering azimuth given: using 0 deg")
    drift = None
    reference = None
    if len(in_paths) > 1 and reference_channels:
        raise AudioFileError("reference channels: give them with one input file, not "
                             f"{len(in_paths)}")
    if len(in_paths) > 1:  # one file per device, each with its own clock
        from mica.device.multi_file import align_device_files

        signal, fs_in_hz, drift = align_device_files(
            in_paths, geometry, geometry_path, OUTPUT_FS_HZ, azimuth_deg, steer_elevation_deg,
            look_mask=not auto)
        n_in = round(signal.shape[1] * fs_in_hz / OUTPUT_FS_HZ)
    else:
        signal, fs_in_hz = read_wav(in_path)
        signal, reference = split_reference_channels(signal, reference_channels, in_path)
        if signal.shape[0] != geometry.n_channels:
            besides = (f" besides its {reference.shape[0]} reference channel(s)"
                       if reference is not None else "")
            raise AudioFileError(
                f"{in_path} has {signal.shape[0]} channel(s){besides} but geometry "
                f"{geometry_path} has {geometry.n_channels} microphone(s)"
            )
        n_in = signal.shape[1]
        signal = resample_to(signal, fs_in_hz, OUTPUT_FS_HZ)
        if reference is not None:
            reference = resample_to(reference, fs_in_hz, OUTPUT_FS_HZ)
        if fs_in_hz != OUTPUT_FS_HZ:
            log.info("resampled %s from %d Hz to %d Hz", in_path, fs_in_hz, OUTPUT_FS_HZ)
    enhancer = Enhancer(
        geometry,
        fs_hz=OUTPUT_FS_HZ,
        hop_samples=hop_samples,
        steer_azimuth_deg=azimuth_deg,
        steer_elevation_deg=steer_elevation_deg,
        beamformer=beamformer,
        auto_steer=auto,
        track_doa=True,
        postfilter=make_postfilter(denoiser, hop_samples + 1, n_mics=geometry.n_channels),
        echo=None if reference is None else EchoControl(
            geometry.n_channels, reference.shape[0], hop_samples, OUTPUT_FS_HZ),
    )
    enhancer.warmup()
    report = BlockReport(OUTPUT_FS_HZ, enhancer.hop_samples, enhancer.latency_samples)
    t0 = time.perf_counter()
    out = enhance_signal(signal, enhancer, report, reference)
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
        "steer_azimuth_deg": enhancer.steer_azimuth_deg,
        "steer_elevation_deg": float(steer_elevation_deg),
        "hop_samples": enhancer.hop_samples,
        "realtime_factor": elapsed_s / duration_s,
        "denoiser": denoiser,
        "denoiser_version": getattr(enhancer.postfilter, "version", None),
        "beamformer": beamformer,
        "steer": steer_label,
        "doa_azimuth_deg": (None if math.isnan(enhancer.doa_azimuth_deg)
                            else round(enhancer.doa_azimuth_deg, 2)),
        "dead_channels": list(enhancer.dead_channels),
        "echo": None if enhancer.echo is None else enhancer.echo.status(),
    }
    if report_path is not None:
        report_path = Path(report_path)
        doc = {"input": str(in_path), "output": str(out_path), "summary": summary,
               "per_second": report.per_second(duration_s)}
        if drift is not None:  # per second: each device's drift estimate
            doc["inputs"] = [str(p) for p in in_paths]
            doc["drift_events"] = drift.events
            for row in doc["per_second"]:
                row["drift"] = {r["device"]: {k: r[k] for k in ("drift_ppm",
                                "offset_samples", "lock", "locked")}
                                for r in drift.per_second if r["t_s"] == row["t_s"] + 1.0}
        try:
            report_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            raise AudioFileError(f"{report_path}: cannot write report: {err}") from err
        summary["report"] = str(report_path)
    log.info("enhanced %s -> %s: %s", in_path, out_path, summary)
    return summary
