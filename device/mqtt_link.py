"""mica's MQTT connection: status, info, audio, telemetry, events, commands (docs/mqtt.md).

:class:`MqttLink` wraps one paho-mqtt 2 client (MQTT 5, threaded network loop, optional TLS
and a password read from a file). It never blocks its callers on the network:

- audio (QoS 0) is dropped and counted when the link is down or its outgoing queue is full;
- QoS 1 messages (events, and telemetry at ``mqtt.telemetry_qos = 1``) are *reliable*: while
  the link is up and nothing is waiting they go straight to paho; otherwise they are appended
  to the store-and-forward :class:`~mica.device.spool.Spool` (on disk or in memory, bounded,
  oldest dropped and counted), and a sender thread delivers the spool oldest first once the
  broker is back, removing each message when its PUBACK arrives. Messages handed to paho
  before the link noticed the loss are re-sent by paho after the reconnect, and the sender
  waits for them first, so the order holds across an outage and across a restart of mica;
- retained messages (status, info, Home Assistant discovery) are published again on every
  connect, never spooled.

paho caps its queue (``max_queued_messages_set``) only for QoS 1 and 2. QoS 0 packets sit in
an unbounded buffer while the socket cannot take them (a stalled broker), so the link also
bounds the audio messages not yet written to the socket to ``mqtt.max_queued_messages``.

Commands arrive on ``<base>/cmd/<name>``; the link parses them (``device/commands.py``),
answers errors itself, and hands valid ones to the command handler with a ``reply``
function that publishes the result on ``<base>/cmd/result`` (and on the request's MQTT 5
response topic, if any) with the request's correlation data.

:class:`AudioChunker` turns the DSP's output blocks into fixed-size s16le chunks, one MQTT
message each; :func:`wav_chunk` wraps one as the WAV a Rhasspy Hermes audio frame carries.
"""

from __future__ import annotations

import collections
import json
import logging
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Self

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from mica.array_dsp.errors import ConfigError
from mica.device.commands import Command, CommandError, parse_command, result_payload
from mica.device.config import Config
from mica.device.sources.pcm import float_to_s16le
from mica.device.spool import Spool, SpooledMessage

log = logging.getLogger(__name__)

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
_RECONNECT_MIN_S = 1
_RECONNECT_MAX_S = 30
_SPOOL_WINDOW = 20
"""Spooled messages in flight at once (paho's default inflight window)."""

CommandHandler = Callable[[Command, Callable[..., None]], None]
"""``handler(command, reply)``: apply ``command``, then call ``reply(result_dict)`` on success
or ``reply(error=CommandError(...))``; may reply later from another thread."""


def wav_chunk(pcm_s16le: bytes, fs_hz: int, channels: int = 1) -> bytes:
    """A complete WAV file (44-byte RIFF header) around s16le PCM: a Hermes audio frame."""
    n = len(pcm_s16le)
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + n, b"WAVE", b"fmt ", 16, 1,
                       channels, fs_hz, fs_hz * channels * 2, channels * 2, 16, b"data",
                       n) + pcm_s16le


