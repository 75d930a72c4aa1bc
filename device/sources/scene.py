"""A synthetic acoustic scene for ``mica demo``: a talker and a noise source around an array.

Nothing here is a recording: the "talker" is a source-filter vowel synthesizer (glottal
pulse train through three formant resonators, Klatt 1980 style, with a pitch contour and
syllable envelopes), the noise is pink noise from another direction, and each far-field
source reaches microphone ``m`` delayed by ``tau_m = -(p_m - c) . u / v``
(:func:`mica.array_dsp.steering.far_field_delays_s`), applied exactly as a phase shift in
the frequency domain. Every draw comes from one seed, so the scene is reproducible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from mica.array_dsp.steering import far_field_delays_s

DEMO_GEOMETRY_M = np.array([[-0.05, -0.05, 0.0], [-0.05, 0.05, 0.0],
                            [0.05, -0.05, 0.0], [0.05, 0.05, 0.0]])
"""A 4-mic square of 10 cm side (the layout of a ReSpeaker-class array), metres."""

# (F1, F2, F3) in Hz of a few vowels (Peterson & Barney 1952, adult male averages).
_VOWEL_FORMANTS_HZ = ((730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480),
                      (570, 840, 2410), (300, 870, 2240), (660, 1720, 2410))


@dataclass(frozen=True)
class Scene:
    """What :func:`write_demo_scene` wrote."""

    wav_path: Path
    """Multichannel mixture, ``(n_samples, n_ch)`` 16-bit WAV."""
    geometry_path: Path
    """Geometry sidecar JSON (``geometry_m``, ``fs_hz``, source directions)."""
    clean_path: Path
    """The talker alone at microphone 0 (the reference for SI-SDR)."""
    speech_azimuth_deg: float
    noise_azimuth_deg: float


def synth_speech(duration_s: float, fs_hz: int, rng: np.random.Generator) -> np.ndarray:
    """Speech-like mono signal ``(n,)`` float64: voiced syllables in words, with pauses."""
    n = int(duration_s * fs_hz)
    out = np.zeros(n)
    t = int(0.3 * fs_hz)
    while t < n - fs_hz // 5:
        for _ in range(rng.integers(1, 4)):  # syllables in one word
            syl = int(rng.uniform(0.12, 0.28) * fs_hz)
            if t + syl >= n:
                break
            f0 = rng.uniform(100, 200) * np.linspace(1.05, 0.9, syl)
            phase = np.cumsum(f0 / fs_hz)
            pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per pitch period
            excitation = signal.lfilter([1.0], [1.0, -0.95], pulses)  # glottal tilt
            voiced = np.zeros(syl)
            for f_hz, bw_hz in zip(_VOWEL_FORMANTS_HZ[rng.integers(len(_VOWEL_FORMANTS_HZ))],
                                   (80, 100, 140), strict=True):
                r = np.exp(-np.pi * bw_hz / fs_hz)
                a = [1.0, -2 * r * np.cos(2 * np.pi * f_hz / fs_hz), r * r]
                voiced += signal.lfilter([1.0 - r], a, excitation)
            onset = rng.normal(0, 0.3, syl) * np.exp(-np.arange(syl) / (0.02 * fs_hz))
            envelope = signal.windows.tukey(syl, 0.4)
            out[t:t + syl] += (voiced + onset) * envelope
            t += syl + int(rng.uniform(0.0, 0.04) * fs_hz)
        t += int(rng.uniform(0.15, 0.5) * fs_hz)
    return out / (np.max(np.abs(out)) + 1e-12)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n,)`` float64 noise with a 1/f power spectrum, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.shape[0], dtype=float)
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    return x / np.sqrt(np.mean(x * x))


def render_far_field(x: np.ndarray, geometry_m: np.ndarray, azimuth_deg: float,
                     elevation_deg: float, fs_hz: int) -> np.ndarray:
    """``(n_ch, n)`` array signals of a far-field source ``x (n,)`` (exact fractional delays)."""
    n = x.shape[0]
    n_fft = int(2 ** np.ceil(np.log2(n + fs_hz // 100)))  # pad: no circular wrap of delays
    tau_s = far_field_delays_s(geometry_m, azimuth_deg, elevation_deg)
    f_hz = np.fft.rfftfreq(n_fft, 1.0 / fs_hz)
    spec = np.fft.rfft(x, n_fft)[np.newaxis, :] * np.exp(-2j * np.pi * f_hz * tau_s[:, None])
    return np.fft.irfft(spec, n_fft, axis=1)[:, :n]


def write_demo_scene(out_dir: Path, duration_s: float = 12.0, fs_hz: int = 16000,
                     snr_db: float = 0.0, seed: int = 7) -> Scene:
    """Write a talker at 60 deg plus pink noise at 300 deg (SNR at mic 0) to ``out_dir``."""
    rng = np.random.default_rng(seed)
    speech_az, noise_az = 60.0, 300.0
    speech = render_far_field(synth_speech(duration_s, fs_hz, rng), DEMO_GEOMETRY_M,
                              speech_az, 0.0, fs_hz)
    noise = render_far_field(pink_noise(speech.shape[1], rng), DEMO_GEOMETRY_M, noise_az, 0.0,
                             fs_hz)
    active = np.abs(speech[0]) > 1e-3
    gain = np.sqrt(np.mean(speech[0, active] ** 2) / np.mean(noise[0] ** 2)) * 10 ** (-snr_db / 20)
    sensor = 10 ** (-50 / 20) * rng.standard_normal(speech.shape)
    mix = speech + gain * noise + sensor
    scale = 0.5 / np.max(np.abs(mix))
    out_dir.mkdir(parents=True, exist_ok=True)
    scene = Scene(out_dir / "demo_scene.wav", out_dir / "demo_scene.json",
                  out_dir / "demo_clean_mic0.wav", speech_az, noise_az)
    sf.write(scene.wav_path, (mix * scale).T.astype(np.float32), fs_hz, subtype="PCM_16")
    sf.write(scene.clean_path, (speech[0] * scale).astype(np.float32), fs_hz, subtype="PCM_16")
    scene.geometry_path.write_text(json.dumps({
        "what": "synthetic scene generated by mica demo: vowel-synthesizer talker plus "
                "pink noise, far field, free field",
        "geometry_m": DEMO_GEOMETRY_M.tolist(),
        "sample_rate_hz": fs_hz,
        "source_direction": {"azimuth_deg": speech_az, "elevation_deg": 0.0},
        "noise_direction": {"azimuth_deg": noise_az, "elevation_deg": 0.0},
        "snr_db_at_mic0": snr_db,
        "seed": seed,
    }, indent=2))
    return scene
