"""Objective quality metrics.

``si_sdr_db`` is numpy only. ``pesq_wb`` (``pesq``), ``stoi_score`` (``pystoi``),
``dnsmos`` (``speechmos`` on ``onnxruntime``), ``transcribe``/``word_error_rate``
(``pocketsphinx`` with its bundled en-us model) and ``wake_word_detected``
(``pymicro-wakeword``, ``pyopen-wakeword``, models in their wheels) need the ``.[eval]``
extra; they import it lazily so ``si_sdr_db`` works without it. Nothing is downloaded.

Every function takes 1-D float signals at ``fs_hz`` (16 kHz unless said otherwise).

SI-SDR (Le Roux, Wisdom, Erdogan & Hershey 2019, "SDR - half-baked or well done?",
ICASSP): with zero-mean ``s`` (reference) and ``s_hat`` (estimate),
``s_target = (<s_hat, s> / ||s||^2) s``, ``e = s_hat - s_target`` and
``SI-SDR = 10 log10(||s_target||^2 / ||e||^2)`` dB. Invariant to the estimate's gain;
not to delay, so the estimate must be time-aligned with the reference.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.signal


def si_sdr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant SDR (dB) of ``estimate`` against ``reference``, both ``(n,)``.

    Computed in float64 after removing each signal's mean. Returns ``inf`` for an exact
    (scaled) copy and ``-inf`` for an estimate orthogonal to the reference. Raises
    ``ValueError`` for shapes that differ or are not 1-D, non-finite samples, or a
    reference with no energy (the metric is undefined).
    """
    est, ref = _pair(estimate, reference, "si_sdr_db")
    est = est - est.mean()
    ref = ref - ref.mean()
    ref_energy = float(ref @ ref)
    if ref_energy == 0.0:
        raise ValueError("si_sdr_db: reference has no energy (after removing its mean)")
    target = (float(est @ ref) / ref_energy) * ref
    error = est - target
    target_energy = float(target @ target)
    error_energy = float(error @ error)
    if error_energy == 0.0:
        return float("inf")
    if target_energy == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(target_energy / error_energy))


def erle_db(echo: np.ndarray, residual: np.ndarray) -> float:
    """Echo return loss enhancement (dB): ``10 log10(sum echo^2 / sum residual^2)``.

    ``echo`` is the echo at the microphone and ``residual`` what is left of it after
    cancellation (the output minus the near-end signal), both ``(n,)``, time-aligned, over
    one window (ITU-T G.168 uses it per window over time). Raises ``ValueError`` like
    :func:`si_sdr_db` for bad shapes or an echo with no energy.
    """
    r, e = _pair(residual, echo, "erle_db")
    echo_energy = float(np.sum(e**2))
    if echo_energy == 0.0:
        raise ValueError("erle_db: the echo has no energy (ERLE is undefined)")
    return float(10.0 * np.log10(echo_energy / max(float(np.sum(r**2)), 1e-30)))


def echo_convergence_s(echo: np.ndarray, residual: np.ndarray, onset_sample: int,
                       fs_hz: int = 16000, level_db: float = 20.0, hold_s: float = 1.0,
                       step_s: float = 0.05) -> float:
    """Convergence time of an echo canceller (s after the far-end onset), in the sense of
    ITU-T G.168's definition (the time from applying the far-end signal to a canceller
    that starts from zero until the returned echo reaches a defined level) with a hold:
    the earliest ``t`` on a ``step_s`` grid from ``onset_sample`` at which
    ``erle_db(echo[t : t + hold], residual[t : t + hold]) >= level_db``: from ``t`` on the
    canceller removes at least ``level_db`` of the echo energy over the next ``hold_s``.
    One energy ratio over the hold, so a bad stretch inside it cannot hide behind
    silence or a good stretch (a 50 ms burst at 0 dB caps a 1 s window at 13 dB).

    ``echo``, ``residual``: ``(n,)`` as for :func:`erle_db`. Returns ``nan`` when no such
    ``t`` exists (windows with no echo energy are skipped).
    """
    r, e = _pair(residual, echo, "echo_convergence_s")
    hold, step = int(round(hold_s * fs_hz)), max(1, int(round(step_s * fs_hz)))
    if hold <= 0 or not 0 <= onset_sample < e.shape[0]:
        raise ValueError(f"echo_convergence_s: need hold_s > 0 and 0 <= onset_sample < "
                         f"{e.shape[0]}, got {hold_s}, {onset_sample}")
    ce = np.concatenate([[0.0], np.cumsum(e**2)])
    cr = np.concatenate([[0.0], np.cumsum(r**2)])
    for t in range(onset_sample, e.shape[0] - hold + 1, step):
        ee, rr = ce[t + hold] - ce[t], cr[t + hold] - cr[t]
        if ee > 0.0 and ee >= rr * 10.0 ** (level_db / 10.0):
            return (t - onset_sample) / fs_hz
    return float("nan")


