"""Fleet benchmark: N simulated boards publishing telemetry and 20 ms audio into one broker.

    python benchmarks/fleet.py [--boards 50] [--seconds 20] [--chunk-ms 20] [--broker HOST:PORT]

Each board is a real :class:`~mica.device.mqtt_link.MqttLink` (its own MQTT 5 connection,
paho network thread, store-and-forward spool in memory) publishing what a board publishes:
one s16le audio chunk every ``--chunk-ms`` (QoS 0, with the MQTT 5 content type and user
properties ``seq``, ``t_capture_ns``, ``stream``, ``steer_azimuth_deg``) and a telemetry JSON
of realistic size every ``--telemetry-interval-s`` (QoS 1). The boards are spread over
``--procs`` publisher processes, each pacing its boards from absolute deadlines on one
shared start time. A subscriber in a separate process (its own interpreter, so the
boards' publishing does not share its GIL) takes ``mica/+/audio/+`` and ``mica/+/telemetry``
and measures, per message, the end-to-end latency from the board's publish call
(``t_capture_ns``, CLOCK_MONOTONIC, the same clock in both processes) to its ``on_message``.

Without ``--broker`` a private mosquitto is started on a loopback port (with ``sys_interval
1``, so the broker's own ``$SYS/broker/bytes/received`` gives the bytes on the wire per board).

Prints: messages/s published and received, end-to-end latency p50/p99/max, losses (audio and
telemetry never received, audio dropped at the publishers), and the bandwidth per board.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from mica.device.broker import PrivateBroker
from mica.device.config import Config, replace
from mica.device.mqtt_link import MqttLink

PREFIX = "micafleet"


def telemetry_template() -> dict[str, Any]:
    """A telemetry payload shaped and sized like a Raspberry Pi 4's (about 1.5 KB)."""
    return {
        "seq": 0, "uptime_seconds": 3600.0, "load1": 0.61, "real_time_factor": 0.0412,
        "xruns_total": 0, "dropped_blocks_total": 0, "dropped_audio_total": 0,
        "blocks_total": 360000, "latency_seconds": 0.02, "process_cpu_percent": 21.4,
        "process_rss_bytes": 118_000_000, "process_threads": 9,
        "dsp_block_seconds": {"p50": 0.00041, "p95": 0.00052, "p99": 0.00061, "max": 0.0012},
        "device_errors_total": 0, "device_up": 1, "quality_level": "mvdr",
        "quality_level_index": 0, "thermal_celsius": {"cpu_thermal": 52.1},
        "cpu_frequency_hertz": {f"cpu{i}": 1_500_000_000 for i in range(4)},
        "cpu_frequency_max_hertz": {f"cpu{i}": 1_800_000_000 for i in range(4)},
        "throttled": {k: False for k in (
            "under_voltage", "under_voltage_since_boot", "frequency_capped",
            "frequency_capped_since_boot", "throttled", "throttled_since_boot",
            "soft_temperature_limit", "soft_temperature_limit_since_boot")},
        "throttled_raw": 0, "cpu_usage_ratio": {"cpu": 0.12, **{f"cpu{i}": 0.1 for i in range(4)}},
        "load5": 0.5, "load15": 0.4, "memory_total_bytes": 3_884_376_064,
        "memory_available_bytes": 2_993_700_864, "system_uptime_seconds": 7200.0,
        "channel_rms_ratio": [0.01] * 4, "channel_peak_ratio": [0.2] * 4,
        "channel_clipping_ratio": [0.0] * 4, "channel_dead": [False] * 4, "muted": False,
        "audio_enabled": True, "mqtt_connects_total": 1, "spool_messages": 0,
        "spool_bytes": 0, "spool_dropped_total": 0, "doa_azimuth_deg": 41.5,
        "speech_active": False, "vad_duty": 0.12,
    }


# --------------------------------------------------------------------------- subscriber


def subscriber_main(host: str, port: int, ready: Any, stop: Any, out: Any) -> None:
    """Separate process: count messages per board and stream, record latencies."""
    audio_seqs: dict[str, list[int]] = {}
    tele_seqs: dict[str, list[int]] = {}
    latencies_ns: list[int] = []
    tele_latencies_ns: list[int] = []
    sys_bytes: list[tuple[float, int]] = []
    lock = threading.Lock()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        client.subscribe([(f"{PREFIX}/+/audio/+", 0), (f"{PREFIX}/+/telemetry", 1),
                          ("$SYS/broker/bytes/received", 0)])

    def on_subscribe(*_a) -> None:
        ready.set()

    def on_message(client, userdata, msg) -> None:
        now = time.monotonic_ns()
        topic = msg.topic
        with lock:
            if topic.startswith("$SYS"):
                sys_bytes.append((time.monotonic(), int(msg.payload)))
                return
            board = topic.split("/", 2)[1]
            if topic.endswith("/telemetry"):
                data = json.loads(msg.payload)
                tele_seqs.setdefault(board, []).append(data["seq"])
                tele_latencies_ns.append(now - data["t_publish_ns"])
                return
            props = dict(msg.properties.UserProperty)
            audio_seqs.setdefault(board, []).append(int(props["seq"]))
            latencies_ns.append(now - int(props["t_capture_ns"]))

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id="fleet-bench-sub", protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.max_inflight_messages_set(1000)
    client.connect(host, port, keepalive=60)
    client.loop_start()
    stop.wait()
    time.sleep(1.0)  # stragglers
    client.disconnect()
    client.loop_stop()
    with lock:
        out.put({"audio_seqs": audio_seqs, "tele_seqs": tele_seqs,
                 "latencies_ns": latencies_ns, "tele_latencies_ns": tele_latencies_ns,
                 "sys_bytes": sys_bytes})


