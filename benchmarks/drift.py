"""Clock drift between two capture devices: estimate error, time to lock, beamformer SI-SDR.

Scene: corpus speech (LibriSpeech utterances joined, 35 s) and a point noise source in a
simulated room (pyroomacoustics shoebox, RT60 0.3 s, :func:`mica.evaluation.scenarios.
simulate_room`), an 8-mic ring (5 cm radius) split into two devices of 4 mics: rows 0-3 are
the reference device, rows 4-7 the other one. The other device's clock runs ``ppm`` fast:
its channels are resampled by ``(1e6 + ppm) / 1e6`` (``scipy.signal.resample_poly``) and
start 23 samples late. No ALSA prior is used: the estimate comes from the signal alone.
The alignment is the daemon's own (:func:`mica.device.multi_file.align_recordings` over the
shared :class:`~mica.device.multi_capture.DeviceAligner`), looking at the talker: the
offset is measured on the bins where the reference device's rows 0 and 3 see the look
direction (``--no-mask``: on every bin, as before).

For each offset and SNR it prints the drift estimate's error after 5, 10 and 30 s, the
time to lock (the compensator's own lock state), and the SI-SDR
(:func:`mica.evaluation.metrics.si_sdr_db`, against the target's image at mic 0, measured
from 10 s on) of the Enhancer (MVDR when this build has it, else delay-and-sum) on the
drifted channels uncompensated, compensated, and on the synchronous recording, through
the offline chain (:func:`mica.device.enhance_file.enhance_signal`). ``--reset``: the
compensated run resets the Enhancer's spatial statistics
(:meth:`~mica.array_dsp.enhancer.Enhancer.reset_spatial`) where a device's offset is
acquired or re-acquired (measured: helps at |ppm| <= 100, hurts at +-500 ppm, so the
daemon and ``mica enhance`` do not do it).

    python benchmarks/drift.py [--quick] [--json] [--offsets PPM ...] [--snrs DB ...]
                               [--no-mask] [--reset]

Goals (issue 6): error <= 1 ppm RMS after 10 s for |offset| <= 500 ppm; compensated
within 0.5 dB of synchronous after 10 s.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import scipy.signal

from mica.array_dsp.drift import DriftSettings
from mica.array_dsp.enhancer import BEAMFORMERS
from mica.device.enhance_file import enhance_signal
from mica.device.multi_file import align_recordings, resync_samples
from mica.evaluation.chains import make_enhancer
from mica.evaluation.metrics import si_sdr_db
from mica.evaluation.scenarios import circular_geometry, read_mono_16k, simulate_room

FS = 16000
HOP = 160
SECONDS = 35
OFFSET_SAMPLES = 23
CORPUS = Path(os.environ.get("MICA_CORPUS", Path(__file__).resolve().parents[2]
                             / "shared" / "corpus"))


def _scene(snr_db: float, seed: int = 0):
    files = sorted(glob.glob(str(CORPUS / "speech" / "librispeech_*.wav")))[:6]
    speech = np.concatenate([read_mono_16k(Path(f)) for f in files])[: SECONDS * FS]
    noise = read_mono_16k(CORPUS / "noise" / "speechcommands_doing_the_dishes.wav")
    rng = np.random.default_rng(seed)
    return simulate_room(speech, noise, circular_geometry(8, 0.05), rt60_s=0.3,
                         snr_db=snr_db, target_azimuth_deg=30.0,
                         interferer_azimuth_deg=150.0, rng=rng, target_distance_m=1.2)


def _drift(x: np.ndarray, ppm: int) -> np.ndarray:
    fr = Fraction(1_000_000 + ppm, 1_000_000)
    padded = np.concatenate([x, np.zeros((x.shape[0], 200), x.dtype)], axis=1)
    y = scipy.signal.resample_poly(padded.astype(np.float64), fr.numerator, fr.denominator,
                                   axis=1)
    return y[:, OFFSET_SAMPLES:].astype(np.float32)


def _compensate(ref: np.ndarray, other: np.ndarray, scene, mask: bool = True):
    """The daemon's aligner (:func:`mica.device.multi_file.align_recordings`, the shared
    :class:`~mica.device.multi_capture.DeviceAligner`), looking at the talker:
    ``(aligned other device, estimate per second, time to lock or None, sample indices
    where the Enhancer's spatial statistics are reset)``."""
    settings = DriftSettings() if mask else DriftSettings(talker_mask_sharpness=0.0)
    res = align_recordings([ref, other], ["reference", "other"], FS, settings,
                           scene.geometry_m, scene.target_azimuth_deg,
                           scene.target_elevation_deg, period_frames=HOP)
    est = np.array([r["drift_ppm"] for r in res.per_second])
    locks = [e["t_s"] for e in res.events if e["kind"] == "locked"]
    return (res.samples[ref.shape[0]:], est, (locks[0] if locks else None),
            resync_samples(res.events, FS))


def _sisdr(scenario, mixture: np.ndarray, beamformer: str, resets: list[int] = ()) -> float:
    """The offline chain (:func:`mica.device.enhance_file.enhance_signal`, spatial
    statistics reset at ``resets`` as ``mica enhance A.wav B.wav`` does)."""
    enh = make_enhancer(scenario, beamformer)
    enh.warmup()
    out = enhance_signal(mixture.astype(np.float32), enh, reset_spatial_at=resets)
    ref = scenario.reference[: out.size]
    return si_sdr_db(out[10 * FS:], ref[10 * FS:out.size])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="offsets 0, +-100, 500 at 10 dB")
    ap.add_argument("--offsets", type=int, nargs="*", help="offsets (ppm) instead")
    ap.add_argument("--snrs", type=float, nargs="*", help="SNRs (dB) instead")
    ap.add_argument("--json", action="store_true", help="print JSON lines, not a table")
    ap.add_argument("--no-mask", action="store_true", help="measure the offset on every bin "
                    "(before the look-direction mask: it follows a louder noise source)")
    ap.add_argument("--reset", action="store_true", help="reset the Enhancer's spatial "
                    "statistics where a device's offset is (re-)acquired (experiment: "
                    "the daemon and mica enhance do not)")
    args = ap.parse_args(argv)
    offsets = [0, 100, -100, 500] if args.quick else [0, 20, -20, 100, -100, 500, -500]
    snrs = [10.0] if args.quick else [0.0, 10.0, 20.0]
    offsets = args.offsets if args.offsets else offsets
    snrs = args.snrs if args.snrs else snrs
    beamformer = "mvdr" if "mvdr" in BEAMFORMERS else "das"
    rows = []
    t0 = time.monotonic()
    if not args.json:
        print(f"beamformer: {beamformer}; SI-SDR from 10 s on; no ALSA prior; "
              f"{SECONDS} s per run")
        print(f"{'ppm':>5} {'SNR':>4} | {'err@5s':>8} {'err@10s':>8} {'err@30s':>8} "
              f"{'lock s':>6} | {'uncomp':>7} {'comp':>7} {'sync':>7}  dB")
    for snr in snrs:
        scene = _scene(snr)
        mix = scene.mixture
        sync = _sisdr(scene, mix, beamformer)
        for ppm in offsets:
            other = _drift(mix[4:], ppm)
            aligned, est, lock_s, resets = _compensate(mix[:4], other, scene, not args.no_mask)
            n = aligned.shape[1]
            comp_mix = np.concatenate([mix[:4, :n], aligned], axis=0)
            m = min(n, other.shape[1])
            uncomp_mix = np.concatenate([mix[:4, :m], other[:, :m]], axis=0)
            err = [float(est[s - 1] - ppm) if len(est) >= s else float("nan")
                   for s in (5, 10, 30)]
            row = {"ppm": ppm, "snr_db": snr, "err_5s": err[0], "err_10s": err[1],
                   "err_30s": err[2], "lock_s": lock_s,
                   "si_sdr_uncompensated_db": _sisdr(scene, uncomp_mix, beamformer),
                   "si_sdr_compensated_db": _sisdr(scene, comp_mix, beamformer,
                                                  resets if args.reset else []),
                   "si_sdr_synchronous_db": sync, "beamformer": beamformer}
            rows.append(row)
            if args.json:
                print(json.dumps(row))
            else:
                lock = "-" if row["lock_s"] is None else f"{row['lock_s']:.0f}"
                print(f"{ppm:>+5d} {snr:>4.0f} | {err[0]:>+8.2f} {err[1]:>+8.2f} "
                      f"{err[2]:>+8.2f} {lock:>6} | {row['si_sdr_uncompensated_db']:>7.2f} "
                      f"{row['si_sdr_compensated_db']:>7.2f} {sync:>7.2f}", flush=True)
    e10 = np.array([r["err_10s"] for r in rows])
    gap = np.array([r["si_sdr_synchronous_db"] - r["si_sdr_compensated_db"] for r in rows])
    if not args.json:
        print(f"RMS error after 10 s: {np.sqrt(np.nanmean(e10 ** 2)):.2f} ppm (goal <= 1); "
              f"worst compensated-vs-sync gap: {np.nanmax(gap):.2f} dB (goal <= 0.5); "
              f"{time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
