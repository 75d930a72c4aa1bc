"""Does the MVDR recover after a privacy mute? SI-SDR after the unmute, three ways.

A corpus 4-mic speech recording plus the corpus diffuse noise (same array) at ``--snr-db``
runs through the daemon's Enhancer (MVDR, steered at the talker) hop by hop:

- ``continuous``: never muted (the baseline);
- ``skip``: what the daemon does: the muted hops are not processed at all (the adaptive state
  is the pre-mute one when the audio comes back);
- ``zeros``: the alternative: the muted hops are processed as digital silence.

Printed: SI-SDR (evaluation/metrics.py) of each output against the clean speech at mic 0
(shifted by the chain's stream delay) over the pre-mute window and over windows after the
unmute, and the improvement over the noisy mic 0 in the same window (comparable between
windows with different speech).

Run: ``python benchmarks/mute_recovery.py`` (about 30 s on one core).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from mica.array_dsp.enhancer import Enhancer
from mica.evaluation.metrics import si_sdr_db

SPEECH = "multichannel/speechbrain_4mic_speech_-0.82918_0.55279_-0.082918"
NOISE = "multichannel/speechbrain_4mic_noise_diffuse"
HOP = 160
FS_HZ = 16000


@dataclass(frozen=True)
class Scene:
    """``noisy``/``clean``: ``(4, n)`` float32; the talker's direction in degrees."""

    noisy: np.ndarray
    clean: np.ndarray
    geometry_m: np.ndarray
    azimuth_deg: float
    elevation_deg: float


def load_scene(corpus: Path, snr_db: float) -> Scene:
    """The corpus speech and diffuse noise mixed at ``snr_db`` (power over all mics)."""
    speech, fs = sf.read(corpus / f"{SPEECH}.wav", dtype="float32", always_2d=True)
    noise, fs_n = sf.read(corpus / f"{NOISE}.wav", dtype="float32", always_2d=True)
    if fs != FS_HZ or fs_n != FS_HZ:
        raise ValueError(f"{SPEECH}/{NOISE}: expected {FS_HZ} Hz, got {fs}/{fs_n}")
    n = min(len(speech), len(noise)) // HOP * HOP
    clean, noise = speech[:n].T.copy(), noise[:n].T.copy()
    gain = math.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    meta = json.loads((corpus / f"{SPEECH}.json").read_text())
    x, y, z = -0.82918, 0.55279, -0.082918  # the file name's unit vector to the talker
    return Scene((clean + gain * noise).astype(np.float32), clean,
                 np.asarray(meta["geometry_m"], dtype=np.float64),
                 math.degrees(math.atan2(y, x)), math.degrees(math.asin(z)))


def run(scene: Scene, mode: str, mute_s: tuple[float, float]) -> tuple[np.ndarray, int]:
    """The MVDR output ``(n,)`` and its stream delay (samples), with the hops in ``mute_s``
    handled as ``mode`` says (``continuous``, ``skip`` or ``zeros``); skipped hops are left
    zero in the output."""
    enh = Enhancer(scene.geometry_m, fs_hz=FS_HZ, hop_samples=HOP, beamformer="mvdr",
                   steer_azimuth_deg=scene.azimuth_deg,
                   steer_elevation_deg=scene.elevation_deg)
    n = scene.noisy.shape[1]
    out = np.zeros(n, dtype=np.float32)
    zeros = np.zeros((scene.noisy.shape[0], HOP), dtype=np.float32)
    m0, m1 = (round(t * FS_HZ) // HOP * HOP for t in mute_s)
    for i in range(0, n, HOP):
        muted = mode != "continuous" and m0 <= i < m1
        if muted and mode == "skip":
            continue
        out[i:i + HOP] = enh.process(zeros if muted else scene.noisy[:, i:i + HOP])
    return out, enh.latency_samples


def window_scores(scene: Scene, out: np.ndarray, delay: int, t0_s: float,
                  t1_s: float) -> tuple[float, float]:
    """SI-SDR (dB) of ``out`` over ``[t0_s, t1_s)`` against the clean mic 0, and its
    improvement over the noisy mic 0 in that window."""
    a, b = round(t0_s * FS_HZ), round(t1_s * FS_HZ)
    est = out[a + delay:b + delay]
    ref = scene.clean[0, a:b]
    sdr = si_sdr_db(est, ref)
    return sdr, sdr - si_sdr_db(scene.noisy[0, a:b], ref)


def measure(corpus: Path, snr_db: float = 0.0, mute_s: tuple[float, float] = (4.0, 6.0),
            windows_s: tuple[tuple[float, float], ...] = ((1.0, 4.0), (6.0, 7.0),
                                                          (7.0, 9.5))) -> dict:
    """``{mode: [(window, si_sdr_db, improvement_db), ...]}``."""
    scene = load_scene(corpus, snr_db)
    results = {}
    for mode in ("continuous", "skip", "zeros"):
        out, delay = run(scene, mode, mute_s)
        results[mode] = [(w, *window_scores(scene, out, delay, *w)) for w in windows_s]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/work/shared/corpus"))
    parser.add_argument("--snr-db", type=float, default=0.0)
    args = parser.parse_args()
    results = measure(args.corpus, args.snr_db)
    print(f"MVDR, corpus 4-mic speech + diffuse noise at {args.snr_db:g} dB, muted 4.0-6.0 s")
    print(f"{'mode':<11} " + "  ".join(f"{f'{a:g}-{b:g} s':>20}" for (a, b), *_ in
                                       results["continuous"]))
    for mode, rows in results.items():
        print(f"{mode:<11} " + "  ".join(f"{s:6.2f} dB ({d:+5.2f} dB)" for _, s, d in rows))
    print("each cell: SI-SDR against the clean mic 0 (improvement over the noisy mic 0)")


if __name__ == "__main__":
    main()
