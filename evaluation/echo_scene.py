"""Echo scenes from the corpus: a loudspeaker playing far-end audio into the array.

The far-end signal (corpus speech or music) goes through a loudspeaker model (soft
clipping ``tanh(d x) / d``: unit small-signal gain, compression near full scale), an
optional playback delay (buffering between the reference tap and the loudspeaker) and a
MEASURED room impulse response per microphone (``corpus/rir``). The near-end talker
(corpus speech) is added at a chosen near-end-to-echo ratio, in a chosen time window
(double talk), plus a little sensor noise. The echo path can change mid-scene (to
another measured RIR: the device carried to another room).

Everything is returned separately so metrics can be computed on components:
``mic = echo + near + noise``; ``ref`` is what the playback loopback delivers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve

from mica.evaluation.scenarios import read_mono_16k

FS_HZ = 16000

FAR_SPEECH = ("librispeech_1088-134315-0000.wav", "librispeech_2412-153948-0000.wav")
NEAR_SPEECH = (
    "arctic_aew_a0001.wav",
    "arctic_axb_a0004.wav",
    "arctic_aew_a0002.wav",
    "arctic_axb_a0006.wav",
    "arctic_aew_a0003.wav",
)
MUSIC = ("music_kevin_macleod_vibe_ace_jazz.wav",)


@dataclass
class EchoScene:
    """One rendered scene; all float32 at :data:`FS_HZ`."""

    mic: np.ndarray
    """``(n_mic, n)`` microphone signals."""
    ref: np.ndarray
    """``(n_ref, n)`` loudspeaker reference (the loopback channels: 1, or 2 in stereo)."""
    echo: np.ndarray
    """``(n_mic, n)`` echo component of ``mic``."""
    near: np.ndarray
    """``(n_mic, n)`` near-end component of ``mic``."""
    near_window_s: tuple[float, float] | None
    """Where the near-end talker speaks (s), ``None``: single talk only."""
    echo_linear: np.ndarray | None = None
    """``(n_mic, n)`` the echo had the loudspeaker been its best linear approximation
    (the far end times the least-squares gain of the soft clipper, same paths):
    ``echo - echo_linear`` is what no linear canceller can remove (before a path change)."""
    paths: np.ndarray | None = None
    """``(n_mic, L)`` echo paths from the loudspeaker to each mic at the scene's scale
    (``echo = paths[m] * played`` before any path change; without the playback delay)."""
    playback_delay_samples: int = 0
    """Playback buffering between the reference and the loudspeaker (samples)."""
    reference_slide: tuple[float, int] | None = None
    """``(time_s, samples)``: from ``time_s`` on, :attr:`ref` arrives ``samples`` late
    (negative: early) against the mics, as after a loopback device restarted; ``None``:
    no slide."""


def loudspeaker(x: np.ndarray, drive: float) -> np.ndarray:
    """Soft-clipping loudspeaker: ``tanh(drive x) / drive`` (``drive`` 0: linear)."""
    if drive <= 0:
        return np.asarray(x, np.float32)
    return (np.tanh(drive * np.asarray(x, np.float64)) / drive).astype(np.float32)


def concat_files(folder: Path, names: tuple[str, ...], seconds: float) -> np.ndarray:
    """The named corpus files, 16 kHz mono, one after another, cut/looped to ``seconds``."""
    parts = [read_mono_16k(folder / name) for name in names]
    x = np.concatenate(parts)
    n = int(seconds * FS_HZ)
    reps = -(-n // len(x))
    return np.tile(x, reps)[:n].astype(np.float32)


def measured_rirs(corpus: Path, name: str = "lhotse_real_8ch.wav") -> np.ndarray:
    """``(n_ch, L)`` float32 measured RIR(s) from ``corpus/rir``."""
    data, fs = sf.read(str(corpus / "rir" / name), dtype="float32", always_2d=True)
    if fs != FS_HZ:
        raise ValueError(f"{name}: need a {FS_HZ} Hz RIR, got {fs} Hz")
    return np.ascontiguousarray(data.T)


def _cut(h: np.ndarray, tail_ms: float | None) -> np.ndarray:
    """``h (n_ch, L)`` cut to ``tail_ms`` (faded out over its last 10 ms); ``None``: as is."""
    if tail_ms is None:
        return h
    keep = min(h.shape[1], int(tail_ms * 1e-3 * FS_HZ))
    out = h[:, :keep].copy()
    fade = min(keep, int(0.01 * FS_HZ))
    out[:, keep - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[None]
    return out


def _far_end(corpus: Path, kind: str, seconds: float, peak: float) -> np.ndarray:
    """``(n,)`` the far end, ``"speech"`` (LibriSpeech) or ``"music"`` (jazz), at ``peak``."""
    folder = corpus / ("speech" if kind == "speech" else "noise")
    x = concat_files(folder, FAR_SPEECH if kind == "speech" else MUSIC, seconds)
    return x * (peak / max(float(np.max(np.abs(x))), 1e-9))


def _loudspeaker_feeds(
    far_sig: np.ndarray, drive: float, delay: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(played, linear)`` ``(n,)``: the soft-clipped far end and its best linear
    approximation (the least-squares gain of the clipper), both after ``delay`` samples of
    playback buffering."""
    played = loudspeaker(far_sig, drive)
    gain = float(np.dot(far_sig, played)) / max(float(np.dot(far_sig, far_sig)), 1e-20)
    pad = np.zeros(delay, np.float32)
    return np.concatenate([pad, played])[:n], np.concatenate([pad, gain * far_sig])[:n]


