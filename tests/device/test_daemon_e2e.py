"""End to end on real parts: ``mica run`` reads a real ALSA PCM (the fakemic plugin), a real
mosquitto carries its output, and a real paho subscriber checks what a consumer gets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mica.array_dsp.enhancer import Enhancer

SERVICE_STOP_S = 1.0
"""The daemon's budget from SIGTERM to queues flushed and ``offline`` sent (its own log line)."""
EXIT_BOUND_S = 10.0
"""SIGTERM to process exit, interpreter teardown included: only a guard against a hang (a
loaded 2-core machine has taken 2-3 s here)."""

TELEMETRY_FIELDS = ("uptime_seconds", "process_cpu_percent", "process_rss_bytes",
                    "real_time_factor", "xruns_total", "dropped_blocks_total", "blocks_total",
                    "dropped_audio_total", "latency_seconds")


def _circle_m(n_ch: int, radius_m: float = 0.05) -> list[list[float]]:
    angles = 2 * np.pi * np.arange(n_ch) / n_ch
    return [[float(radius_m * np.cos(a)), float(radius_m * np.sin(a)), 0.0] for a in angles]


def _write_config(path: Path, device_id: str, pcm: str, channels: int, fmt: str,
                  geometry_m: list[list[float]], host: str, port: int,
                  azimuth_deg: float = 0.0) -> None:
    path.write_text(f"""
[device]
id = "{device_id}"
board = "fakemic"
[capture]
source = "alsa"
alsa_device = "{pcm}"
channels = {channels}
format = "{fmt}"
period_frames = 160
[array]
geometry_m = {json.dumps(geometry_m)}
[dsp]
steer_azimuth_deg = {azimuth_deg}
[mqtt]
host = "{host}"
port = {port}
audio_enabled = true
audio_chunk_ms = 20
telemetry_interval_s = 0.5
""")


def _run_daemon(config: Path, subscriber, base: str, n_chunks: int) -> tuple[list, float, str]:
    """Start ``mica run``, wait for ``n_chunks`` audio chunks, SIGTERM it; return the messages,
    the seconds from SIGTERM to exit, and its log."""
    proc = subprocess.Popen([sys.executable, "-m", "mica.device.cli", "run", "--config",
                             str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=os.environ.copy())
    try:
        subscriber.wait_for(lambda ms: sum(m.topic.startswith(f"{base}/audio/") for m in ms)
                            >= n_chunks and sum(m.topic == f"{base}/telemetry" for m in ms) >= 2,
                            timeout_s=120)
    except AssertionError:
        proc.kill()
        raise AssertionError(f"daemon output:\n{proc.communicate()[0]}") from None
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=30)
    stop_s = time.monotonic() - t0
    assert proc.returncode == 0, log
    subscriber.wait_for(lambda ms: any(m.topic == f"{base}/status" and m.payload == b"offline"
                                       for m in ms), timeout_s=5)
    return subscriber.messages(), stop_s, log


def _check_contract(msgs: list, base: str, channels: int) -> list:
    """Status, info, audio and telemetry as the MQTT contract says; returns the audio messages."""
    status = [m.payload for m in msgs if m.topic == f"{base}/status"]
    assert status[0] == b"online" and status[-1] == b"offline", status
    info = [m for m in msgs if m.topic == f"{base}/info"]
    assert info, "no info message"
    meta = json.loads(info[0].payload)
    assert meta["channels"] == channels and meta["version"] and meta["config_hash"]

    audio = [m for m in msgs if m.topic == f"{base}/audio/beam"]
    seqs = [int(m.user_properties["seq"]) for m in audio]
    assert seqs == list(range(len(seqs))), "audio seq must be gapless from 0"
    assert all(m.content_type == "audio/L16;rate=16000;channels=1" for m in audio)
    full = [m for m in audio[:-1]]  # the last chunk may be the partial one flushed at stop
    assert all(len(m.payload) == 320 * 2 for m in full)
    t_ns = np.array([int(m.user_properties["t_capture_ns"]) for m in full])
    step_ms = np.diff(t_ns) / 1e6
    assert np.median(step_ms) == pytest.approx(20.0, abs=0.5), step_ms[:10]

    telemetry = [json.loads(m.payload) for m in msgs if m.topic == f"{base}/telemetry"]
    for t in telemetry:
        missing = [k for k in TELEMETRY_FIELDS if k not in t]
        assert not missing, f"telemetry lacks {missing}: {t}"
        assert set(t["dsp_block_seconds"]) >= {"p50", "p99", "max"}
        assert 0 <= t["dsp_block_seconds"]["p50"] <= t["dsp_block_seconds"]["p99"] \
            <= t["dsp_block_seconds"]["max"]
    assert telemetry[-1]["blocks_total"] >= len(full) * 2  # 2 hops of 10 ms per chunk
    assert telemetry[-1]["process_rss_bytes"] > 10 * 2 ** 20
    return audio


