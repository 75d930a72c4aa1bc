"""Real payloads from a running Service on a real broker, checked against the JSON Schemas in
docs/schemas, the keys Home Assistant requires of each discovery config, the audio user
properties and the Hermes WAV frames."""

from __future__ import annotations

import io
import json
import time
import uuid
import wave
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mica.array_dsp.errors import DeviceError
from mica.device.commands import COMMANDS, CommandError, parse_command
from mica.device.config import parse_config
from mica.device.ha_discovery import discovery_messages
from mica.device.service import Service
from mica.device.sources.factory import open_source
from tests.device.test_commands import Requester, near_valid

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def schema(name: str) -> dict:
    data = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(data)
    return data


def validate(instance: dict, name: str, kind: str | None = None) -> None:
    s = schema(name)
    if kind is not None and kind in s.get("$defs", {}):
        s = {**s, "$ref": f"#/$defs/{kind}"}
    jsonschema.validate(instance, s, cls=jsonschema.Draft202012Validator)


# Home Assistant's MQTT sensor: the keys discovery needs, and the units each device class
# accepts (homeassistant/components/sensor/const.py, DEVICE_CLASS_UNITS, for the classes used).
HA_UNITS = {"temperature": {"°C", "°F", "K"}, "duration": {"d", "h", "min", "s", "ms", "µs"},
            "data_size": {"B", "kB", "MB", "GB", "KiB", "MiB", "GiB"},
            "frequency": {"Hz", "kHz", "MHz", "GHz"}}
HA_STATE_CLASSES = {"measurement", "total", "total_increasing"}
HA_BINARY_CLASSES = {"problem", None}


@pytest.fixture(scope="module")
def run(mqtt_broker, tmp_path_factory):
    """One Service on the session broker for 3 s: its capture device fails once (events),
    a few commands, audio with Hermes frames; returns everything a subscriber got."""
    from tests.fixtures_mqtt import MessageCollector

    tmp = tmp_path_factory.mktemp("payloads")
    wav = tmp / "array.wav"
    sf.write(wav, (0.05 * np.random.default_rng(3).standard_normal((32000, 4))).astype(
        np.float32), 16000, subtype="PCM_16")
    device_id = f"pl-{uuid.uuid4().hex[:8]}"
    cfg = parse_config({
        "device": {"id": device_id},
        "capture": {"source": "wav", "wav_path": str(wav), "wav_loop": True, "channels": 4},
        "array": {"geometry_m": [[0.03, 0, 0], [0, 0.03, 0], [-0.03, 0, 0], [0, -0.03, 0]]},
        "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port, "audio_enabled": True,
                 "telemetry_interval_s": 0.3, "hermes_enabled": True, "hermes_site_id": device_id},
        "governor": {"enabled": False},
    }, tmp)
    opened = []

    def flaky_source():
        opened.append(1)
        if len(opened) == 2:  # the first reopen fails
            raise DeviceError("test: not there")
        return open_source(cfg.capture)

    sub = MessageCollector(mqtt_broker.host, mqtt_broker.port,
                           [f"mica/{device_id}/#", "homeassistant/#",
                            f"hermes/audioServer/{device_id}/#"]).start()
    svc = Service(cfg, source_factory=flaky_source)
    svc.start()
    req = None
    try:
        assert svc.link is not None and svc.link.wait_connected(10)
        req = Requester(mqtt_broker.host, mqtt_broker.port, cfg.topic_base)
        time.sleep(1.0)
        svc._device_lost("test: unplugged")  # what the capture thread does on a read error
        results = [req.call(name, payload) for name, payload in [
            ("steer", {"azimuth_deg": 30, "id": 1}), ("mute", {}), ("unmute", {}),
            ("zone", {"zone": "a"}), ("quality", {"level": "nope"}), ("steer", b"{"),
            ("nope", {}), ("reload", {})]]
        time.sleep(2.5)
    finally:
        if req is not None:
            req.stop()
        svc.request_stop()
        svc.stop()
        sub.stop()
    return cfg, sub.messages(), results


def test_info_and_telemetry_match_their_schemas(run) -> None:
    cfg, msgs, _ = run
    infos = [json.loads(m.payload) for m in msgs if m.topic == f"{cfg.topic_base}/info"]
    telemetry = [json.loads(m.payload) for m in msgs if m.topic == f"{cfg.topic_base}/telemetry"]
    assert infos and len(telemetry) >= 5
    for info in infos:
        validate(info, "info")
    for t in telemetry:
        validate(t, "telemetry")
    assert any(t.get("channel_rms_ratio") for t in telemetry)
    assert "memory_total_bytes" in telemetry[-1] and "spool_messages" in telemetry[-1]


def test_events_and_results_match_their_schemas(run) -> None:
    cfg, msgs, results = run
    events = [(m.topic.rsplit("/", 1)[1], json.loads(m.payload)) for m in msgs
              if m.topic.startswith(f"{cfg.topic_base}/event/")]
    kinds = {k for k, _ in events}
    assert {"device_lost", "device_back"} <= kinds, kinds
    for kind, payload in events:
        validate(payload, "event", kind)
    assert len(results) == 8
    for r in results:
        validate(r, "cmd_result")
    assert results[0]["ok"] and results[0]["id"] == 1
    assert [r["ok"] for r in results[3:]] == [False] * 5
    assert results[-1]["error"]["code"] == "not_supported"  # no config file to reload


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(COMMANDS), args=near_valid)
def test_cmd_schema_agrees_with_the_parser(name: str, args: dict) -> None:
    """What the parser accepts validates against cmd.schema.json, and the other way round
    (for finite numbers: JSON Schema has no NaN)."""
    payload = json.dumps(args).encode()
    try:
        parse_command(name, payload)
        accepted = True
    except CommandError:
        accepted = False
    s = {**schema("cmd"), "$ref": f"#/$defs/{name}"}
    try:
        jsonschema.validate(args, s, cls=jsonschema.Draft202012Validator)
        valid = True
    except jsonschema.ValidationError:
        valid = False
    finite = "NaN" not in payload.decode() and "Infinity" not in payload.decode()
    if finite:
        assert accepted == valid, (name, args)


