"""Soak: 10^6 blocks (10 ms hops, 2.8 hours of audio) through the full daemon chain, RSS sampled.

The service runs as on the board (capture thread -> DSP thread -> publisher thread, bounded
queues, the governor) with MQTT off, on a 4-mic WAV replayed as fast as the DSP takes it. The
resident set size is sampled once a second; the figure that matters is its growth after the
warm-up (goal: < 1 MB), printed at the end.

    python benchmarks/soak.py [--blocks 1000000] [--warmup 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from mica.device.config import parse_config
from mica.device.service import Service

GOAL_BYTES = 2 ** 20


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def soak(blocks: int = 1_000_000, warmup_blocks: int = 20_000, sample_s: float = 1.0,
         n_channels: int = 4) -> dict[str, float]:
    """Run ``blocks`` hops through a :class:`Service`; RSS growth after ``warmup_blocks``."""
    with tempfile.TemporaryDirectory(prefix="mica-soak-") as tmp:
        wav = Path(tmp) / "array.wav"
        rng = np.random.default_rng(0)
        sf.write(wav, (0.1 * rng.standard_normal((16000 * 3, n_channels))).astype(np.float32),
                 16000, subtype="PCM_16")
        angles = 2 * np.pi * np.arange(n_channels) / n_channels
        cfg = parse_config({
            "capture": {"source": "wav", "wav_path": str(wav), "wav_loop": True,
                        "wav_realtime": False, "channels": n_channels},
            "array": {"geometry_m": [[0.032 * np.cos(a), 0.032 * np.sin(a), 0.0]
                                     for a in angles]},
            "mqtt": {"enabled": False},
            "service": {"log_level": "WARNING"},
        }, Path(tmp))
        svc = Service(cfg)
        svc.start()
        t0 = time.monotonic()
        samples: list[tuple[int, int]] = []  # (blocks done, RSS bytes)
        try:
            while svc.blocks_total < blocks and svc.fault is None:
                time.sleep(sample_s)
                samples.append((svc.blocks_total, _rss_bytes()))
        finally:
            svc.request_stop()
            svc.stop(timeout_s=2.0)
        elapsed = time.monotonic() - t0
    if svc.fault is not None:
        raise RuntimeError(f"the DSP thread failed: {svc.fault!r}")
    after = [rss for n, rss in samples if n >= warmup_blocks]
    if len(after) < 2:
        raise RuntimeError(f"too few RSS samples after the warm-up ({len(after)}): run longer")
    return {
        "blocks": svc.blocks_total,
        "seconds": elapsed,
        "blocks_per_second": svc.blocks_total / elapsed,
        "rss_start_bytes": samples[0][1],
        "rss_after_warmup_bytes": after[0],
        "rss_end_bytes": after[-1],
        "rss_max_after_warmup_bytes": max(after),
        "rss_growth_bytes": after[-1] - after[0],
        "dropped_at_capture": svc.ring.dropped_total,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=20_000, help="blocks before the baseline")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    r = soak(args.blocks, args.warmup)
    ok = r["rss_growth_bytes"] < GOAL_BYTES
    if args.json:
        print(json.dumps({**r, "ok": ok}))
    else:
        mib = 2 ** 20
        print(f"{r['blocks']} blocks in {r['seconds']:.0f} s ({r['blocks_per_second']:.0f} "
              f"blocks/s, {r['blocks_per_second'] / 100:.1f}x real time)")
        print(f"RSS: {r['rss_start_bytes'] / mib:.1f} MiB at start, "
              f"{r['rss_after_warmup_bytes'] / mib:.1f} MiB after {args.warmup} blocks, "
              f"{r['rss_end_bytes'] / mib:.1f} MiB at the end "
              f"(max {r['rss_max_after_warmup_bytes'] / mib:.1f} MiB)")
        print(f"RSS growth after warm-up: {r['rss_growth_bytes'] / 1024:.0f} KiB "
              f"(goal < {GOAL_BYTES // 1024} KiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
