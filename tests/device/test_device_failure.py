"""A capture device that fails mid-stream, through real ALSA: our own ioplug plugin
(tests/alsa_failmic/pcm_failmic.c, built here) fails every read with -ENODEV while a control
file exists, and refuses to open until it is removed (a USB card unplugged and plugged back).
The daemon, on a real broker with a real subscriber, must announce the loss, keep publishing
status without audio, reopen with backoff, announce the return with the downtime, and resume
the audio stream with its sequence numbers continuing."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from mica.array_dsp.errors import DeviceError
from mica.device.config import replace
from mica.device.service import Service
from mica.device.sources.alsa import AlsaSource
from mica.device.sources.pcm import float_to_pcm
from tests.fixtures_alsa import FakeAlsa

PLUGIN_C = Path(__file__).resolve().parent.parent / "alsa_failmic" / "pcm_failmic.c"
GEOMETRY = [[0.03, 0, 0], [0, 0.03, 0], [-0.03, 0, 0], [0, -0.03, 0]]


@pytest.fixture(scope="module")
def failmic(fake_alsa: FakeAlsa):
    """``add(name) -> unplug file``: defines capture PCM ``name`` (4 ch S16_LE 16 kHz noise)
    that fails while the returned path exists."""
    if shutil.which("gcc") is None:
        pytest.fail("the failmic plugin needs gcc and libasound2-dev")
    lib = fake_alsa.dir / "libasound_module_pcm_failmic.so"
    if not lib.exists():
        proc = subprocess.run(["gcc", "-O2", "-Wall", "-DPIC", "-fPIC", "-shared", "-o",
                               str(lib), str(PLUGIN_C), "-lasound"],
                              capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            pytest.fail(f"building {PLUGIN_C.name} failed (needs libasound2-dev):\n"
                        f"{proc.stderr}")
    raw = fake_alsa.dir / "failmic_noise4.raw"
    rng = np.random.default_rng(0)
    raw.write_bytes(float_to_pcm(0.1 * rng.standard_normal((4, 16000)), "S16_LE"))

    def add(name: str) -> Path:
        unplug = fake_alsa.dir / f"{name}.unplugged"
        fake_alsa.pcms[name] = (
            f'pcm_type.failmic {{ lib "{lib}" }}\n'
            f'pcm.{name} {{ type failmic file "{raw}" fail_file "{unplug}" channels 4 '
            f'rate 16000 format "S16_LE" }}')
        fake_alsa._write_conf()  # a new config file name: alsa-lib reloads on the next open
        return unplug

    return add


def test_plugin_fails_reads_and_opens_while_unplugged(failmic) -> None:
    name = f"gone4_{uuid.uuid4().hex[:6]}"
    unplug = failmic(name)
    with AlsaSource(name, 4, 16000, "S16_LE", 160) as src:
        assert src.read().samples.std() > 0.05
        unplug.touch()
        with pytest.raises(DeviceError, match=f"{name}.*No such device"):
            for _ in range(20):
                src.read()
    with pytest.raises(DeviceError, match="cannot open: No such device"):
        AlsaSource(name, 4, 16000, "S16_LE", 160)
    unplug.unlink()
    with AlsaSource(name, 4, 16000, "S16_LE", 160) as src:
        assert src.read().samples.shape == (4, 160)


def _audio(sub, topic: str) -> list[tuple[int, int]]:
    """(seq, t_capture_ns) of every audio chunk so far."""
    return [(int(m.user_properties["seq"]), int(m.user_properties["t_capture_ns"]))
            for m in sub.messages(topic)]


def test_daemon_survives_a_device_failing_mid_stream(failmic, mqtt_config,
                                                     mqtt_subscriber) -> None:
    name = f"gone4_{uuid.uuid4().hex[:6]}"
    unplug = failmic(name)
    cfg = mqtt_config(audio_enabled=True, telemetry_interval_s=0.2)
    cfg = replace(cfg, capture={"source": "alsa", "alsa_device": name, "channels": 4},
                  array={"geometry_m": GEOMETRY})
    base = cfg.topic_base
    audio_topic = f"{base}/audio/{cfg.mqtt.audio_stream}"
    sub = mqtt_subscriber(f"{base}/#")
    gaps: list[int] = []
    service = Service(cfg, dsp_hook=lambda hop: gaps.append(hop.gap_frames) if hop.gap_frames
                      else None)
    service.start()
    try:
        sub.wait_count(audio_topic, 10, timeout_s=15)
        unplug.touch()                                   # the card goes away mid-stream
        lost = json.loads(sub.wait_count(f"{base}/event/device_lost", 1,
                                         timeout_s=5)[0].payload)
        lost_seen = time.monotonic()
        n_audio_lost = len(sub.messages(audio_topic))
        n_tel_lost = len(sub.messages(f"{base}/telemetry"))
        time.sleep(1.2)                                  # two failed reopen attempts' worth
        unplug.unlink()                                  # plugged back
        back = json.loads(sub.wait_count(f"{base}/event/device_back", 1,
                                         timeout_s=10)[0].payload)
        sub.wait_count(audio_topic, n_audio_lost + 20, timeout_s=10)
        sub.wait_for(lambda ms: any(m.topic == f"{base}/telemetry"
                                    and json.loads(m.payload)["device_up"] == 1
                                    for m in ms[n_tel_lost:]), timeout_s=5)
    finally:
        service.request_stop()
        service.stop()
    assert lost["device"] == name and "No such device" in lost["reason"]
    assert back["device"] == name and back["attempts"] >= 2  # backoff: a failed retry first
    assert 1.0 < back["downtime_seconds"] < 1.2 + (time.monotonic() - lost_seen)
    # status kept coming while the device was gone, saying so
    during = [json.loads(m.payload) for m in sub.messages(f"{base}/telemetry")[n_tel_lost:]]
    down = [t for t in during if t["device_up"] == 0]
    assert len(down) >= 3 and all(t["device_errors_total"] == 1 for t in down)
    assert max(t["device_downtime_seconds_total"] for t in down) > 0.5
    # no audio made up while it was gone: nothing captured between the loss and the return
    chunks = _audio(sub, audio_topic)
    lost_ns, back_ns = lost["t_ns"], back["t_ns"]
    assert not [t for _, t in chunks if lost_ns < t < back_ns - 5_000_000]
    assert any(t > back_ns for _, t in chunks)
    # the stream resumes with its sequence numbers continuing (no restart, none repeated);
    # any missing one is a chunk the link itself counted as dropped (QoS 0 under load)
    seqs = [s for s, _ in chunks]
    assert seqs == sorted(set(seqs))
    assert seqs[-1] - seqs[0] + 1 - len(seqs) == service.link.dropped_audio_total
    # the DSP is told of the discontinuity: the first block after the return carries the
    # frames missed, about the downtime (plus the reopened device's first period)
    assert len(gaps) == 1
    assert back["downtime_seconds"] - 0.05 < gaps[0] / 16000 < back["downtime_seconds"] + 0.5
    assert service.device_errors_total == 1
    assert service.downtime_seconds_total == pytest.approx(back["downtime_seconds"], abs=2e-3)
