"""``mica enhance --reference-channels``: the playback loopback channels of a WAV feed the
echo canceller, the other channels are the microphones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mica.array_dsp.errors import AudioFileError
from mica.device.cli import main
from mica.device.enhance_file import enhance_file
from mica.evaluation.echo_scene import make_echo_scene
from mica.evaluation.metrics import erle_db

GEOMETRY = [[0.05, 0.0, 0.0], [0.0, 0.05, 0.0], [-0.05, 0.0, 0.0], [0.0, -0.05, 0.0]]


@pytest.fixture(scope="module")
def files(corpus_dir, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("echo_enhance")
    scene = make_echo_scene(corpus_dir, seconds=6.0, n_mics=4)
    # channels: mic 0, mic 1, loopback, mic 2, mic 3, loopback (references in the middle)
    six = np.stack(
        [scene.mic[0], scene.mic[1], scene.ref[0], scene.mic[2], scene.mic[3], scene.ref[0]], axis=1
    )
    sf.write(folder / "six.wav", six, 16000, subtype="FLOAT")
    sf.write(folder / "mics.wav", scene.mic.T, 16000, subtype="FLOAT")
    (folder / "array.json").write_text(json.dumps({"geometry_m": GEOMETRY}))
    return {
        "six": folder / "six.wav",
        "mics": folder / "mics.wav",
        "array": folder / "array.json",
        "dir": folder,
    }


def test_cli_reference_channels_cancel_the_echo(files, capsys) -> None:
    """Echo only: over seconds 3-6 the output with the loopback channels is >= 20 dB below
    the same chain on the microphones alone; the summary reports the echo stage."""
    out_echo = files["dir"] / "aec.wav"
    out_plain = files["dir"] / "plain.wav"
    assert (
        main(
            [
                "enhance",
                str(files["six"]),
                str(out_echo),
                "--array",
                str(files["array"]),
                "--reference-channels",
                "2,5",
            ]
        )
        == 0
    )
    assert "erle_db" in capsys.readouterr().out
    enhance_file(files["mics"], out_plain, files["array"])
    y_echo, _ = sf.read(out_echo, dtype="float32")
    y_plain, _ = sf.read(out_plain, dtype="float32")
    assert y_echo.shape == y_plain.shape
    erle = erle_db(y_plain[3 * 16000 :], y_echo[3 * 16000 :])
    assert erle >= 20.0, erle


def test_reference_channel_errors_name_the_file(files) -> None:
    with pytest.raises(AudioFileError, match="six.wav"):
        enhance_file(
            files["six"], files["dir"] / "x.wav", files["array"], reference_channels=[2, 9]
        )
    with pytest.raises(AudioFileError, match="besides its 1 reference"):  # 5 mics, 4 in geometry
        enhance_file(files["six"], files["dir"] / "x.wav", files["array"], reference_channels=[2])
