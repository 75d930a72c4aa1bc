"""Denoise benchmark: mica's denoisers (mmse, model; single-channel and array mode) vs peers.

    python benchmarks/denoise.py [--quick] [--json OUT.json] [--no-dnsmos] [--bundle B.npz]

Held-apart real speech (never trained on: :mod:`mica.models.split`) mixed with held-apart
real noise at 0, 5 and 10 dB SNR:

- single channel: the mixture is one microphone; mica's ``mmse`` and ``model`` post-filters
  run on it through the daemon's streaming STFT; the single-channel peers of
  :mod:`mica.evaluation.peers` (DeepFilterNet3, GTCRN, RNNoise, WebRTC NS) run on the same
  signal;
- array (4-mic ``ring4`` board): the same kind of speech and noise rendered from different
  directions with a real RIR (:func:`mica.evaluation.scenarios.rendered_scenario`); mica's
  Enhancer (beamformer + denoiser post-filter) against the peers on microphone 0;
- clean input: the held-apart speech alone through every single-channel method (do no
  harm: PESQ and SI-SDR against the input).

Prints PESQ-wb, STOI, SI-SDR (dB), DNSMOS OVRL and the real-time factor (processing time
over audio time, one thread, this machine; for mica rows the whole streaming STFT ->
post-filter -> ISTFT chain) averaged per method and SNR, then the model stage's own RTF
(:meth:`GruDenoiser.process` per 10 ms frame, beside the bare STFT/ISTFT chain).
``--bundle`` adds rows for other weights bundles (``mica-model[<stem>]``) to compare
model versions in one run. Metrics come from
:mod:`mica.evaluation.metrics`; peers need the ``.[eval]`` extra (a missing one is listed
with the reason and skipped).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mica.device.enhance_file import enhance_signal
from mica.evaluation.metrics import dnsmos, pesq_wb, si_sdr_db, stoi_score
from mica.evaluation.peers import peer_methods
from mica.evaluation.scenarios import (
    BOARD_GEOMETRIES,
    FS_HZ,
    Scenario,
    read_mono_16k,
    rendered_scenario,
)
from mica.models import split
from mica.models.postfilter import denoise_signal, make_postfilter

log = logging.getLogger("benchmarks.denoise")
REPO = Path(__file__).resolve().parent.parent
SNRS_DB = (0.0, 5.0, 10.0)
SINGLE_SPEECH = ("arctic_aew_a0002", "arctic_axb_a0005", "librivox_sense_sensibility_0870",
                 "ljspeech_LJ002-0020_16k", "librispeech_2196-170151-0000",
                 "librispeech_5049-25947-0000")
ARRAY_SPEECH = ("arctic_aew_a0003", "librivox_sense_sensibility_0880",
                "librispeech_7113-86041-0000")
NOISES = ("berlinnoise_street_bus_tram_people", "household_dishwasher_2",
          "freesound_345558_car_engine", "speechcommands_exercise_bike", "cafe_short_16k",
          "freesound_393902_keyboard_typing")
ARRAY_RIR = "mit_ir_survey_h010_livingroom_16k"


def _corpus() -> Path:
    return Path(os.environ.get("MICA_CORPUS", REPO.parent / "shared" / "corpus"))


def _check_held_apart(corpus: Path) -> None:
    for stem in SINGLE_SPEECH + ARRAY_SPEECH:
        if not (corpus / "speech" / f"{stem}.wav").is_file():
            raise SystemExit(f"missing corpus file speech/{stem}.wav under {corpus}")
        if not split.is_held_speech(f"{stem}.wav"):
            raise SystemExit(f"{stem} is not held apart from training")
    for n in NOISES:
        if f"{n}.wav" not in split.HELD_NOISES:
            raise SystemExit(f"{n} is not held apart from training")


def _mix(speech: np.ndarray, noise: np.ndarray, snr_db: float, offset: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """``(mixture, reference)`` at ``snr_db``, both scaled so the mixture peaks at 0.5."""
    n = np.resize(np.roll(noise, -offset), speech.shape[0])
    g = np.sqrt(np.sum(speech.astype(np.float64) ** 2) / np.sum(n.astype(np.float64) ** 2)
                / 10 ** (snr_db / 10))
    x = speech + g * n
    c = 0.5 / max(float(np.max(np.abs(x))), 1e-9)
    return (x * c).astype(np.float32), (speech * c).astype(np.float32)


def single_scenarios(corpus: Path, quick: bool) -> list[Scenario]:
    out = []
    speech_set = SINGLE_SPEECH[:2] if quick else SINGLE_SPEECH
    for i, stem in enumerate(speech_set):
        s = read_mono_16k(corpus / "speech" / f"{stem}.wav")
        noise_name = NOISES[i % len(NOISES)]
        nz = read_mono_16k(corpus / "noise" / f"{noise_name}.wav")
        for snr in SNRS_DB:
            x, ref = _mix(s, nz, snr, offset=(7919 * (i + 1)) % max(len(nz) - 1, 1))
            out.append(Scenario(name=f"{stem}+{noise_name}@{snr:g}dB", family="single",
                                mixture=x[None], geometry_m=np.zeros((1, 3)),
                                target_azimuth_deg=0.0, reference=ref,
                                snr_db=snr, meta={"speech": stem, "noise": noise_name}))
    return out


def array_scenarios(corpus: Path, quick: bool) -> list[Scenario]:
    rng = np.random.default_rng(5)
    geom = BOARD_GEOMETRIES["ring4"]
    out = []
    for i, stem in enumerate(ARRAY_SPEECH[:1] if quick else ARRAY_SPEECH):
        noise_name = NOISES[(i + 2) % len(NOISES)]
        for snr in SNRS_DB:
            az = float(rng.choice(np.arange(0, 360, 30)))
            out.append(rendered_scenario(corpus, stem, noise_name, ARRAY_RIR, geom, snr, az,
                                         (az + 120.0) % 360.0, rng, family="array"))
    return out


def mica_single(kind: str, bundle: str | None = None) -> Callable[[Scenario], np.ndarray]:
    def run(sc: Scenario) -> np.ndarray:
        return denoise_signal(sc.reference_mic_signal,
                              make_postfilter(kind, 161, bundle, n_mics=1))

    return run


def stage_rtf(scenes: list[Scenario], bundle: str | None = None) -> dict[str, float]:
    """Seconds per second of audio of the model stage alone (``GruDenoiser.process`` on the
    scenes' STFT frames, one thread) and of the bare streaming STFT -> ISTFT chain.

    Both as wall time and as this thread's CPU time (``time.thread_time``): on a shared,
    loaded machine the wall time counts other processes' slices, the CPU time does not.
    """
    from mica.array_dsp.stft import StreamingIstft, StreamingStft
    from mica.models.gru import GruDenoiser, load_bundle

    pf = GruDenoiser(load_bundle(bundle), 161)
    pf.warmup()
    wall = {"model": 0.0, "chain": 0.0}
    cpu = {"model": 0.0, "chain": 0.0}
    audio_s = 0.0
    for sc in scenes:
        x = sc.reference_mic_signal.astype(np.float32)
        n = (x.shape[0] // 160) * 160
        blocks = x[None, :n].reshape(1, -1, 160)
        stft, istft = StreamingStft(1, 160), StreamingIstft(160)
        specs = np.empty((blocks.shape[1], 161), np.complex64)
        t0, c0 = time.perf_counter(), time.thread_time()
        for b in range(blocks.shape[1]):
            specs[b] = stft.process(np.ascontiguousarray(blocks[:, b]))[0]
            istft.process(specs[b])
        wall["chain"] += time.perf_counter() - t0
        cpu["chain"] += time.thread_time() - c0
        pf.reset()
        t0, c0 = time.perf_counter(), time.thread_time()
        for b in range(specs.shape[0]):
            pf.process(specs[b])
        wall["model"] += time.perf_counter() - t0
        cpu["model"] += time.thread_time() - c0
        audio_s += n / FS_HZ
    return {"model_rtf": wall["model"] / audio_s, "model_cpu_rtf": cpu["model"] / audio_s,
            "stft_istft_rtf": wall["chain"] / audio_s,
            "stft_istft_cpu_rtf": cpu["chain"] / audio_s,
            "model_cpu_us_per_frame": 1e6 * cpu["model"] / (audio_s * 100)}


def mica_array(beamformer: str, kind: str, bundle: str | None = None
               ) -> Callable[[Scenario], np.ndarray]:
    from mica.array_dsp.enhancer import Enhancer

    def run(sc: Scenario) -> np.ndarray:
        enh = Enhancer(sc.geometry_m, fs_hz=FS_HZ, hop_samples=160,
                       steer_azimuth_deg=sc.target_azimuth_deg,
                       steer_elevation_deg=sc.target_elevation_deg,
                       reference_channel=sc.reference_channel, beamformer=beamformer,
                       postfilter=make_postfilter(kind, 161, bundle))
        enh.warmup()
        return enhance_signal(sc.mixture.astype(np.float32), enh)

    return run


def _warm(fn: Callable[[Scenario], np.ndarray], sc: Scenario) -> None:
    """Compile/load every kernel and session once, outside the timed runs."""
    short = Scenario(name="warm", family=sc.family, mixture=sc.mixture[:, :3200],
                     geometry_m=sc.geometry_m, target_azimuth_deg=sc.target_azimuth_deg,
                     reference=None)
    fn(short)


def score(est: np.ndarray, ref: np.ndarray, with_dnsmos: bool) -> dict[str, float]:
    est = np.asarray(est, np.float32)[: ref.shape[0]]
    if est.shape[0] < ref.shape[0]:
        est = np.pad(est, (0, ref.shape[0] - est.shape[0]))
    m = {"pesq": pesq_wb(est, ref), "stoi": stoi_score(est, ref), "si_sdr": si_sdr_db(est, ref)}
    if with_dnsmos:
        m["dnsmos"] = float(dnsmos(est)["ovrl"])
    return m


def run_section(title: str, scenes: list[Scenario],
                methods: list[tuple[str, Callable[[Scenario], np.ndarray]]],
                with_dnsmos: bool) -> dict[str, dict[str, dict[str, float]]]:
    """Mean metrics per method and SNR (``"all"`` for the RTF); prints as it goes."""
    acc: dict[str, dict[str, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))
    timing: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for name, fn in methods:
        if name != "noisy":
            _warm(fn, scenes[0])
        for sc in scenes:
            t0 = time.perf_counter()
            out = fn(sc)
            if isinstance(out, tuple):
                out = out[0]
            timing[name][0] += time.perf_counter() - t0
            timing[name][1] += sc.duration_s
            acc[name][f"{sc.snr_db:g}"].append(score(out, sc.reference, with_dnsmos))
        log.info("%s: %s done", title, name)
    result: dict[str, dict[str, dict[str, float]]] = {}
    for name, by_snr in acc.items():
        result[name] = {snr: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
                        for snr, rows in by_snr.items()}
        result[name]["all"] = {"rtf": timing[name][0] / timing[name][1]}
    return result


def clean_section(scenes: list[Scenario],
                  methods: list[tuple[str, Callable[[Scenario], np.ndarray]]]
                  ) -> dict[str, dict[str, float]]:
    """PESQ and SI-SDR of each method's output against its clean input."""
    out: dict[str, dict[str, float]] = {}
    cleans = [sc for sc in scenes if sc.snr_db == SNRS_DB[0]]
    for name, fn in methods:
        rows = []
        for sc in cleans:
            s = sc.reference.astype(np.float32)
            clean_sc = Scenario(name=sc.name, family="clean", mixture=s[None],
                                geometry_m=sc.geometry_m, target_azimuth_deg=0.0, reference=s)
            y = fn(clean_sc)
            y = y[0] if isinstance(y, tuple) else y
            rows.append(score(y, s, with_dnsmos=False))
        out[name] = {k: float(np.mean([r[k] for r in rows])) for k in ("pesq", "si_sdr")}
    return out


def print_table(title: str, res: dict[str, dict[str, dict[str, float]]],
                clean: dict[str, dict[str, float]] | None = None) -> None:
    snrs = [f"{s:g}" for s in SNRS_DB]
    has_dnsmos = "dnsmos" in next(iter(res.values()))[snrs[0]]
    cols = ["PESQ", "STOI", "SI-SDR"] + (["DNSMOS"] if has_dnsmos else [])
    w = max(22, 2 + max(len(name) for name in res))
    head = f"{'method':<{w}}" + "".join(f"{c + '@' + s:>11}" for c in cols for s in snrs)
    head += f"{'RTF':>8}" + (f"{'cleanPESQ':>10}{'cleanSDR':>9}" if clean else "")
    print(f"\n## {title}\n")
    print(head)
    key = {"PESQ": "pesq", "STOI": "stoi", "SI-SDR": "si_sdr", "DNSMOS": "dnsmos"}
    for name, r in res.items():
        line = f"{name:<{w}}"
        for c in cols:
            for s in snrs:
                line += f"{r[s][key[c]]:>11.3f}" if c == "STOI" else f"{r[s][key[c]]:>11.2f}"
        line += f"{r['all']['rtf']:>8.4f}"
        if clean:
            cl = clean.get(name)
            line += (f"{cl['pesq']:>10.2f}{cl['si_sdr']:>9.1f}" if cl else f"{'':>19}")
        print(line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer utterances (a smoke run)")
    ap.add_argument("--no-dnsmos", action="store_true", help="skip DNSMOS (the slowest metric)")
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    ap.add_argument("--skip-array", action="store_true")
    ap.add_argument("--skip-peers", action="store_true", help="mica's methods only")
    ap.add_argument("--bundle", action="append", default=[], type=Path,
                    help="also run this weights bundle (.npz), row mica-model[<stem>]; "
                         "repeatable")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    corpus = _corpus()
    _check_held_apart(corpus)
    with_dnsmos = not args.no_dnsmos
    peers = []
    for m in [] if args.skip_peers else peer_methods():
        if m.kind != "single":
            continue
        why = m.available()
        if why:
            print(f"# skipped {m.name}: {why}")
            continue
        peers.append((m.name, m.run))
    single = single_scenarios(corpus, args.quick)
    noisy = [("noisy", lambda sc: sc.reference_mic_signal.astype(np.float32))]
    mica = [("mica-mmse", mica_single("mmse")), ("mica-model", mica_single("model"))]
    mica += [(f"mica-model[{b.stem}]", mica_single("model", str(b))) for b in args.bundle]
    report: dict = {"snrs_db": SNRS_DB, "single_speech": SINGLE_SPEECH, "noises": NOISES}
    res = run_section("single channel", single, noisy + mica + peers, with_dnsmos)
    clean = clean_section(single, noisy + mica + peers)
    print_table(f"single channel: {len(single)} held-apart mixtures (speech x noise x SNR)",
                res, clean)
    report["single"], report["clean"] = res, clean
    report["model_stage"] = {"default": stage_rtf(single)}
    report["model_stage"] |= {b.stem: stage_rtf(single, str(b)) for b in args.bundle}
    print()
    for name, r in report["model_stage"].items():
        print(f"model stage alone ({name}): {r['model_cpu_us_per_frame']:.1f} us CPU per 10 ms "
              f"frame = RTF {r['model_cpu_rtf']:.4f} (wall {r['model_rtf']:.4f}); bare "
              f"STFT+ISTFT chain RTF {r['stft_istft_cpu_rtf']:.4f} "
              f"(wall {r['stft_istft_rtf']:.4f})")
    if not args.skip_array:
        from mica.array_dsp.enhancer import BEAMFORMERS

        scenes = array_scenarios(corpus, args.quick)
        arr = [("mica-das", mica_array("das", "off")),
               ("mica-das+mmse", mica_array("das", "mmse")),
               ("mica-das+model", mica_array("das", "model"))]
        if "mvdr" in BEAMFORMERS:
            arr += [("mica-mvdr", mica_array("mvdr", "off")),
                    ("mica-mvdr+model", mica_array("mvdr", "model"))]
            arr += [(f"mica-mvdr+model[{b.stem}]", mica_array("mvdr", "model", str(b)))
                    for b in args.bundle]
        mic0 = [("mica-model(mic0)", mica_single("model"))]
        mic0 += [(f"{n}(mic0)", fn) for n, fn in peers if n == "deepfilternet3"]
        res_a = run_section("array", scenes, noisy + arr + mic0, with_dnsmos)
        print_table(f"array (ring4, 4 mics, RIR {ARRAY_RIR}): {len(scenes)} rendered scenes",
                    res_a)
        report["array"] = res_a
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
