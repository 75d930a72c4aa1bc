"""Store-and-forward: the spool on its own, then a real mosquitto killed and restarted while
the link keeps publishing (every telemetry message and event arrives, in order, none twice),
and a restart of mica itself with messages waiting on disk."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mica.device.broker import PrivateBroker, free_loopback_port
from mica.device.mqtt_link import MqttLink
from mica.device.spool import Spool, SpooledMessage
from tests.fixtures_mqtt import config_for_broker


def msg(i: int, size: int = 10) -> SpooledMessage:
    return SpooledMessage(f"t/{i}", bytes([i % 256]) * size)


# --------------------------------------------------------------------------- the spool


@pytest.mark.parametrize("on_disk", [True, False])
def test_fifo_bounded_oldest_dropped_and_counted(tmp_path: Path, on_disk: bool) -> None:
    one = len(msg(0).encode())
    spool = Spool(tmp_path / "s" if on_disk else None, max_bytes=5 * one)
    for i in range(8):
        assert spool.append(msg(i))
    assert len(spool) == 5 and spool.bytes == 5 * one
    assert spool.dropped_total == 3 and spool.appended_total == 8
    got = spool.peek(10)
    assert [m.topic for _, m in got] == [f"t/{i}" for i in range(3, 8)]
    spool.remove(got[0][0])
    assert [m.topic for _, m in spool.peek(1)] == ["t/4"]
    assert not spool.append(SpooledMessage("big", b"x" * 6 * one))  # larger than the spool
    assert spool.dropped_total == 4
    assert spool.stats() == {"spool_messages": 4, "spool_bytes": 4 * one,
                             "spool_dropped_total": 4}


def test_disk_spool_survives_a_restart_and_skips_damage(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    spool = Spool(folder, max_bytes=10_000)
    for i in range(5):
        spool.append(SpooledMessage(f"t/{i}", json.dumps({"i": i}).encode(), 1, i == 4))
    files = sorted(folder.iterdir())
    files[1].write_bytes(b"garbage")  # damaged
    (folder / "00000000000000000099.tmp").write_bytes(b"half")  # a write cut short
    again = Spool(folder, max_bytes=10_000)
    assert len(again) == 5
    got = again.peek(10)
    assert [m.topic for _, m in got] == ["t/0", "t/2", "t/3", "t/4"]
    assert got[-1][1].retain and json.loads(got[0][1].payload) == {"i": 0}
    assert again.dropped_total == 1 and not (folder / "00000000000000000099.tmp").exists()
    again.append(msg(9))  # numbering goes on after the highest found
    assert [m.topic for _, m in again.peek(10)][-1] == "t/9"
    for number, _ in again.peek(10):
        again.remove(number)
    assert len(again) == 0 and list(folder.iterdir()) == []


# --------------------------------------------------------------------------- broker outage


class SessionSubscriber:
    """A paho subscriber with a persistent session (MQTT 3.1.1, clean session off: mosquitto
    2.0 restores those from its persistence file after a restart), so the broker keeps its
    messages while it is away; it reconnects by itself."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.topics = topics
        self.messages: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"spool-sub-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(5)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not flags.session_present:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload)))

    def of(self, suffix: str) -> list[dict]:
        with self._lock:
            return [p for t, p in self.messages if t.endswith(suffix)]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def persistent_broker(port: int, store: Path) -> PrivateBroker:
    return PrivateBroker(port=port, extra_config=[
        "persistence true", f"persistence_location {store}/", "autosave_interval 1"])


def _store(tmp_path: Path) -> Path:
    """A folder mosquitto can write its persistence file to: started as root it runs as user
    mosquitto, which cannot enter pytest's private tmp_path, so this one is directly in the
    temp folder (removed by the ``broker_store`` fixture)."""
    store = Path(tempfile.mkdtemp(prefix="mica-broker-store-"))
    os.chmod(store, 0o777)
    return store


@pytest.fixture
def broker_store(tmp_path: Path):
    store = _store(tmp_path)
    yield store
    shutil.rmtree(store, ignore_errors=True)


