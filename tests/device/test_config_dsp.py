"""The [dsp] beamformer, steer, zones keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from mica.array_dsp.enhancer import BEAMFORMERS
from mica.array_dsp.errors import ConfigError
from mica.device import config as config_mod
from mica.device.config import load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_beamformer_choices_match_the_dsp() -> None:
    assert config_mod.BEAMFORMERS == BEAMFORMERS


def test_zones_and_steer(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
[dsp]
beamformer = "mvdr"
steer = "zone:driver"
[dsp.zones]
driver = [35.0, 0.0]
passenger = [145, -5]
"""))
    assert cfg.dsp.beamformer == "mvdr" and cfg.dsp.steer == "zone:driver"
    assert cfg.dsp.zones == {"driver": [35.0, 0.0], "passenger": [145, -5]}
    assert cfg.config_hash


def test_bad_dsp_keys_are_all_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, """
[dsp.zones]
driver = [35.0]
passenger = [0.0, 100.0]
"""))
    problems = info.value.problems
    assert any(p.startswith("dsp.zones.driver:") for p in problems)
    assert any(p.startswith("dsp.zones.passenger:") for p in problems)
    with pytest.raises(ConfigError, match="dsp.beamformer: must be one of"):
        load_config(write(tmp_path, '[dsp]\nbeamformer = "gsc"\n'))
    with pytest.raises(ConfigError, match="dsp.steer: must be fixed, auto or zone:NAME"):
        load_config(write(tmp_path, '[dsp]\nsteer = "left"\n'))
    with pytest.raises(ConfigError, match="zone 'rear' is not in dsp.zones"):
        load_config(write(tmp_path, '[dsp]\nsteer = "zone:rear"\n'))
