"""An optional Wyoming microphone server: mica's enhanced stream as a Wyoming ``mic`` service.

Home Assistant's ``wyoming-satellite`` (``--mic-uri tcp://<board>:10700``) connects to it and
reads ``audio-start`` then ``audio-chunk`` events (16 kHz, 16-bit, mono), with no MQTT in
between. A ``describe`` is answered with an ``info`` that lists one ``mic`` program. Needs the
``wyoming`` package (``pip install "mica-array[wyoming]"``); config ``mqtt.wyoming_uri``.

The server runs its own asyncio loop in a daemon thread. :meth:`WyomingMicServer.push` is
called from the publisher thread with each chunk and never blocks: each client has a bounded
queue, and a client that does not keep up loses its oldest chunks (counted in
:attr:`WyomingMicServer.dropped_total`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from urllib.parse import urlparse

from mica.array_dsp.errors import ConfigError

log = logging.getLogger(__name__)

_QUEUE_CHUNKS = 100
"""Chunks a client may be behind (2 s of 20 ms chunks) before its oldest are dropped."""


class WyomingMicServer:
    """A Wyoming ``mic`` server on ``tcp://host:port``.

    Args:
        uri: ``tcp://HOST:PORT`` (port 0 picks a free one; see :attr:`port`).
        fs_hz: sample rate of the chunks.
        name: program name in ``info``.

    Raises:
        ConfigError: the ``wyoming`` package is missing or the URI is not ``tcp://``.
    """

    def __init__(self, uri: str, fs_hz: int = 16000, name: str = "mica") -> None:
        try:
            from wyoming.audio import AudioChunk, AudioStart
            from wyoming.event import async_read_event, async_write_event
            from wyoming.info import Attribution, Describe, Info, MicProgram
        except ImportError as err:
            raise ConfigError(["mqtt.wyoming_uri: the Wyoming server needs the 'wyoming' "
                               "package: pip install 'mica-array[wyoming]'"]) from err
        self._w = {"AudioChunk": AudioChunk, "AudioStart": AudioStart, "Describe": Describe,
                   "Info": Info, "MicProgram": MicProgram, "Attribution": Attribution,
                   "read": async_read_event, "write": async_write_event}
        parsed = urlparse(uri)
        if parsed.scheme != "tcp" or parsed.hostname is None or parsed.port is None:
            raise ConfigError([f"mqtt.wyoming_uri: must be tcp://HOST:PORT, got {uri!r}"])
        self.host, self.port = parsed.hostname, parsed.port
        self.fs_hz = int(fs_hz)
        self.name = name
        self.dropped_total = 0
        """Chunks dropped because a client fell behind."""
        self.chunks_total = 0
        """Chunks handed to :meth:`push`."""
        self._loop = asyncio.new_event_loop()
        self._clients: set[asyncio.Queue] = set()
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._t0_ns: int | None = None

    @property
    def clients(self) -> int:
        return len(self._clients)

    def start(self) -> None:
        """Listen (in the server's thread); returns once the socket is bound."""
        self._thread = threading.Thread(target=self._run, name="mica-wyoming", daemon=True)
        self._thread.start()
        if not self._ready.wait(5) or self._server is None:
            raise ConfigError([f"mqtt.wyoming_uri: cannot listen on {self.host}:{self.port}"])

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._client, self.host, self.port))
            self.port = self._server.sockets[0].getsockname()[1]
            log.info("Wyoming mic server on tcp://%s:%d", self.host, self.port)
        except OSError as err:
            log.error("Wyoming mic server cannot listen on %s:%d: %s", self.host, self.port, err)
        finally:
            self._ready.set()
        if self._server is not None:
            self._loop.run_forever()
        self._loop.close()

    def stop(self) -> None:
        """Close the server and its connections; idempotent."""
        if self._thread is None:
            return
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(2.0)
        self._thread = None

    def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for queue in list(self._clients):
            queue.put_nowait(None)
        self._loop.call_later(0.1, self._loop.stop)

    def push(self, pcm_s16le: bytes, t_capture_ns: int) -> None:
        """Send one chunk to every connected client (publisher thread; never blocks)."""
        self.chunks_total += 1
        if self._clients and self._thread is not None:
            if self._t0_ns is None:
                self._t0_ns = t_capture_ns
            ms = (t_capture_ns - self._t0_ns) // 1_000_000
            self._loop.call_soon_threadsafe(self._fan_out, pcm_s16le, ms)

    def _fan_out(self, pcm: bytes, timestamp_ms: int) -> None:
        for queue in self._clients:
            if queue.full():
                queue.get_nowait()
                self.dropped_total += 1
            queue.put_nowait((pcm, timestamp_ms))

    def _info(self):  # noqa: ANN202 - a wyoming Info
        w = self._w
        attribution = w["Attribution"](name="mica", url="https://example.invalid/mica")
        fmt = {"rate": self.fs_hz, "width": 2, "channels": 1}
        mic = w["MicProgram"](name=self.name, description="mica enhanced microphone array",
                              attribution=attribution, installed=True, version=None,
                              mic_format=_audio_format(fmt))
        return w["Info"](mic=[mic])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        w = self._w
        peer = writer.get_extra_info("peername")
        log.info("Wyoming client %s connected", peer)
        queue: asyncio.Queue = asyncio.Queue(_QUEUE_CHUNKS)
        reading = asyncio.ensure_future(self._answer(reader, writer))
        try:
            await w["write"](w["AudioStart"](rate=self.fs_hz, width=2, channels=1).event(),
                             writer)
            self._clients.add(queue)
            while not reading.done():
                item = await queue.get()
                if item is None:
                    break
                pcm, timestamp_ms = item
                chunk = w["AudioChunk"](rate=self.fs_hz, width=2, channels=1, audio=pcm,
                                        timestamp=timestamp_ms)
                await w["write"](chunk.event(), writer)
        except (ConnectionError, OSError) as err:
            log.info("Wyoming client %s gone: %s", peer, err)
        finally:
            self._clients.discard(queue)
            reading.cancel()
            writer.close()
            log.info("Wyoming client %s disconnected", peer)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read what the client sends; answer ``describe``; end when it hangs up."""
        w = self._w
        while True:
            try:
                event = await w["read"](reader)
            except (ConnectionError, OSError, ValueError):
                return
            if event is None:
                return
            if w["Describe"].is_type(event.type):
                await w["write"](self._info().event(), writer)


def _audio_format(fmt: dict):  # noqa: ANN202 - a wyoming AudioFormat
    from wyoming.audio import AudioFormat

    return AudioFormat(**fmt)
