"""Board profiles: what mica needs to know about a microphone board, with the source of every
number.

A profile is a JSON file in ``calibration/profiles/`` (installed as package data)::

    {"format": "mica-board-profile", "version": 1, "name": "respeaker-4mic-hat",
     "title": "...", "geometry_m": [[x, y, z], ...], "mic_channels": [...],
     "reference_channels": [...], "processed_channels": [...], "nominal_gain_db": [...],
     "capture": {"channels": 4, "fs_hz": 16000, "format": "S32_LE",
                 "alsa_device_hints": ["plughw:CARD=seeed4micvoicec,DEV=0"], ...},
     "usb": {"vendor_id": "0x2886", "product_id": "0x0018"},     # optional
     "sources": {"geometry_m": "...", "mic_channels": "...", "reference_channels": "...",
                 "capture": "...", "nominal_gain_db": "..."}, "notes": "..."}

Row ``k`` of ``geometry_m`` is mic ``k``; ``mic_channels[k]`` is the capture channel that
carries it. ``reference_channels`` are loopback (playback echo) channels for AEC and
``processed_channels`` are streams the board's own DSP made; neither is a microphone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mica.array_dsp.errors import GeometryError, MicaError
from mica.array_dsp.geometry import ArrayGeometry

PROFILE_FORMAT = "mica-board-profile"
REQUIRED_SOURCES = ("geometry_m", "mic_channels", "reference_channels", "capture",
                    "nominal_gain_db")


class ProfileError(MicaError):
    """A board profile is unknown or malformed."""


@dataclass(frozen=True)
class BoardProfile:
    """One microphone board (see the module docstring for the file format)."""

    name: str
    title: str
    geometry: ArrayGeometry
    mic_channels: tuple[int, ...]
    reference_channels: tuple[int, ...]
    processed_channels: tuple[int, ...]
    nominal_gain_db: tuple[float, ...]
    channels: int
    fs_hz: int
    format: str
    alsa_device_hints: tuple[str, ...]
    sources: dict[str, str]
    usb: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    path: str = ""

    @property
    def n_mics(self) -> int:
        return self.geometry.n_channels

    @property
    def aperture_m(self) -> float:
        return self.geometry.aperture_m

    def config_defaults(self) -> dict[str, dict[str, Any]]:
        """The ``[capture]`` and ``[array]`` keys this profile fills (config keys override)."""
        return {
            "capture": {"channels": self.channels, "fs_hz": self.fs_hz, "format": self.format,
                        "alsa_device": self.alsa_device_hints[0] if self.alsa_device_hints
                        else "default"},
            "array": {"geometry_m": self.geometry.positions_m.tolist(),
                      "mic_channels": list(self.mic_channels),
                      "reference_channels": list(self.reference_channels)},
        }

    def summary(self) -> dict[str, Any]:
        """Short description for ``info`` and ``mica boards``."""
        return {"name": self.name, "title": self.title, "mics": self.n_mics,
                "aperture_m": round(self.aperture_m, 4), "channels": self.channels,
                "mic_channels": list(self.mic_channels),
                "reference_channels": list(self.reference_channels),
                "fs_hz": self.fs_hz, "format": self.format}


def _profile_dir() -> Any:
    return resources.files("mica.calibration") / "profiles"


def list_profiles() -> list[str]:
    """Names of the built-in board profiles, sorted."""
    return sorted(p.name[:-5] for p in _profile_dir().iterdir() if p.name.endswith(".json"))


def load_profile(name_or_path: str | Path) -> BoardProfile:
    """A built-in profile by name (``respeaker-4mic-hat``) or a profile JSON file by path.

    Raises:
        ProfileError: unknown name (the message lists the known ones) or a malformed file
            (every problem, with its key).
    """
    text_path = str(name_or_path)
    if text_path.endswith(".json") or "/" in text_path:
        path = Path(text_path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ProfileError(f"{path}: cannot read board profile: {err}") from err
        source = str(path)
    else:
        res = _profile_dir() / f"{text_path}.json"
        if not res.is_file():
            raise ProfileError(f"unknown board {text_path!r} (known: "
                               f"{', '.join(list_profiles())})")
        text = res.read_text(encoding="utf-8")
        source = f"board profile {text_path}"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProfileError(f"{source}: not valid JSON: {err}") from err
    return profile_from_dict(doc, source)


def _int_list(doc: dict, key: str, problems: list[str]) -> tuple[int, ...]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                              and v >= 0 for v in value):
        problems.append(f"{key}: must be a list of channel numbers >= 0, got {value!r}")
        return ()
    return tuple(value)


def profile_from_dict(doc: Any, source: str = "board profile") -> BoardProfile:
    """Check a parsed profile and build the :class:`BoardProfile`; one error lists all
    problems."""
    if not isinstance(doc, dict):
        raise ProfileError(f"{source}: expected a JSON object")
    problems: list[str] = []
    if doc.get("format") != PROFILE_FORMAT or doc.get("version") != 1:
        problems.append(f"format/version: expected {PROFILE_FORMAT!r} version 1, got "
                        f"{doc.get('format')!r} {doc.get('version')!r}")
    try:
        geometry = ArrayGeometry(doc.get("geometry_m"), source=f"{source}: geometry_m")
    except GeometryError as err:
        raise ProfileError(str(err)) from err
    n = geometry.n_channels
    mics = _int_list(doc, "mic_channels", problems)
    refs = _int_list(doc, "reference_channels", problems)
    processed = _int_list(doc, "processed_channels", problems)
    cap = doc.get("capture")
    if not isinstance(cap, dict):
        problems.append("capture: must be an object")
        cap = {}
    channels = cap.get("channels")
    if not isinstance(channels, int) or channels < 1:
        problems.append(f"capture.channels: must be an integer >= 1, got {channels!r}")
        channels = max(n, 1)
    if len(mics) != n:
        problems.append(f"mic_channels: {len(mics)} channel(s) for {n} geometry row(s)")
    used = list(mics) + list(refs) + list(processed)
    if len(set(used)) != len(used):
        problems.append("mic_channels/reference_channels/processed_channels: a channel is "
                        "listed twice")
    if any(c >= channels for c in used):
        problems.append(f"channels: every channel must be < capture.channels = {channels}")
    gains = doc.get("nominal_gain_db", [0.0] * n)
    if (not isinstance(gains, list) or len(gains) != n
            or not all(isinstance(g, (int, float)) and not isinstance(g, bool) for g in gains)):
        problems.append(f"nominal_gain_db: must be {n} numbers (dB)")
        gains = [0.0] * n
    fmt = cap.get("format", "S16_LE")
    if fmt not in ("S16_LE", "S24_3LE", "S32_LE"):
        problems.append(f"capture.format: {fmt!r} is not S16_LE, S24_3LE or S32_LE")
    fs = cap.get("fs_hz", 16000)
    if not isinstance(fs, int) or fs <= 0:
        problems.append(f"capture.fs_hz: must be a positive integer, got {fs!r}")
    hints = cap.get("alsa_device_hints", [])
    sources = doc.get("sources", {})
    if not isinstance(sources, dict):
        problems.append("sources: must be an object")
        sources = {}
    for key in REQUIRED_SOURCES:
        if not isinstance(sources.get(key), str) or not sources.get(key):
            problems.append(f"sources.{key}: say where the number comes from")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        problems.append("name: must be a non-empty string")
    if problems:
        raise ProfileError(f"{source}: {len(problems)} problem(s):\n"
                           + "\n".join(f"  {p}" for p in problems))
    return BoardProfile(name=name, title=str(doc.get("title", name)), geometry=geometry,
                        mic_channels=mics, reference_channels=refs,
                        processed_channels=processed,
                        nominal_gain_db=tuple(float(g) for g in gains), channels=channels,
                        fs_hz=int(fs), format=fmt,
                        alsa_device_hints=tuple(str(h) for h in hints),
                        sources={str(k): str(v) for k, v in sources.items()},
                        usb={str(k): str(v) for k, v in doc.get("usb", {}).items()},
                        notes=str(doc.get("notes", "")), path=source)


def nominal_gains_linear(profile: BoardProfile) -> np.ndarray:
    """``(n_mics,)`` float32 linear nominal gains of a profile."""
    return (10.0 ** (np.asarray(profile.nominal_gain_db) / 20.0)).astype(np.float32)
