"""The Wyoming mic server: a running Service serves its enhanced stream to a Wyoming client
(as wyoming-satellite's --mic-uri does): describe -> info, audio-start, audio-chunks; mute
stops them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info

from mica.device.commands import Command
from mica.device.config import parse_config
from mica.device.service import Service


async def _read(port: int, n_chunks: int) -> tuple[Info | None, AudioStart | None, list]:
    info = start = None
    chunks: list[AudioChunk] = []
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        while len(chunks) < n_chunks:
            event = await asyncio.wait_for(client.read_event(), 5)
            assert event is not None
            if Info.is_type(event.type):
                info = Info.from_event(event)
            elif AudioStart.is_type(event.type):
                start = AudioStart.from_event(event)
            elif AudioChunk.is_type(event.type):
                chunks.append(AudioChunk.from_event(event))
    return info, start, chunks


def test_wyoming_client_gets_the_enhanced_stream(tmp_path: Path) -> None:
    wav = tmp_path / "array.wav"
    sf.write(wav, (0.05 * np.random.default_rng(2).standard_normal((32000, 4))).astype(
        np.float32), 16000, subtype="PCM_16")
    cfg = parse_config({
        "device": {"id": "wy"},
        "capture": {"source": "wav", "wav_path": str(wav), "wav_loop": True, "channels": 4},
        "array": {"geometry_m": [[0.03, 0, 0], [0, 0.03, 0], [-0.03, 0, 0], [0, -0.03, 0]]},
        "mqtt": {"enabled": False, "wyoming_uri": "tcp://127.0.0.1:0"},
        "governor": {"enabled": False},
    }, tmp_path)
    svc = Service(cfg)
    svc.start()
    try:
        assert svc.wyoming is not None and svc.wyoming.port > 0
        info, start, chunks = asyncio.run(_read(svc.wyoming.port, 25))
        assert info is not None and info.mic and info.mic[0].mic_format.rate == 16000
        assert start is not None and (start.rate, start.width, start.channels) == (16000, 2, 1)
        assert all(len(c.audio) == 640 and c.rate == 16000 for c in chunks)
        stamps = [c.timestamp for c in chunks]
        assert stamps == sorted(stamps) and 400 <= stamps[-1] - stamps[0] <= 600
        pcm = np.frombuffer(b"".join(c.audio for c in chunks), "<i2")
        assert np.abs(pcm).max() > 100  # not silence

        replies = []
        svc._on_command(Command("mute"), lambda *a, **k: replies.append((a, k)))
        assert replies == [(({"muted": True},), {})]
        time.sleep(0.2)
        before = svc.wyoming.chunks_total
        time.sleep(0.5)
        assert svc.wyoming.chunks_total == before  # muted: nothing leaves the board
    finally:
        svc.request_stop()
        svc.stop()
