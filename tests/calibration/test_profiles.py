"""Board profiles: every built-in profile loads with the published mic count and aperture, and
a profile alone configures the daemon (config keys override it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mica.array_dsp.errors import ConfigError
from mica.calibration.profiles import (
    REQUIRED_SOURCES,
    ProfileError,
    list_profiles,
    load_profile,
    profile_from_dict,
)
from mica.device.config import load_config, parse_config
from mica.device.service import calibrated_array, resolve_geometry

# name: (mics, aperture in metres from the published numbers, capture channels, references)
EXPECTED = {
    "respeaker-usb-4mic": (4, 0.064, 6, [5]),          # r = 32 mm circle
    "respeaker-4mic-hat": (4, 0.081, 4, []),           # r = 40.5 mm circle
    "respeaker-6mic-hat": (6, 2 * 0.0463, 8, [6, 7]),  # r = 46.3 mm, 2 loopback channels
    "respeaker-2mic-hat": (2, 0.058, 2, []),           # estimated spacing
    "matrix-voice": (8, 2 * 0.0383 * math.sin(3 * math.pi / 7), 8, []),  # 7 on r=38.3 mm + 1
    "car-overhead-linear4": (4, 0.12, 4, []),          # 4 x 40 mm pitch
}


def test_every_expected_board_has_a_profile() -> None:
    assert set(EXPECTED) <= set(list_profiles())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_loads_with_mic_count_and_aperture(name: str) -> None:
    p = load_profile(name)
    mics, aperture, channels, refs = EXPECTED[name]
    assert p.n_mics == mics == len(p.mic_channels) == len(p.nominal_gain_db)
    assert p.aperture_m == pytest.approx(aperture, abs=1.5e-3)
    assert p.channels == channels
    assert list(p.reference_channels) == refs
    assert all(p.sources[k] for k in REQUIRED_SOURCES)
    assert p.alsa_device_hints


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_board_profile_alone_configures_the_daemon(name: str) -> None:
    cfg = load_config(None, board=name)
    p = load_profile(name)
    assert cfg.device.board == name
    assert cfg.capture.channels == p.channels and cfg.capture.format == p.format
    assert cfg.array.mic_channels == list(p.mic_channels)
    assert resolve_geometry(cfg).n_channels == p.n_mics


def test_config_keys_override_the_profile(tmp_path: Path) -> None:
    toml = tmp_path / "mica.toml"
    toml.write_text('[device]\nboard = "respeaker-usb-4mic"\n'
                    '[capture]\nalsa_device = "plughw:2,0"\n')
    cfg = load_config(toml)
    assert cfg.capture.alsa_device == "plughw:2,0"       # the file wins
    assert cfg.capture.channels == 6                      # the profile fills the rest
    assert cfg.array.mic_channels == [1, 2, 3, 4]
    geo = tmp_path / "g.json"
    geo.write_text(json.dumps({"geometry_m": [[0.1, 0, 0], [0, 0.1, 0], [-0.1, 0, 0],
                                              [0, -0.1, 0]]}))
    cfg = parse_config({"array": {"geometry_file": str(geo)}}, tmp_path, board="respeaker-4mic-hat")
    assert cfg.array.geometry_m == [] and resolve_geometry(cfg).aperture_m == pytest.approx(0.2)


def test_unknown_board_label_is_kept_but_an_unknown_board_option_fails() -> None:
    cfg = parse_config({"device": {"board": "kitchen-pi"}}, Path.cwd())
    assert cfg.device.board == "kitchen-pi" and cfg.array.geometry_m == []
    with pytest.raises(ConfigError, match="unknown board 'nope'.*respeaker-4mic-hat"):
        load_config(None, board="nope")


def test_profile_problems_are_all_reported() -> None:
    bad = {"format": "mica-board-profile", "version": 1, "name": "x",
           "geometry_m": [[0, 0, 0], [0.1, 0, 0]], "mic_channels": [0, 5],
           "reference_channels": [0], "capture": {"channels": 2, "format": "U8"},
           "sources": {"geometry_m": "datasheet"}}
    with pytest.raises(ProfileError) as info:
        profile_from_dict(bad, "bad.json")
    text = str(info.value)
    for needle in ("listed twice", "capture.channels = 2", "capture.format", "sources.capture"):
        assert needle in text


def test_profile_nominal_gains_reach_the_daemon() -> None:
    cfg = load_config(None, board="respeaker-4mic-hat")
    cal, geometry, mics, corrector = calibrated_array(cfg, resolve_geometry(cfg))
    assert cal is None and corrector is None  # all nominal gains are 0 dB: nothing to do
    assert geometry.n_channels == 4 and mics == [0, 1, 2, 3]