def read_password_file(path: str) -> str:
    """The first line of ``path`` (trailing newline removed).

    Raises:
        ConfigError: the file cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"mqtt.password_file: cannot read {path}: {err}"]) from err
    return text.splitlines()[0] if text else ""


def _acked(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether paho has the broker's acknowledgement of a QoS 1 message.

    paho's ``is_published()`` raises for a message published while disconnected (its rc is
    ``MQTT_ERR_NO_CONN``) although paho queued it and delivers it after the reconnect, so
    this reads the flag that ``is_published()`` returns after its checks.
    """
    return bool(info._published)  # noqa: SLF001 - see the docstring


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

    def __init__(self, cfg: Config, *, spool: Spool | None = None,
                 command_handler: CommandHandler | None = None) -> None:
        self.cfg = cfg
        self.base = cfg.topic_base
        self.status_topic = f"{self.base}/status"
        self.info_topic = f"{self.base}/info"
        self.telemetry_topic = f"{self.base}/telemetry"
        self.cmd_result_topic = f"{self.base}/cmd/result"
        self.content_type = f"audio/L16;rate={cfg.dsp.fs_hz};channels=1"
        m = cfg.mqtt
        self.hermes_topic = (f"hermes/audioServer/{m.hermes_site_id or cfg.device.id}/audioFrame"
                             if m.hermes_enabled else None)
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                   client_id=cfg.mqtt_client_id, protocol=mqtt.MQTTv5)
        password = read_password_file(m.password_file) if m.password_file else m.password
        if m.username:
            self._client.username_pw_set(m.username, password or None)
        if m.tls:
            try:
                self._client.tls_set(ca_certs=m.tls_ca_file or None,
                                     certfile=m.tls_cert_file or None,
                                     keyfile=m.tls_key_file or None,
                                     cert_reqs=ssl.CERT_REQUIRED)
            except (ssl.SSLError, OSError, ValueError) as err:
                raise ConfigError([f"mqtt.tls_*: cannot load the TLS files: {err}"]) from err
        self._client.will_set(self.status_topic, STATUS_OFFLINE, qos=1, retain=True)
        self._client.max_queued_messages_set(m.max_queued_messages)
        self._client.reconnect_delay_set(_RECONNECT_MIN_S, _RECONNECT_MAX_S)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._audio_cap = m.max_queued_messages
        self._audio_pending: collections.deque[mqtt.MQTTMessageInfo] = collections.deque()
        self._audio_lock = threading.Lock()
        self._info: dict[str, Any] | None = None
        self._retained: list[tuple[str, str]] = []
        self._connected = threading.Event()
        self._started = False
        self._stopped = False
        self._failed_connects = 0
        self.spool = spool if spool is not None else (
            Spool(None, m.spool_max_bytes) if m.spool_max_bytes > 0 else None)
        self._command_handler = command_handler
        # Reliable (QoS 1) messages handed to paho and not yet acknowledged, in publish
        # order: (info, spool id or None when published directly).
        self._unacked: collections.deque[tuple[mqtt.MQTTMessageInfo, int | None]] = \
            collections.deque()
        self._rel_lock = threading.Lock()
        self._wake = threading.Event()
        self._sender: threading.Thread | None = None
        self.dropped_audio_total = 0
        """Audio messages dropped at the publisher (link down or queue full)."""
        self.audio_published_total = 0
        """Audio messages handed to paho."""
        self.connects_total = 0
        """Successful connections (the first one and every reconnect)."""
        self.rejected_total = 0
        """QoS 1 messages the broker answered with a failure reason code (e.g. ACL denied)."""
        self.dropped_reliable_total = 0
        """QoS 1 messages lost without a spool (paho's queue full)."""
        self.commands_total = 0
        """Command messages received (answered or not)."""

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

    def set_retained(self, messages: Sequence[tuple[str, str]]) -> None:
        """More retained QoS 1 messages ``(topic, payload)`` published on every connect (Home
        Assistant discovery), and now if connected."""
        self._retained = list(messages)
        if self.connected:
            for topic, payload in self._retained:
                self._client.publish(topic, payload, qos=1, retain=True)

    def set_command_handler(self, handler: CommandHandler | None) -> None:
        """Where valid commands go; without one every command is answered ``not_supported``."""
        self._command_handler = handler

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background (paho's thread retries until it succeeds)."""
        if self._started:
            return
        self._started = True
        m = self.cfg.mqtt
        log.info("MQTT: connecting to %s:%d as %s%s", m.host, m.port, self.cfg.mqtt_client_id,
                 " (TLS)" if m.tls else "")
        self._client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self._client.loop_start()
        if self.spool is not None:
            self._sender = threading.Thread(target=self._send_spool, name="mqtt-spool",
                                            daemon=True)
            self._sender.start()

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
        self._wake.set()
        if self._sender is not None:
            self._sender.join(max(0.0, 0.3 * timeout_s))
        if was_connected:
            self._wait_unacked(time.monotonic() + 0.3 * timeout_s)
            self._send_offline(deadline - 0.2 * timeout_s)
        self._client.disconnect()
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        wait_s = deadline - time.monotonic()
        stopper.join(max(0.0, wait_s if self.connected or was_connected else min(wait_s, 0.1)))
        if stopper.is_alive():
            log.debug("MQTT: network thread still in its reconnect wait; leaving it to end")
        self._connected.clear()

    def _wait_unacked(self, deadline: float) -> None:
        """Give the reliable messages in flight until ``deadline`` (monotonic) for their
        PUBACKs; spooled ones not acknowledged stay in the spool for the next start."""
        while self._unacked and self.connected and time.monotonic() < deadline:
            self._reap_acked()
            time.sleep(0.005)
        self._reap_acked()
        direct = sum(1 for _, sid in self._unacked if sid is None)
        if direct:
            log.warning("MQTT: %d QoS 1 message(s) not acknowledged before stop", direct)

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
            self._failed_connects += 1
            retry_s = min(_RECONNECT_MAX_S, _RECONNECT_MIN_S * 2 ** (self._failed_connects - 1))
            log.error("MQTT: broker refused the connection: %s (reason code %d); attempt %d, "
                      "retrying in about %d s", reason_code, reason_code.value,
                      self._failed_connects, retry_s)
            return
        self._failed_connects = 0
        self.connects_total += 1
        log.info("MQTT: connected to %s:%d (%s)", self.cfg.mqtt.host, self.cfg.mqtt.port,
                 reason_code)
        with self._audio_lock:
            self._audio_pending.clear()  # paho dropped the QoS 0 packets of the old socket
        client.publish(self.status_topic, STATUS_ONLINE, qos=1, retain=True)
        self._publish_info()
        for topic, payload in self._retained:
            client.publish(topic, payload, qos=1, retain=True)
        if self.cfg.mqtt.commands_enabled:
            client.subscribe(f"{self.base}/cmd/+", options=SubscribeOptions(qos=1, noLocal=True))
        self._connected.set()
        self._wake.set()

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

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        # Called with paho's out-message lock held: take no lock of ours here.
        if getattr(reason_code, "is_failure", False):
            self.rejected_total += 1
            log.warning("MQTT: broker rejected message %d: %s (reason code %d)", mid,
                        reason_code, reason_code.value)
        self._wake.set()

    # ------------------------------------------------------------------ commands

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        prefix = f"{self.base}/cmd/"
        if not msg.topic.startswith(prefix):
            return
        name = msg.topic[len(prefix):]
        if name == "result":
            return
        self.commands_total += 1
        props = getattr(msg, "properties", None)
        reply = self._replier(name, props)
        try:
            command = parse_command(name, msg.payload, self.cfg.mqtt.commands_allowed)
        except CommandError as err:
            log.info("MQTT: command %r refused: %s %s", name[:64], err.code, err.message)
            reply(error=err)
            return
        reply = self._replier(name, props, command.request_id)
        handler = self._command_handler
        if handler is None:
            reply(error=CommandError("not_supported", "this mica takes no commands"))
            return
        try:
            handler(command, reply)
        except Exception as err:  # a handler bug must not kill paho's thread
            log.exception("MQTT: command %s failed", name)
            reply(error=CommandError("failed", f"{type(err).__name__}: {err}"))

    def _replier(self, name: str, props: Any,
                 request_id: str | int | None = None) -> Callable[..., None]:
        """A ``reply(result=None, error=None)`` for one request; only the first call counts."""
        correlation = getattr(props, "CorrelationData", None)
        response_topic = getattr(props, "ResponseTopic", None)
        done = threading.Event()

        def reply(result: dict[str, Any] | None = None, *, error: CommandError | None = None,
                  ) -> None:
            if done.is_set():
                return
            done.set()
            rid = request_id if error is None or error.request_id is None else error.request_id
            body = json.dumps(result_payload(name, ok=error is None, result=result, error=error,
                                             request_id=rid))
            out = Properties(PacketTypes.PUBLISH)
            out.ContentType = "application/json"
            if correlation is not None:
                out.CorrelationData = correlation
            topics = [self.cmd_result_topic]
            if response_topic and response_topic != self.cmd_result_topic:
                topics.append(response_topic)
            for topic in topics:
                try:
                    self._client.publish(topic, body, qos=1, properties=out)
                except ValueError as err:  # a response topic with wildcards
                    log.info("MQTT: cannot answer on %r: %s", topic[:80], err)

        return reply

    # ------------------------------------------------------------------ reliable (QoS 1)

    def _reap_acked(self) -> None:
        """Forget acknowledged messages; delivered spool entries leave the spool."""
        with self._rel_lock:
            keep: collections.deque[tuple[mqtt.MQTTMessageInfo, int | None]] = \
                collections.deque()
            for info, spool_id in self._unacked:
                if _acked(info):
                    if spool_id is not None and self.spool is not None:
                        self.spool.remove(spool_id)
                else:
                    keep.append((info, spool_id))
            self._unacked = keep

    def publish_reliable(self, topic: str, payload: str | bytes, retain: bool = False) -> bool:
        """Publish at QoS 1 with store-and-forward; never blocks on the network.

        Returns:
            ``False`` if the message was lost at once (no spool and paho's queue full, or the
            spool refused it); a spool that later drops it for room counts it in
            ``spool_dropped_total``.
        """
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        with self._rel_lock:
            backlog = self.spool is not None and (len(self.spool) > 0 or not self.connected)
            if not backlog:
                info = self._client.publish(topic, data, qos=1, retain=retain)
                if info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                    self._unacked.append((info, None))
                    return True
                if self.spool is None:
                    self.dropped_reliable_total += 1
                    log.warning("MQTT: queue full; message on %s dropped", topic)
                    return False
            assert self.spool is not None
            ok = self.spool.append(SpooledMessage(topic, data, 1, retain))
        self._wake.set()
        return ok

    def _send_spool(self) -> None:
        """Sender thread: deliver the spool oldest first, up to a window in flight."""
        assert self.spool is not None
        while not self._stopped:
            self._wake.wait(0.2)
            self._wake.clear()
            self._reap_acked()
            if not self.connected:
                continue
            with self._rel_lock:
                if any(sid is None for _, sid in self._unacked):
                    continue  # older direct messages are being re-sent by paho: wait
                in_flight = {sid for _, sid in self._unacked}
                room = _SPOOL_WINDOW - len(in_flight)
                if room <= 0:
                    continue
                for spool_id, message in self.spool.peek(len(in_flight) + room):
                    if spool_id in in_flight:
                        continue
                    info = self._client.publish(message.topic, message.payload,
                                                qos=message.qos, retain=message.retain)
                    if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                        break
                    self._unacked.append((info, spool_id))
                    if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                        break  # paho queued it; the rest waits for the reconnect

    @property
    def backlog(self) -> int:
        """Reliable messages not yet acknowledged: in the spool or in flight."""
        spooled = len(self.spool) if self.spool is not None else 0
        with self._rel_lock:
            direct = sum(1 for _, sid in self._unacked if sid is None)
        return spooled + direct

    def stats(self) -> dict[str, int]:
        """Telemetry counters of the link (``mqtt_*``, ``spool_*``)."""
        out = {"mqtt_connects_total": self.connects_total,
               "mqtt_rejected_total": self.rejected_total,
               "mqtt_commands_total": self.commands_total}
        if self.spool is not None:
            out.update(self.spool.stats())
        else:
            out["spool_dropped_total"] = self.dropped_reliable_total
        return out

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
                      stream: str, extra: Mapping[str, Any] | None = None) -> bool:
        """Publish one audio chunk (QoS 0) on ``<base>/audio/<stream>``; never blocks.

        MQTT 5 user properties: ``seq``, ``t_capture_ns``, ``stream`` and each of ``extra``
        (e.g. ``doa_azimuth_deg``). With ``mqtt.hermes_enabled`` the chunk also goes out as a
        WAV on the Hermes ``audioFrame`` topic.

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
            props.UserProperty = [("seq", str(seq)), ("t_capture_ns", str(t_capture_ns)),
                                  ("stream", stream)]
            for key, value in (extra or {}).items():
                props.UserProperty.append((key, str(value)))
            info = self._client.publish(topic, pcm_s16le, qos=0, properties=props)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.dropped_audio_total += 1
                return False
            self._audio_pending.append(info)
            self.audio_published_total += 1
            if self.hermes_topic is not None:
                wav = wav_chunk(pcm_s16le, self.cfg.dsp.fs_hz)
                hermes = self._client.publish(self.hermes_topic, wav, qos=0)
                if hermes.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._audio_pending.append(hermes)
            return True

    def publish_telemetry(self, payload: Mapping[str, Any]) -> bool:
        """Publish the telemetry JSON: QoS 1 through the spool (``mqtt.telemetry_qos = 1``) or
        QoS 0, dropped while the link is down; ``False`` if dropped at once."""
        body = json.dumps(payload)
        if self.cfg.mqtt.telemetry_qos == 1:
            return self.publish_reliable(self.telemetry_topic, body)
        info = self._client.publish(self.telemetry_topic, body, qos=0)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish_event(self, kind: str, payload: Mapping[str, Any]) -> bool:
        """Publish an event JSON on ``<base>/event/<kind>`` (QoS 1, store-and-forward).

        Returns:
            ``False`` only if it was lost at once (see :meth:`publish_reliable`).
        """
        topic = f"{self.base}/event/{_check_level(kind, 'event kind')}"
        return self.publish_reliable(topic, json.dumps(payload))