def test_home_assistant_discovery_has_the_required_keys(run, mqtt_subscriber) -> None:
    cfg, msgs, _ = run
    node_id = f"mica_{cfg.device.id.replace('-', '_')}"
    live = [m for m in msgs if m.topic.startswith("homeassistant/") and node_id in m.topic]
    assert len(live) >= 15
    late = mqtt_subscriber(f"homeassistant/+/{node_id}/+/config")  # gets the retained ones
    configs = late.wait_for(lambda ms: len(ms) >= len({m.topic for m in live}))
    unique_ids = set()
    for m in configs:
        assert m.retain and m.qos == 1
        component, node_id, object_id, last = m.topic.split("/")[1:]
        assert component in ("sensor", "binary_sensor") and last == "config"
        c = json.loads(m.payload)
        for key in ("name", "unique_id", "state_topic", "value_template", "availability_topic",
                    "payload_available", "payload_not_available", "device"):
            assert key in c, f"{m.topic} lacks {key}"
        assert c["state_topic"] == f"{cfg.topic_base}/telemetry"
        assert c["availability_topic"] == f"{cfg.topic_base}/status"
        assert c["device"]["identifiers"] == [node_id]
        assert c["unique_id"] not in unique_ids
        unique_ids.add(c["unique_id"])
        assert c["value_template"].startswith("{{") and c["value_template"].endswith("}}")
        if component == "sensor":
            if c.get("device_class") is not None:
                assert c["unit_of_measurement"] in HA_UNITS[c["device_class"]], c
            if "state_class" in c:
                assert c["state_class"] in HA_STATE_CLASSES
        else:
            assert c.get("device_class") in HA_BINARY_CLASSES
            assert (c["payload_on"], c["payload_off"]) == ("ON", "OFF")
    ids = {u.rsplit("_", 2)[-1] for u in unique_ids}
    assert {"seconds", "total"} <= ids  # uptime_seconds, xruns_total...


def test_discovery_follows_the_board(tmp_path: Path) -> None:
    """A Pi with a thermal zone, cpufreq and throttling gets those entities; a bare
    container does not, and no entity reads a field that is absent."""
    cfg = parse_config({"device": {"id": "pi-1"}}, tmp_path)
    pi = {"seq": 1, "uptime_seconds": 1.0, "thermal_celsius": {"cpu_thermal": 50.1},
          "cpu_frequency_hertz": {"cpu0": 1_500_000_000},
          "throttled": {"under_voltage": False, "under_voltage_since_boot": True},
          "channel_dead": [False, True], "muted": False}
    topics = {t for t, _ in discovery_messages(cfg, pi)}
    assert "homeassistant/sensor/mica_pi_1/thermal_celsius_cpu_thermal/config" in topics
    assert "homeassistant/binary_sensor/mica_pi_1/throttled_under_voltage/config" in topics
    assert "homeassistant/binary_sensor/mica_pi_1/channel_1_dead/config" in topics
    speaker = {"seq": 1, "doa_azimuth_deg": None, "speech_active": True,
               "echo": {"enabled": True, "erle_db": 31.5, "playback_active": True,
                        "double_talk": False, "delay_ms": 12.0},
               "onboard": {"doa_deg": 270, "voice_activity": True}}
    configs = {t: json.loads(c) for t, c in discovery_messages(cfg, speaker)}
    for topic in ("sensor/mica_pi_1/echo_erle_db", "binary_sensor/mica_pi_1/echo_playback_active",
                  "sensor/mica_pi_1/doa_azimuth_deg", "sensor/mica_pi_1/onboard_doa_deg",
                  "binary_sensor/mica_pi_1/onboard_voice_activity"):
        assert f"homeassistant/{topic}/config" in configs, topic
    erle = configs["homeassistant/sensor/mica_pi_1/echo_erle_db/config"]
    assert erle["unit_of_measurement"] == "dB" and "echo.erle_db" in erle["value_template"]
    assert not any("echo" in t for t, _ in discovery_messages(cfg, pi))
    bare = {t for t, _ in discovery_messages(cfg, {"seq": 1, "uptime_seconds": 1.0})}
    assert bare == {"homeassistant/sensor/mica_pi_1/uptime_seconds/config"}


def test_audio_properties_and_hermes_frames(run) -> None:
    cfg, msgs, _ = run
    audio = [m for m in msgs if m.topic == f"{cfg.topic_base}/audio/beam"]
    hermes = [m for m in msgs if m.topic == f"hermes/audioServer/{cfg.device.id}/audioFrame"]
    assert len(audio) >= 20 and len(hermes) == len(audio)
    props = audio[-1].user_properties
    assert props["stream"] == "beam" and float(props["steer_azimuth_deg"]) == 30.0
    assert {"seq", "t_capture_ns"} <= set(props)
    for m, h in zip(audio[:5], hermes[:5], strict=True):
        with wave.open(io.BytesIO(h.payload)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            assert w.readframes(w.getnframes()) == m.payload
