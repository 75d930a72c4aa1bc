"""Home Assistant MQTT discovery: one device per mica board, one entity per telemetry field.

:func:`discovery_messages` turns a telemetry sample (the fields this board actually has: a
board without thermal zones gets no temperature sensor) into retained config messages on
``<ha_prefix>/<component>/<node_id>/<object_id>/config``. Each entity reads the telemetry
topic through a ``value_template``, is available while ``<base>/status`` is ``online``, and
belongs to one device (``identifiers: ["mica_<device_id>"]``), so a board appears in Home
Assistant with no manual configuration. See docs/mqtt.md, "Home Assistant".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mica.device.config import Config


@dataclass(frozen=True, slots=True)
class Entity:
    """One Home Assistant entity read from the telemetry JSON."""

    object_id: str
    name: str
    value_template: str
    field: str
    """Dotted path of the telemetry field it reads (the entity exists when it does)."""
    component: str = "sensor"
    device_class: str | None = None
    unit: str | None = None
    state_class: str | None = "measurement"
    icon: str | None = None
    entity_category: str | None = "diagnostic"


def _sensor(path: str, name: str, **kw: Any) -> Entity:
    return Entity(_slug(path), name, "{{ value_json." + path + " }}", path, **kw)


def _counter(path: str, name: str) -> Entity:
    return _sensor(path, name, state_class="total_increasing", icon="mdi:counter")


def _problem(path: str, name: str) -> Entity:
    return Entity(_slug(path), name, "{{ 'ON' if value_json." + path + " else 'OFF' }}", path,
                  component="binary_sensor", device_class="problem", state_class=None)


def _flag(path: str, name: str, icon: str) -> Entity:
    return Entity(_slug(path), name, "{{ 'ON' if value_json." + path + " else 'OFF' }}", path,
                  component="binary_sensor", state_class=None, icon=icon, entity_category=None)


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z_]+", "_", text.lower()).strip("_")


_STATIC = (
    _sensor("uptime_seconds", "Uptime", device_class="duration", unit="s"),
    _sensor("process_cpu_percent", "Process CPU", unit="%", icon="mdi:cpu-64-bit"),
    _sensor("process_rss_bytes", "Process memory", device_class="data_size", unit="B"),
    _sensor("process_threads", "Process threads", icon="mdi:format-list-numbered"),
    _sensor("load1", "Load (1 min)", icon="mdi:gauge"),
    _sensor("real_time_factor", "DSP real-time factor", icon="mdi:timer-sand"),
    _sensor("dsp_block_seconds.p99", "DSP block time p99", device_class="duration", unit="s"),
    _sensor("latency_seconds", "Latency", device_class="duration", unit="s"),
    _counter("xruns_total", "Capture overruns"),
    _counter("dropped_blocks_total", "Dropped blocks"),
    _counter("dropped_audio_total", "Dropped audio chunks"),
    _counter("device_errors_total", "Capture device errors"),
    _counter("spool_dropped_total", "Spool drops"),
    _sensor("spool_messages", "Spooled messages", icon="mdi:tray-full"),
    _sensor("memory_available_bytes", "Memory available", device_class="data_size", unit="B"),
    _sensor("spool_disk_free_bytes", "Spool disk free", device_class="data_size", unit="B"),
    Entity("cpu_usage", "CPU usage",
           "{{ (value_json.cpu_usage_ratio.cpu * 100) | round(1) }}", "cpu_usage_ratio.cpu",
           unit="%",
           icon="mdi:cpu-64-bit"),
    _sensor("quality_level", "Quality level", state_class=None, icon="mdi:tune"),
    _sensor("doa_azimuth_deg", "Talker direction", unit="°", icon="mdi:compass-outline",
            entity_category=None),
    _flag("speech_active", "Speech", icon="mdi:account-voice"),
    _sensor("echo.erle_db", "Echo cancelled (ERLE)", unit="dB", icon="mdi:speaker-off"),
    _flag("echo.playback_active", "Playback", icon="mdi:speaker-wireless"),
    _flag("echo.double_talk", "Double talk", icon="mdi:account-voice"),
    _sensor("onboard.doa_deg", "On-board direction", unit="°", icon="mdi:compass"),
    _flag("onboard.voice_activity", "On-board voice activity", icon="mdi:microphone"),
    Entity("muted", "Muted", "{{ 'ON' if value_json.muted else 'OFF' }}", "muted",
           component="binary_sensor", state_class=None, icon="mdi:microphone-off",
           entity_category=None),
)


def _present(sample: Mapping[str, Any], dotted: str) -> bool:
    node: Any = sample
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def entities_for(sample: Mapping[str, Any]) -> list[Entity]:
    """The entities whose fields ``sample`` (one telemetry payload) holds."""
    out = [e for e in _STATIC if _present(sample, e.field)]
    for zone in sorted(sample.get("thermal_celsius", {}) or {}):
        out.append(_sensor(f"thermal_celsius.{zone}", f"Temperature {zone}",
                           device_class="temperature", unit="°C"))
    for cpu in sorted(sample.get("cpu_frequency_hertz", {}) or {}):
        out.append(_sensor(f"cpu_frequency_hertz.{cpu}", f"Frequency {cpu}",
                           device_class="frequency", unit="Hz"))
    for flag in sorted(sample.get("throttled", {}) or {}):
        out.append(_problem(f"throttled.{flag}", f"Throttling: {flag.replace('_', ' ')}"))
    for i in range(len(sample.get("channel_dead", []) or [])):
        out.append(Entity(f"channel_{i}_dead", f"Microphone {i} dead",
                          "{{ 'ON' if value_json.channel_dead[" + str(i) + "] else 'OFF' }}",
                          "channel_dead", component="binary_sensor", device_class="problem",
                          state_class=None))
    return out


def discovery_messages(cfg: Config, sample: Mapping[str, Any],
                       info: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """Retained ``(topic, JSON payload)`` discovery configs for one board.

    Args:
        cfg: gives the topics (``topic_base``, ``mqtt.ha_discovery_prefix``) and the device.
        sample: one telemetry payload; only the fields it holds get an entity.
        info: the retained info (version, board) for the device card.
    """
    info = info or {}
    node_id = _slug(f"mica_{cfg.device.id}")
    base = cfg.topic_base
    device = {"identifiers": [node_id], "name": f"mica {cfg.device.id}",
              "manufacturer": "mica", "model": str(info.get("board", cfg.device.board)),
              "sw_version": str(info.get("version", ""))}
    messages = []
    for e in entities_for(sample):
        payload: dict[str, Any] = {
            "name": e.name,
            "unique_id": f"{node_id}_{e.object_id}",
            "object_id": f"{node_id}_{e.object_id}",
            "state_topic": f"{base}/telemetry",
            "value_template": e.value_template,
            "availability_topic": f"{base}/status",
            "payload_available": "online",
            "payload_not_available": "offline",
            "expire_after": max(60, int(cfg.mqtt.telemetry_interval_s * 3)),
            "qos": 1,
        }
        payload["device"] = device
        if e.component == "binary_sensor":
            payload["payload_on"] = "ON"
            payload["payload_off"] = "OFF"
        for key, value in (("device_class", e.device_class), ("unit_of_measurement", e.unit),
                           ("state_class", e.state_class), ("icon", e.icon),
                           ("entity_category", e.entity_category)):
            if value is not None:
                payload[key] = value
        topic = f"{cfg.mqtt.ha_discovery_prefix}/{e.component}/{node_id}/{e.object_id}/config"
        messages.append((topic, json.dumps(payload)))
    return messages
