"""Config loading: defaults, the documented example, and every problem reported at once."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from mica.array_dsp.errors import ConfigError
from mica.device.config import Config, load_config

EXAMPLE = resources.files("mica.device") / "data" / "mica.example.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mica.toml"
    path.write_text(text)
    return path


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "")) == Config()


def test_example_config_is_valid_and_states_every_default() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    cfg = load_config(Path(str(EXAMPLE)))
    assert cfg == Config()
    for section in dataclasses.fields(Config):
        documented = set(data[section.name])
        declared = {f.name for f in dataclasses.fields(getattr(cfg, section.name))}
        assert documented == declared, f"[{section.name}] example and dataclass differ"


def test_three_mistakes_three_messages_with_key_paths(tmp_path: Path) -> None:
    path = _write(tmp_path, """
[mqtt]
port = 70000
colour = "red"
[capture]
format = "S24_LE"
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert any(p.startswith("mqtt.port:") and "65535" in p for p in problems)
    assert any(p.startswith("mqtt.colour:") and "unknown key" in p for p in problems)
    assert any(p.startswith("capture.format:") and "S16_LE" in p for p in problems)


def test_wrong_types_missing_files_and_unknown_sections(tmp_path: Path) -> None:
    path = _write(tmp_path, """
[capture]
channels = "four"
wav_path = "nope.wav"
[array]
geometry_file = "/nonexistent/geometry.json"
mic_channels = [0, "one"]
[bogus]
x = 1
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.problems)
    assert "capture.channels: must be an integer" in text
    assert f"capture.wav_path: file not found: {tmp_path / 'nope.wav'}" in text
    assert "array.geometry_file: file not found: /nonexistent/geometry.json" in text
    assert "array.mic_channels[1]: must be an integer" in text
    assert "bogus: unknown key" in text
    assert len(info.value.problems) == 5


def test_cross_key_conflicts(tmp_path: Path) -> None:
    path = _write(tmp_path, """
[capture]
source = "wav"
channels = 2
[array]
geometry_m = [[0, 0, 0], [0.1, 0]]
mic_channels = [0, 3]
[mqtt]
audio_chunk_ms = 25
[dsp]
hop_samples = 256
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.problems)
    assert "capture.wav_path: required" in text
    assert "array.geometry_m[1]: must be [x, y, z]" in text
    assert "array.mic_channels[1]: channel 3 does not exist" in text
    assert "mqtt.audio_chunk_ms" in text and "multiple of dsp.hop_samples" in text


def test_relative_paths_resolve_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "geom.json").write_text('{"geometry_m": [[0, 0, 0]]}')
    cfg = load_config(_write(tmp_path, '[array]\ngeometry_file = "geom.json"\n'))
    assert cfg.array.geometry_file == str(tmp_path / "geom.json")


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[mqtt\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_cli_config_check_lists_problems_and_exits_nonzero(tmp_path: Path) -> None:
    bad = _write(tmp_path, "[mqtt]\nport = 0\nhost = 5\n")
    run = subprocess.run([sys.executable, "-m", "mica.device.cli", "config", "check", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "mqtt.port" in run.stderr and "mqtt.host" in run.stderr
    good = subprocess.run([sys.executable, "-m", "mica.device.cli", "config", "check",
                           str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert "ok" in good.stdout