# --------------------------------------------------------------------------- boards


def board_config(i: int, host: str, port: int, chunk_ms: int) -> Config:
    return replace(Config(), device={"id": f"board-{i:04d}"},
                   mqtt={"host": host, "port": port, "prefix": PREFIX, "audio_enabled": True,
                         "audio_chunk_ms": chunk_ms, "max_queued_messages": 1000})


def publisher_main(first: int, count: int, host: str, port: int, chunk_ms: int,
                   telemetry_interval_s: float, seconds: float, connected: Any, start_at: Any,
                   out: Any, audio: bool = True) -> None:
    """Separate process: boards ``first .. first+count-1``, paced from a shared start time."""
    links = [MqttLink(board_config(i, host, port, chunk_ms)) for i in range(first, first + count)]
    for link in links:
        link.start()
    t_connect = time.monotonic()
    ok = all(link.wait_connected(max(0.1, 30 - (time.monotonic() - t_connect)))
             for link in links)
    connected.put((ok, time.monotonic() - t_connect))
    t0 = start_at.get()
    pcm = (np.sin(np.arange(16 * chunk_ms) * 0.05) * 3000).astype("<i2").tobytes()
    template = telemetry_template()
    props = {"steer_azimuth_deg": 41.5}
    period_s = chunk_ms / 1000
    ticks = int(seconds / period_s)
    tele_every = max(1, round(telemetry_interval_s / period_s))
    published_audio = published_tele = late_ticks = 0
    for tick in range(ticks):
        wait = t0 + tick * period_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        elif wait < -period_s:
            late_ticks += 1
        send_tele = tick % tele_every == 0
        for link in links:
            if audio:
                link.publish_audio(pcm, tick, time.monotonic_ns(), "beam", props)
                published_audio += 1
            if send_tele:
                template["seq"] = tick // tele_every
                template["t_publish_ns"] = time.monotonic_ns()
                link.publish_telemetry(template)
                published_tele += 1
    t_end = time.monotonic()
    time.sleep(1.0)  # let the QoS 1 telemetry be acknowledged
    out.put({"published_audio": published_audio, "published_telemetry": published_tele,
             "late_ticks": late_ticks, "t_end": t_end,
             "dropped": sum(link.dropped_audio_total for link in links)})
    for link in links:
        link.stop(timeout_s=0.5)


