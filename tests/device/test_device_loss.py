"""A capture device that is missing is retried with backoff, announced, and picked up when it
appears: real ALSA (the fakemic plugin), a real broker, a real subscriber."""

from __future__ import annotations

import json
import uuid

import numpy as np

from mica.device.config import replace
from mica.device.service import Service


def test_missing_device_is_reopened_when_it_appears(fake_alsa, mqtt_config,
                                                    mqtt_subscriber) -> None:
    pcm = f"late4_{uuid.uuid4().hex[:6]}"  # not defined yet: opening it fails
    cfg = mqtt_config(audio_enabled=True, telemetry_interval_s=0.3)
    cfg = replace(cfg, capture={"source": "alsa", "alsa_device": pcm, "channels": 4},
                  array={"geometry_m": [[0.03, 0, 0], [0, 0.03, 0], [-0.03, 0, 0],
                                        [0, -0.03, 0]]})
    base = cfg.topic_base
    sub = mqtt_subscriber(f"{base}/#")
    service = Service(cfg)
    service.start()
    try:
        lost = sub.wait_count(f"{base}/event/device_lost", 1, timeout_s=10)
        assert pcm in json.loads(lost[0].payload)["reason"]
        telemetry = sub.wait_count(f"{base}/telemetry", 1, timeout_s=10)
        assert json.loads(telemetry[-1].payload)["device_up"] == 0

        rng = np.random.default_rng(0)
        fake_alsa.add_pcm_from_samples(pcm, 0.1 * rng.standard_normal((4, 16000)), 16000)
        back = sub.wait_count(f"{base}/event/device_back", 1, timeout_s=15)
        info = json.loads(back[0].payload)
        assert info["device"] == pcm and info["downtime_seconds"] > 0.4
        assert info["attempts"] >= 1
        sub.wait_count(f"{base}/audio/beam", 20, timeout_s=10)
        sub.wait_for(lambda ms: any(m.topic == f"{base}/telemetry"
                                    and json.loads(m.payload)["device_up"] == 1 for m in ms),
                     timeout_s=5)
    finally:
        service.request_stop()
        service.stop()
    assert service.device_errors_total == 1
    assert service.downtime_seconds_total >= info["downtime_seconds"] - 1e-3  # rounded
