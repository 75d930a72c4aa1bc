"""The calibration file (versioned JSON, see docs/calibration.md) and how it is applied.

A calibration describes one physical board against its profile's geometry: per-mic gain and
delay corrections, measured position offsets, excluded (dead) mics, the capture channel of
each mic when the wiring differs from the profile, device offsets and nominal drift, and when
and how it was measured. Mic ``k`` is row ``k`` of the geometry the daemon was configured
with (the profile's, or ``array.geometry_*``).

The daemon applies it at start: positions get the offsets, excluded mics are dropped from the
geometry and from the captured channels, and a :class:`ChannelCorrector` multiplies each kept
channel by its gain (and delays it, only when some delay is non-zero) before the Enhancer.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mica.array_dsp.errors import MicaError

CALIBRATION_FORMAT = "mica-calibration"
CALIBRATION_VERSION = 1
MAX_GAIN_DB = 40.0
MAX_DELAY_S = 0.05
FRACTIONAL_TAPS = 17
"""Length of the windowed-sinc fractional-delay filter (odd: its centre is a whole sample)."""


class CalibrationFileError(MicaError):
    """A calibration file is unreadable, malformed, or does not fit the array."""


@dataclass(frozen=True)
class DeviceOffset:
    """One capture device of a multi-device array: its start offset and clock drift."""

    name: str = ""
    offset_s: float = 0.0
    drift_ppm: float = 0.0


@dataclass(frozen=True)
class Calibration:
    """A board's calibration (the file's content, checked).

    Attributes:
        n_mics: mics in the geometry this calibration was measured against.
        gain_db: ``(n_mics,)`` correction added to each mic (a mic measured 6 dB quiet: +6).
        delay_s: ``(n_mics,)`` extra delay given to each mic (a mic that hears late: the
            others get delayed; only differences matter).
        position_offset_m: ``(n_mics, 3)`` measured position minus nominal position (m).
        excluded_mics: mics the daemon drops (dead, blocked, broken).
        mic_channels: capture channel of each mic when the wiring differs from the config /
            profile (``None``: keep the configured order).
        devices: offsets and nominal drift of each capture device.
        board: profile name it was measured for (informational), ``created_utc``, ``method``,
            ``recording``, ``notes`` and ``measurements`` (free-form numbers, e.g. the
            channel-order confidence) describe the measurement.
    """

    n_mics: int
    gain_db: tuple[float, ...] = ()
    delay_s: tuple[float, ...] = ()
    position_offset_m: tuple[tuple[float, float, float], ...] = ()
    excluded_mics: tuple[int, ...] = ()
    mic_channels: tuple[int, ...] | None = None
    devices: tuple[DeviceOffset, ...] = ()
    board: str = ""
    created_utc: str = ""
    method: str = ""
    recording: str = ""
    notes: str = ""
    measurements: dict[str, Any] = field(default_factory=dict)
    source: str = "<calibration>"

    def __post_init__(self) -> None:
        n = self.n_mics
        if not self.gain_db:
            object.__setattr__(self, "gain_db", (0.0,) * n)
        if not self.delay_s:
            object.__setattr__(self, "delay_s", (0.0,) * n)
        if not self.position_offset_m:
            object.__setattr__(self, "position_offset_m", ((0.0, 0.0, 0.0),) * n)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (the inverse of :func:`calibration_from_dict`)."""
        doc = {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION,
               "board": self.board, "n_mics": self.n_mics, "created_utc": self.created_utc,
               "method": self.method, "recording": self.recording,
               "gain_db": [round(g, 3) for g in self.gain_db],
               "delay_s": [float(f"{d:.9f}") for d in self.delay_s],
               "position_offset_m": [[round(v, 6) for v in row]
                                     for row in self.position_offset_m],
               "excluded_mics": list(self.excluded_mics),
               "mic_channels": None if self.mic_channels is None else list(self.mic_channels),
               "devices": [asdict(d) for d in self.devices],
               "notes": self.notes, "measurements": self.measurements}
        return doc

    def info(self) -> dict[str, Any]:
        """What ``info`` shows about the calibration in use."""
        return {"file": self.source, "version": CALIBRATION_VERSION, "board": self.board,
                "created_utc": self.created_utc, "method": self.method,
                "gain_db": [round(g, 2) for g in self.gain_db],
                "delay_us": [round(d * 1e6, 2) for d in self.delay_s],
                "excluded_mics": list(self.excluded_mics),
                "mic_channels": None if self.mic_channels is None else list(self.mic_channels),
                "position_offsets": any(any(v != 0.0 for v in row)
                                        for row in self.position_offset_m),
                "devices": [asdict(d) for d in self.devices]}


