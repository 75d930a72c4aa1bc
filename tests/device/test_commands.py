"""Commands: the parser against 10^4 random payloads (hypothesis), then a running Service on a
real broker that answers every command, applies steer/mute/audio/quality and stays up."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mica.device.commands import (
    COMMANDS,
    ERROR_CODES,
    MAX_PAYLOAD_BYTES,
    Command,
    CommandError,
    parse_command,
    result_payload,
)
from mica.device.config import parse_config
from mica.device.service import Service

# --------------------------------------------------------------------------- random payloads

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=5),
    max_leaves=20)
KEYS = ["azimuth_deg", "elevation_deg", "zone", "level", "enabled", "id", "extra"]
near_valid = st.dictionaries(st.sampled_from(KEYS), json_values | st.floats() | st.integers(),
                             max_size=4)


def _encode(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


payloads = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_values.map(_encode),
    near_valid.map(_encode),
    st.integers(MAX_PAYLOAD_BYTES - 10, 3 * MAX_PAYLOAD_BYTES).map(lambda n: b'{"zone": "'
                                                                   + b"x" * n + b'"}'),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
)
names = st.one_of(st.sampled_from(COMMANDS), st.text(max_size=80))


def _check_any_payload(name: str, payload: bytes, allowed: set) -> None:
    try:
        cmd = parse_command(name, payload, tuple(allowed))
    except CommandError as err:
        assert err.code in ERROR_CODES and err.message
        body = result_payload(name, ok=False, error=err, request_id=err.request_id)
        json.dumps(body)  # always serialisable
        assert len(body["command"]) <= 64
        return
    assert isinstance(cmd, Command) and cmd.name in allowed
    if cmd.name == "steer":
        assert -360 <= cmd.args["azimuth_deg"] <= 360 and -90 <= cmd.args["elevation_deg"] <= 90
    json.dumps(result_payload(name, ok=True, result=cmd.args, request_id=cmd.request_id))


ANY = {"name": names, "payload": payloads, "allowed": st.sets(st.sampled_from(COMMANDS))}


@settings(max_examples=1_500, deadline=None, suppress_health_check=list(HealthCheck))
@given(**ANY)
def test_parser_takes_any_payload(name: str, payload: bytes, allowed: set) -> None:
    _check_any_payload(name, payload, allowed)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(**ANY)
def test_parser_takes_10k_random_payloads(name: str, payload: bytes, allowed: set) -> None:
    _check_any_payload(name, payload, allowed)


@pytest.mark.parametrize(("name", "payload", "args"), [
    ("mute", b"", {}),
    ("unmute", b"{}", {}),
    ("steer", b'{"azimuth_deg": 90}', {"azimuth_deg": 90.0, "elevation_deg": 0.0}),
    ("steer", b'{"azimuth_deg": -45.5, "elevation_deg": 10, "id": "r1"}',
     {"azimuth_deg": -45.5, "elevation_deg": 10.0}),
    ("zone", b'{"zone": "driver"}', {"zone": "driver"}),
    ("quality", b'{"level": "das"}', {"level": "das"}),
    ("quality", b'{"level": 2}', {"level": 2}),
    ("audio", b'{"enabled": false}', {"enabled": False}),
    ("reload", b"  ", {}),
])
def test_valid_commands(name: str, payload: bytes, args: dict) -> None:
    cmd = parse_command(name, payload)
    assert cmd.name == name and cmd.args == args


@pytest.mark.parametrize(("name", "payload", "code"), [
    ("reboot", b"{}", "unknown_command"),
    ("steer", b"{not json", "bad_json"),
    ("steer", b"\xff\xfe", "bad_json"),
    ("steer", b"[1, 2]", "bad_payload"),
    ("steer", b"{}", "bad_payload"),
    ("steer", b'{"azimuth_deg": "90"}', "bad_payload"),
    ("steer", b'{"azimuth_deg": true}', "bad_payload"),
    ("steer", b'{"azimuth_deg": NaN}', "bad_payload"),
    ("steer", b'{"azimuth_deg": 1e400}', "bad_payload"),
    ("steer", b'{"azimuth_deg": 10, "elevation_deg": 91}', "bad_payload"),
    ("steer", b'{"azimuth_deg": 10, "gain": 3}', "bad_payload"),
    ("audio", b'{"enabled": 1}', "bad_payload"),
    ("zone", b'{"zone": ""}', "bad_payload"),
    ("mute", b'{"id": [1]}', "bad_payload"),
    ("mute", b"x" * (MAX_PAYLOAD_BYTES + 1), "too_large"),
])
def test_malformed_commands(name: str, payload: bytes, code: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(name, payload)
    assert info.value.code == code


def test_allow_list_and_request_id() -> None:
    with pytest.raises(CommandError) as info:
        parse_command("steer", b'{"azimuth_deg": 1, "id": 7}', allowed=("mute",))
    assert info.value.code == "not_allowed" and info.value.request_id == 7
    assert parse_command("mute", b'{"id": "abc"}').request_id == "abc"


# --------------------------------------------------------------------------- against the daemon


def _random_payload(rnd: random.Random) -> bytes:
    """Random bytes, random JSON, near-valid objects with wrong types, huge or deep ones."""
    kind = rnd.randrange(6)
    if kind == 0:
        return rnd.randbytes(rnd.randrange(100))
    if kind == 1:
        return b"x" * rnd.randrange(MAX_PAYLOAD_BYTES - 5, 3 * MAX_PAYLOAD_BYTES)
    if kind == 2:
        return b"[" * 3000 + b"]" * 3000
    values = [None, True, 1, -1e300, 1e999, float("nan"), "text", "x" * 300, [1], {"a": 1},
              rnd.uniform(-400, 400), rnd.choice([0, 1, 2, 90, 360, 361])]
    obj = {rnd.choice(KEYS): rnd.choice(values) for _ in range(rnd.randrange(4))}
    return json.dumps(obj if kind != 5 else [obj]).encode()


class Requester:
    """A paho MQTT 5 client that sends commands with correlation data and a response topic,
    and collects the answers by correlation."""

    def __init__(self, host: str, port: int, base: str) -> None:
        self.base = base
        self.response_topic = f"test/{uuid.uuid4().hex[:8]}/replies"
        self.results: dict[bytes, dict] = {}
        self.on_response_topic: set[bytes] = set()
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(f"{base}/cmd/result", 1), (self.response_topic, 1)])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._subscribed.wait(5)

    def _on_message(self, client, userdata, msg) -> None:
        corr = getattr(msg.properties, "CorrelationData", None)
        with self._cond:
            if msg.topic == self.response_topic:
                self.on_response_topic.add(corr)
            else:
                self.results[corr] = json.loads(msg.payload)
            self._cond.notify_all()

    def send(self, name: str, payload: bytes) -> bytes:
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = corr
        props.ResponseTopic = self.response_topic
        self.client.publish(f"{self.base}/cmd/{name}", payload, qos=1, properties=props)
        return corr

    def wait(self, corrs: list[bytes], timeout_s: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not all(c in self.results and c in self.on_response_topic for c in corrs):
                left = deadline - time.monotonic()
                missing = [c for c in corrs if c not in self.results]
                assert left > 0, f"{len(missing)} of {len(corrs)} commands unanswered"
                self._cond.wait(left)
            return [self.results[c] for c in corrs]

    def call(self, name: str, payload: dict | bytes) -> dict:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.wait([self.send(name, data)])[0]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def service(mqtt_broker, tmp_path: Path):
    rng = np.random.default_rng(1)
    wav = tmp_path / "array.wav"
    sf.write(wav, (0.05 * rng.standard_normal((32000, 4))).astype(np.float32), 16000,
             subtype="PCM_16")
    cfg = parse_config({
        "device": {"id": f"cmd-{uuid.uuid4().hex[:8]}"},
        "capture": {"source": "wav", "wav_path": str(wav), "wav_loop": True, "channels": 4},
        "array": {"geometry_m": [[0.03, 0, 0], [0, 0.03, 0], [-0.03, 0, 0], [0, -0.03, 0]]},
        "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port, "audio_enabled": True,
                 "telemetry_interval_s": 0.2,
                 "commands_allowed": ["mute", "unmute", "steer", "zone", "quality", "audio"]},
        "governor": {"enabled": False},
        "dsp": {"zones": {"driver": [30.0, 0.0], "passenger": [150.0, 5.0]}},
    }, tmp_path)
    svc = Service(cfg)
    svc.start()
    assert svc.link is not None and svc.link.wait_connected(10)
    yield svc
    svc.stop()


def test_daemon_answers_every_random_command_and_stays_up(service, mqtt_broker,
                                                          mqtt_subscriber) -> None:
    base = service.cfg.topic_base
    req = Requester(mqtt_broker.host, mqtt_broker.port, base)
    try:
        rnd = random.Random(8)
        samples = [(rnd.choice(list(COMMANDS) + ["reboot", "x" * 100]), _random_payload(rnd))
                   for _ in range(300)]
        corrs = [req.send(name, payload) for name, payload in samples]
        results = req.wait(corrs, timeout_s=30)
        for (name, _), result in zip(samples, results, strict=True):
            assert result["command"] == name[:64]
            assert result["ok"] or result["error"]["code"] in ERROR_CODES
        assert service.fault is None and not service._stop.is_set()

        # the allow-list: reload is known but not allowed here
        assert req.call("reload", {})["error"]["code"] == "not_allowed"
        assert req.call("nope", b"{}")["error"]["code"] == "unknown_command"
        assert req.call("steer", b"{bad")["error"]["code"] == "bad_json"

        # steer: applied by the DSP thread, then answered and shown in info
        reply = req.call("steer", {"azimuth_deg": 120.0, "elevation_deg": 5, "id": "s1"})
        assert reply == {"command": "steer", "ok": True, "id": "s1",
                         "result": {"steer_azimuth_deg": 120.0, "steer_elevation_deg": 5.0}}
        assert service.enhancer.steer_azimuth_deg == 120.0

        # quality: a level this device has, by name and index; an unknown one
        levels = service.governor.levels
        assert req.call("quality", {"level": levels[-1]})["result"]["quality_level"] == \
            levels[-1]
        assert req.call("quality", {"level": 0})["result"]["quality_level_index"] == 0
        assert req.call("quality", {"level": "ultra"})["error"]["code"] == "bad_payload"
        # zone: a configured look direction, applied by the DSP thread; an unknown one
        zone = req.call("zone", {"zone": "passenger", "id": "z1"})
        assert zone == {"command": "zone", "ok": True, "id": "z1",
                        "result": {"zone": "passenger", "steer_azimuth_deg": 150.0,
                                   "steer_elevation_deg": 5.0}}
        assert service.enhancer.steer_azimuth_deg == 150.0
        unknown = req.call("zone", {"zone": "trunk"})
        assert unknown["error"]["code"] == "bad_payload"
        assert "driver" in unknown["error"]["message"]

        # after the random ones: audio on, not muted
        req.call("unmute", {})
        assert req.call("audio", {"enabled": True})["result"]["audio_enabled"] is True

        # mute: audio stops (not silence), telemetry says so; unmute: it comes back
        audio_topic = f"{base}/audio/beam"
        sub = mqtt_subscriber([audio_topic, f"{base}/telemetry"])
        sub.wait_count(audio_topic, 5)
        assert req.call("mute", {})["result"] == {"muted": True}
        time.sleep(0.2)  # chunks already in flight
        n_muted = len(sub.messages(audio_topic))
        time.sleep(0.6)
        assert len(sub.messages(audio_topic)) == n_muted
        sub.wait_for(lambda ms: any(m.topic.endswith("/telemetry")
                                    and json.loads(m.payload).get("muted") for m in ms))
        assert req.call("unmute", {})["result"] == {"muted": False}
        sub.wait_count(audio_topic, n_muted + 5)
        assert req.call("audio", {"enabled": False})["result"]["audio_enabled"] is False
        n_off = len(sub.messages(audio_topic))
        time.sleep(0.6)
        assert len(sub.messages(audio_topic)) <= n_off + 2
        assert not service.audio_on
    finally:
        req.stop()
