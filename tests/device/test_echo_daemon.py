"""Echo cancellation in the daemon: the [echo] config and its checks, the board profile's
loopback channels, and ``mica run`` on a fake ALSA device whose last two channels are the
playback loopback, with a real broker and subscriber (ERLE in telemetry, playback_active on
the audio, the echo_path event's shape)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from mica.array_dsp.errors import ConfigError
from mica.device.config import load_config, parse_config
from mica.evaluation.echo_scene import make_echo_scene


def test_board_profile_fills_reference_channels() -> None:
    cfg = parse_config({"echo": {"enabled": True}}, Path.cwd(), board="respeaker-6mic-hat")
    assert cfg.array.reference_channels == [6, 7]
    assert cfg.array.mic_channels == [0, 1, 2, 3, 4, 5]
    assert cfg.echo.enabled and cfg.echo.tail_ms == 128.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"echo": {"enabled": True}}, "echo.enabled: needs array.reference_channels"),
        (
            {"capture": {"channels": 4}, "array": {"reference_channels": [5]}},
            "array.reference_channels[0]: channel 5 does not exist",
        ),
        (
            {
                "capture": {"channels": 4},
                "array": {"mic_channels": [0, 1, 2], "reference_channels": [2]},
            },
            "array.reference_channels: channel(s) [2] are also in array.mic_channels",
        ),
        (
            {
                "capture": {"channels": 4},
                "array": {"reference_channels": [3]},
                "echo": {"enabled": True},
            },
            "array.mic_channels: needed with array.reference_channels",
        ),
        ({"echo": {"tail_ms": 5.0}}, "echo.tail_ms: must be >= 10.0"),
    ],
)
def test_echo_config_errors_name_the_key(tmp_path: Path, data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, tmp_path)
    assert any(message in p for p in err.value.problems), err.value.problems


def test_daemon_cancels_echo_of_loopback_channels(
    fake_alsa, mqtt_broker, mqtt_subscriber, corpus_dir: Path, tmp_path: Path
) -> None:
    """4 mics hear corpus speech played through a measured RIR and a soft-clipping
    loudspeaker; channels 4 and 5 carry the loopback. Over MQTT: telemetry ``echo`` reports
    ERLE >= 15 dB once converged, and the audio carries ``playback_active=true``."""
    scene = make_echo_scene(corpus_dir, seconds=6.0, n_mics=4)
    samples = np.concatenate([scene.mic, scene.ref, scene.ref]).astype(np.float32)
    pcm = fake_alsa.add_pcm_from_samples(f"echo6_{uuid.uuid4().hex[:6]}", samples, 16000)
    device_id = f"e2e-echo-{uuid.uuid4().hex[:6]}"
    base = f"mica/{device_id}"
    config = tmp_path / "mica.toml"
    config.write_text(f"""
[device]
id = "{device_id}"
[capture]
source = "alsa"
alsa_device = "{pcm}"
channels = 6
format = "S16_LE"
[array]
geometry_m = [[0.05, 0.0, 0.0], [0.0, 0.05, 0.0], [-0.05, 0.0, 0.0], [0.0, -0.05, 0.0]]
mic_channels = [0, 1, 2, 3]
reference_channels = [4, 5]
[echo]
enabled = true
[mqtt]
host = "{mqtt_broker.host}"
port = {mqtt_broker.port}
audio_enabled = true
telemetry_interval_s = 0.5
""")
    assert load_config(config).echo.enabled
    sub = mqtt_subscriber(f"{base}/#")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mica.device.cli", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )

    def echo_fields(msgs) -> list[dict]:
        return [json.loads(m.payload)["echo"] for m in msgs if m.topic == f"{base}/telemetry"]

    try:
        sub.wait_for(
            lambda ms: any((e["erle_db"] or 0) >= 15.0 for e in echo_fields(ms)), timeout_s=90
        )
    except AssertionError:
        proc.kill()
        raise AssertionError(
            f"no converged ERLE in telemetry: "
            f"{echo_fields(sub.messages())}\n{proc.communicate()[0]}"
        ) from None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, log
    msgs = sub.messages()
    echo = echo_fields(msgs)
    assert all(e["enabled"] for e in echo)
    assert max(e["erle_db"] or 0 for e in echo) >= 15.0, echo
    audio = [m for m in msgs if m.topic == f"{base}/audio/beam"]
    assert audio and {m.user_properties.get("playback_active") for m in audio} >= {"true"}
    for m in msgs:  # an echo_path event, if one came, has its documented fields
        if m.topic == f"{base}/event/echo_path":
            assert {"t_capture_ns", "reason", "delay_ms"} <= set(json.loads(m.payload))