def _numbers(value: Any, n: int, key: str, limit: float, problems: list[str]) -> tuple:
    if value is None:
        return (0.0,) * n
    if (not isinstance(value, list) or len(value) != n
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v) for v in value)):
        problems.append(f"{key}: must be {n} finite numbers, got {value!r}")
        return (0.0,) * n
    bad = [i for i, v in enumerate(value) if abs(v) > limit]
    if bad:
        problems.append(f"{key}: mic(s) {bad} beyond +-{limit}")
    return tuple(float(v) for v in value)


def calibration_from_dict(doc: Any, source: str = "<calibration>") -> Calibration:
    """Check a parsed calibration document; one error lists every problem with its key."""
    if not isinstance(doc, dict):
        raise CalibrationFileError(f"{source}: expected a JSON object")
    problems: list[str] = []
    if doc.get("format") != CALIBRATION_FORMAT:
        problems.append(f"format: expected {CALIBRATION_FORMAT!r}, got {doc.get('format')!r}")
    version = doc.get("version")
    if version != CALIBRATION_VERSION:
        problems.append(f"version: this mica reads version {CALIBRATION_VERSION}, got "
                        f"{version!r}")
    n = doc.get("n_mics")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise CalibrationFileError(f"{source}: n_mics: must be an integer >= 1, got {n!r}")
    gains = _numbers(doc.get("gain_db"), n, "gain_db", MAX_GAIN_DB, problems)
    delays = _numbers(doc.get("delay_s"), n, "delay_s", MAX_DELAY_S, problems)
    offsets_raw = doc.get("position_offset_m")
    offsets: tuple = ((0.0, 0.0, 0.0),) * n
    if offsets_raw is not None:
        try:
            arr = np.array(offsets_raw, dtype=np.float64)
            if arr.shape != (n, 3) or not np.all(np.isfinite(arr)):
                raise ValueError
            if np.abs(arr).max(initial=0.0) > 0.5:
                problems.append("position_offset_m: an offset beyond 0.5 m (units are metres)")
            offsets = tuple(tuple(float(v) for v in row) for row in arr)
        except (TypeError, ValueError):
            problems.append(f"position_offset_m: must be {n} rows of [dx, dy, dz] in metres")
    excluded = doc.get("excluded_mics", [])
    if (not isinstance(excluded, list)
            or not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < n
                       for k in excluded)):
        problems.append(f"excluded_mics: must be mic numbers in [0, {n - 1}], got {excluded!r}")
        excluded = []
    elif len(set(excluded)) >= n:
        problems.append("excluded_mics: every mic is excluded")
    mic_channels = doc.get("mic_channels")
    if mic_channels is not None:
        if (not isinstance(mic_channels, list) or len(mic_channels) != n
                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                           for c in mic_channels)
                or len(set(mic_channels)) != n):
            problems.append(f"mic_channels: must be {n} distinct channel numbers or null, got "
                            f"{mic_channels!r}")
            mic_channels = None
        else:
            mic_channels = tuple(mic_channels)
    devices = []
    for i, d in enumerate(doc.get("devices", []) or []):
        if not isinstance(d, dict):
            problems.append(f"devices[{i}]: must be an object")
            continue
        try:
            devices.append(DeviceOffset(str(d.get("name", "")), float(d.get("offset_s", 0.0)),
                                        float(d.get("drift_ppm", 0.0))))
        except (TypeError, ValueError):
            problems.append(f"devices[{i}]: offset_s and drift_ppm must be numbers")
    measurements = doc.get("measurements", {})
    if not isinstance(measurements, dict):
        problems.append("measurements: must be an object")
        measurements = {}
    if problems:
        raise CalibrationFileError(f"{source}: {len(problems)} problem(s):\n"
                                   + "\n".join(f"  {p}" for p in problems))
    return Calibration(n_mics=n, gain_db=gains, delay_s=delays, position_offset_m=offsets,
                       excluded_mics=tuple(sorted(set(excluded))), mic_channels=mic_channels,
                       devices=tuple(devices), board=str(doc.get("board") or ""),
                       created_utc=str(doc.get("created_utc", "")),
                       method=str(doc.get("method", "")),
                       recording=str(doc.get("recording", "")),
                       notes=str(doc.get("notes", "")), measurements=measurements,
                       source=source)


