"""Echo benchmark: mica's echo canceller against speexdsp's, on corpus audio through measured
room impulse responses and a soft-clipping loudspeaker.

    python benchmarks/echo.py [--quick] [--json OUT.json]

Scenes (:mod:`mica.evaluation.echo_scene`; far end peak 0.5 into ``tanh(2 x) / 2``):

- ``speech``: LibriSpeech far end, measured 8-ch RIR (lhotse "real", first 4 channels),
  single talk;
- ``music``: jazz far end (corpus/noise), same room (4 mics), single talk;
- ``speech+80ms``: 80 ms playback buffering, measured living-room RIR (MIT IR survey),
  4 mics (one RIR): the bulk-delay tracker has to find it (the 128 ms tail alone cannot hold both);
- ``double talk``: speech far end, near-end talker (CMU ARCTIC) at 0 dB against the echo in
  the second half.

Methods on microphone 0: ``mica`` (:class:`~mica.array_dsp.echo.EchoControl`, 128 ms tail,
bulk delay on), ``mica-kf`` (the same without the least-squares bootstrap: the Kalman
filter alone), ``speex`` (libspeexdsp's MDF echo canceller through the ``speexdsp-aec``
ctypes wheel, 10 ms frames, 128 ms tail, 16-bit I/O; needs the system ``libspeexdsp1``);
for the 4-mic scenes also mica's whole chain (AEC per mic -> delay-and-sum ->
residual-echo gains) against the plain beam; on the scene whose reference slides
10 ms halfway (a loopback device restarted after an overrun) also ``mica-nr``, mica
without the realignment of a slid reference (``AecParams.realign_max_ms = 0``). The
stereo scene (two loudspeakers, two loopback channels) runs mica only (the speexdsp
wrapper is mono).

Prints ERLE (dB, :func:`~mica.evaluation.metrics.erle_db`) per 0.5 s window, the
steady-state ERLE (median of the second half's windows), the convergence time in the sense
of ITU-T G.168 (:func:`~mica.evaluation.metrics.echo_convergence_s`: from the first
far-end sound until the canceller holds 20 dB, and the steady state - 3 dB, of ERLE over
the next second), the stricter time until the mean of the 0.5 s windows' dB over 1 s
first reaches 20 dB and the steady state - 3 dB (windows aligned to the file, so the
stretch before convergence counts), the ERLE
over the first and over the second second after the far-end onset, the online ERLE
estimate at the end, and, in double talk, near-end PESQ-wb and SI-SDR of the output over the
double-talk window against the near end alone (the mic without echo scores the "near end
alone" row), plus the real-time factor per microphone. For each single-talk scene also the
caps of a perfect linear canceller (steady ERLE left by the loudspeaker nonlinearity, by the
echo path outside the filter's tail at the delay mica applied, and by both), mica's steady
ERLE with a linear loudspeaker, and mica's 4-mic chain (AEC per mic -> delay-and-sum ->
residual-echo gains) against the plain beam.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve

from mica.array_dsp.aec import AecParams
from mica.array_dsp.echo import EchoControl, EchoParams
from mica.array_dsp.enhancer import Enhancer
from mica.evaluation.echo_scene import FS_HZ, EchoScene, make_echo_scene
from mica.evaluation.metrics import echo_convergence_s, erle_db, pesq_wb, si_sdr_db
from mica.evaluation.scenarios import circular_geometry

log = logging.getLogger("benchmarks.echo")
HOP = 160
WINDOW_S = 0.5


def corpus_path() -> Path:
    return Path(
        os.environ.get("MICA_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus")
    )


def run_mica(
    scene: EchoScene,
    n_mics: int = 1,
    state: dict | None = None,
    bootstrap: bool = True,
    realign: bool = True,
) -> tuple[np.ndarray, float, float]:
    """``(out (n_mics, n), online ERLE estimate at the end, seconds of processing)``;
    ``state`` (if given) receives the applied bulk delay and the tail (samples) and the
    slowest block's processing time (ms; one block is 10 ms of audio);
    ``bootstrap=False``: without the least-squares bootstrap (the Kalman filter alone);
    ``realign=False``: a slid reference is not realigned (``realign_max_ms = 0``)."""
    aec = AecParams(
        bootstrap_s=AecParams.bootstrap_s if bootstrap else 0.0,
        realign_max_ms=AecParams.realign_max_ms if realign else 0.0,
    )
    params = EchoParams(aec=aec)
    echo = EchoControl(n_mics, scene.ref.shape[0], HOP, FS_HZ, params)
    echo.warmup()
    mic = scene.mic[:n_mics]
    n_blocks = mic.shape[1] // HOP
    out = np.zeros((n_mics, n_blocks * HOP), np.float32)
    total, worst = 0.0, 0.0
    for b in range(n_blocks):
        sl = slice(b * HOP, (b + 1) * HOP)
        m, r = np.ascontiguousarray(mic[:, sl]), np.ascontiguousarray(scene.ref[:, sl])
        t0 = time.perf_counter()
        out[:, sl] = echo.process(m, r)
        spent = time.perf_counter() - t0
        total, worst = total + spent, max(worst, spent)
    if state is not None:
        state["delay_samples"] = echo.aec.delay_samples
        state["tail_samples"] = echo.aec.n_partitions * HOP
        state["worst_block_ms"] = 1e3 * worst
    return out, echo.erle_db, total


def linear_caps(scene: EchoScene, delay: int, tail: int, on: float) -> dict[str, float]:
    """Steady-state ERLE (same windows and median as :func:`convergence`) a perfect
    linear canceller on mic 0 could reach: limited by the loudspeaker nonlinearity (the
    echo's part no gain of the far end explains: ``echo - echo_linear``), by the echo
    path's taps outside the filter's ``[delay, delay + tail)`` window (of the delayed path
    from the reference), and by both (the two residuals added)."""
    n = scene.echo.shape[1]
    path = np.concatenate([np.zeros(scene.playback_delay_samples), scene.paths[0]])
    through = fftconvolve(scene.ref[0], path)[:n]  # = echo_linear / the loudspeaker's gain
    gain = float(np.dot(scene.echo_linear[0], through)) / max(
        float(np.dot(through, through)), 1e-20
    )
    outside = path.copy()
    outside[delay : delay + tail] = 0.0
    tail_res = gain * fftconvolve(scene.ref[0], outside)[:n]
    nonlin_res = scene.echo[0] - scene.echo_linear[0]
    caps = {}
    for label, res in (
        ("nonlinearity", nonlin_res),
        ("tail", tail_res),
        ("both", nonlin_res + tail_res),
    ):
        caps[label] = convergence(erle_windows(scene.echo[0], res.astype(np.float32)), on)[0]
    return caps


def speex_available() -> str | None:
    """``None`` when speexdsp's canceller can run here, else why not."""
    try:
        from speexdsp_aec import SpeexAec

        SpeexAec(FS_HZ, 10, 128)
    except Exception as err:  # missing wheel or missing libspeexdsp
        return f"{type(err).__name__}: {err}"
    return None


def run_speex(scene: EchoScene) -> tuple[np.ndarray, float]:
    """libspeexdsp MDF on mic 0: ``(out (1, n), seconds)``; 16-bit in and out."""
    from speexdsp_aec import SpeexAec

    aec = SpeexAec(FS_HZ, 10, 128)
    to16 = lambda x: np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)  # noqa: E731
    near, ref = to16(scene.mic[0]), to16(scene.ref[0])
    n = near.shape[0] // HOP * HOP
    parts = []
    t0 = time.perf_counter()
    for i in range(0, n, HOP):
        parts.append(aec.process(near[i : i + HOP], ref[i : i + HOP]))
    seconds = time.perf_counter() - t0
    out = np.frombuffer(b"".join(parts), np.int16).astype(np.float32) / 32768.0
    return out[None, :n], seconds


