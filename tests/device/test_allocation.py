"""No allocation in the per-block path, measured with tracemalloc (which sees numpy's array
data as well as Python objects) over thousands of blocks."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mica.array_dsp import enhancer as enhancer_module
from mica.array_dsp.enhancer import Enhancer
from mica.device.config import parse_config
from mica.device.service import Service

GEOMETRY = np.array([[0.032, 0, 0], [0, 0.032, 0], [-0.032, 0, 0], [0, -0.032, 0]])
BEAMFORMERS = getattr(enhancer_module, "BEAMFORMERS", ("das",))


def _blocks(n: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal((4, 160))).astype(np.float32) for _ in range(n)]


def _traced(fn, n_blocks: int) -> tuple[int, int]:
    """(bytes still allocated after, peak bytes above the start) over ``n_blocks`` calls."""
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for i in range(n_blocks):
            fn(i)
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return end - start, peak - start


@pytest.mark.parametrize("beamformer", BEAMFORMERS)
def test_enhancer_keeps_nothing_per_block(beamformer: str) -> None:
    kwargs = {} if beamformer == "das" else {"beamformer": beamformer}
    enh = Enhancer(GEOMETRY, **kwargs)
    enh.warmup()
    blocks = _blocks()
    for i in range(300):
        enh.process(blocks[i % 16])
    kept, _ = _traced(lambda i: enh.process(blocks[i % 16]), 2000)
    assert kept < 1024, f"{kept} bytes kept after 2000 blocks"


def test_enhancer_allocates_no_block_sized_temporaries() -> None:
    enh = Enhancer(GEOMETRY)
    enh.warmup()
    blocks = _blocks()
    for i in range(300):
        enh.process(blocks[i % 16])
    _, peak = _traced(lambda i: enh.process(blocks[i % 16]), 500)
    # numpy's ufunc machinery keeps ~1.5 KB of scratch; one (4, 161) complex64 frame is 5 KB
    assert peak < 4096, f"a block allocates up to {peak} bytes of temporaries"


SIDE_WORK = (
    tracemalloc.Filter(False, "*/device/selfcheck.py", all_frames=True),
    tracemalloc.Filter(False, "*/calibration/measure.py", all_frames=True),
)
"""Not per block: the channel-order check's working set (a few seconds of audio, once every
few seconds, in its own thread) is alive whenever a snapshot falls inside a check. The
self-check's per-block path is held to no allocation in tests/device/test_selfcheck.py."""


def _traced_bytes(snapshot: tracemalloc.Snapshot) -> int:
    return sum(stat.size for stat in snapshot.filter_traces(SIDE_WORK).statistics("filename"))


def test_dsp_loop_keeps_nothing_per_block(tmp_path: Path) -> None:
    """The whole service (capture, reblock, DSP, out queue, publisher) over 3000 blocks."""
    wav = tmp_path / "a.wav"
    rng = np.random.default_rng(0)
    sf.write(wav, (0.1 * rng.standard_normal((32000, 4))).astype(np.float32), 16000,
             subtype="PCM_16")
    cfg = parse_config({
        "capture": {"source": "wav", "wav_path": str(wav), "wav_loop": True,
                    "wav_realtime": False, "channels": 4},
        "array": {"geometry_m": GEOMETRY.tolist()},
        "mqtt": {"enabled": False},
    }, tmp_path)
    svc = Service(cfg)
    # Tracing starts before the service's threads and stops after they ended: CPython 3.11's
    # tracemalloc races with threads that allocate while it is switched on or off (a
    # segfault seen once in CI; cpython gh-128679, fixed in 3.12.9/3.13.2).
    tracemalloc.start(10)  # deep enough to see the self-check thread under numpy
    try:
        svc.start()
        try:
            while svc.blocks_total < 3000:
                time.sleep(0.05)
            time.sleep(0.5)  # let the queues reach their steady fill
            n0 = svc.blocks_total
            start = _traced_bytes(tracemalloc.take_snapshot())
            while svc.blocks_total < n0 + 3000:
                time.sleep(0.05)
            end = _traced_bytes(tracemalloc.take_snapshot())
        finally:
            svc.request_stop()
            svc.stop()
            svc.selfcheck.stop(timeout_s=30.0)  # a channel-order check may still be running
    finally:
        tracemalloc.stop()
    # the queues' fill level varies by a few blocks (~3 KB each): allow 64 KB, i.e. < 22
    # bytes per block; a leak of one small object per block would be 3000 x >= 56 bytes
    assert end - start < 64 * 1024, f"{end - start} bytes kept over 3000 blocks"
