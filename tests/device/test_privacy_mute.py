"""Privacy mute through the daemon, a real broker and a real subscriber, with a corpus 4-mic
recording replayed in real time as the array.

The boundary: the capture thread zeroes every block it hands on while muted; the DSP thread
passes those hops to ``dsp_hook`` (observed here) and nothing else (the Enhancer does not
run: ``blocks_total`` stands still). The daemon starts muted (``capture.muted``), is unmuted
by command, muted by SIGUSR1 and unmuted by SIGUSR2 (``mica run``'s handlers)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

from mica.device.cli import install_mute_signals
from mica.device.config import replace
from mica.device.service import Service
from tests.device.test_commands import Requester  # MQTT 5 command client with correlation

SPEECH = "multichannel/speechbrain_4mic_speech_-0.82918_0.55279_-0.082918"


def _wait(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_mute_zeroes_at_capture_and_unmute_resumes(corpus_dir: Path, mqtt_broker, mqtt_config,
                                                   mqtt_subscriber) -> None:
    geometry = json.loads((corpus_dir / f"{SPEECH}.json").read_text())["geometry_m"]
    cfg = mqtt_config(audio_enabled=True, telemetry_interval_s=0.2, hermes_enabled=True)
    cfg = replace(cfg, capture={"source": "wav", "wav_path": str(corpus_dir / f"{SPEECH}.wav"),
                                "channels": 4, "wav_realtime": True, "wav_loop": True,
                                "muted": True},
                  array={"geometry_m": geometry})
    base = cfg.topic_base
    audio_topic = f"{base}/audio/{cfg.mqtt.audio_stream}"
    sub = mqtt_subscriber(f"{base}/#")
    hermes_topic = f"hermes/audioServer/{cfg.device.id}/audioFrame"
    hermes = mqtt_subscriber(hermes_topic)  # the Rhasspy Hermes copy of the audio
    lock = threading.Lock()
    hops: list[tuple[float, float, int]] = []  # (time, max |x| entering the DSP, blocks_total)

    def hook(hop) -> None:
        with lock:
            hops.append((time.monotonic(), float(np.abs(hop.samples).max()),
                         service.blocks_total))

    def hops_between(t0: float, t1: float) -> list[tuple[float, float, int]]:
        with lock:
            return [h for h in hops if t0 <= h[0] < t1]

    def telemetry_says(muted: bool, after: int) -> None:
        sub.wait_for(lambda ms: any(m.topic == f"{base}/telemetry"
                                    and json.loads(m.payload)["muted"] is muted
                                    for m in ms[after:]), timeout_s=5)

    service = Service(cfg, dsp_hook=hook)
    old_handlers = install_mute_signals(service)
    service.start()
    windows: list[tuple[float, float]] = []  # (muted from, unmuted at), monotonic
    try:
        # 1. started muted: hops reach the DSP boundary as exact zeros, nothing else runs
        t_start = time.monotonic()
        _wait(lambda: len(hops_between(0, float("inf"))) >= 100)
        info = json.loads(sub.wait_count(f"{base}/info", 1)[0].payload)
        telemetry_says(True, 0)
        t_unmute = time.monotonic()
        assert sub.messages(audio_topic) == [] and hermes.messages() == []
        assert service.blocks_total == 0  # the Enhancer never ran on the zeros
        windows.append((t_start, t_unmute))
        n_tel = len(sub.messages())
        req = Requester(mqtt_broker.host, mqtt_broker.port, base)
        try:
            assert req.call("unmute", {})["result"] == {"muted": False}
        finally:
            req.stop()
        sub.wait_count(audio_topic, 10, timeout_s=5)
        telemetry_says(False, n_tel)

        # 2. SIGUSR1 mutes: after the blocks already queued, zeros only and no audio
        os.kill(os.getpid(), signal.SIGUSR1)
        t_mute = time.monotonic()
        time.sleep(0.3)  # blocks captured before the signal drain
        n_audio = len(sub.messages(audio_topic))
        n_hermes = len(hermes.messages())
        n_tel = len(sub.messages())
        blocks = service.blocks_total
        time.sleep(1.0)
        assert len(sub.messages(audio_topic)) == n_audio
        assert len(hermes.messages()) == n_hermes > 0
        assert service.blocks_total == blocks
        telemetry_says(True, n_tel)
        muted_hops = hops_between(t_mute + 0.3, time.monotonic())
        assert len(muted_hops) > 50 and all(m == 0.0 for _, m, _ in muted_hops)
        assert info["muted"] is True
        # 3. SIGUSR2 unmutes: the stream resumes, seq continuing
        n_tel = len(sub.messages())
        t_back = time.monotonic()  # before: the handler runs as soon as the signal is sent
        os.kill(os.getpid(), signal.SIGUSR2)
        windows.append((t_mute + 0.3, t_back))
        sub.wait_count(audio_topic, n_audio + 20, timeout_s=5)
        telemetry_says(False, n_tel)
    finally:
        service.request_stop()
        service.stop()
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)
    # the DSP saw sound (not zeros) when unmuted: the recording really went through
    live = hops_between(t_back + 0.3, float("inf"))
    assert live and max(m for _, m, _ in live) > 0.01
    # while muted, every hop entering the DSP was exactly zero
    for t0, t1 in windows:
        assert all(m == 0.0 for _, m, _ in hops_between(t0, t1))
    # no chunk captured inside a mute window was published; seq continues without repeats
    chunks = [(int(m.user_properties["seq"]), int(m.user_properties["t_capture_ns"]))
              for m in sub.messages(audio_topic)]
    mono_ns = time.monotonic_ns() - time.monotonic() * 1e9
    for t0, t1 in windows[1:]:
        inside = [t for _, t in chunks if t0 * 1e9 + mono_ns < t < t1 * 1e9 + mono_ns - 0.05e9]
        assert not inside
    seqs = [s for s, _ in chunks]
    assert seqs == sorted(set(seqs))
    assert seqs[-1] - seqs[0] + 1 - len(seqs) == service.link.dropped_audio_total
    assert service.muted_blocks_total > 150