def run_chain(scene: EchoScene, with_echo: bool) -> np.ndarray:
    """4-mic Enhancer (delay-and-sum), with the echo stage (AEC + RES) or without."""
    geometry = circular_geometry(4, 0.05)
    n_refs = scene.ref.shape[0]
    enh = Enhancer(geometry, echo=EchoControl(4, n_refs, HOP, FS_HZ) if with_echo else None)
    n_blocks = scene.mic.shape[1] // HOP
    out = np.zeros(n_blocks * HOP, np.float32)
    for b in range(n_blocks):
        sl = slice(b * HOP, (b + 1) * HOP)
        out[sl] = enh.process(
            np.ascontiguousarray(scene.mic[:4, sl]),
            reference=np.ascontiguousarray(scene.ref[:, sl]),
        )
    return out


def erle_windows(echo: np.ndarray, residual: np.ndarray) -> list[float]:
    """ERLE per :data:`WINDOW_S` window (``nan`` where the echo is silent)."""
    w = int(WINDOW_S * FS_HZ)
    vals = []
    for i in range(0, echo.shape[0] - w + 1, w):
        e = echo[i : i + w]
        vals.append(erle_db(e, residual[i : i + w]) if np.sum(e**2) > 1e-8 else float("nan"))
    return vals


def convergence(windows: list[float], onset_s: float) -> tuple[float, float, float]:
    """``(steady-state ERLE, seconds until the 1 s mean ERLE first reaches 20 dB, seconds
    until it first reaches the steady state - 3 dB)``, from the far-end onset; the steady
    state is the median of the second half's windows."""
    arr = np.array(windows)
    steady = float(np.nanmedian(arr[len(arr) // 2 :]))
    span = max(1, int(round(1.0 / WINDOW_S)))

    def first(target: float) -> float:
        for i in range(len(arr) - span + 1):
            if np.nanmean(arr[i : i + span]) >= target:
                return max(0.0, (i + span) * WINDOW_S - onset_s)
        return float("nan")

    return steady, first(20.0), first(steady - 3.0)


def g168_convergence(
    echo: np.ndarray, residual: np.ndarray, onset: float, steady: float
) -> tuple[float, float]:
    """Convergence times (s after the far-end onset, G.168 style with a 1 s hold, see
    :func:`~mica.evaluation.metrics.echo_convergence_s`) to 20 dB and to ``steady`` - 3 dB."""
    a = int(round(onset * FS_HZ))
    return (
        echo_convergence_s(echo, residual, a, FS_HZ, 20.0),
        echo_convergence_s(echo, residual, a, FS_HZ, steady - 3.0),
    )


def onset_erle(echo: np.ndarray, residual: np.ndarray, onset: float) -> tuple[float, float]:
    """ERLE (dB) over the first and the second second after the far-end onset."""
    a = int(round(onset * FS_HZ))
    spans = [slice(a + i * FS_HZ, a + (i + 1) * FS_HZ) for i in (0, 1)]
    first, second = (erle_db(echo[sl], residual[sl]) for sl in spans)
    return first, second


def onset_s(scene: EchoScene) -> float:
    active = np.nonzero(np.abs(scene.ref[0]) > 1e-3)[0]
    return float(active[0]) / FS_HZ if active.size else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 s scenes instead of 12 s")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    corpus = corpus_path()
    seconds = 6.0 if args.quick else 12.0
    speex_why = speex_available()
    specs: dict[str, dict] = {
        "speech": {"n_mics": 4},
        "music": {"n_mics": 4, "far": "music"},
        "speech+80ms": {
            "n_mics": 4,
            "rir": "mit_ir_survey_h010_livingroom_16k.wav",
            "playback_delay_ms": 80.0,
        },
        # the 8-ch room's strongest taps at 7/33/46/97 ms within 3 % of each other
        "speech+60ms/flat": {"n_mics": 4, "playback_delay_ms": 60.0},
        # stereo playback: speech on one loudspeaker, music on the other (two measured
        # rooms' RIRs, cut to 120 ms so the 128 ms tail holds them: convergence, not caps)
        "stereo": {
            "n_mics": 4,
            "rir": "mit_ir_survey_h010_livingroom_16k.wav",
            "stereo_rir": "speechbrain_rir2.wav",
            "stereo_tail_ms": 120.0,
        },
        # the loopback restarts 10 ms late halfway (an overrun on a second sound card)
        "speech, slide": {
            "n_mics": 4,
            "rir": "mit_ir_survey_h010_livingroom_16k.wav",
            "playback_delay_ms": 20.0,
            "reference_slide": (seconds / 2, 160),
        },
        "double talk": {"n_mics": 1, "near_window_s": (seconds / 2, seconds)},
    }
    scenes = {name: make_echo_scene(corpus, seconds, **spec) for name, spec in specs.items()}
    results: dict = {"speex": speex_why or "libspeexdsp via speexdsp-aec", "scenes": {}}
    print(
        f"echo benchmark: {seconds:.0f} s scenes, hop {HOP}, tail 128 ms, ERLE on mic 0 "
        f"per {WINDOW_S} s window"
    )
    print(f"speex: {'available' if speex_why is None else 'NOT RUN: ' + speex_why}")
    for name, scene in scenes.items():
        state: dict = {}
        methods = {
            "mica": run_mica(scene, state=state),
            "mica-kf": run_mica(scene, bootstrap=False),
        }
        if scene.reference_slide is not None:
            methods["mica-nr"] = run_mica(scene, realign=False)
        if speex_why is None and scene.ref.shape[0] == 1:  # the wrapper is mono only
            out, sec = run_speex(scene)
            methods["speex"] = (out, float("nan"), sec)
        on = onset_s(scene)
        print(f"\n== {name} (far-end onset {on:.2f} s)")
        res: dict = {}
        for method, (out, online, sec) in methods.items():
            residual = out[0] - scene.near[0, : out.shape[1]]
            wins = erle_windows(scene.echo[0, : out.shape[1]], residual)
            rtf = sec / (out.shape[1] / FS_HZ)
            row: dict = {"rtf_per_mic": rtf, "erle_windows_db": wins}
            if scene.near_window_s is None:
                steady, t20, t_conv = convergence(wins, on)
                g20, g3 = g168_convergence(scene.echo[0, : out.shape[1]], residual, on, steady)
                first, second = onset_erle(scene.echo[0, : out.shape[1]], residual, on)
                worst = ""
                if method == "mica":
                    worst = f", worst block {state['worst_block_ms']:.1f} ms"
                row.update(
                    steady_erle_db=steady,
                    reached_20db_s=t20,
                    converged_s=t_conv,
                    g168_converged_20db_s=g20,
                    g168_converged_steady_s=g3,
                    first_second_erle_db=first,
                    second_second_erle_db=second,
                    online_erle_db=online,
                )
                if scene.reference_slide is not None:
                    k = int(scene.reference_slide[0] * FS_HZ)
                    sl = slice(k + FS_HZ // 2, k + 3 * FS_HZ // 2)
                    row["after_slide_erle_db"] = erle_db(scene.echo[0, sl], residual[sl])
                    print(
                        f"{method:7s} ERLE 0.5-1.5 s after the reference slid "
                        f"{scene.reference_slide[1]:+d} samples: "
                        f"{row['after_slide_erle_db']:5.1f} dB"
                    )
                print(
                    f"{method:7s} steady ERLE {steady:5.1f} dB; converged (next 1 s >= 20 dB / "
                    f">= steady - 3 dB) after {g20:4.2f} / {g3:4.2f} s; 1 s mean >= 20 dB after "
                    f"{t20:4.1f} s, within 3 dB of steady after {t_conv:4.1f} s; ERLE over "
                    f"the first / second second after onset {first:5.1f} / {second:5.1f} dB; "
                    f"online estimate {online:5.1f} dB; RTF {rtf:.4f}{worst}"
                )
            else:
                a, b = (int(t * FS_HZ) for t in scene.near_window_s)
                near, y = scene.near[0, a:b], out[0, a:b]
                row.update(
                    pesq=pesq_wb(y, near),
                    si_sdr_db=si_sdr_db(y, near),
                    single_talk_erle_db=float(np.nanmedian(wins[2 : len(wins) // 2])),
                )
                print(
                    f"{method:7s} near-end PESQ {row['pesq']:.2f}, SI-SDR "
                    f"{row['si_sdr_db']:5.1f} dB in double talk; ERLE before it "
                    f"{row['single_talk_erle_db']:5.1f} dB, RTF {rtf:.4f}"
                )
            print(
                "       ERLE/window: "
                + " ".join("  -- " if np.isnan(v) else f"{v:5.1f}" for v in wins)
            )
            res[method] = row
        if scene.near_window_s is not None:
            a, b = (int(t * FS_HZ) for t in scene.near_window_s)
            near = scene.near[0, a:b]
            alone = near + (scene.mic[0, a:b] - scene.echo[0, a:b] - near)  # near + noise
            ref_rows = {"near end alone": alone, "mic (no AEC)": scene.mic[0, a:b]}
            for label, y in ref_rows.items():
                p, s = pesq_wb(y, near), si_sdr_db(y, near)
                res[label] = {"pesq": p, "si_sdr_db": s}
                print(f"{label:14s} near-end PESQ {p:.2f}, SI-SDR {s:5.1f} dB")
        mono = scene.ref.shape[0] == 1
        if scene.near_window_s is None and scene.reference_slide is None and mono:
            caps = linear_caps(scene, state["delay_samples"], state["tail_samples"], on)
            lin = make_echo_scene(corpus, seconds, drive=0.0, **{**specs[name], "n_mics": 1})
            out = run_mica(lin)[0]
            lin_steady = convergence(
                erle_windows(lin.echo[0, : out.shape[1]], out[0] - lin.near[0, : out.shape[1]]),
                on,
            )[0]
            res["caps"] = {**caps, "mica_linear_loudspeaker_steady_erle_db": lin_steady}
            db = {k: f"{v:5.1f}" if v < 99.0 else "  >99" for k, v in caps.items()}
            print(
                f"caps   a perfect linear canceller: {db['nonlinearity']} dB (loudspeaker "
                f"nonlinearity), {db['tail']} dB (echo outside the "
                f"{state['tail_samples'] / FS_HZ * 1e3:.0f} ms tail at delay "
                f"{state['delay_samples'] / FS_HZ * 1e3:.1f} ms), {db['both']} dB (both); "
                f"mica with a linear loudspeaker: steady ERLE {lin_steady:5.1f} dB"
            )
        if scene.near_window_s is None:
            plain = run_chain(scene, with_echo=False)
            chain = run_chain(scene, with_echo=True)
            wins = erle_windows(plain, chain)
            steady, t20, t_conv = convergence(wins, on)
            g20, g3 = g168_convergence(plain, chain, on, steady)
            res["mica chain (4 mics, AEC + DAS + RES)"] = {
                "steady_erle_db": steady,
                "reached_20db_s": t20,
                "converged_s": t_conv,
                "g168_converged_20db_s": g20,
                "g168_converged_steady_s": g3,
                "erle_windows_db": wins,
            }
            print(
                f"chain  4 mics AEC + DAS + RES vs the plain DAS beam: steady ERLE "
                f"{steady:5.1f} dB; converged (next 1 s >= 20 dB / >= steady - 3 dB) after "
                f"{g20:4.2f} / {g3:4.2f} s; 1 s mean >= 20 dB after {t20:4.1f} s, within 3 dB "
                f"after {t_conv:4.1f} s"
            )
            print(
                "       ERLE/window: "
                + " ".join("  -- " if np.isnan(v) else f"{v:5.1f}" for v in wins)
            )
        results["scenes"][name] = res
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
