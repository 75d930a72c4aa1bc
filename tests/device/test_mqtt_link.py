"""MqttLink and AudioChunker against a real mosquitto with a real paho subscriber."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from mica.device.broker import PrivateBroker
from mica.device.mqtt_link import AudioChunker, MqttLink
from tests.fixtures_mqtt import config_for_broker

INFO = {"version": "0.1.0", "board": "test-board", "channels": 4, "config_hash": "abc123",
        "quality_level": "full"}


def started(cfg, info=INFO) -> MqttLink:
    link = MqttLink(cfg)
    link.set_info(info)
    link.start()
    assert link.wait_connected(5.0), "MqttLink did not connect within 5 s"
    return link


def payloads(msgs) -> list[str]:
    return [m.payload.decode() for m in msgs]


# --------------------------------------------------------------------------- status / info


def test_online_and_info_retained_then_offline_on_stop(mqtt_config, mqtt_subscriber) -> None:
    cfg = mqtt_config()
    base = cfg.topic_base
    link = started(cfg)
    time.sleep(0.3)  # let the broker store them before the subscriber comes
    # A subscriber that comes later gets both as retained messages.
    sub = mqtt_subscriber(f"{base}/#")
    status = sub.wait_count(f"{base}/status", 1)
    assert status[0].payload == b"online" and status[0].retain
    info = sub.wait_count(f"{base}/info", 1)
    assert info[0].retain and json.loads(info[0].payload) == INFO
    assert link.connected and link.connects_total == 1

    t0 = time.monotonic()
    link.stop(timeout_s=1.0)
    assert time.monotonic() - t0 < 1.0
    assert not link.connected
    assert payloads(sub.wait_count(f"{base}/status", 2)) == ["online", "offline"]
    late = mqtt_subscriber(f"{base}/status")
    retained = late.wait_count(f"{base}/status", 1)
    assert retained[0].payload == b"offline" and retained[0].retain
    link.stop()  # idempotent


def test_set_info_while_connected_republishes(mqtt_config, mqtt_subscriber) -> None:
    cfg = mqtt_config()
    sub = mqtt_subscriber(f"{cfg.topic_base}/info")
    link = started(cfg)
    try:
        sub.wait_count(f"{cfg.topic_base}/info", 1)
        link.set_info({**INFO, "quality_level": "low"})
        msgs = sub.wait_count(f"{cfg.topic_base}/info", 2)
        assert json.loads(msgs[-1].payload)["quality_level"] == "low"
    finally:
        link.stop()


def test_last_will_offline_when_the_process_is_killed(mqtt_config, mqtt_subscriber) -> None:
    cfg = mqtt_config(keepalive_s=5)
    base = cfg.topic_base
    sub = mqtt_subscriber(f"{base}/status")
    script = (
        "import sys, time\n"
        "from mica.device.config import Config, replace\n"
        "from mica.device.mqtt_link import MqttLink\n"
        "cfg = replace(Config(), device={'id': sys.argv[1]},\n"
        "              mqtt={'host': sys.argv[2], 'port': int(sys.argv[3]), 'keepalive_s': 5})\n"
        "link = MqttLink(cfg)\n"
        "link.start()\n"
        "assert link.wait_connected(5)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, cfg.device.id, cfg.mqtt.host,
                             str(cfg.mqtt.port)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        sub.wait_count(f"{base}/status", 1)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        msgs = sub.wait_count(f"{base}/status", 2, timeout_s=10.0)  # within keepalive * 1.5
        assert payloads(msgs) == ["online", "offline"]
        assert time.monotonic() - t0 < 10.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    late = mqtt_subscriber(f"{base}/status")
    retained = late.wait_count(f"{base}/status", 1)
    assert retained[0].payload == b"offline" and retained[0].retain


# --------------------------------------------------------------------------- audio


def test_audio_chunks_arrive_with_properties_and_gapless_seq(mqtt_config,
                                                             mqtt_subscriber) -> None:
    cfg = mqtt_config(audio_enabled=True)
    topic = f"{cfg.topic_base}/audio/beam"
    sub = mqtt_subscriber(topic)
    hop, chunk, n_blocks = 160, 320, 50
    rng = np.random.default_rng(1)
    signal_f = (rng.uniform(-0.5, 0.5, hop * n_blocks)).astype(np.float32)
    chunker = AudioChunker(chunk, fs_hz=16000)
    t0_ns = 1_000_000_000
    link = started(cfg)
    sent = []
    try:
        for i in range(n_blocks):
            t_ns = t0_ns + i * hop * 62_500  # 62.5 us per sample at 16 kHz
            for pcm, seq, t_chunk in chunker.push(signal_f[i * hop:(i + 1) * hop], t_ns, seq=i):
                assert link.publish_audio(pcm, seq, t_chunk, "beam")
                sent.append((pcm, seq, t_chunk))
        msgs = sub.wait_count(topic, len(sent))
    finally:
        link.stop()
    assert len(sent) == n_blocks * hop // chunk
    assert [int(m.user_properties["seq"]) for m in msgs] == list(range(len(sent)))
    for m, (pcm, seq, t_chunk) in zip(msgs, sent, strict=True):
        assert m.content_type == "audio/L16;rate=16000;channels=1"
        assert m.qos == 0
        assert m.payload == pcm
        assert int(m.user_properties["t_capture_ns"]) == t_chunk == t0_ns + seq * chunk * 62_500
    received = np.frombuffer(b"".join(m.payload for m in msgs), "<i2") / 32768.0
    np.testing.assert_allclose(received, signal_f, atol=1 / 32768)
    assert link.dropped_audio_total == 0 and link.audio_published_total == len(sent)


def test_audio_dropped_and_counted_while_disconnected() -> None:
    with PrivateBroker() as broker:
        port = broker.port
    cfg = config_for_broker("127.0.0.1", port)  # nothing listens there any more
    link = MqttLink(cfg)
    link.start()
    try:
        t0 = time.monotonic()
        for seq in range(100):
            assert not link.publish_audio(b"\0\0" * 320, seq, seq, "beam")
        assert time.monotonic() - t0 < 0.5
        assert link.dropped_audio_total == 100
        assert link.publish_telemetry({"seq": 0})  # QoS 1: waits in the spool
        assert link.spool is not None and len(link.spool) == 1
    finally:
        t0 = time.monotonic()
        link.stop(timeout_s=1.0)
        assert time.monotonic() - t0 < 1.2


def test_audio_queue_bounded_when_the_broker_stalls() -> None:
    """A broker that stops reading: paho's QoS 0 buffer would grow; the link drops instead."""
    with PrivateBroker() as broker:
        cfg = config_for_broker(broker.host, broker.port, max_queued_messages=10)
        link = started(cfg)
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            pcm = b"\x01\x00" * 32768  # 64 KiB: the socket buffers fill after some MB
            slowest = 0.0
            for seq in range(2000):
                t0 = time.perf_counter()
                link.publish_audio(pcm, seq, seq, "beam")
                slowest = max(slowest, time.perf_counter() - t0)
                if link.dropped_audio_total >= 10:
                    break
            assert link.dropped_audio_total >= 10, "never dropped: the queue is not bounded"
            assert link.audio_published_total < 2000
            assert slowest < 0.05
            t0 = time.monotonic()
            link.stop(timeout_s=1.0)
            assert time.monotonic() - t0 < 1.2
        finally:
            os.kill(broker.pid, signal.SIGCONT)