@pytest.mark.parametrize(("pcm", "channels", "fmt"), [("mic4", 4, "S16_LE"),
                                                      ("mic8", 8, "S32_LE")])
def test_daemon_on_fake_alsa_and_real_broker(fake_alsa, mqtt_broker, mqtt_subscriber,
                                             tmp_path: Path, pcm: str, channels: int,
                                             fmt: str) -> None:
    device_id = f"e2e-{pcm}-{uuid.uuid4().hex[:6]}"
    base = f"mica/{device_id}"
    config = tmp_path / "mica.toml"
    _write_config(config, device_id, pcm, channels, fmt, _circle_m(channels),
                  mqtt_broker.host, mqtt_broker.port)
    sub = mqtt_subscriber(f"{base}/#")
    msgs, stop_s, log = _run_daemon(config, sub, base, n_chunks=60)
    _check_contract(msgs, base, channels)
    service_stop_s = float(re.search(r"stopped in ([0-9.]+) s", log).group(1))
    assert service_stop_s < SERVICE_STOP_S, f"service took {service_stop_s:.2f} s to stop\n{log}"
    assert stop_s < EXIT_BOUND_S, f"process took {stop_s:.2f} s to exit after SIGTERM\n{log}"


def test_daemon_output_equals_the_offline_chain(fake_alsa, mqtt_broker, mqtt_subscriber,
                                                corpus_dir: Path, tmp_path: Path) -> None:
    """Real speech through a fake ALSA device: what arrives over MQTT is the Enhancer's output."""
    wav = corpus_dir / "multichannel" / "speechbrain_4mic_speech_-0.82918_0.55279_-0.082918.wav"
    meta = json.loads(wav.with_suffix(".json").read_text())
    speech, fs_hz = sf.read(wav, dtype="float32", always_2d=True)
    speech = speech[: 3 * fs_hz].T  # 3 s, (4, n); the device loops it
    pcm = fake_alsa.add_pcm_from_samples(f"speech4_{uuid.uuid4().hex[:6]}", speech, fs_hz)
    device_id = f"e2e-speech-{uuid.uuid4().hex[:6]}"
    base = f"mica/{device_id}"
    config = tmp_path / "mica.toml"
    _write_config(config, device_id, pcm, 4, "S16_LE", meta["geometry_m"], mqtt_broker.host,
                  mqtt_broker.port, azimuth_deg=146.3)
    sub = mqtt_subscriber(f"{base}/#")
    msgs, _, _ = _run_daemon(config, sub, base, n_chunks=100)
    audio = _check_contract(msgs, base, 4)
    received = np.frombuffer(b"".join(m.payload for m in audio), "<i2") / 32768.0

    # the same chain offline over the looped file (quantised to S16 as the device delivers it)
    looped = np.tile(np.round(speech * 32767) / 32768, (1, 4)).astype(np.float32)
    enhancer = Enhancer(np.asarray(meta["geometry_m"]), steer_azimuth_deg=146.3)
    hop = enhancer.hop_samples
    offline = np.concatenate([enhancer.process(looped[:, i:i + hop]).copy()
                              for i in range(0, looped.shape[1] - hop + 1, hop)])
    # the daemon started reading somewhere in the loop: find the offset, then compare
    segment = received[160 * 50:160 * 50 + fs_hz]  # skip the first 0.5 s (filter warm-up)
    corr = np.correlate(offline[: 3 * fs_hz + segment.size], segment, mode="valid")
    lag = int(np.argmax(corr))
    match = offline[lag:lag + segment.size]
    err = np.max(np.abs(match - segment))
    assert err < 2e-4, f"MQTT audio differs from the offline chain by up to {err:.2e}"
    assert np.sqrt(np.mean(segment ** 2)) > 1e-3, "the received audio is silent"