def _through(x: np.ndarray, h: np.ndarray, n_mics: int, n: int) -> np.ndarray:
    """``(n_mics, n)``: ``x`` through the RIRs ``h (n_ch, L)``, mic ``m`` channel ``m % n_ch``."""
    return np.stack([fftconvolve(x, h[m % h.shape[0]])[:n] for m in range(n_mics)])


def make_echo_scene(
    corpus: Path,
    seconds: float = 10.0,
    n_mics: int = 2,
    far: str = "speech",
    rir: str = "lhotse_real_8ch.wav",
    drive: float = 2.0,
    far_peak: float = 0.5,
    echo_peak: float = 0.5,
    playback_delay_ms: float = 0.0,
    near_window_s: tuple[float, float] | None = None,
    near_to_echo_db: float = 0.0,
    path_change_s: float | None = None,
    path_change_rir: str = "mit_ir_survey_h010_livingroom_16k.wav",
    noise_db: float = -70.0,
    seed: int = 0,
    reference_slide: tuple[float, int] | None = None,
    stereo_rir: str | None = None,
    stereo_tail_ms: float | None = None,
) -> EchoScene:
    """Render one scene (see the module doc).

    Args:
        far: ``"speech"`` (LibriSpeech) or ``"music"`` (jazz) far end.
        rir: file in ``corpus/rir``; mic ``m`` uses channel ``m % n_ch``.
        drive: loudspeaker soft-clipping drive (0: linear).
        far_peak: peak of the far-end signal before the loudspeaker (full scale 1).
        echo_peak: peak of the echo at the mics.
        playback_delay_ms: extra delay of the loudspeaker after the reference tap.
        near_window_s: near-end talker active in ``[start, end)`` seconds.
        near_to_echo_db: near-end over echo power (at mic 0, over the near window).
        path_change_s: from this time on, the mics hear the loudspeaker through
            ``path_change_rir`` (another measured room, same echo power).
        noise_db: white sensor noise power (dBFS).
        reference_slide: ``(time_s, samples)``: the reference (not the mics) slides by
            ``samples`` (late; negative: early) from ``time_s`` on (a loopback device
            restarted after an overrun and placed a few ms off).
        stereo_rir: stereo playback: a second loudspeaker plays the other kind of far end
            (music when ``far`` is speech, else speech) through this measured RIR (mic
            ``m``: channel ``m % n_ch``); :attr:`EchoScene.ref` is then ``(2, n)`` and
            ``echo``/``echo_linear`` hold both loudspeakers (``paths``: the first's).
        stereo_tail_ms: cut both loudspeakers' RIRs to this (ms, faded over its last 10 ms)
            so a canceller with that tail can model them fully (``None``: as measured).
    """
    if stereo_rir is not None and path_change_s is not None:
        raise ValueError("make_echo_scene: stereo_rir and path_change_s do not combine")
    n = int(seconds * FS_HZ)
    d = int(round(playback_delay_ms * 1e-3 * FS_HZ))
    far_sig = _far_end(corpus, far, seconds, far_peak)
    played, linear = _loudspeaker_feeds(far_sig, drive, d, n)
    h = _cut(measured_rirs(corpus, rir), stereo_tail_ms)
    echo = _through(played, h, n_mics, n)
    echo_linear = _through(linear, h, n_mics, n)
    refs = [far_sig]
    if stereo_rir is not None:
        far2 = _far_end(corpus, "music" if far == "speech" else "speech", seconds, far_peak)
        played2, linear2 = _loudspeaker_feeds(far2, drive, d, n)
        h2 = _cut(measured_rirs(corpus, stereo_rir), stereo_tail_ms)
        echo += _through(played2, h2, n_mics, n)
        echo_linear += _through(linear2, h2, n_mics, n)
        refs.append(far2)
    if path_change_s is not None:
        k = int(path_change_s * FS_HZ)
        alt = _through(played, measured_rirs(corpus, path_change_rir), n_mics, n)
        alt *= np.sqrt(np.mean(echo[:, :k] ** 2) / (np.mean(alt[:, :k] ** 2) + 1e-20))
        echo[:, k:] = alt[:, k:]
    scale = echo_peak / max(float(np.max(np.abs(echo))), 1e-9)
    echo *= scale
    echo_linear *= scale
    near = np.zeros_like(echo)
    if near_window_s is not None:
        a, b = (int(t * FS_HZ) for t in near_window_s)
        talker = concat_files(corpus / "speech", NEAR_SPEECH, (b - a) / FS_HZ)
        p_echo = float(np.mean(echo[0, a:b] ** 2)) + 1e-20
        p_talk = float(np.mean(talker**2)) + 1e-20
        talker *= np.sqrt(p_echo / p_talk * 10.0 ** (near_to_echo_db / 10.0))
        near[:, a:b] = talker[None, : b - a]
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(echo.shape) * 10.0 ** (noise_db / 20.0)
    mic = (echo + near + noise).astype(np.float32)
    ref = np.stack(refs).astype(np.float32)
    if reference_slide is not None:
        k, shift = int(reference_slide[0] * FS_HZ), int(reference_slide[1])
        slid = ref.copy()
        if shift > 0:
            slid[:, k:] = ref[:, k - shift : n - shift]
        elif shift < 0:
            slid[:, k : n + shift] = ref[:, k - shift :]
        ref = slid
    return EchoScene(
        mic=mic,
        ref=ref,
        echo=echo.astype(np.float32),
        near=near.astype(np.float32),
        near_window_s=near_window_s,
        echo_linear=echo_linear.astype(np.float32),
        paths=np.stack([h[m % h.shape[0]] * scale for m in range(n_mics)]).astype(np.float32),
        playback_delay_samples=d,
        reference_slide=reference_slide,
    )