def test_audio_chunker_times_and_gaps() -> None:
    chunker = AudioChunker(300, fs_hz=16000)
    block = np.full(160, 0.25, dtype=np.float32)
    out = chunker.push(block, 0, seq=0)
    assert out == []
    out = chunker.push(block, 10_000_000, seq=1)
    assert len(out) == 1 and out[0].seq == 0 and out[0].t_capture_ns == 0
    assert len(out[0].pcm) == 600
    # The next chunk starts 140 samples into block 1: 140 / 16000 s after its time.
    out = chunker.push(block, 20_000_000, seq=2)
    assert out == []
    # Block 3 is lost upstream: the partial chunk (20 + 160 samples) goes out as it is.
    out = chunker.push(block, 40_000_000, seq=4)
    assert [c.seq for c in out] == [1]
    assert out[0].t_capture_ns == 10_000_000 + 140 * 1_000_000_000 // 16000
    assert len(out[0].pcm) == 2 * (20 + 160)
    rest = chunker.flush()
    assert rest is not None and rest.seq == 2 and rest.t_capture_ns == 40_000_000
    assert chunker.flush() is None


def test_audio_chunker_encoding_clips_and_rounds() -> None:
    chunker = AudioChunker(5)
    (chunk,) = chunker.push(np.array([0.0, 0.5, -1.0, 1.5, -2.0], np.float32), 0)
    assert np.frombuffer(chunk.pcm, "<i2").tolist() == [0, 16384, -32768, 32767, -32768]


