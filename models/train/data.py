"""Training mixtures: real + espeak-ng speech, real + synthesized noise, RIRs, SNR, level, EQ.

Every example is drawn from a ``numpy.random.Generator`` seeded by ``(seed, step)``, so a
run resumed from a checkpoint sees the same data it would have seen without the stop.
Only the training side of :mod:`mica.models.split` is used.
"""

from __future__ import annotations

import logging
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf

from mica.array_dsp.stft import stft_reference
from mica.models import split
from mica.models.features import features_reference

log = logging.getLogger(__name__)
FS = 16000
HOP = 160

ESPEAK_VOICES = ["en", "en-us", "en-gb-x-rp", "en-029", "en-gb-scotland", "de", "fr", "es",
                 "it", "nl", "pl", "pt", "sv", "cs", "fi", "hu"]
ESPEAK_VARIANTS = ["", "+f1", "+f2", "+f3", "+f4", "+m1", "+m2", "+m3", "+m4", "+m5",
                   "+klatt", "+whisper"]


def _read16k(path: Path) -> np.ndarray:
    x, fs = sf.read(str(path), dtype="float32", always_2d=True)
    x = x[:, 0]
    if fs != FS:
        g = math.gcd(fs, FS)
        x = scipy.signal.resample_poly(x, FS // g, fs // g).astype(np.float32)
    return x


def make_espeak_corpus(corpus: Path, out_dir: Path, n: int, seed: int) -> list[Path]:
    """Synthesize ``n`` utterances with espeak-ng (random voice, variant, speed, pitch) from
    word sequences drawn from the corpus transcripts; cached in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    words: list[str] = []
    for t in sorted((corpus / "speech").glob("*.txt")):
        words += t.read_text(errors="ignore").split()
    words = [w.strip(".,;:!?\"'()") for w in words if w.isascii()] or ["hello", "world"]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = out_dir / f"espeak_{i:04d}.wav"
        paths.append(p)
        if p.exists():
            continue
        text = " ".join(rng.choice(words, size=int(rng.integers(6, 18))))
        voice = str(rng.choice(ESPEAK_VOICES)) + str(rng.choice(ESPEAK_VARIANTS))
        cmd = ["espeak-ng", "-v", voice, "-s", str(int(rng.integers(120, 200))),
               "-p", str(int(rng.integers(20, 80))), "-w", str(p), text]
        subprocess.run(cmd, check=True, capture_output=True)
    return paths


# --- synthesized noises -----------------------------------------------------------------


def _colored(rng: np.random.Generator, n: int, slope_db_oct: float) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / FS), 20.0)
    spec *= (f / 1000.0) ** (slope_db_oct / (20 * math.log10(2)))
    x = np.fft.irfft(spec, n)
    return (x / (np.std(x) + 1e-12)).astype(np.float32)


def car_cabin(rng: np.random.Generator, n: int) -> np.ndarray:
    """Engine harmonics (firing frequency drifting 25-90 Hz) + road rumble + wind."""
    t = np.arange(n) / FS
    f0 = rng.uniform(25, 90) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / FS
    engine = sum(rng.uniform(0.2, 1.0) / h * np.sin(h * phase + rng.uniform(0, 6.3))
                 for h in range(1, 9))
    road = _colored(rng, n, rng.uniform(-9, -5))
    wind = _colored(rng, n, -3) * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 1) * t))
    sos = scipy.signal.butter(2, rng.uniform(800, 3000), "low", fs=FS, output="sos")
    wind = scipy.signal.sosfilt(sos, wind)
    mix = rng.uniform(0.2, 1) * engine / (np.std(engine) + 1e-9) + road + rng.uniform(0, 1) * wind
    return mix.astype(np.float32)


def fan_hvac(rng: np.random.Generator, n: int) -> np.ndarray:
    """Broadband fan noise with a resonance and a blade-pass tone."""
    x = _colored(rng, n, rng.uniform(-4, 0))
    fc = rng.uniform(300, 2500)
    sos = scipy.signal.butter(2, [fc * 0.6, fc * 1.6], "band", fs=FS, output="sos")
    x = x + rng.uniform(0.5, 2) * scipy.signal.sosfilt(sos, x)
    t = np.arange(n) / FS
    bpf = rng.uniform(80, 400)
    x = x + rng.uniform(0, 0.5) * np.sin(2 * np.pi * bpf * t) * np.std(x)
    return x.astype(np.float32)


def transients(rng: np.random.Generator, n: int) -> np.ndarray:
    """Impulsive noise: keyboard-like clicks (press + release 40-150 ms apart), knocks and
    clatter (damped resonances at 0.3-6 kHz), 1-15 events per second, over a faint coloured
    floor."""
    out = _colored(rng, n, rng.uniform(-6, 0)) * rng.uniform(0.0, 0.05)
    rate_hz = rng.uniform(1, 15)
    n_events = int(rng.poisson(rate_hz * n / FS)) + 1
    kind = int(rng.integers(3))  # 0 clicks, 1 clatter, 2 both
    for _ in range(n_events):
        at = int(rng.integers(0, n))
        amp = math.exp(rng.normal(0.0, 0.7))
        if kind == 0 or (kind == 2 and rng.random() < 0.5):
            for start in (at, at + int(rng.uniform(0.04, 0.15) * FS)):
                m = int(rng.uniform(0.002, 0.02) * FS)
                burst = rng.standard_normal(m) * np.exp(-np.arange(m) / (0.2 * m))
                sos = scipy.signal.butter(2, sorted(rng.uniform(300, 7500, 2)) if
                                          rng.random() < 0.7 else [200, 7900], "band",
                                          fs=FS, output="sos")
                burst = scipy.signal.sosfilt(sos, burst) * amp
                e = min(n, start + m)
                if start < n:
                    out[start:e] += burst[: e - start]
                amp *= rng.uniform(0.3, 1.0)
        else:
            m = int(rng.uniform(0.03, 0.3) * FS)
            t = np.arange(m) / FS
            ring = sum(rng.uniform(0.2, 1) * np.sin(2 * np.pi * rng.uniform(300, 6000) * t)
                       * np.exp(-t / rng.uniform(0.01, 0.1))
                       for _ in range(int(rng.integers(1, 5))))
            e = min(n, at + m)
            out[at:e] += amp * ring[: e - at]
    return out.astype(np.float32)


def modulated(rng: np.random.Generator, n: int) -> np.ndarray:
    """Coloured noise (random tilt -9..+3 dB/oct) with amplitude modulation (0.2-8 Hz, depth
    up to 90 %, sine or random steps) and sometimes a mains-hum series (50/60 Hz x 1-8)."""
    x = _colored(rng, n, rng.uniform(-9, 3))
    t = np.arange(n) / FS
    depth = rng.uniform(0.3, 0.9)
    if rng.random() < 0.5:
        env = 1 + depth * np.sin(2 * np.pi * rng.uniform(0.2, 8) * t + rng.uniform(0, 6.3))
    else:
        seg = int(rng.uniform(0.05, 0.5) * FS)
        steps = rng.uniform(1 - depth, 1 + depth, n // seg + 2)
        env = np.repeat(steps, seg)[:n]
        env = scipy.signal.lfilter([0.01], [1, -0.99], env, zi=[0.99 * env[0]])[0]
    x = x * env
    if rng.random() < 0.3:
        f0 = 50.0 if rng.random() < 0.5 else 60.0
        hum = sum(rng.uniform(0, 1) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3))
                  for k in range(1, int(rng.integers(2, 9))))
        x = x + rng.uniform(0.2, 2) * hum / (np.std(hum) + 1e-9) * np.std(x)
    return x.astype(np.float32)


def babble(rng: np.random.Generator, n: int, speech: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(n, np.float32)
    for _ in range(int(rng.integers(3, 9))):
        out += _segment(rng, speech[int(rng.integers(len(speech)))], n) * rng.uniform(0.5, 1)
    return out


# --- mixing --------------------------------------------------------------------------------


def _segment(rng: np.random.Generator, x: np.ndarray, n: int) -> np.ndarray:
    if len(x) >= n:
        s = int(rng.integers(0, len(x) - n + 1))
        return x[s:s + n].copy()
    reps = -(-n // len(x))
    y = np.tile(x, reps)
    s = int(rng.integers(0, len(x)))
    return np.roll(y, -s)[:n].copy()


def synthetic_rir(rng: np.random.Generator) -> np.ndarray:
    rt60 = rng.uniform(0.15, 0.8)
    n = int(rt60 * FS)
    t = np.arange(n) / FS
    h = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * rng.uniform(0.1, 0.5)
    h[0] = 1.0
    return h.astype(np.float32)


def random_eq(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A random tilt and a peaking/notch band (microphone and channel colouration)."""
    k = int(rng.integers(2))
    sos = scipy.signal.butter(1, rng.uniform(100, 400), "high", fs=FS, output="sos")
    y = scipy.signal.sosfilt(sos, x) if k else x
    fc = rng.uniform(300, 6000)
    g = 10 ** (rng.uniform(-9, 9) / 20)
    # A band edge past Nyquist makes iirpeak unstable (v1 saw overflows): Q >= fc / 3 kHz.
    q = max(rng.uniform(0.7, 3), fc / 3000.0)
    b, a = scipy.signal.iirpeak(fc, q, fs=FS)
    return (y + (g - 1) * scipy.signal.lfilter(b, a, y)).astype(np.float32)


@dataclass
class Sources:
    speech: list[np.ndarray]
    noises: list[np.ndarray]
    rirs: list[np.ndarray]

    @classmethod
    def load(cls, corpus: Path, espeak_dir: Path, n_espeak: int, seed: int) -> Sources:
        real = [_read16k(p) for p in split.training_speech(corpus)]
        synth = [_read16k(p) for p in make_espeak_corpus(corpus, espeak_dir, n_espeak, seed)]
        noises = [_read16k(p) for p in split.training_noises(corpus)]
        rirs = []
        for name in ("speechbrain_rir1", "speechbrain_rir2", "speechbrain_rir3",
                     "speechbrain_rir4", "mit_ir_survey_h010_livingroom_16k",
                     "rir_clap_seminar_room_16k", "lhotse_real_8ch"):
            rirs.append(_read16k(corpus / "rir" / f"{name}.wav"))
        log.info("sources: %d real + %d espeak utterances, %d noises, %d RIRs",
                 len(real), len(synth), len(noises), len(rirs))
        return cls(speech=real + synth, noises=noises, rirs=rirs)


def _reverb(rng: np.random.Generator, x: np.ndarray, rir: np.ndarray) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """``(reverberant, target)``: target is direct path + 50 ms of early reflections."""
    peak = int(np.argmax(np.abs(rir)))
    rir = rir[peak:] / (np.abs(rir[peak]) + 1e-9)
    early = rir[: int(0.05 * FS)] * np.linspace(1, 0.0, min(len(rir), int(0.05 * FS)))
    wet = scipy.signal.fftconvolve(x, rir)[: len(x)]
    tgt = scipy.signal.fftconvolve(x, early)[: len(x)]
    return wet.astype(np.float32), tgt.astype(np.float32)


def _noise_v3(rng: np.random.Generator, src: Sources, n: int) -> np.ndarray:
    """The ``v3`` noise menu: corpus 35 %, car 12 %, fan 10 %, babble 15 %, transients
    15 %, modulated coloured noise/hum 13 %."""
    u = rng.random()
    if u < 0.35:
        return _segment(rng, src.noises[int(rng.integers(len(src.noises)))], n)
    if u < 0.47:
        return car_cabin(rng, n)
    if u < 0.57:
        return fan_hvac(rng, n)
    if u < 0.72:
        return babble(rng, n, src.speech)
    if u < 0.87:
        return transients(rng, n)
    return modulated(rng, n)


def make_example(rng: np.random.Generator, src: Sources, n_samples: int,
                 p_clean: float = 0.05, p_high_snr: float = 0.0, noise_set: str = "v1",
                 reverb_target: str = "early") -> tuple[np.ndarray, np.ndarray]:
    """One ``(noisy, target)`` pair of ``n_samples`` float32 each.

    ``p_clean``: share of clean-only examples (target = input: do no harm); ``p_high_snr``:
    share of examples at 20-40 dB SNR (the rest -5..20 dB); 5 % are noise only.
    ``noise_set``: ``v1`` (corpus, car, fan, babble) or ``v3`` (:func:`_noise_v3`, plus a
    second noise 0-15 dB weaker in 30 % of the examples).
    ``reverb_target``: for the half of the examples put through a RIR, ``early`` (the
    direct path + 50 ms of early reflections: the model also dereverberates) or ``wet``
    (the reverberant speech: the model removes noise only). Same random draws either way.
    """
    if reverb_target not in ("early", "wet"):
        raise ValueError(f"reverb_target must be 'early' or 'wet', got {reverb_target!r}")
    n = n_samples
    speech = src.speech[int(rng.integers(len(src.speech)))]
    s = _segment(rng, speech, n)
    if rng.random() < 0.5:
        s = random_eq(rng, s)
    target = s
    if rng.random() < 0.5:
        rir = src.rirs[int(rng.integers(len(src.rirs)))] if rng.random() < 0.5 \
            else synthetic_rir(rng)
        s, target = _reverb(rng, s, rir)
        if reverb_target == "wet":
            target = s
    u = rng.random()
    if noise_set == "v3":
        noise = _noise_v3(rng, src, n)
        if rng.random() < 0.3:
            other = _noise_v3(rng, src, n)
            noise = noise / (np.std(noise) + 1e-9) + other / (np.std(other) + 1e-9) \
                * 10 ** (-rng.uniform(0, 15) / 20)
    elif u < 0.45:
        noise = _segment(rng, src.noises[int(rng.integers(len(src.noises)))], n)
    elif u < 0.65:
        noise = car_cabin(rng, n)
    elif u < 0.8:
        noise = fan_hvac(rng, n)
    else:
        noise = babble(rng, n, src.speech)
    if rng.random() < 0.5:
        noise = random_eq(rng, noise)
    ps = float(np.mean(s ** 2)) + 1e-10
    pn = float(np.mean(noise ** 2)) + 1e-10
    mode = rng.random()
    snr_db = rng.uniform(-5, 20)
    if rng.random() < p_high_snr:
        snr_db = rng.uniform(20, 40)
    if mode < p_clean:  # clean speech: do no harm
        noise = noise * 0.0
    elif mode < p_clean + 0.05:  # noise only
        s, target = s * 0.0, target * 0.0
    noise = noise * math.sqrt(ps / pn / 10 ** (snr_db / 10))
    noisy = s + noise
    level = 10 ** (rng.uniform(-45, -15) / 20) / (math.sqrt(float(np.mean(noisy ** 2))) + 1e-9)
    noisy, target = noisy * level, target * level
    peak = float(np.max(np.abs(noisy)))
    if peak > 0.99:
        noisy, target = noisy * 0.99 / peak, target * 0.99 / peak
    return noisy.astype(np.float32), target.astype(np.float32)


def make_batch(seed: int, step: int, src: Sources, batch: int, n_frames: int,
               weights: np.ndarray, p_clean: float = 0.05, p_high_snr: float = 0.0,
               kind: str = "base", noise_set: str = "v1", reverb_target: str = "early"
               ) -> dict[str, np.ndarray]:
    """Features ``(B, T, F)``, noisy and target magnitudes ``(B, T, n_bins)``."""
    rng = np.random.default_rng([seed, step])
    feats, ymag, smag = [], [], []
    for _ in range(batch):
        noisy, target = make_example(rng, src, n_frames * HOP, p_clean, p_high_snr, noise_set,
                                     reverb_target)
        y = stft_reference(noisy[None], HOP)[:, 0]
        s = stft_reference(target[None], HOP)[:, 0]
        feats.append(features_reference(y[None], weights, kind))
        ymag.append(np.abs(y))
        smag.append(np.abs(s))
    return {"feats": np.stack(feats), "ymag": np.stack(ymag).astype(np.float32),
            "smag": np.stack(smag).astype(np.float32)}
