"""A real mosquitto broker and real paho subscribers for the tests.

``mqtt_broker`` (session): ``$MICA_TEST_BROKER=host:port`` when set (CI starts mosquitto on a
loopback port), else a :class:`~mica.device.broker.PrivateBroker` started for the session.
A test that needs it fails, never skips, when neither works.

``mqtt_subscriber(topics)`` makes a started :class:`MessageCollector` on that broker;
``mqtt_config(**mqtt_keys)`` a :class:`Config` pointing at it with a device id of its own, so
retained messages of one test never reach another.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mica.array_dsp.errors import MicaError
from mica.device.broker import PrivateBroker, broker_answers
from mica.device.config import Config, replace


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int


@dataclass(frozen=True)
class Received:
    """One message as the subscriber got it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Any
    """paho ``Properties`` (MQTT 5) or ``None``."""

    @property
    def user_properties(self) -> dict[str, str]:
        return dict(getattr(self.properties, "UserProperty", None) or [])

    @property
    def content_type(self) -> str | None:
        return getattr(self.properties, "ContentType", None)


class MessageCollector:
    """A real paho MQTT 5 subscriber that keeps every message it gets, thread-safely."""

    def __init__(self, host: str, port: int, topics: str | list[str], qos: int = 1) -> None:
        self.host, self.port = host, port
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.qos = qos
        self._messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                   client_id=f"test-sub-{uuid.uuid4().hex[:8]}",
                                   protocol=mqtt.MQTTv5)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe([(t, self.qos) for t in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:
        rec = Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain),
                       getattr(msg, "properties", None))
        with self._cond:
            self._messages.append(rec)
            self._cond.notify_all()

    def start(self, timeout_s: float = 5.0) -> MessageCollector:
        """Connect and wait for the SUBACK, so nothing published afterwards is missed."""
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise AssertionError(f"subscriber got no SUBACK from {self.host}:{self.port} "
                                 f"within {timeout_s} s")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def messages(self, topic: str | None = None) -> list[Received]:
        """A copy of what arrived so far (only ``topic``'s, if given)."""
        with self._cond:
            return [m for m in self._messages if topic is None or m.topic == topic]

    def wait_for(self, predicate: Callable[[list[Received]], bool],
                 timeout_s: float = 5.0) -> list[Received]:
        """Wait until ``predicate(messages)`` holds; return the messages or fail the test."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(list(self._messages)):
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [(m.topic, m.payload[:40]) for m in self._messages[-10:]]
                    raise AssertionError(f"condition not met within {timeout_s} s; "
                                         f"last messages: {got}")
                self._cond.wait(left)
            return list(self._messages)

    def wait_count(self, topic: str, n: int, timeout_s: float = 5.0) -> list[Received]:
        """Wait until ``n`` messages arrived on ``topic``; return those."""
        self.wait_for(lambda ms: sum(m.topic == topic for m in ms) >= n, timeout_s)
        return self.messages(topic)


def _parse_address(text: str) -> BrokerAddress:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        pytest.fail(f"MICA_TEST_BROKER must be host:port, got {text!r}")
    return BrokerAddress(host, int(port))


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[BrokerAddress]:
    """A reachable MQTT 5 broker: ``$MICA_TEST_BROKER`` or a private mosquitto."""
    env = os.environ.get("MICA_TEST_BROKER")
    if env:
        address = _parse_address(env)
        if not broker_answers(address.host, address.port, timeout_s=2.0):
            pytest.fail(f"MICA_TEST_BROKER={env}: no MQTT broker answers there")
        yield address
        return
    broker = PrivateBroker()
    try:
        broker.start()
    except MicaError as err:
        pytest.fail(f"no MQTT broker for the tests: set MICA_TEST_BROKER=host:port or "
                    f"install mosquitto ({err})")
    try:
        yield BrokerAddress(broker.host, broker.port)
    finally:
        broker.stop()


@pytest.fixture
def mqtt_subscriber(mqtt_broker: BrokerAddress) -> Iterator[Callable[..., MessageCollector]]:
    """Factory: ``mqtt_subscriber(topics, host=, port=)`` -> a started collector (stopped at
    teardown). Defaults to the session broker."""
    made: list[MessageCollector] = []

    def make(topics: str | list[str], host: str | None = None, port: int | None = None,
             qos: int = 1) -> MessageCollector:
        collector = MessageCollector(host or mqtt_broker.host, port or mqtt_broker.port,
                                     topics, qos)
        made.append(collector)
        return collector.start()

    yield make
    for collector in made:
        collector.stop()


def config_for_broker(host: str, port: int, **mqtt_keys: Any) -> Config:
    """Defaults with ``mqtt.host/port`` set and a fresh device id ``test-<8 hex>``."""
    device_id = f"test-{uuid.uuid4().hex[:8]}"
    return replace(Config(), device={"id": device_id},
                   mqtt={"host": host, "port": port, **mqtt_keys})


@pytest.fixture
def mqtt_config(mqtt_broker: BrokerAddress) -> Callable[..., Config]:
    """Factory: ``mqtt_config(**mqtt_keys)`` -> a Config on the session broker, own device id."""

    def make(**mqtt_keys: Any) -> Config:
        return config_for_broker(mqtt_broker.host, mqtt_broker.port, **mqtt_keys)

    return make
