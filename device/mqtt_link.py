"""mica's MQTT connection: status, info, audio, telemetry and events (docs/mqtt.md).

:class:`MqttLink` wraps one paho-mqtt 2 client (MQTT 5, threaded network loop). It never
blocks its callers on the network: audio is dropped and counted when the link is down or its
outgoing queue is full, telemetry (QoS 0) is dropped while disconnected, and events (QoS 1)
wait in paho's bounded queue and go out after a reconnect.

paho caps its queue (``max_queued_messages_set``) only for QoS 1 and 2. QoS 0 packets sit in
an unbounded buffer while the socket cannot take them (a stalled broker), so the link also
bounds the audio messages not yet written to the socket to ``mqtt.max_queued_messages``.

:class:`AudioChunker` turns the DSP's output blocks into fixed-size s16le chunks, one MQTT
message each.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple, Self

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mica.device.config import Config
from mica.device.sources.pcm import float_to_s16le

log = logging.getLogger(__name__)

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
_RECONNECT_MIN_S = 1
_RECONNECT_MAX_S = 30


def _check_level(name: str, what: str) -> str:
    """A single topic level: non-empty, no ``/`` and no wildcard."""
    if not name or any(c in name for c in "/+#\0"):
        raise ValueError(f"{what} must be one non-empty topic level without '/', '+' or "
                         f"'#', got {name!r}")
    return name


class AudioChunk(NamedTuple):
    pcm: bytes
    """s16le mono samples."""
    seq: int
    """Chunk counter: 0, 1, 2, ... with no gaps."""
    t_capture_ns: int
    """CLOCK_MONOTONIC capture time of the chunk's first sample."""


class AudioChunker:
    """Collects mono float32 blocks into chunks of ``chunk_samples`` s16le samples.

    Each pushed block brings its ``t_capture_ns`` and, optionally, its block ``seq``. A chunk's
    time is that of its first sample (the block's time plus the offset into the block at
    ``fs_hz``). When a block's ``seq`` does not follow the previous one (blocks lost upstream),
    the partial chunk is emitted as it is (shorter) so that no chunk spans a gap in time.
    Chunk ``seq`` counts on without a gap either way, so on the subscriber's side a gap in
    ``seq`` means messages lost between publisher and subscriber, and a jump in
    ``t_capture_ns`` beyond the chunk's duration means audio lost before the publisher.

    Args:
        chunk_samples: samples per chunk (e.g. 320 = 20 ms at 16 kHz).
        fs_hz: sample rate, for the time of a chunk that starts inside a block.
    """

    def __init__(self, chunk_samples: int, fs_hz: int = 16000) -> None:
        if chunk_samples < 1:
            raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples!r}")
        self.chunk_samples = int(chunk_samples)
        self.fs_hz = int(fs_hz)
        self._buf = np.zeros(self.chunk_samples, dtype=np.float32)
        self._fill = 0
        self._t_first_ns = 0
        self._next_block_seq: int | None = None
        self._chunk_seq = 0

    def push(self, block: np.ndarray, t_capture_ns: int,
             seq: int | None = None) -> list[AudioChunk]:
        """Add one ``(n,)`` float32 block; return the chunks it completed (usually 0 or 1).

        Args:
            block: mono samples in [-1, 1].
            t_capture_ns: capture time of its first sample.
            seq: the block's counter; a jump flushes the partial chunk (``None``: no check).
        """
        samples = np.asarray(block, dtype=np.float32).reshape(-1)
        out: list[AudioChunk] = []
        if seq is not None:
            if self._next_block_seq is not None and seq != self._next_block_seq:
                flushed = self.flush()
                if flushed is not None:
                    out.append(flushed)
            self._next_block_seq = seq + 1
        pos = 0
        while pos < samples.size:
            if self._fill == 0:
                self._t_first_ns = t_capture_ns + pos * 1_000_000_000 // self.fs_hz
            take = min(self.chunk_samples - self._fill, samples.size - pos)
            self._buf[self._fill:self._fill + take] = samples[pos:pos + take]
            self._fill += take
            pos += take
            if self._fill == self.chunk_samples:
                out.append(self._emit())
        return out

    def flush(self) -> AudioChunk | None:
        """The partial chunk, if any (at a gap or at the end of the stream)."""
        return self._emit() if self._fill else None

    def _emit(self) -> AudioChunk:
        chunk = AudioChunk(float_to_s16le(self._buf[:self._fill]), self._chunk_seq,
                           self._t_first_ns)
        self._chunk_seq += 1
        self._fill = 0
        return chunk


