"""``mica demo``: the main job on an embedded default, no hardware and no broker set up by hand.

A multichannel recording (default: a scene generated here) is replayed in real time as the
array; a private mosquitto is started on a free loopback port when the binary exists (else
the broker given with ``--broker``; else the audio is written locally); a real MQTT
subscriber prints the live telemetry and saves the enhanced audio it receives to a WAV.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import soundfile as sf

from mica.array_dsp.errors import MicaError
from mica.device.broker import PrivateBroker, find_mosquitto
from mica.device.config import Config, parse_config
from mica.device.service import Service
from mica.device.sources.scene import write_demo_scene

log = logging.getLogger(__name__)

DEVICE_ID = "demo"


class _Listener:
    """A plain paho subscriber: prints telemetry lines, keeps the audio chunks by seq."""

    def __init__(self, host: str, port: int, base: str) -> None:
        self.base = base
        self.chunks: dict[int, bytes] = {}
        self.status: list[str] = []
        self.telemetry: list[dict[str, Any]] = []
        self.offline = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mica-demo-view",
                                   protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.subscribe(f"{base}/#", qos=1)
        self._client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic[len(self.base) + 1:]
        if topic.startswith("audio/"):
            props = dict(getattr(msg.properties, "UserProperty", []) or [])
            self.chunks[int(props.get("seq", len(self.chunks)))] = msg.payload
        elif topic == "telemetry":
            t = json.loads(msg.payload)
            self.telemetry.append(t)
            dsp = t.get("dsp_block_seconds", {})
            print(f"  t={t.get('uptime_seconds', 0):5.1f}s  "
                  f"DSP/block p50 {1e3 * dsp.get('p50', 0):.3f} ms  "
                  f"p99 {1e3 * dsp.get('p99', 0):.3f} ms  "
                  f"RTF {t.get('real_time_factor', 0):.4f}  "
                  f"CPU {t.get('process_cpu_percent', 0):5.1f} %  "
                  f"RSS {t.get('process_rss_bytes', 0) / 2**20:.0f} MiB  "
                  f"xruns {t.get('xruns_total', 0)}  drops {t.get('dropped_blocks_total', 0)}  "
                  f"audio chunks {len(self.chunks)}", flush=True)
        elif topic == "status":
            state = msg.payload.decode(errors="replace")
            self.status.append(state)
            print(f"  status: {state}", flush=True)
            if state == "offline":
                self.offline.set()

    def audio(self) -> np.ndarray:
        """The received audio in ``seq`` order, float32; missing chunks are counted."""
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        seqs = sorted(self.chunks)
        missing = seqs[-1] - seqs[0] + 1 - len(seqs)
        if missing:
            log.warning("%d audio chunk(s) missing in the received stream", missing)
        pcm = b"".join(self.chunks[s] for s in seqs)
        return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _steer_from_sidecar(path: Path) -> tuple[float, float]:
    """Look direction from a sidecar's ``source_direction`` (or unit vector), else (0, 0)."""
    meta = json.loads(path.read_text())
    direction = meta.get("source_direction")
    if isinstance(direction, dict) and isinstance(direction.get("azimuth_deg"), (int, float)):
        elevation = direction.get("elevation_deg", 0.0)
        return float(direction["azimuth_deg"]), float(elevation) if isinstance(
            elevation, (int, float)) else 0.0
    unit = meta.get("source_direction_unit")
    if isinstance(unit, list) and len(unit) == 3:
        x, y, z = (float(v) for v in unit)
        return float(np.degrees(np.arctan2(y, x))), float(np.degrees(np.arcsin(z)))
    return 0.0, 0.0


