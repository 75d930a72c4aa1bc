"""TLS (own CA made here with openssl, client certificate) and a password read from a file,
against a real mosquitto; a wrong password keeps retrying with backoff and logs why."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from mica.array_dsp.errors import ConfigError
from mica.device.broker import PrivateBroker, free_loopback_port
from mica.device.mqtt_link import MqttLink
from tests.fixtures_mqtt import config_for_broker


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki():
    """CA, a server certificate for 127.0.0.1, a client certificate and a password file, in a
    folder the broker (running as user mosquitto) can read."""
    folder = Path(tempfile.mkdtemp(prefix="mica-pki-"))
    os.chmod(folder, 0o755)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=mica test CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)
    for name, extra in (("server", ["-addext", "subjectAltName=IP:127.0.0.1"]),
                        ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=mica-{name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", *extra, cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-copy_extensions",
                 "copy", cwd=folder)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(folder / "passwd"), "board1",
                    "s3cret"], check=True, capture_output=True)
    for f in folder.iterdir():
        f.chmod(0o644)
    (folder / "good.pw").write_text("s3cret\n")
    (folder / "bad.pw").write_text("wrong\n")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_broker(pki: Path):
    port = free_loopback_port()
    broker = PrivateBroker(port=port, allow_anonymous=False, extra_config=[
        f"password_file {pki / 'passwd'}",
        f"cafile {pki / 'ca.crt'}", f"certfile {pki / 'server.crt'}",
        f"keyfile {pki / 'server.key'}", "require_certificate true"])
    # PrivateBroker probes readiness with a plain MQTT CONNECT on its own port, which a TLS
    # listener never answers: its port stays plain, and a second listener, first in the extra
    # lines so that the TLS options below apply to it, is the TLS one.
    broker._extra_config.insert(0, f"listener {free_loopback_port()} 127.0.0.1")
    broker._extra_config.insert(1, "allow_anonymous false")
    with broker:
        yield broker


def _tls_config(broker: PrivateBroker, pki: Path, password_file: str):
    return config_for_broker("127.0.0.1", _tls_port(broker), tls=True,
                             tls_ca_file=str(pki / "ca.crt"),
                             tls_cert_file=str(pki / "client.crt"),
                             tls_key_file=str(pki / "client.key"),
                             username="board1", password_file=str(pki / password_file))


def _tls_port(broker: PrivateBroker) -> int:
    return int(broker._extra_config[0].split()[1])


def test_tls_client_certificate_and_password_file(tls_broker, pki: Path) -> None:
    cfg = _tls_config(tls_broker, pki, "good.pw")
    link = MqttLink(cfg)
    link.start()
    try:
        assert link.wait_connected(10), "no TLS connection"
        assert link.publish_event("test", {"ok": True})
    finally:
        link.stop()


def test_wrong_password_retries_with_backoff_and_logs_why(tls_broker, pki: Path,
                                                           caplog) -> None:
    caplog.set_level(logging.INFO, logger="mica.device.mqtt_link")
    cfg = _tls_config(tls_broker, pki, "bad.pw")
    link = MqttLink(cfg)
    link.start()
    try:
        times: list[float] = []
        deadline = time.monotonic() + 15
        while len(times) < 3 and time.monotonic() < deadline:
            times = [r.created for r in caplog.records if "refused" in r.getMessage()]
            time.sleep(0.05)
        assert len(times) >= 3, "fewer than 3 refused attempts logged within 15 s"
        refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert "Not authorized" in refused[0] or "Bad user name or password" in refused[0]
        assert "retrying in about" in refused[0]
        first_gap, second_gap = times[1] - times[0], times[2] - times[1]
        assert first_gap >= 0.8 and second_gap >= 1.5 * first_gap * 0.9, (first_gap, second_gap)
        assert not link.connected
    finally:
        link.stop()


def test_tls_to_a_plain_listener_fails_without_crashing(pki: Path, caplog) -> None:
    with PrivateBroker() as plain:
        cfg = config_for_broker("127.0.0.1", plain.port, tls=True,
                                tls_ca_file=str(pki / "ca.crt"))
        link = MqttLink(cfg)
        link.start()
        try:
            assert not link.wait_connected(1.5)
        finally:
            link.stop()


def test_unreadable_tls_files_are_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate")
    cfg = config_for_broker("127.0.0.1", 1883, tls=True, tls_ca_file=str(bad))
    with pytest.raises(ConfigError, match="TLS"):
        MqttLink(cfg)
    cfg = config_for_broker("127.0.0.1", 1883, username="u",
                            password_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="password_file"):
        MqttLink(cfg)
