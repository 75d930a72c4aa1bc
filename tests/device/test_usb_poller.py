"""The XMOS array's own DOA / VAD in telemetry: the poller thread against the emulated
XVF-3000 (pyusb backend boundary) with timeouts, stalls and unplugging, and the daemon
publishing ``onboard`` to a real broker while USB fails and while USB hangs."""

from __future__ import annotations

import errno
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import jsonschema
import numpy as np
import soundfile as sf
import usb.core

from mica.device.config import parse_config
from mica.device.service import Service
from mica.device.usb_poller import OnboardPoller
from mica.device.usb_xmos import PARAMETERS
from tests.device.xvf_emulator import FakeXvfBackend

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "telemetry.schema.json"
AGC = (PARAMETERS["AGCONOFF"].id, PARAMETERS["AGCONOFF"].offset)
DOA = (PARAMETERS["DOAANGLE"].id, PARAMETERS["DOAANGLE"].offset)


def _until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def _onboard(poller: OnboardPoller) -> dict:
    return poller.telemetry()["onboard"]


def test_poller_reads_detections_and_survives_every_fault() -> None:
    backend = FakeXvfBackend()
    dev = backend.devices[0]
    poller = OnboardPoller(interval_s=0.01, raw_channels=True, timeout_ms=50,
                           reconnect_s=0.02, reconnect_after=3, backend=backend)
    poller.start()
    try:
        _until(lambda: _onboard(poller).get("polls_total", 0) >= 2)
        ob = _onboard(poller)
        assert (ob["doa_deg"], ob["voice_activity"], ob["speech_detected"]) == (123, True, False)
        assert ob["connected"] and ob["raw_channels"] and ob["errors_total"] == 0
        assert dev.registers[AGC] == 0  # on-board processing switched off at connection
        hidden = poller.telemetry(muted=True)["onboard"]  # privacy mute: no detections
        assert not {"doa_deg", "voice_activity", "speech_detected", "age_seconds"} & set(hidden)
        assert hidden["connected"] and hidden["polls_total"] >= 2
        dev.registers[DOA] = 271
        _until(lambda: _onboard(poller)["doa_deg"] == 271)
        for fault, kind in (("timeout", "timeout"), ("stall", "stall")):
            backend.fault = fault
            _until(lambda k=kind: _onboard(poller)["errors"].get(k, 0) >= 4)
            assert _onboard(poller)["doa_deg"] == 271  # the last good value is kept...
            backend.fault = None
            polls = _onboard(poller)["polls_total"]
            _until(lambda p=polls: _onboard(poller)["polls_total"] > p)
        assert _onboard(poller)["connects_total"] >= 2  # ...and it reopened after 3 failures
        backend.fault = "unplug"
        _until(lambda: not _onboard(poller)["connected"]
               and _onboard(poller)["errors"].get("not_found", 0) >= 2)
        ob = _onboard(poller)
        assert ob["errors"]["disconnected"] >= 1 and "no XMOS array" in ob["last_error"]
        dev.registers[AGC] = 1  # a re-plugged array comes back with its defaults
        connects = ob["connects_total"]
        backend.fault = None
        _until(lambda: _onboard(poller)["connects_total"] > connects
               and _onboard(poller)["connected"])
        assert dev.registers[AGC] == 0  # switched off again
        assert poller._thread is not None and poller._thread.is_alive()
    finally:
        poller.stop()
    assert poller._thread is None


class HangingXvfBackend(FakeXvfBackend):
    """A firmware that stops answering: every control transfer blocks for the whole USB
    timeout before libusb reports it (what a wedged array does)."""

    hang = False

    def ctrl_transfer(self, dev_handle, bmRequestType, bRequest, wValue, wIndex, data,
                      timeout):
        if self.hang:
            time.sleep(timeout / 1000.0)
            raise usb.core.USBTimeoutError("Operation timed out", -7, errno.ETIMEDOUT)
        return super().ctrl_transfer(dev_handle, bmRequestType, bRequest, wValue, wIndex,
                                     data, timeout)


def test_daemon_publishes_onboard_and_outlives_usb(mqtt_broker, mqtt_subscriber,
                                                   tmp_path: Path) -> None:
    wav = tmp_path / "array.wav"
    sf.write(wav, (0.05 * np.random.default_rng(5).standard_normal((16000, 4))).astype(
        np.float32), 16000, subtype="PCM_16")
    device_id = f"usb-{uuid.uuid4().hex[:8]}"
    cfg = parse_config({
        "device": {"id": device_id},
        "capture": {"source": "wav", "wav_path": str(wav), "wav_loop": True, "channels": 4},
        "array": {"geometry_m": [[0.032, 0, 0], [0, 0.032, 0], [-0.032, 0, 0],
                                 [0, -0.032, 0]]},
        "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port,
                 "telemetry_interval_s": 0.2},
        "governor": {"enabled": False},
        "usb": {"poll_onboard": True, "raw_channels": True, "poll_interval_s": 0.05,
                "timeout_ms": 300, "reconnect_s": 0.1},
    }, tmp_path)
    backend = HangingXvfBackend()
    topic = f"{cfg.topic_base}/telemetry"
    sub = mqtt_subscriber(topic)
    service = Service(cfg, usb_backend=backend)
    schema = json.loads(SCHEMA.read_text())

    def latest() -> dict:
        return json.loads(sub.messages(topic)[-1].payload)

    def onboard_where(pred: Callable[[dict], bool], timeout_s: float = 5.0) -> dict:
        sub.wait_for(lambda ms: any(pred(json.loads(m.payload).get("onboard", {}))
                                    for m in ms if m.topic == topic), timeout_s)
        return latest()

    service.start()
    try:
        msg = onboard_where(lambda ob: ob.get("doa_deg") == 123)
        jsonschema.validate(msg, schema, cls=jsonschema.Draft202012Validator)
        assert msg["onboard"]["voice_activity"] is True
        assert backend.devices[0].registers[AGC] == 0
        # unplugged: counted, reported, the daemon goes on
        backend.fault = "unplug"
        msg = onboard_where(lambda ob: ob.get("connected") is False
                            and ob.get("errors", {}).get("disconnected", 0) >= 1)
        jsonschema.validate(msg, schema, cls=jsonschema.Draft202012Validator)
        backend.fault = None
        onboard_where(lambda ob: ob.get("connected") is True
                      and ob.get("connects_total", 0) >= 2)
        # a wedged array: each transfer blocks 0.3 s; capture and DSP never wait for it
        blocks0, t0 = service.blocks_total, time.monotonic()
        backend.hang = True
        onboard_where(lambda ob: ob.get("errors", {}).get("timeout", 0) >= 3, 8.0)
        elapsed = time.monotonic() - t0
        blocks = service.blocks_total - blocks0
        audio_s = blocks * cfg.capture.period_frames / cfg.capture.fs_hz
        assert audio_s > 0.8 * elapsed - 0.3, (audio_s, elapsed)  # kept (about) real time
        assert service.ring.dropped_total == 0 and service.fault is None
        backend.hang = False
    finally:
        service.stop(timeout_s=2.0)
    assert service.fault is None
