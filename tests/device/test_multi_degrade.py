"""A multi-device array that loses one device, through real ALSA, a real broker and a real
subscriber: two capture devices made of our failmic plugin (tests/alsa_failmic) in its
``wallclock`` mode (both play the two halves of a corpus 4-mic recording as one room), the
second unplugged mid-stream and plugged back. The array must go on with the reference
device (audio keeps flowing, the lost device's rows are zeros and left out of the
beamformer), name the device in ``device_lost``/``device_back``, reopen it with backoff, and
re-acquire its offset on return (a drift ``acquired`` event for it, then tracking). Then
the reference device (the clock) fails: the whole array pauses (``device_lost`` naming it,
``device_up`` 0, no audio) and is reopened as a whole once it is back."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mica.device.config import parse_config
from mica.device.service import Service
from mica.device.sources.pcm import float_to_pcm
from tests.fixtures_alsa import FakeAlsa

PLUGIN_C = Path(__file__).resolve().parent.parent / "alsa_failmic" / "pcm_failmic.c"
SPEECH = "multichannel/speechbrain_4mic_speech_-0.82918_0.55279_-0.082918"


@pytest.fixture(scope="module")
def room_devices(fake_alsa: FakeAlsa, corpus_dir: Path):
    """``(name_a, name_b, unplug_a, unplug_b, geometry_m)``: two 2-channel failmic PCMs
    playing the two halves of a corpus 4-mic recording in wall-clock time; each fails while
    its ``unplug_*`` file exists."""
    if shutil.which("gcc") is None:
        pytest.fail("the failmic plugin needs gcc and libasound2-dev")
    lib = fake_alsa.dir / "libasound_module_pcm_failmic_room.so"
    proc = subprocess.run(["gcc", "-O2", "-Wall", "-DPIC", "-fPIC", "-shared", "-o", str(lib),
                           str(PLUGIN_C), "-lasound"], capture_output=True, text=True,
                          check=False, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"building {PLUGIN_C.name} failed (needs libasound2-dev):\n{proc.stderr}")
    audio, fs = sf.read(corpus_dir / f"{SPEECH}.wav", dtype="float32")
    tag = uuid.uuid4().hex[:6]
    names = []
    for half, rows in (("a", slice(0, 2)), ("b", slice(2, 4))):
        name = f"room{half}_{tag}"
        raw = fake_alsa.dir / f"{name}.raw"
        raw.write_bytes(float_to_pcm(audio[:, rows].T, "S16_LE"))
        fake_alsa.pcms[name] = (
            f'pcm_type.failmic {{ lib "{lib}" }}\n'
            f'pcm.{name} {{ type failmic file "{raw}" fail_file "{fake_alsa.dir / name}.gone" '
            f'channels 2 rate {fs} format "S16_LE" wallclock 1 }}')
        names.append(name)
    fake_alsa._write_conf()
    geometry = json.loads((corpus_dir / f"{SPEECH}.json").read_text())["geometry_m"]
    return (names[0], names[1], fake_alsa.dir / f"{names[0]}.gone",
            fake_alsa.dir / f"{names[1]}.gone", geometry)


def test_array_degrades_to_the_devices_present_and_takes_one_back(
        room_devices, tmp_path: Path, mqtt_broker, mqtt_subscriber) -> None:
    name_a, name_b, unplug_a, unplug_b, geometry = room_devices
    (tmp_path / "geom.json").write_text(json.dumps({"geometry_m": geometry}))
    cfg = parse_config({
        "device": {"id": f"degrade-{uuid.uuid4().hex[:8]}"},
        "capture": {"source": "alsa", "fs_hz": 16000, "period_frames": 160, "devices": [
            {"alsa_device": name_a, "channels": 2, "geometry_rows": [0, 1], "reference": True},
            {"alsa_device": name_b, "channels": 2, "geometry_rows": [2, 3]}]},
        "array": {"geometry_file": str(tmp_path / "geom.json")},
        "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port, "audio_enabled": True,
                 "telemetry_interval_s": 0.2},
        "governor": {"enabled": False},
    }, tmp_path)
    base = cfg.topic_base
    audio_topic = f"{base}/audio/{cfg.mqtt.audio_stream}"
    sub = mqtt_subscriber(f"{base}/#")
    lock = threading.Lock()
    levels: list[tuple[float, np.ndarray]] = []  # (time, max |x| per row entering the DSP)

    def hook(hop) -> None:
        with lock:
            levels.append((time.monotonic(), np.abs(hop.samples).max(axis=1)))

    def drift_events(kind: str, after: int = 0) -> list[dict]:
        return [json.loads(m.payload) for m in sub.messages(f"{base}/event/drift")[after:]
                if json.loads(m.payload)["device"] == name_b
                and json.loads(m.payload)["kind"] == kind]

    def telemetry(after: int) -> list[dict]:
        return [json.loads(m.payload) for m in sub.messages(f"{base}/telemetry")[after:]]

    service = Service(cfg, dsp_hook=hook)
    service.start()
    try:
        sub.wait_count(audio_topic, 10, timeout_s=20)
        sub.wait_for(lambda ms: drift_events("acquired"), timeout_s=20)
        unplug_b.touch()                                          # device B goes away
        lost = json.loads(sub.wait_count(f"{base}/event/device_lost", 1,
                                         timeout_s=5)[0].payload)
        t_lost = time.monotonic()
        n_audio, n_tel = len(sub.messages(audio_topic)), len(sub.messages(f"{base}/telemetry"))
        # the array goes on; the beamformer leaves B's microphones out
        sub.wait_for(lambda ms: any(t["dead_channels"] == [2, 3] and t["active_channels"]
                                    == [0, 1] for t in telemetry(n_tel)), timeout_s=10)
        time.sleep(max(0.0, t_lost + 1.5 - time.monotonic()))
        t_unplug = time.monotonic()
        n_audio_out = len(sub.messages(audio_topic)) - n_audio
        during = telemetry(n_tel)
        n_drift = len(sub.messages(f"{base}/event/drift"))
        unplug_b.unlink()                                         # plugged back
        back = json.loads(sub.wait_count(f"{base}/event/device_back", 1,
                                         timeout_s=10)[0].payload)
        t_back = time.monotonic()
        sub.wait_for(lambda ms: drift_events("acquired", n_drift), timeout_s=20)
        n_tel = len(sub.messages(f"{base}/telemetry"))
        sub.wait_for(lambda ms: any(t["drift"][name_b]["up"]
                                    and t["drift"][name_b]["lock"] in ("tracking", "locked")
                                    and not t["dead_channels"] for t in telemetry(n_tel)),
                     timeout_s=10)
        # the reference device (the clock) fails: the whole array pauses and is reopened
        n_drift = len(sub.messages(f"{base}/event/drift"))
        n_tel = len(sub.messages(f"{base}/telemetry"))
        unplug_a.touch()
        ref_lost = json.loads(sub.wait_count(f"{base}/event/device_lost", 2,
                                             timeout_s=5)[-1].payload)
        time.sleep(1.0)
        paused = telemetry(n_tel)
        t_plugged_ns = time.monotonic_ns()
        unplug_a.unlink()
        ref_back = json.loads(sub.wait_count(f"{base}/event/device_back", 2,
                                             timeout_s=10)[-1].payload)
        n_audio = len(sub.messages(audio_topic))
        sub.wait_count(audio_topic, n_audio + 10, timeout_s=10)
        sub.wait_for(lambda ms: drift_events("acquired", n_drift), timeout_s=20)
    finally:
        service.request_stop()
        service.stop(timeout_s=2.0)
    assert service.fault is None
    # the lost device is named, the reference is not lost; reopened with backoff
    assert lost["device"] == name_b and lost["reference"] is False
    assert lost["geometry_rows"] == [2, 3] and "No such device" in lost["reason"]
    assert [json.loads(m.payload)["device"] for m in
            sub.messages(f"{base}/event/device_lost")] == [name_b, name_a]
    assert back["device"] == name_b and back["attempts"] >= 2
    assert 1.3 < back["downtime_seconds"] < t_back - t_lost + 0.5
    # audio kept flowing from the reference device during the outage (20 ms chunks)
    assert n_audio_out > 0.6 * (t_unplug - t_lost) / 0.020
    # telemetry during the outage: B down, its microphones left out, A still in
    assert during and all(t["drift"][name_b]["up"] is False for t in during[1:])
    assert all(t["drift"][name_b]["lock"] == "lost" for t in during[1:])
    # at the DSP boundary: B's rows exactly zero during the outage, A's rows sound
    with lock:
        outage = [lv for t, lv in levels if t_lost + 0.1 < t < t_unplug]
        after = [lv for t, lv in levels if t > t_back + 1.0]
    assert len(outage) > 100
    assert all(lv[2] == 0.0 and lv[3] == 0.0 for lv in outage)
    assert max(lv[0] for lv in outage) > 0.01
    # after the return, B's rows carry sound again
    assert after and max(lv[2] for lv in after) > 0.01
    # the reference lost: named, the array paused (device_up 0, no audio captured meanwhile),
    # reopened as a whole, B re-acquired
    assert ref_lost["device"] == name_a and name_a in ref_lost["reason"]
    assert ref_back["device"] == name_a and ref_back["attempts"] >= 2
    assert any(t["device_up"] == 0 for t in paused)
    chunks = [int(m.user_properties["t_capture_ns"]) for m in sub.messages(audio_topic)]
    assert not [t for t in chunks if ref_lost["t_ns"] < t < t_plugged_ns]
    assert any(t > ref_back["t_ns"] for t in chunks)


def test_array_starts_without_a_missing_device_and_takes_it_in(room_devices,
                                                               tmp_path: Path) -> None:
    """A non-reference device unplugged at open: the array opens with the reference alone
    (``device_lost`` at once, its rows zeros), and takes the device in when it appears."""
    from mica.device.multi_capture import open_multi_capture

    name_a, name_b, _, unplug_b, _ = room_devices
    cfg = parse_config({"capture": {"source": "alsa", "fs_hz": 16000, "period_frames": 160,
                                    "devices": [
                                        {"alsa_device": name_a, "channels": 2,
                                         "geometry_rows": [0, 1], "reference": True},
                                        {"alsa_device": name_b, "channels": 2,
                                         "geometry_rows": [2, 3]}]},
                        "mqtt": {"enabled": False}}, tmp_path)
    events: list[tuple[str, dict]] = []
    unplug_b.touch()
    multi = open_multi_capture(cfg, on_device_event=lambda kind, p: events.append((kind, p)))
    try:
        assert [(k, p["device"]) for k, p in events] == [("device_lost", name_b)]
        assert multi.drift_status()[name_b]["up"] is False
        for _ in range(50):
            block = multi.read()
            assert block.samples.shape == (4, 160)
            assert not block.samples[2:].any()
        assert np.abs(block.samples[:2]).max() > 0
        unplug_b.unlink()
        deadline = time.monotonic() + 10
        while True:
            block = multi.read()
            if events[-1][0] == "device_back" and np.abs(block.samples[2:]).max() > 0.01:
                break
            assert time.monotonic() < deadline, events
        assert events[-1][1]["device"] == name_b and events[-1][1]["attempts"] >= 1
        assert multi.drift_status()[name_b]["up"] is True
    finally:
        multi.close()