def _outage(tmp_path: Path, store: Path, outage_s: float) -> None:
    port = free_loopback_port()
    broker = persistent_broker(port, store).start()
    cfg = config_for_broker("127.0.0.1", port, telemetry_qos=1, keepalive_s=5,
                            spool_max_bytes=4 * 2 ** 20)
    base = cfg.topic_base
    sub = SessionSubscriber(port, [f"{base}/telemetry", f"{base}/event/#"])
    link = MqttLink(cfg, spool=Spool(tmp_path / "spool", cfg.mqtt.spool_max_bytes))
    link.start()
    assert link.wait_connected(5)
    sent = {"telemetry": 0, "event": 0}
    stop = threading.Event()
    during_outage: list[int] = []
    spooled: list[int] = []
    broker_down = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            i = sent["telemetry"]
            if not link.connected:
                spooled.append(i)
            link.publish_telemetry({"seq": i})
            if broker_down.is_set():
                during_outage.append(i)
                link.publish_audio(b"\0\0" * 320, i, i, "beam")
            sent["telemetry"] += 1
            if i % 5 == 0:
                link.publish_event("test", {"n": sent["event"]})
                sent["event"] += 1
            time.sleep(0.02)

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        time.sleep(1.0)
        broker.stop()
        broker_down.set()
        deadline = time.monotonic() + 5
        while link.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not link.connected
        time.sleep(outage_s)
        broker_down.clear()
        n_spooled = len(spooled)
        backlog = len(link.spool) if link.spool is not None else 0
        broker = persistent_broker(port, store).start()
        assert link.wait_connected(35), "no reconnect"
        time.sleep(1.0)
        stop.set()
        thread.join()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
                {p["seq"] for p in sub.of("/telemetry")} != set(range(sent["telemetry"]))
                or {p["n"] for p in sub.of("/event/test")} != set(range(sent["event"]))):
            time.sleep(0.05)
        telemetry = [p["seq"] for p in sub.of("/telemetry")]
        events = [p["n"] for p in sub.of("/event/test")]
        assert backlog >= n_spooled - 1 > 0, (backlog, n_spooled)
        # Nothing lost, in order: the first arrival of each message, in arrival order.
        assert _first_arrivals(telemetry) == list(range(sent["telemetry"]))
        assert _first_arrivals(events) == list(range(sent["event"]))
        # Everything that waited in the spool arrived exactly once. A message in flight
        # when the broker died (sent, no PUBACK yet) may come twice: QoS 1 is at least once.
        repeated = sorted({s for s in telemetry if telemetry.count(s) > 1})
        assert not set(repeated) & set(spooled), repeated
        assert len(repeated) <= 20, repeated  # at most the in-flight window
        assert link.dropped_audio_total == len(during_outage)
        deadline = time.monotonic() + 5
        while link.backlog and time.monotonic() < deadline:
            time.sleep(0.05)
        assert link.spool is not None and len(link.spool) == 0
        assert link.spool.dropped_total == 0
    finally:
        stop.set()
        thread.join()
        link.stop()
        sub.stop()
        broker.stop()


def _first_arrivals(values: list[int]) -> list[int]:
    seen: set[int] = set()
    return [v for v in values if not (v in seen or seen.add(v))]


def test_broker_outage_everything_arrives_in_order_once(tmp_path: Path, broker_store) -> None:
    _outage(tmp_path, broker_store, outage_s=5.0)


@pytest.mark.slow
def test_broker_outage_30s(tmp_path: Path, broker_store) -> None:
    _outage(tmp_path, broker_store, outage_s=30.0)


def test_spool_delivered_after_mica_restarts(tmp_path: Path, broker_store: Path) -> None:
    """The broker is down while mica runs and stops; the next mica delivers the backlog
    first, then its own messages."""
    store = broker_store
    port = free_loopback_port()
    broker = persistent_broker(port, store).start()
    cfg = config_for_broker("127.0.0.1", port, telemetry_qos=1)
    base = cfg.topic_base
    sub = SessionSubscriber(port, [f"{base}/telemetry", f"{base}/event/#"])
    broker.stop()
    spool_dir = tmp_path / "spool"
    first = MqttLink(cfg, spool=Spool(spool_dir, 2 ** 20))
    first.start()
    for i in range(20):
        first.publish_telemetry({"seq": i})
    first.publish_event("fault", {"n": 0})
    first.stop()
    assert len(Spool(spool_dir, 2 ** 20)) == 21
    broker = persistent_broker(port, store).start()
    second = MqttLink(cfg, spool=Spool(spool_dir, 2 ** 20))
    try:
        second.start()
        for i in range(20, 25):
            second.publish_telemetry({"seq": i})
        assert second.wait_connected(10)
        deadline = time.monotonic() + 15
        while len(sub.of("/telemetry")) < 25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p["seq"] for p in sub.of("/telemetry")] == list(range(25))
        assert sub.of("/event/fault") == [{"n": 0}]
        deadline = time.monotonic() + 5
        while second.backlog and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(Spool(spool_dir, 2 ** 20)) == 0
    finally:
        second.stop()
        sub.stop()
        broker.stop()