def _demo_config(wav: Path, geometry: Path, host: str, port: int, use_mqtt: bool) -> Config:
    n_ch = sf.info(str(wav)).channels
    azimuth, elevation = _steer_from_sidecar(geometry)
    return parse_config({
        "device": {"id": DEVICE_ID, "board": "demo"},
        "capture": {"source": "wav", "wav_path": str(wav), "channels": n_ch,
                    "fs_hz": sf.info(str(wav)).samplerate, "wav_realtime": True},
        "array": {"geometry_file": str(geometry)},
        "dsp": {"steer_azimuth_deg": azimuth, "steer_elevation_deg": elevation,
                "beamformer": "mvdr", "denoiser": "mmse"},  # the product's best chain
        "mqtt": {"enabled": use_mqtt, "host": host, "port": port, "audio_enabled": True,
                 "audio_chunk_ms": 20, "telemetry_interval_s": 1.0},
    }, Path.cwd(), "demo")


def run_demo(input_wav: Path | None = None, array_json: Path | None = None,
             broker: str | None = None, out_dir: Path | None = None,
             seconds: float | None = None) -> int:
    """Run the demo; returns the process exit code."""
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="mica-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_path: Path | None = None
    if input_wav is None:
        scene = write_demo_scene(out_dir)
        input_wav, array_json, clean_path = scene.wav_path, scene.geometry_path, scene.clean_path
        print(f"mica demo: generated a scene (talker at {scene.speech_azimuth_deg:.0f} deg, "
              f"pink noise at {scene.noise_azimuth_deg:.0f} deg, 0 dB SNR) in {out_dir}")
    elif array_json is None:
        raise MicaError("--input needs --array GEOMETRY.json (the microphone positions)")
    enhanced_path = out_dir / "enhanced.wav"

    with ExitStack() as stack:
        host, port, use_mqtt = "127.0.0.1", 0, True
        if find_mosquitto():
            private = stack.enter_context(PrivateBroker())
            host, port = private.host, private.port
            print(f"mica demo: started a private mosquitto on {host}:{port}")
        elif broker:
            host, _, port_text = broker.rpartition(":")
            port = int(port_text)
            print(f"mica demo: no mosquitto binary; using the broker at {host}:{port}")
        else:
            use_mqtt = False
            print("mica demo: no mosquitto binary found (apt-get install mosquitto) and no "
                  "--broker given: running without MQTT, audio written locally")

        cfg = _demo_config(input_wav, array_json, host, port, use_mqtt)
        listener = _Listener(host, port, cfg.topic_base) if use_mqtt else None
        if listener is not None:
            stack.callback(listener.close)
        local: list[np.ndarray] = []
        service = Service(cfg, audio_sink=None if use_mqtt else local.append)
        print(f"mica demo: replaying {input_wav.name} ({cfg.capture.channels} ch) in real time, "
              f"{cfg.dsp.beamformer.upper()} + {cfg.dsp.denoiser.upper()} beam at "
              f"{cfg.dsp.steer_azimuth_deg:.0f} deg, algorithmic latency "
              f"{1e3 * service.latency_s:.0f} ms; telemetry every "
              f"{cfg.mqtt.telemetry_interval_s:.0f} s:")
        service.start()
        try:
            service.wait(timeout_s=seconds)
        except KeyboardInterrupt:
            print("mica demo: interrupted")
        service.stop(timeout_s=1.0)
        if listener is not None:
            listener.offline.wait(2.0)
            time.sleep(0.2)  # the last QoS 0 chunks precede 'offline' on the same connection
            audio = listener.audio()
        else:
            audio = np.concatenate(local) if local else np.zeros(0, dtype=np.float32)

    sf.write(enhanced_path, audio, cfg.dsp.fs_hz, subtype="PCM_16")
    latency = service.enhancer.latency_samples
    print(f"mica demo: {len(audio) / cfg.dsp.fs_hz:.1f} s of enhanced audio received over "
          f"{'MQTT' if use_mqtt else 'the local sink'}, {service.xruns_total} xruns, "
          f"{service.ring.dropped_total + service.out.dropped_total} blocks dropped")
    if clean_path is not None:
        print(f"mica demo: the talker alone at mic 0 is {clean_path}, the mixture "
              f"{input_wav}; the enhanced stream lags them by {latency} samples")
    print(f"mica demo: enhanced audio written to {enhanced_path}")
    return 0