def test_bad_topic_levels_are_refused(mqtt_config) -> None:
    link = MqttLink(mqtt_config())
    with pytest.raises(ValueError, match="stream"):
        link.publish_audio(b"", 0, 0, "a/b")
    with pytest.raises(ValueError, match="event kind"):
        link.publish_event("+", {})


# --------------------------------------------------------------------------- telemetry/events


def test_telemetry_and_events(mqtt_config, mqtt_subscriber) -> None:
    cfg = mqtt_config()
    base = cfg.topic_base
    sub = mqtt_subscriber([f"{base}/telemetry", f"{base}/event/#"])
    link = started(cfg)
    try:
        telemetry = {"seq": 3, "uptime_seconds": 1.5, "dsp_block_seconds": {"p50": 0.001}}
        assert link.publish_telemetry(telemetry)
        assert link.publish_event("speech_start", {"t_capture_ns": 123})
        assert link.publish_event("fault", {"kind": "device_lost"})
        (tele,) = sub.wait_count(f"{base}/telemetry", 1)
        assert json.loads(tele.payload) == telemetry and tele.qos == 1 and not tele.retain
        sub.wait_count(f"{base}/event/fault", 1)
        speech = sub.messages(f"{base}/event/speech_start")
        assert json.loads(speech[0].payload) == {"t_capture_ns": 123} and speech[0].qos == 1
    finally:
        link.stop()


# --------------------------------------------------------------------------- broker loss


def test_stop_within_timeout_when_broker_is_gone() -> None:
    broker = PrivateBroker().start()
    link = started(config_for_broker(broker.host, broker.port))
    broker.stop()
    t0 = time.monotonic()
    link.stop(timeout_s=1.0)  # may still believe it is connected
    assert time.monotonic() - t0 < 1.2


def test_stop_within_timeout_after_the_link_noticed(caplog) -> None:
    broker = PrivateBroker().start()
    link = started(config_for_broker(broker.host, broker.port))
    broker.stop()
    deadline = time.monotonic() + 5
    while link.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not link.connected
    assert any("connection lost" in r.getMessage() for r in caplog.records)
    time.sleep(0.3)  # now in paho's reconnect wait
    t0 = time.monotonic()
    link.stop(timeout_s=1.0)
    assert time.monotonic() - t0 < 1.2


def test_reconnect_republishes_status_info_and_queued_events(mqtt_subscriber) -> None:
    broker = PrivateBroker().start()
    port = broker.port
    cfg = config_for_broker(broker.host, port)
    base = cfg.topic_base
    link = started(cfg)
    sub = None
    try:
        broker.stop()
        deadline = time.monotonic() + 5
        while link.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not link.connected
        assert not link.publish_audio(b"\0\0", 0, 0, "beam")
        assert link.dropped_audio_total == 1
        assert link.publish_event("fault", {"kind": "queued"})  # QoS 1: waits in paho's queue
        broker = PrivateBroker(port=port).start()  # persistence off: the retained are gone
        sub = mqtt_subscriber(f"{base}/#", port=port)
        sub.wait_for(lambda ms: {m.topic for m in ms} >= {f"{base}/status", f"{base}/info",
                                                          f"{base}/event/fault"},
                     timeout_s=6.0)
        assert link.connected and link.connects_total == 2
        assert sub.messages(f"{base}/status")[0].payload == b"online"
        assert json.loads(sub.messages(f"{base}/info")[0].payload) == INFO
        assert json.loads(sub.messages(f"{base}/event/fault")[0].payload) == {"kind": "queued"}
    finally:
        link.stop()
        if sub is not None:
            sub.stop()
        broker.stop()


# --------------------------------------------------------------------------- credentials


def test_username_and_password(caplog) -> None:
    # mosquitto started as root reads the password file as user mosquitto: make it reachable.
    folder = Path(tempfile.mkdtemp(prefix="mica-passwd-"))
    folder.chmod(0o755)
    passwd = folder / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "mica", "s3cret"], check=True,
                   capture_output=True)
    passwd.chmod(0o644)
    with PrivateBroker(allow_anonymous=False,
                       extra_config=[f"password_file {passwd}"]) as broker:
        good = started(config_for_broker(broker.host, broker.port, username="mica",
                                         password="s3cret"))
        good.stop()
        bad = MqttLink(config_for_broker(broker.host, broker.port, username="mica",
                                         password="wrong"))
        bad.start()
        try:
            deadline = time.monotonic() + 5
            while not any("refused" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "no 'refused' log within 5 s"
                time.sleep(0.01)
            assert not bad.connected
        finally:
            bad.stop()
            shutil.rmtree(folder, ignore_errors=True)