def _pair(estimate: np.ndarray, reference: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if est.ndim != 1 or ref.ndim != 1 or est.shape != ref.shape:
        raise ValueError(
            f"{name}: estimate and reference must be 1-D of the same length, "
            f"got {est.shape} and {ref.shape}"
        )
    if not (np.isfinite(est).all() and np.isfinite(ref).all()):
        raise ValueError(f"{name}: non-finite samples")
    return est, ref


def pesq_wb(estimate: np.ndarray, reference: np.ndarray, fs_hz: int = 16000) -> float:
    """Wide-band PESQ (ITU-T P.862.2) MOS-LQO of ``estimate`` against ``reference``.

    Both ``(n,)`` at ``fs_hz`` (16 kHz, or 8 kHz which is upsampled to 16 kHz first as
    P.862.2 requires a 16 kHz input). Identical signals score about 4.64; the floor is
    about 1.04. Raises ``ValueError`` for bad shapes/rates and when PESQ finds no
    utterance in the reference (too short or silent).
    """
    est, ref = _pair(estimate, reference, "pesq_wb")
    if fs_hz == 8000:
        est = scipy.signal.resample_poly(est, 2, 1)
        ref = scipy.signal.resample_poly(ref, 2, 1)
        fs_hz = 16000
    if fs_hz != 16000:
        raise ValueError(f"pesq_wb: fs_hz must be 16000 (or 8000), got {fs_hz}")
    from pesq import PesqError, pesq

    try:
        return float(pesq(16000, ref, est, "wb"))
    except PesqError as err:
        raise ValueError(f"pesq_wb: {err}") from err


def stoi_score(
    estimate: np.ndarray, reference: np.ndarray, fs_hz: int = 16000, extended: bool = False
) -> float:
    """Short-time objective intelligibility (Taal et al. 2011), in [0, 1] (ESTOI if
    ``extended``). Identical signals score 1; ``pystoi`` resamples to 10 kHz itself."""
    est, ref = _pair(estimate, reference, "stoi_score")
    from pystoi import stoi

    return float(stoi(ref, est, int(fs_hz), extended=extended))


def dnsmos(estimate: np.ndarray, fs_hz: int = 16000) -> dict[str, float]:
    """Non-intrusive DNSMOS P.835 (``sig``, ``bak``, ``ovrl``) and P.808 (``p808``) MOS of a
    ``(n,)`` signal (Reddy et al. 2022), from ``speechmos``'s bundled ONNX models. Clips
    shorter than 9 s are looped to 9 s by the model. The signal is peak-limited to [-1, 1]."""
    if fs_hz != 16000:
        raise ValueError(f"dnsmos: fs_hz must be 16000, got {fs_hz}")
    from speechmos import dnsmos as _dnsmos

    x = np.asarray(estimate, dtype=np.float32)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 1.0:
        x = x / peak
    window = int(DNSMOS_WINDOW_S * 16000)
    if 0 < x.shape[0] < window:
        # loop to exactly one model window: speechmos would loop past it and score 3-4
        # overlapping windows of the same repeated audio
        x = np.tile(x, -(-window // x.shape[0]))[:window]
    res = _dnsmos.run(x, sr=16000)
    return {"sig": float(res["sig_mos"]), "bak": float(res["bak_mos"]),
            "ovrl": float(res["ovrl_mos"]), "p808": float(res["p808_mos"])}


DNSMOS_WINDOW_S = 9.01
"""Input length of the DNSMOS models (s); shorter clips are looped to it."""

_DECODER = None


def transcribe(signal: np.ndarray, fs_hz: int = 16000, dither: float = 1e-3,
               seed: int = 0) -> str:
    """Recognise ``signal`` with pocketsphinx (bundled en-us acoustic model, LM and
    dictionary). Normalised to -3 dBFS peak with ``dither`` (relative to full scale) of
    seeded white noise added, because exact digital silence derails its feature
    normalisation. Returns the lower-case hypothesis."""
    if fs_hz != 16000:
        raise ValueError(f"transcribe: fs_hz must be 16000, got {fs_hz}")
    global _DECODER
    if _DECODER is None:
        from pocketsphinx import Decoder

        _DECODER = Decoder(samprate=16000, loglevel="FATAL")
    x = np.asarray(signal, dtype=np.float64)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0:
        x = 0.7 * x / peak
    x = x + dither * np.random.default_rng(seed).standard_normal(x.shape[0])
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    _DECODER.start_utt()
    _DECODER.process_raw(pcm, full_utt=True)
    _DECODER.end_utt()
    hyp = _DECODER.hyp()
    return normalise_text(hyp.hypstr) if hyp is not None else ""


def normalise_text(text: str) -> str:
    """Lower case, apostrophes kept, other punctuation to spaces, runs of spaces merged."""
    out = "".join(c if c.isalnum() or c == "'" else " " for c in text.lower())
    return " ".join(out.split())


def word_error_rate(hypothesis: str, reference: str) -> float:
    """(substitutions + deletions + insertions) / reference words, after
    :func:`normalise_text` (Levenshtein on words). Can exceed 1. Raises ``ValueError`` for an
    empty reference."""
    hyp = normalise_text(hypothesis).split()
    ref = normalise_text(reference).split()
    if not ref:
        raise ValueError("word_error_rate: empty reference transcript")
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)


WAKE_ENGINES = ("microwakeword", "openwakeword")
"""Wake-word engines :func:`wake_word_detected` runs (real downstream consumers)."""

OPENWAKEWORD_THRESHOLD = 0.5


_OWW_CACHE: dict = {}


def _openwakeword(word: str | None):
    """Cached openWakeWord feature extractor (``None``) or detector (``word``), reset."""
    from pyopen_wakeword import Model as OModel
    from pyopen_wakeword import OpenWakeWord, OpenWakeWordFeatures

    key = (os.getpid(), word)
    obj = _OWW_CACHE.get(key)
    if obj is None:
        obj = (OpenWakeWordFeatures.from_builtin() if word is None
               else OpenWakeWord.from_builtin(OModel(word)))
        _OWW_CACHE[key] = obj
    obj.reset()
    return obj


def wake_words_detected(signal: np.ndarray, wake_words: tuple[str, ...] | list[str],
                        engine: str, fs_hz: int = 16000) -> dict[str, bool]:
    """Whether ``engine`` (``"microwakeword"`` or ``"openwakeword"``) fires on each of
    ``wake_words`` (built-in model names: ``hey_jarvis``, ``okay_nabu``, ``alexa``,
    ``hey_mycroft``) anywhere in ``signal``. Streams 10 ms (micro) / 80 ms (open) int16
    chunks, as a satellite does; microWakeWord uses its model's own cutoff over its sliding
    window, openWakeWord fires above 0.5. The signal is normalised to -6 dBFS peak first
    (the engines expect a gain-controlled input)."""
    if fs_hz != 16000:
        raise ValueError(f"wake_words_detected: fs_hz must be 16000, got {fs_hz}")
    x = np.asarray(signal, dtype=np.float64)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0:
        x = 0.5 * x / peak
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    hits = {}
    if engine == "microwakeword":
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

        chunk = 160
        feats = MicroWakeWordFeatures()
        frames = [f.copy() for i in range(0, pcm.shape[0] - chunk + 1, chunk)
                  for f in feats.process_streaming(pcm[i:i + chunk].tobytes())]
        for word in wake_words:
            det = MicroWakeWord.from_builtin(Model(word))
            try:
                hits[word] = any(det.process_streaming(f) for f in frames)
            finally:
                det.close()
        return hits
    if engine == "openwakeword":
        chunk = 1280
        feats = _openwakeword(None)
        embs = [e.copy() for i in range(0, pcm.shape[0] - chunk + 1, chunk)
                for e in feats.process_streaming(pcm[i:i + chunk].tobytes())]
        for word in wake_words:
            det = _openwakeword(word)
            hits[word] = any(p > OPENWAKEWORD_THRESHOLD for e in embs
                             for p in det.process_streaming(e))
        return hits
    raise ValueError(f"wake_words_detected: unknown engine {engine!r}, expected {WAKE_ENGINES}")


def wake_word_detected(signal: np.ndarray, wake_word: str, engine: str,
                       fs_hz: int = 16000) -> bool:
    """:func:`wake_words_detected` for one wake word."""
    return wake_words_detected(signal, (wake_word,), engine, fs_hz)[wake_word]
