"""PrivateBroker against the real mosquitto binary, and the session broker fixture."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from mica.array_dsp.errors import MicaError
from mica.device import broker as broker_mod
from mica.device.broker import (
    BrokerError,
    BrokerNotFoundError,
    PrivateBroker,
    broker_answers,
    find_mosquitto,
)


def test_find_mosquitto_finds_the_installed_binary() -> None:
    path = find_mosquitto()
    assert path is not None and Path(path).is_file() and os.access(path, os.X_OK)


def test_find_mosquitto_none_when_absent(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(broker_mod, "_FALLBACK_DIRS", (str(tmp_path),))
    assert find_mosquitto() is None
    with pytest.raises(BrokerNotFoundError, match="mosquitto not found") as info:
        PrivateBroker().start()
    assert isinstance(info.value, MicaError)


def test_private_broker_listens_on_loopback_and_stops() -> None:
    with PrivateBroker() as broker:
        assert broker.host == "127.0.0.1" and 1024 <= broker.port <= 65535
        assert broker.running and broker.pid is not None
        assert broker_answers(broker.host, broker.port)
        assert broker.address == f"127.0.0.1:{broker.port}"
        pid, port = broker.pid, broker.port
    assert not broker.running
    assert not broker_answers("127.0.0.1", port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    broker.stop()  # idempotent


def test_two_private_brokers_get_different_ports() -> None:
    with PrivateBroker() as a, PrivateBroker() as b:
        assert a.port != b.port
        assert broker_answers(a.host, a.port) and broker_answers(b.host, b.port)


def test_bad_config_fails_with_mosquitto_stderr() -> None:
    with pytest.raises(BrokerError, match="exited with status") as info:
        PrivateBroker(extra_config=["no_such_option_here 1"]).start()
    assert "no_such_option_here" in str(info.value) or "Unknown" in str(info.value)


def test_port_in_use_is_reported() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BrokerError, match="(?i)address already in use"):
            PrivateBroker(port=port).start()


def test_stop_ends_a_stopped_broker() -> None:
    broker = PrivateBroker().start()
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGSTOP)
    broker.stop(timeout_s=2.0)
    assert not broker.running


def test_session_broker_delivers(mqtt_broker, mqtt_subscriber) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    sub = mqtt_subscriber("broker-test/#")
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect(mqtt_broker.host, mqtt_broker.port)
    pub.loop_start()
    try:
        pub.publish("broker-test/x", b"hello", qos=1).wait_for_publish(5)
        got = sub.wait_count("broker-test/x", 1)
        assert got[0].payload == b"hello"
    finally:
        pub.disconnect()
        pub.loop_stop()