class MqttLink:
    """One MQTT 5 connection for one device, publishing under ``cfg.topic_base``.

    Call :meth:`set_info` before :meth:`start`; on every (re)connect the link publishes
    ``online`` and the info JSON, both retained at QoS 1. The last will publishes ``offline``
    (retained, QoS 1) if the connection dies without :meth:`stop`.

    Thread use: ``publish_*`` may be called from any thread; paho's network thread runs the
    callbacks.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.base = cfg.topic_base
        self.status_topic = f"{self.base}/status"
        self.info_topic = f"{self.base}/info"
        self.telemetry_topic = f"{self.base}/telemetry"
        self.content_type = f"audio/L16;rate={cfg.dsp.fs_hz};channels=1"
        m = cfg.mqtt
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                   client_id=cfg.mqtt_client_id, protocol=mqtt.MQTTv5)
        if m.username:
            self._client.username_pw_set(m.username, m.password or None)
        self._client.will_set(self.status_topic, STATUS_OFFLINE, qos=1, retain=True)
        self._client.max_queued_messages_set(m.max_queued_messages)
        self._client.reconnect_delay_set(_RECONNECT_MIN_S, _RECONNECT_MAX_S)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._audio_cap = m.max_queued_messages
        self._audio_pending: collections.deque[mqtt.MQTTMessageInfo] = collections.deque()
        self._audio_lock = threading.Lock()
        self._info: dict[str, Any] | None = None
        self._connected = threading.Event()
        self._started = False
        self._stopped = False
        self.dropped_audio_total = 0
        """Audio messages dropped at the publisher (link down or queue full)."""
        self.audio_published_total = 0
        """Audio messages handed to paho."""
        self.connects_total = 0
        """Successful connections (the first one and every reconnect)."""

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        """Whether the broker has accepted the connection and it has not been lost since."""
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until :attr:`connected`; ``False`` if ``timeout_s`` passed first."""
        return self._connected.wait(timeout_s)

    def set_info(self, info: Mapping[str, Any]) -> None:
        """Set the retained ``info`` JSON; published on every connect, and now if connected."""
        self._info = dict(info)
        if self.connected:
            self._publish_info()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background (paho's thread retries until it succeeds)."""
        if self._started:
            return
        self._started = True
        m = self.cfg.mqtt
        log.info("MQTT: connecting to %s:%d as %s", m.host, m.port, self.cfg.mqtt_client_id)
        self._client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self._client.loop_start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Publish ``offline``, disconnect and end the network thread, within ``timeout_s``.

        When the broker is unreachable the offline message is skipped (the broker, if it comes
        back, has nothing of this session; if it saw the connection die it has published the
        last will) and the network thread, which then has nothing left to send, is left to
        end by itself (within a second: paho's reconnect wait sleeps in 1 s steps).
        """
        if not self._started or self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + timeout_s
        was_connected = self.connected
        if was_connected:
            self._send_offline(deadline - 0.2 * timeout_s)
        self._client.disconnect()
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        wait_s = deadline - time.monotonic()
        stopper.join(max(0.0, wait_s if self.connected or was_connected else min(wait_s, 0.1)))
        if stopper.is_alive():
            log.debug("MQTT: network thread still in its reconnect wait; leaving it to end")
        self._connected.clear()

    def _send_offline(self, deadline: float) -> None:
        """Publish the retained ``offline`` and wait for its PUBACK until ``deadline`` (monotonic),
        or until the connection drops."""
        info = self._client.publish(self.status_topic, STATUS_OFFLINE, qos=1, retain=True)
        try:
            while not info.is_published():
                if not self.connected or time.monotonic() >= deadline:
                    log.warning("MQTT: offline status not acknowledged before stop")
                    return
                info.wait_for_publish(timeout=0.01)
        except (RuntimeError, ValueError) as err:
            log.warning("MQTT: offline status not sent: %s", err)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ callbacks

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT: broker refused the connection: %s (reason code %d)", reason_code,
                      reason_code.value)
            return
        self.connects_total += 1
        log.info("MQTT: connected to %s:%d (%s)", self.cfg.mqtt.host, self.cfg.mqtt.port,
                 reason_code)
        with self._audio_lock:
            self._audio_pending.clear()  # paho dropped the QoS 0 packets of the old socket
        client.publish(self.status_topic, STATUS_ONLINE, qos=1, retain=True)
        self._publish_info()
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._stopped:
            log.info("MQTT: disconnected (%s)", reason_code)
        elif was_connected:
            log.warning("MQTT: connection lost: %s (reason code %d); reconnecting",
                        reason_code, reason_code.value)
        else:
            log.debug("MQTT: connect attempt failed: %s", reason_code)

    # ------------------------------------------------------------------ publishing

    def _publish_info(self) -> None:
        if self._info is not None:
            self._client.publish(self.info_topic, json.dumps(self._info), qos=1, retain=True)

    def _audio_queue_has_room(self) -> bool:
        pending = self._audio_pending
        while pending and pending[0].is_published():
            pending.popleft()
        return len(pending) < self._audio_cap

    def publish_audio(self, pcm_s16le: bytes, seq: int, t_capture_ns: int,
                      stream: str) -> bool:
        """Publish one audio chunk (QoS 0) on ``<base>/audio/<stream>``; never blocks.

        Returns:
            Whether paho took it; otherwise it was dropped and counted in
            :attr:`dropped_audio_total`.
        """
        topic = f"{self.base}/audio/{_check_level(stream, 'stream')}"
        with self._audio_lock:
            if not self.connected or not self._audio_queue_has_room():
                self.dropped_audio_total += 1
                return False
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = self.content_type
            props.UserProperty = [("seq", str(seq)), ("t_capture_ns", str(t_capture_ns))]
            info = self._client.publish(topic, pcm_s16le, qos=0, properties=props)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.dropped_audio_total += 1
                return False
            self._audio_pending.append(info)
            self.audio_published_total += 1
            return True

    def publish_telemetry(self, payload: Mapping[str, Any]) -> bool:
        """Publish the telemetry JSON (QoS 0); ``False`` if dropped (link down)."""
        info = self._client.publish(self.telemetry_topic, json.dumps(payload), qos=0)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish_event(self, kind: str, payload: Mapping[str, Any]) -> bool:
        """Publish an event JSON on ``<base>/event/<kind>`` (QoS 1).

        While disconnected it waits in paho's queue and goes out after the reconnect.

        Returns:
            ``False`` only if paho's queue is full (the event is lost).
        """
        topic = f"{self.base}/event/{_check_level(kind, 'event kind')}"
        info = self._client.publish(topic, json.dumps(payload), qos=1)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            log.warning("MQTT: queue full; event %s dropped", kind)
            return False
        return True