def nominal_drift_by_device(cal: Calibration | None, names: list[str]) -> dict[str, float]:
    """The calibrated drift (ppm) of each capture device in ``names`` (``[[capture.devices]]``
    ALSA names): matched by name, or by position when no name matches and the counts agree
    (a calibration measured from files names the files). The reference device's entry is
    harmless: the reference has no drift estimate."""
    if cal is None or not cal.devices:
        return {}
    by_name = {d.name: d.drift_ppm for d in cal.devices if d.name in names}
    if by_name:
        return by_name
    if len(cal.devices) == len(names):
        return {n: d.drift_ppm for n, d in zip(names, cal.devices, strict=True)}
    return {}


def load_calibration(path: str | Path) -> Calibration:
    """Read and check a calibration file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CalibrationFileError(f"{path}: calibration file not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise CalibrationFileError(f"{path}: cannot read calibration file: {err}") from err
    except json.JSONDecodeError as err:
        raise CalibrationFileError(f"{path}: not valid JSON: {err}") from err
    return calibration_from_dict(doc, str(path))


def save_calibration(cal: Calibration, path: str | Path) -> Path:
    """Write ``cal`` as JSON (atomically: a temp file renamed over ``path``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(cal.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- applying


@dataclass(frozen=True)
class CalibratedArray:
    """The array after a calibration: what the daemon captures and beamforms.

    Attributes:
        positions_m: ``(n_kept, 3)`` positions with offsets, excluded mics dropped.
        mic_channels: capture channel of each kept mic.
        gains: ``(n_kept,)`` float32 linear gains (nominal x calibration).
        delays_s: ``(n_kept,)`` delays to apply.
        kept_mics: which of the original mics remain.
    """

    positions_m: np.ndarray
    mic_channels: list[int]
    gains: np.ndarray
    delays_s: np.ndarray
    kept_mics: list[int]


def apply_calibration(positions_m: np.ndarray, mic_channels: list[int] | None,
                      cal: Calibration | None,
                      nominal_gain_db: tuple[float, ...] | None = None) -> CalibratedArray:
    """Apply ``cal`` to an array: offsets, channel map, exclusions, gains and delays.

    ``mic_channels`` is the configured capture channel of each mic (``None`` or empty: mic
    ``k`` on channel ``k``).
    """
    p = np.asarray(positions_m, dtype=np.float64)
    n = p.shape[0]
    chans = list(mic_channels) if mic_channels else list(range(n))
    gain_db = np.asarray(nominal_gain_db if nominal_gain_db else (0.0,) * n, dtype=np.float64)
    if gain_db.shape != (n,):
        raise CalibrationFileError(f"nominal gains: {gain_db.size} value(s) for {n} mics")
    if cal is None:
        return CalibratedArray(p, chans, (10 ** (gain_db / 20)).astype(np.float32),
                               np.zeros(n), list(range(n)))
    if cal.n_mics != n:
        raise CalibrationFileError(f"{cal.source}: measured for {cal.n_mics} mics, the "
                                   f"configured array has {n}")
    if cal.mic_channels is not None:
        chans = list(cal.mic_channels)
    keep = [k for k in range(n) if k not in set(cal.excluded_mics)]
    pos = p + np.asarray(cal.position_offset_m, dtype=np.float64)
    total_db = gain_db + np.asarray(cal.gain_db)
    return CalibratedArray(pos[keep], [chans[k] for k in keep],
                           (10 ** (total_db[keep] / 20)).astype(np.float32),
                           np.asarray(cal.delay_s, dtype=np.float64)[keep], keep)


def fractional_delay_taps(frac: float, taps: int = FRACTIONAL_TAPS) -> np.ndarray:
    """Hann-windowed sinc that delays by ``(taps - 1) / 2 + frac`` samples (``0 <= frac < 1``)."""
    centre = (taps - 1) / 2 + frac
    n = np.arange(taps)
    h = np.sinc(n - centre) * (0.5 + 0.5 * np.cos(2 * np.pi * (n - centre) / (taps + 1)))
    return h / h.sum()


class ChannelCorrector:
    """Per-channel gain and delay on ``(n_ch, n)`` float32 blocks, streaming.

    Gains only (every delay zero): one multiply, no latency. With delays: channel ``k`` is
    delayed by ``D - min(D)`` plus a common ``(taps - 1) / 2`` samples (windowed-sinc
    fractional part), so relative delays are exact to the filter's accuracy.
    """

    def __init__(self, gains: np.ndarray, delays_s: np.ndarray | None = None,
                 fs_hz: float = 16000.0, taps: int = FRACTIONAL_TAPS) -> None:
        self.gains = np.asarray(gains, dtype=np.float32).reshape(-1, 1)
        n = self.gains.shape[0]
        d = np.zeros(n) if delays_s is None else np.asarray(delays_s, dtype=np.float64)
        d_samples = (d - d.min()) * fs_hz
        self.has_delay = bool(np.any(np.abs(d_samples) > 1e-6))
        self.int_delay = np.floor(d_samples).astype(np.int64)
        frac = d_samples - self.int_delay
        self.filters = np.stack([fractional_delay_taps(f, taps) for f in frac])
        self.taps = taps
        self.max_int = int(self.int_delay.max(initial=0))
        self.history = np.zeros((n, taps - 1 + self.max_int), dtype=np.float64)
        self.latency_samples = (taps - 1) // 2 if self.has_delay else 0

    @property
    def is_identity(self) -> bool:
        return not self.has_delay and bool(np.all(self.gains == 1.0))

    def process(self, block: np.ndarray) -> np.ndarray:
        """Corrected copy of ``block`` (``(n_ch, n)``), float32."""
        if not self.has_delay:
            return (block * self.gains).astype(np.float32, copy=False)
        n = block.shape[1]
        buf = np.concatenate([self.history, block.astype(np.float64)], axis=1)
        out = np.empty(block.shape, dtype=np.float32)
        for k in range(block.shape[0]):
            full = np.convolve(buf[k], self.filters[k], mode="valid")
            start = self.max_int - int(self.int_delay[k])
            out[k] = full[start:start + n] * self.gains[k, 0]
        self.history = buf[:, buf.shape[1] - self.history.shape[1]:]
        return out


def correct_reference(x: np.ndarray, gains: np.ndarray, delays_s: np.ndarray,
                      fs_hz: float, taps: int = FRACTIONAL_TAPS) -> np.ndarray:
    """Whole-signal numpy reference of :class:`ChannelCorrector` (for the tests)."""
    d_samples = (np.asarray(delays_s) - np.min(delays_s)) * fs_hz
    has_delay = bool(np.any(np.abs(d_samples) > 1e-6))
    out = np.empty(x.shape, dtype=np.float64)
    for k in range(x.shape[0]):
        if not has_delay:
            out[k] = x[k] * gains[k]
            continue
        di = int(np.floor(d_samples[k]))
        h = np.concatenate([np.zeros(di), fractional_delay_taps(d_samples[k] - di, taps)])
        out[k] = np.convolve(x[k], h)[: x.shape[1]] * gains[k]
    return out.astype(np.float32)
