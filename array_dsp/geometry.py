"""Microphone array geometry: positions in metres and the JSON sidecar loader.

Positions are ``(n_ch, 3)`` float64 in metres, row ``m`` is channel ``m``, in the frame
the steering directions use (azimuth counter-clockwise from +x, elevation up from the
x-y plane). The sidecar format is the corpus one (``corpus/multichannel/*.json``): a JSON
object with ``geometry_m`` (list of ``[x, y, z]``) and optionally ``sample_rate_hz`` or
``fs_hz``; other keys are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mica.array_dsp.errors import GeometryError

MIN_SPACING_M = 1e-6
"""Two microphones closer than this are taken to be the same position (a copy-paste typo)."""


@dataclass(frozen=True)
class ArrayGeometry:
    """Validated microphone positions.

    Attributes:
        positions_m: ``(n_ch, 3)`` float64, read-only copy, metres.
        fs_hz: sample rate the geometry was declared with, if any (Hz).
        source: where it came from (a file path or a short label), used in error messages.

    Raises :class:`GeometryError` (naming ``source``) if the positions are not a finite
    ``(n_ch >= 1, 3)`` array or two microphones coincide.
    """

    positions_m: np.ndarray
    fs_hz: float | None = None
    source: str = "<geometry>"

    def __post_init__(self) -> None:
        positions = _validated_positions(self.positions_m, self.source)
        object.__setattr__(self, "positions_m", positions)
        if self.fs_hz is not None:
            fs = self.fs_hz
            if isinstance(fs, bool) or not isinstance(fs, (int, float)) or not fs > 0:
                raise GeometryError(f"{self.source}: sample rate must be > 0 Hz, got {fs!r}")
            object.__setattr__(self, "fs_hz", float(fs))

    @property
    def n_channels(self) -> int:
        """Number of microphones ``n_ch``."""
        return int(self.positions_m.shape[0])

    @property
    def centroid_m(self) -> np.ndarray:
        """``(3,)`` mean microphone position (the far-field delay reference), metres."""
        return self.positions_m.mean(axis=0)

    @property
    def aperture_m(self) -> float:
        """Largest distance between two microphones (0 for one microphone), metres."""
        diff = self.positions_m[:, None, :] - self.positions_m[None, :, :]
        return float(np.sqrt((diff**2).sum(axis=-1)).max())

    @property
    def is_planar(self) -> bool:
        """True when every microphone has the same z (then up/down is ambiguous)."""
        z = self.positions_m[:, 2]
        return bool(np.ptp(z) < MIN_SPACING_M)


def _validated_positions(value: object, source: str) -> np.ndarray:
    """``value`` as a read-only ``(n_ch, 3)`` float64 array, or :class:`GeometryError`."""
    try:
        positions = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise GeometryError(f"{source}: positions are not a numeric (n_ch, 3) array: {err}") \
            from err
    if positions.ndim != 2 or positions.shape[1] != 3 or positions.shape[0] < 1:
        raise GeometryError(
            f"{source}: positions must have shape (n_ch, 3) with n_ch >= 1, "
            f"got shape {positions.shape}"
        )
    bad = ~np.isfinite(positions)
    if bad.any():
        rows = sorted({int(r) for r in np.nonzero(bad)[0]})
        raise GeometryError(f"{source}: non-finite (NaN/inf) position in row(s) {rows}")
    diff = positions[:, None, :] - positions[None, :, :]
    dist = np.sqrt((diff**2).sum(axis=-1))
    dist[np.tril_indices(positions.shape[0])] = np.inf
    dup = np.argwhere(dist < MIN_SPACING_M)
    if dup.size:
        pairs = ", ".join(f"{int(a)} and {int(b)}" for a, b in dup)
        raise GeometryError(f"{source}: duplicate microphone positions: rows {pairs}")
    positions.setflags(write=False)
    return positions


def geometry_from_list(
    rows: Sequence[Sequence[float]] | np.ndarray,
    fs_hz: float | None = None,
    source: str = "<list>",
) -> ArrayGeometry:
    """Build an :class:`ArrayGeometry` from ``n_ch`` rows of ``[x, y, z]`` metres."""
    return ArrayGeometry(positions_m=rows, fs_hz=fs_hz, source=source)  # type: ignore[arg-type]


def load_geometry_json(path: str | Path) -> ArrayGeometry:
    """Read a geometry sidecar (``{"geometry_m": [[x, y, z], ...], "sample_rate_hz": ...}``).

    Every failure (missing or unreadable file, bad JSON, not an object, missing
    ``geometry_m``, wrong shape, non-numeric, NaN, duplicate positions, bad rate) raises
    :class:`GeometryError` whose message starts with the file path.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise GeometryError(f"{path}: geometry file not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise GeometryError(f"{path}: cannot read geometry file: {err}") from err
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise GeometryError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise GeometryError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    if "geometry_m" not in doc:
        raise GeometryError(f"{path}: missing key 'geometry_m'")
    fs_hz = doc.get("sample_rate_hz", doc.get("fs_hz"))
    return ArrayGeometry(positions_m=doc["geometry_m"], fs_hz=fs_hz, source=str(path))
