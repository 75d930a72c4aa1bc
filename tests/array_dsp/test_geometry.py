"""ArrayGeometry, geometry_from_list and the JSON sidecar loader."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mica.array_dsp.errors import GeometryError, MicaError
from mica.array_dsp.geometry import ArrayGeometry, geometry_from_list, load_geometry_json

SQUARE_4 = [[-0.05, -0.05, 0.0], [-0.05, 0.05, 0.0], [0.05, -0.05, 0.0], [0.05, 0.05, 0.0]]


def test_corpus_sidecar_loads(corpus_dir: Path) -> None:
    path = corpus_dir / "multichannel" / "speechbrain_4mic_speech_-0.82918_0.55279_-0.082918.json"
    geom = load_geometry_json(path)
    assert geom.n_channels == 4
    assert geom.fs_hz == 16000.0
    assert geom.source == str(path)
    np.testing.assert_array_equal(geom.positions_m, np.array(SQUARE_4))
    assert geom.aperture_m == pytest.approx(math.sqrt(2) * 0.1)
    np.testing.assert_allclose(geom.centroid_m, 0.0, atol=1e-15)
    assert geom.is_planar


def test_every_corpus_sidecar_loads(corpus_dir: Path) -> None:
    paths = sorted((corpus_dir / "multichannel").glob("*.json"))
    assert paths
    for path in paths:
        geom = load_geometry_json(path)
        assert geom.positions_m.shape == (geom.n_channels, 3)


def test_from_list_properties_and_immutability() -> None:
    geom = geometry_from_list([[0.0, 0.0, 0.0], [0.3, 0.4, 0.0], [0.0, 0.0, 1.0]], fs_hz=48000)
    assert geom.n_channels == 3
    assert geom.fs_hz == 48000.0
    assert geom.aperture_m == pytest.approx(math.sqrt(0.3**2 + 0.4**2 + 1.0))
    np.testing.assert_allclose(geom.centroid_m, [0.1, 0.4 / 3, 1.0 / 3])
    assert geom.positions_m.dtype == np.float64
    assert not geom.is_planar
    with pytest.raises(ValueError):
        geom.positions_m[0, 0] = 1.0
    with pytest.raises(AttributeError):
        geom.fs_hz = 1.0  # type: ignore[misc]


def test_single_microphone_is_valid() -> None:
    geom = ArrayGeometry(np.zeros((1, 3)))
    assert geom.n_channels == 1
    assert geom.aperture_m == 0.0


def test_input_array_is_copied() -> None:
    rows = np.array(SQUARE_4)
    geom = ArrayGeometry(rows)
    rows[0, 0] = 9.0
    assert geom.positions_m[0, 0] == -0.05


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([[0.0, 0.0], [1.0, 0.0]], "shape"),
        ([], "shape"),
        ([0.0, 0.0, 0.0], "shape"),
        ([[0.0, 0.0, 0.0], [1.0, 0.0]], "numeric"),
        ([[0.0, "a", 0.0]], "numeric"),
        ([[0.0, float("nan"), 0.0], [1.0, 0.0, 0.0]], "row(s) [0]"),
        ([[0.0, 0.0, 0.0], [1.0, float("inf"), 0.0]], "row(s) [1]"),
        ([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 0.0]], "rows 0 and 2"),
    ],
)
def test_bad_positions(rows: list, problem: str) -> None:
    with pytest.raises(GeometryError, match="^board-x") as info:
        geometry_from_list(rows, source="board-x")
    assert problem in str(info.value)
    assert isinstance(info.value, MicaError)


@pytest.mark.parametrize("fs_hz", [0, -16000, float("nan"), "16000", True])
def test_bad_rate(fs_hz: object) -> None:
    with pytest.raises(GeometryError, match="sample rate"):
        geometry_from_list(SQUARE_4, fs_hz=fs_hz)  # type: ignore[arg-type]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "array.json"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object"),
        ('{"geometry": [[0, 0, 0]]}', "missing key 'geometry_m'"),
        ('{"geometry_m": [[0, 0], [1, 0]]}', "shape (n_ch, 3)"),
        ('{"geometry_m": [[0, 0, NaN], [1, 0, 0]]}', "non-finite"),
        ('{"geometry_m": [[0, 0, null], [1, 0, 0]]}', "non-finite"),
        ('{"geometry_m": [[0, 0, 0], [0, 0, 0]]}', "duplicate"),
        ('{"geometry_m": [[0, 0, 0], [1, 0, 0]], "sample_rate_hz": -1}', "sample rate"),
    ],
)
def test_bad_sidecar_names_file_and_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(GeometryError) as info:
        load_geometry_json(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert problem in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(GeometryError, match="not found") as info:
        load_geometry_json(path)
    assert str(path) in str(info.value)


def test_unreadable_bytes(tmp_path: Path) -> None:
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(GeometryError, match="cannot read") as info:
        load_geometry_json(path)
    assert str(path) in str(info.value)


def test_fs_hz_key_and_no_rate(tmp_path: Path) -> None:
    with_fs = _write(tmp_path, json.dumps({"geometry_m": SQUARE_4, "fs_hz": 44100}))
    assert load_geometry_json(with_fs).fs_hz == 44100.0
    without = _write(tmp_path, json.dumps({"geometry_m": SQUARE_4, "comment": "x"}))
    assert load_geometry_json(without).fs_hz is None