def run(boards: int, seconds: float, chunk_ms: int, telemetry_interval_s: float,
        host: str, port: int, procs: int, audio: bool = True) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, stop, sub_out = ctx.Event(), ctx.Event(), ctx.Queue()
    sub = ctx.Process(target=subscriber_main, args=(host, port, ready, stop, sub_out),
                      daemon=True)
    sub.start()
    if not ready.wait(30):
        raise RuntimeError("subscriber did not subscribe within 30 s")
    procs = max(1, min(procs, boards))
    connected, start_at, pub_out = ctx.Queue(), ctx.Queue(), ctx.Queue()
    workers = []
    for k in range(procs):
        first = k * boards // procs
        count = (k + 1) * boards // procs - first
        w = ctx.Process(target=publisher_main, daemon=True, args=(
            first, count, host, port, chunk_ms, telemetry_interval_s, seconds, connected,
            start_at, pub_out, audio))
        w.start()
        workers.append(w)
    states = [connected.get(timeout=90) for _ in workers]
    if not all(ok for ok, _ in states):
        raise RuntimeError("not every board connected within 30 s")
    connect_s = max(s for _, s in states)
    t0 = time.monotonic() + 1.5  # one $SYS period before the measurement starts
    for _ in workers:
        start_at.put(t0)
    parts = [pub_out.get(timeout=seconds + 120) for _ in workers]
    elapsed_s = max(p["t_end"] for p in parts) - t0
    published_audio = sum(p["published_audio"] for p in parts)
    published_tele = sum(p["published_telemetry"] for p in parts)
    late_ticks = sum(p["late_ticks"] for p in parts)
    dropped_at_publisher = sum(p["dropped"] for p in parts)
    time.sleep(1.0)
    stop.set()
    result = sub_out.get(timeout=60)
    sub.join(10)
    for w in workers:
        w.join(10)

    audio_received = sum(len(v) for v in result["audio_seqs"].values())
    tele_received = sum(len(v) for v in result["tele_seqs"].values())
    lat_ms = np.array(result["latencies_ns"], dtype=np.float64) / 1e6
    tele_ms = np.array(result["tele_latencies_ns"], dtype=np.float64) / 1e6
    # $SYS/broker/bytes/received comes once a second: the samples inside the publishing
    # window give the bytes on the wire (MQTT framing, topics, properties, payloads).
    in_window = [(t, b) for t, b in result["sys_bytes"] if t0 + 0.5 <= t <= t0 + elapsed_s]
    bytes_per_s = None
    if len(in_window) >= 2:
        (ta, ba), (tb, bb) = in_window[0], in_window[-1]
        if tb > ta:
            bytes_per_s = (bb - ba) / (tb - ta)
    return {
        "boards": boards, "publisher_processes": procs, "seconds": round(elapsed_s, 2),
        "chunk_ms": chunk_ms,
        "telemetry_interval_s": telemetry_interval_s, "connect_seconds": round(connect_s, 2),
        "published_audio": published_audio, "published_telemetry": published_tele,
        "received_audio": audio_received, "received_telemetry": tele_received,
        "published_per_s": round((published_audio + published_tele) / elapsed_s, 1),
        "received_per_s": round((audio_received + tele_received) / elapsed_s, 1),
        "audio_latency_ms": _percentiles(lat_ms),
        "telemetry_latency_ms": _percentiles(tele_ms),
        "audio_lost": published_audio - audio_received,
        "audio_dropped_at_publisher": dropped_at_publisher,
        "telemetry_lost": published_tele - tele_received,
        "telemetry_duplicates": sum(len(v) - len(set(v)) for v in result["tele_seqs"].values()),
        "late_ticks": late_ticks,
        "broker_bytes_received_per_s": None if bytes_per_s is None else round(bytes_per_s),
        "kbit_s_per_board": None if bytes_per_s is None else round(
            8 * bytes_per_s / boards / 1000, 1),
        "audio_payload_kbit_s_per_board": 8 * 2 * 16,  # s16 mono at 16 kHz: 256 kbit/s
    }


def _percentiles(ms: np.ndarray) -> dict[str, float] | None:
    if ms.size == 0:
        return None
    p50, p99 = np.percentile(ms, (50, 99))
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3),
            "max": round(float(ms.max()), 3), "mean": round(statistics.fmean(ms), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boards", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--chunk-ms", type=int, default=20, choices=(10, 20, 40, 80))
    parser.add_argument("--telemetry-interval-s", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="publisher processes the boards are spread over "
                        "(default: CPUs - 1)")
    parser.add_argument("--no-audio", action="store_true",
                        help="telemetry only (audio is off by default on a board)")
    parser.add_argument("--broker", help="HOST:PORT of a running broker (default: a private "
                        "mosquitto on a loopback port)")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    broker = None
    if args.broker:
        host, _, port_text = args.broker.rpartition(":")
        port = int(port_text)
    else:
        broker = PrivateBroker(extra_config=["sys_interval 1", "max_queued_messages 10000"])
        broker.start()
        host, port = broker.host, broker.port
    try:
        r = run(args.boards, args.seconds, args.chunk_ms, args.telemetry_interval_s, host, port,
                args.procs, not args.no_audio)
    finally:
        if broker is not None:
            broker.stop()
    a, t = r["audio_latency_ms"] or {}, r["telemetry_latency_ms"] or {}
    what = "no audio" if args.no_audio else (
        f"{1000 // r['chunk_ms']} audio chunks/s of {r['chunk_ms']} ms")
    lines = [
        f"fleet: {r['boards']} boards x ({what}"
        f" + telemetry every {r['telemetry_interval_s']:g} s) for "
        f"{r['seconds']} s into mosquitto at {host}:{port} ({r['publisher_processes']} "
        f"publisher processes, {os.cpu_count()} CPUs; connect {r['connect_seconds']} s)",
        f"messages/s: published {r['published_per_s']}, received {r['received_per_s']}",
        f"audio latency ms: p50 {a.get('p50')}, p99 {a.get('p99')}, max {a.get('max')}",
        f"telemetry latency ms: p50 {t.get('p50')}, p99 {t.get('p99')}, max {t.get('max')}",
        f"losses: audio {r['audio_lost']} of {r['published_audio']} "
        f"({r['audio_dropped_at_publisher']} dropped at the publishers), telemetry "
        f"{r['telemetry_lost']} of {r['published_telemetry']} "
        f"({r['telemetry_duplicates']} duplicates); late pacing ticks {r['late_ticks']}",
        f"bandwidth per board (broker bytes received): {r['kbit_s_per_board']} kbit/s "
        f"(audio payload alone {r['audio_payload_kbit_s_per_board']} kbit/s)",
    ]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
