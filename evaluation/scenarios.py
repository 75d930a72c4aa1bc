"""Evaluation scenarios: what a method is asked to enhance, and the truth to score it against.

A :class:`Scenario` holds a 16 kHz ``mixture`` ``(n_ch, n)`` float32, the clean target image
at the reference microphone (``reference``, ``(n,)``; ``None`` for a real recording that has
no clean reference, where only non-intrusive metrics apply), the ``transcript`` if the
speech has one, the wake phrase spoken (``wake_word``, a model name such as
``"hey_jarvis"``) for wake-word scenarios, the array ``geometry_m`` ``(n_ch, 3)``, the
target direction (``target_azimuth_deg``, ``target_elevation_deg``, array frame), the
``snr_db`` at the reference mic and the ``rt60_s`` where known, and, for rendered and
simulated scenarios, the per-microphone ``target_images`` and ``noise_images``
``(n_ch, n)`` (``mixture == target_images + noise_images``), so an oracle beamformer can
be computed.

Builders (all deterministic for a given ``seed``; ``corpus`` is the corpus folder laid
out as ``/work/shared/corpus``: ``speech/``, ``noise/``, ``rir/``, ``multichannel/``):

- :func:`recorded_scenarios(corpus, snrs_db, seed)`: multichannel recordings with their
  JSON sidecars (``geometry_m``, source direction, ``transcript``, ``dead_channels``).
  A clean speech recording is mixed with every noise-only recording of the same array at
  each SNR (reference known); a recording that already contains noise is used as it is
  (no reference). A user's own recordings in the same layout work the same way.
- :func:`rendered_scenarios(corpus, geometry_m, snrs_db, n_utterances, seed)`: corpus
  speech (with transcripts) x corpus noise x real single-channel RIRs, rendered onto a
  board geometry by far-field fractional delays (target and noise from different
  directions), plus a little spatially white sensor noise.
- :func:`simulate_room(speech, noise, geometry_m, rt60_s, snr_db, target_azimuth_deg,
  interferer_azimuth_deg, rng, ...)`: one pyroomacoustics shoebox room (image source
  method, RT60 by Sabine inversion); the target talker 1.0-1.5 m from the array and a
  point interferer playing ``noise``; returns a :class:`Scenario` with images.
- :func:`simulated_scenarios(corpus, geometry_m, rt60s_s, snrs_db, interferer_offsets_deg,
  seed, n_utterances)`: :func:`simulate_room` over the grid RT60 x SNR x interferer
  position, speech and noise drawn from the corpus with ``seed``.
- :func:`wake_scenarios(corpus, geometry_m, phrases, snrs_db, seed)`: wake phrases
  synthesized with espeak-ng (apt ``espeak-ng``), padded with silence and rendered like
  :func:`rendered_scenarios`.
- :func:`build_scenarios(corpus, quick, seed)`: the set ``mica eval`` runs.

Boards: :data:`BOARD_GEOMETRIES` maps a name to ``(n_ch, 3)`` positions (circular arrays
of 4, 6 and 8 microphones like common ARM-board HATs); :func:`circular_geometry` builds
others.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from mica.array_dsp.steering import SOUND_SPEED_M_S, far_field_delays_s

log = logging.getLogger(__name__)

FS_HZ = 16000
"""Rate every scenario is delivered at (Hz)."""


def circular_geometry(n_ch: int, radius_m: float) -> np.ndarray:
    """``n_ch`` microphones on a horizontal circle, mic 0 on +x, counter-clockwise."""
    ang = 2 * np.pi * np.arange(n_ch) / n_ch
    return np.stack([radius_m * np.cos(ang), radius_m * np.sin(ang), np.zeros(n_ch)], axis=1)


BOARD_GEOMETRIES: dict[str, np.ndarray] = {
    "ring4": circular_geometry(4, 0.0323),  # 4-mic HAT class (4.57 cm square)
    "ring6": circular_geometry(6, 0.0463),  # 6-mic circular HAT class
    "ring8": circular_geometry(8, 0.05),
}
DEFAULT_BOARD = "ring4"

TRANSCRIBED_SPEECH = (
    "arctic_aew_a0001", "arctic_aew_a0002", "arctic_aew_a0003", "arctic_axb_a0004",
    "arctic_axb_a0006", "librivox_sense_sensibility_0880", "librivox_sense_sensibility_0890",
    "librivox_sense_sensibility_0930", "ljspeech_LJ050-0131_16k", "jfk_16k",
    "librispeech_2412-153948-0000",
)
"""16 kHz corpus utterances with transcripts, in draw order (short first in quick mode)."""

NOISES = (
    "freesound_365132_crowd_cheering", "berlinnoise_street_bus_tram_people",
    "household_vacuum_cleaner_0", "freesound_345558_car_engine",
    "music_karissa_hobbs_lets_go_fishin_vocal", "berlinnoise_road_cars_passing",
    "household_aircon_1", "freesound_401275_rain",
)
RIRS = ("speechbrain_rir1", "mit_ir_survey_h010_livingroom_16k", "speechbrain_rir4",
        "rir_clap_seminar_room_16k")

WAKE_TEXT = {"hey_jarvis": "hey jarvis", "okay_nabu": "okay nabu", "alexa": "alexa",
             "hey_mycroft": "hey mycroft"}
"""Wake phrases both wake-word engines ship a model for, and the words espeak-ng says."""


@dataclass
class Scenario:
    """One enhancement task and its truth (see the module docstring)."""

    name: str
    family: str  # "recorded", "rendered", "simulated", "wake"
    mixture: np.ndarray
    geometry_m: np.ndarray
    target_azimuth_deg: float
    target_elevation_deg: float = 0.0
    reference: np.ndarray | None = None
    reference_channel: int = 0
    transcript: str | None = None
    wake_word: str | None = None
    snr_db: float | None = None
    rt60_s: float | None = None
    target_distance_m: float = 1.5
    target_images: np.ndarray | None = None
    noise_images: np.ndarray | None = None
    notes: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def n_channels(self) -> int:
        return int(self.mixture.shape[0])

    @property
    def duration_s(self) -> float:
        return self.mixture.shape[1] / FS_HZ

    @property
    def reference_mic_signal(self) -> np.ndarray:
        """The unprocessed mixture at the reference microphone."""
        return self.mixture[self.reference_channel]


# -- audio helpers -------------------------------------------------------------------------

def read_mono_16k(path: Path) -> np.ndarray:
    """A file as 16 kHz mono float32 (channels averaged, resampled if needed)."""
    data, fs = sf.read(str(path), dtype="float32", always_2d=True)
    x = data.mean(axis=1)
    return _resample(x, fs, FS_HZ)


def _resample(x: np.ndarray, fs_in: int, fs_out: int) -> np.ndarray:
    from mica.device.enhance_file import resample_to

    return resample_to(np.asarray(x, np.float32), int(fs_in), int(fs_out))


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, np.float64) ** 2)) + 1e-20


def fractional_delay(x: np.ndarray, delays_s: np.ndarray, n_out: int) -> np.ndarray:
    """``(n_ch, n_out)``: ``x`` delayed by each of ``delays_s`` (FFT, circular-safe padding)."""
    n_fft = 1 << int(np.ceil(np.log2(max(n_out, x.shape[0]) + 256)))
    spec = np.fft.rfft(x, n_fft)
    f = np.fft.rfftfreq(n_fft, 1.0 / FS_HZ)
    out = np.fft.irfft(spec[None, :] * np.exp(-2j * np.pi * f[None, :] * delays_s[:, None]),
                       n_fft)
    return out[:, :n_out].astype(np.float32)


def _render_far_field(source: np.ndarray, rir: np.ndarray, geometry_m: np.ndarray,
                      azimuth_deg: float, elevation_deg: float, n: int) -> np.ndarray:
    """Reverberant source (``source * rir``) arriving as a plane wave from the direction."""
    import scipy.signal

    wet = scipy.signal.fftconvolve(source, rir)[:n] if rir is not None else source[:n]
    tau = far_field_delays_s(geometry_m, azimuth_deg, elevation_deg, SOUND_SPEED_M_S, 0)
    tau = np.asarray(tau, np.float64) + 2e-3  # keep every delay causal
    return fractional_delay(wet, tau, n)


def _loop_to(x: np.ndarray, n: int, offset: int) -> np.ndarray:
    reps = -(-(n + offset) // x.shape[0]) + 1
    return np.tile(x, reps)[offset:offset + n]


def _scale_noise(target_ref: np.ndarray, noise_ref: np.ndarray, snr_db: float) -> float:
    return float(np.sqrt(_power(target_ref) / (_power(noise_ref) * 10 ** (snr_db / 10))))


def _normalise(sc: Scenario, peak: float = 0.8) -> Scenario:
    """Scale everything by one factor so the mixture peaks at ``peak``."""
    g = peak / max(float(np.max(np.abs(sc.mixture))), 1e-9)
    sc.mixture = (sc.mixture * g).astype(np.float32)
    for name in ("reference", "target_images", "noise_images"):
        value = getattr(sc, name)
        if value is not None:
            setattr(sc, name, (value * g).astype(np.float32))
    return sc


def _rir(corpus: Path, name: str) -> np.ndarray:
    h = read_mono_16k(corpus / "rir" / f"{name}.wav")
    start = max(int(np.argmax(np.abs(h))) - 16, 0)  # drop the pre-delay before the direct path
    h = h[start:]
    return h / float(np.max(np.abs(h)))


def _transcript(corpus: Path, stem: str) -> str | None:
    p = corpus / "speech" / f"{stem}.txt"
    return p.read_text().strip() if p.is_file() else None


def _mix_images(name: str, family: str, target_images: np.ndarray, noise_images: np.ndarray,
                snr_db: float, geometry_m: np.ndarray, azimuth_deg: float,
                rng: np.random.Generator, sensor_noise_db: float = -50.0, **kw) -> Scenario:
    g = _scale_noise(target_images[0], noise_images[0], snr_db)
    noise = noise_images * g
    sensor = rng.standard_normal(noise.shape).astype(np.float32)
    noise = noise + sensor * np.sqrt(_power(target_images[0]) * 10 ** (sensor_noise_db / 10))
    sc = Scenario(name=name, family=family, mixture=(target_images + noise).astype(np.float32),
                  geometry_m=np.asarray(geometry_m, np.float64), target_azimuth_deg=azimuth_deg,
                  reference=target_images[0].copy(), snr_db=float(snr_db),
                  target_images=target_images.astype(np.float32),
                  noise_images=noise.astype(np.float32), **kw)
    return _normalise(sc)


# -- recorded --------------------------------------------------------------------------------

def _sidecar_direction(meta: dict) -> tuple[float, float] | None:
    unit = meta.get("source_direction_unit")
    if unit:
        x, y, z = (float(v) for v in unit)
        return float(np.degrees(np.arctan2(y, x))) % 360.0, float(np.degrees(np.arcsin(z)))
    sd = meta.get("source_direction")
    if isinstance(sd, dict) and "azimuth_deg" in sd:
        el = sd.get("elevation_deg", 0.0)
        return float(sd["azimuth_deg"]), float(el) if isinstance(el, (int, float)) else 0.0
    spk = (meta.get("sources") or {}).get("speaker_1")
    if spk and "position_estimate_m" in spk:
        x, y, z = (float(v) for v in spk["position_estimate_m"])
        return float(np.degrees(np.arctan2(y, x))) % 360.0, 0.0
    return None


def _is_noise_only(meta: dict) -> bool:
    what = str(meta.get("what", "")).lower()
    return "noise" in what and not any(w in what for w in ("speech", "sentence", "utterance"))


def _load_recordings(corpus: Path) -> list[tuple[Path, dict, np.ndarray]]:
    rec = []
    folder = corpus / "multichannel"
    for js in sorted(folder.glob("*.json")):
        meta = json.loads(js.read_text())
        wav = folder / meta.get("file", js.with_suffix(".wav").name)
        if not wav.is_file() or not meta.get("geometry_m"):
            continue
        if not js.stem.endswith("_16k") and (folder / f"{js.stem}_16k.json").is_file():
            continue  # use the 16 kHz copy
        data, fs = sf.read(str(wav), dtype="float32", always_2d=True)
        rec.append((wav, meta, _resample(data.T, fs, FS_HZ)))
    return rec


def recorded_scenarios(corpus: Path, snrs_db: tuple[float, ...] = (0.0, 5.0),
                       seed: int = 0, max_seconds: float = 6.0) -> list[Scenario]:
    """Scenarios from ``corpus/multichannel`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    recs = _load_recordings(Path(corpus))
    noises = [(w, m, x) for w, m, x in recs if _is_noise_only(m)]
    out: list[Scenario] = []
    n_max = int(max_seconds * FS_HZ)
    for wav, meta, x in recs:
        if _is_noise_only(meta):
            continue
        direction = _sidecar_direction(meta)
        if direction is None:
            log.info("%s: no source direction in its sidecar, skipped", wav.name)
            continue
        geom = np.asarray(meta["geometry_m"], np.float64)
        dead = set(meta.get("dead_channels") or [])
        ref_ch = min(set(range(geom.shape[0])) - dead)
        transcript = meta.get("transcript") or None
        stem = wav.stem
        noisy_already = "noise" in str(meta.get("what", "")).lower()
        if noisy_already or not noises:
            sc = Scenario(name=f"rec:{stem}", family="recorded", mixture=x[:, :n_max],
                          geometry_m=geom, target_azimuth_deg=direction[0],
                          target_elevation_deg=direction[1], reference_channel=ref_ch,
                          transcript=transcript, notes="real recording; no clean reference",
                          meta={"file": wav.name, "dead_channels": sorted(dead)})
            out.append(_normalise(sc))
            continue
        for nwav, nmeta, nx in noises:
            if nx.shape[0] != x.shape[0] or not np.allclose(nmeta["geometry_m"], geom):
                continue
            n = min(x.shape[1], n_max)
            for snr in snrs_db:
                off = int(rng.integers(0, max(nx.shape[1] - n, 1)))
                noise = np.stack([_loop_to(ch, n, off) for ch in nx])
                tgt = x[:, :n]
                sc = _mix_images(f"rec:{stem}+{nwav.stem}@{snr:g}dB", "recorded", tgt, noise,
                                 snr, geom, direction[0], rng,
                                 target_elevation_deg=direction[1], transcript=transcript,
                                 reference_channel=ref_ch,
                                 meta={"file": wav.name, "noise_file": nwav.name})
                out.append(sc)
    return out


# -- rendered ---------------------------------------------------------------------------------

def rendered_scenario(corpus: Path, speech_stem: str, noise_stem: str, rir_name: str,
                      geometry_m: np.ndarray, snr_db: float, target_azimuth_deg: float,
                      noise_azimuth_deg: float, rng: np.random.Generator,
                      speech: np.ndarray | None = None, family: str = "rendered",
                      **kw) -> Scenario:
    """One corpus utterance x noise x RIR on ``geometry_m`` (see the module docstring)."""
    corpus = Path(corpus)
    s = speech if speech is not None else read_mono_16k(corpus / "speech" / f"{speech_stem}.wav")
    nz = read_mono_16k(corpus / "noise" / f"{noise_stem}.wav")
    rir = _rir(corpus, rir_name)
    n = s.shape[0] + int(0.25 * FS_HZ)
    off = int(rng.integers(0, max(nz.shape[0] - n, 1)))
    tgt = _render_far_field(s, rir, geometry_m, target_azimuth_deg, 0.0, n)
    # the noise gets a different room response: the RIR reversed in polarity and shifted
    nrir = np.roll(rir, 37) * -1.0
    noise = _render_far_field(_loop_to(nz, n + rir.shape[0], off), nrir, geometry_m,
                              noise_azimuth_deg, 0.0, n)
    kw.setdefault("transcript", _transcript(corpus, speech_stem))
    name = f"{family}:{speech_stem}+{noise_stem}+{rir_name}@{snr_db:g}dB"
    return _mix_images(name, family, tgt, noise, snr_db, geometry_m, target_azimuth_deg, rng,
                       meta={"speech": speech_stem, "noise": noise_stem, "rir": rir_name,
                             "noise_azimuth_deg": noise_azimuth_deg}, **kw)


def rendered_scenarios(corpus: Path, geometry_m: np.ndarray | None = None,
                       snrs_db: tuple[float, ...] = (0.0, 5.0), n_utterances: int = 2,
                       seed: int = 0) -> list[Scenario]:
    """Corpus speech x noise x RIR rendered on ``geometry_m`` (default: the default board)."""
    geom = BOARD_GEOMETRIES[DEFAULT_BOARD] if geometry_m is None else geometry_m
    rng = np.random.default_rng(seed + 101)
    out = []
    for i in range(n_utterances):
        stem = TRANSCRIBED_SPEECH[i % len(TRANSCRIBED_SPEECH)]
        for j, snr in enumerate(snrs_db):
            az = float(rng.choice(np.arange(0, 360, 30)))
            naz = (az + float(rng.choice([60, 90, 120, 180]))) % 360
            out.append(rendered_scenario(corpus, stem, NOISES[(i + j) % len(NOISES)],
                                         RIRS[(i + j) % len(RIRS)], geom, snr, az, naz, rng))
    return out


# -- simulated --------------------------------------------------------------------------------

def simulate_room(speech: np.ndarray, noise: np.ndarray, geometry_m: np.ndarray,
                  rt60_s: float, snr_db: float, target_azimuth_deg: float,
                  interferer_azimuth_deg: float, rng: np.random.Generator,
                  room_dim_m: tuple[float, float, float] = (6.0, 5.0, 3.0),
                  target_distance_m: float | None = None, interferer_distance_m: float = 2.0,
                  name: str = "", transcript: str | None = None, max_order: int | None = None,
                  **kw) -> Scenario:
    """One pyroomacoustics shoebox scenario (see the module docstring).

    The array centre sits off-centre in the room at 1.0 m height; the target talker
    (``speech``) at ``target_distance_m`` (default: drawn in 1.0-1.5 m) and the point
    interferer (``noise``, looped) at ``interferer_distance_m``, both at array height.
    ``snr_db`` is target vs interferer power at microphone 0 (images included). Also adds
    spatially white sensor noise 50 dB below the target.
    """
    import pyroomacoustics as pra

    geometry_m = np.asarray(geometry_m, np.float64)
    dim = np.asarray(room_dim_m, np.float64)
    centre = np.array([dim[0] * 0.45, dim[1] * 0.5, 1.0])
    dist = float(rng.uniform(1.0, 1.5)) if target_distance_m is None else target_distance_m
    tgt_pos = centre + dist * _unit(target_azimuth_deg)
    int_pos = centre + interferer_distance_m * _unit(interferer_azimuth_deg)
    for p in (tgt_pos, int_pos):
        np.clip(p, 0.3, dim - 0.3, out=p)
    absorption, order = pra.inverse_sabine(rt60_s, dim)
    order = min(order, 12) if max_order is None else max_order
    mics = (geometry_m + centre).T
    n = speech.shape[0] + int(0.25 * FS_HZ)
    images = []
    for sig, pos in ((speech, tgt_pos), (_loop_to(noise, n, int(rng.integers(0, noise.size))),
                                         int_pos)):
        room = pra.ShoeBox(dim, fs=FS_HZ, materials=pra.Material(absorption), max_order=order)
        room.add_source(pos, signal=sig)
        room.add_microphone_array(mics)
        room.compute_rir()
        room.simulate()
        sim = room.mic_array.signals
        img = np.zeros((geometry_m.shape[0], n), np.float32)
        m = min(n, sim.shape[1])
        img[:, :m] = sim[:, :m]
        images.append(img)
    # true arrival direction from the array centre
    d = tgt_pos - centre
    az = float(np.degrees(np.arctan2(d[1], d[0]))) % 360
    el = float(np.degrees(np.arcsin(d[2] / np.linalg.norm(d))))
    return _mix_images(name or f"sim:rt{rt60_s:g}@{snr_db:g}dB", "simulated", images[0],
                       images[1], snr_db, geometry_m, az, rng, target_elevation_deg=el,
                       rt60_s=float(rt60_s), transcript=transcript,
                       target_distance_m=float(np.linalg.norm(d)),
                       meta={"room_dim_m": list(map(float, dim)),
                             "interferer_azimuth_deg": float(interferer_azimuth_deg)}, **kw)


def _unit(azimuth_deg: float) -> np.ndarray:
    a = np.radians(azimuth_deg)
    return np.array([np.cos(a), np.sin(a), 0.0])


def simulated_scenarios(corpus: Path, geometry_m: np.ndarray | None = None,
                        rt60s_s: tuple[float, ...] = (0.3, 0.6),
                        snrs_db: tuple[float, ...] = (0.0, 5.0),
                        interferer_offsets_deg: tuple[float, ...] = (90.0,),
                        seed: int = 0, n_utterances: int = 1) -> list[Scenario]:
    """:func:`simulate_room` over RT60 x SNR x interferer offset from the target."""
    corpus = Path(corpus)
    geom = BOARD_GEOMETRIES[DEFAULT_BOARD] if geometry_m is None else geometry_m
    rng = np.random.default_rng(seed + 202)
    out = []
    k = 0
    for u in range(n_utterances):
        stem = TRANSCRIBED_SPEECH[(u + 3) % len(TRANSCRIBED_SPEECH)]
        speech = read_mono_16k(corpus / "speech" / f"{stem}.wav")
        for rt60 in rt60s_s:
            for snr in snrs_db:
                for off in interferer_offsets_deg:
                    nstem = NOISES[k % len(NOISES)]
                    k += 1
                    noise = read_mono_16k(corpus / "noise" / f"{nstem}.wav")
                    az = float(rng.uniform(0, 360))
                    out.append(simulate_room(
                        speech, noise, geom, rt60, snr, az, (az + off) % 360, rng,
                        name=f"sim:{stem}+{nstem}@rt{rt60:g}s,{snr:g}dB,int+{off:g}deg",
                        transcript=_transcript(corpus, stem)))
    return out


# -- wake phrases -------------------------------------------------------------------------------

def synthesize(text: str, voice: str = "en-us", speed_wpm: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng as 16 kHz float32. Raises ``FileNotFoundError`` when
    espeak-ng is not installed (apt ``espeak-ng``)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "tts.wav"
        subprocess.run([exe, "-v", voice, "-s", str(speed_wpm), "-w", str(wav), text],
                       check=True, capture_output=True)
        return read_mono_16k(wav)


def wake_scenarios(corpus: Path, geometry_m: np.ndarray | None = None,
                   phrases: tuple[str, ...] = ("okay_nabu", "alexa"),
                   snrs_db: tuple[float, ...] = (0.0, 5.0), seed: int = 0,
                   voices: tuple[str, ...] = ("en-us",)) -> list[Scenario]:
    """Synthesized wake phrases (1 s of silence before, 1 s after) rendered like
    :func:`rendered_scenario` with the phrase's model name in ``wake_word``."""
    geom = BOARD_GEOMETRIES[DEFAULT_BOARD] if geometry_m is None else geometry_m
    rng = np.random.default_rng(seed + 303)
    out = []
    k = 0
    for phrase in phrases:
        for voice in voices:
            tts = synthesize(WAKE_TEXT[phrase], voice)
            tts = 0.5 * tts / float(np.max(np.abs(tts)))
            pad = np.zeros(FS_HZ, np.float32)
            speech = np.concatenate([pad, tts, pad])
            for snr in snrs_db:
                az = float(rng.choice(np.arange(0, 360, 30)))
                naz = (az + float(rng.choice([60, 90, 120, 180]))) % 360
                sc = rendered_scenario(corpus, f"espeak:{phrase}:{voice}", NOISES[k % len(NOISES)],
                                       RIRS[k % len(RIRS)], geom, snr, az, naz, rng,
                                       speech=speech, family="wake", wake_word=phrase,
                                       transcript=None)
                k += 1
                out.append(sc)
    return out


# -- the set mica eval runs ---------------------------------------------------------------------

def build_scenarios(corpus: Path, quick: bool = False, seed: int = 0) -> list[Scenario]:
    """Every scenario ``mica eval`` runs.

    ``quick`` (CI): one recorded mix (0 dB), one rendered (0 dB), one simulated room
    (5 dB, RT60 0.4 s) and the wake phrase at 0 and 5 dB. Full: every recording at 0 and
    5 dB, 4 utterances rendered at -5/0/5/10 dB, simulated rooms over RT60 0.2/0.4/0.7 s x
    SNR -5/0/5/10 dB x interferer 60/150 degrees off the target, and four wake phrases in
    two voices at each SNR.
    """
    corpus = Path(corpus)
    if quick:
        snrs: tuple[float, ...] = (0.0, 5.0)
        scenarios = [s for s in recorded_scenarios(corpus, (0.0,), seed)
                     if s.family == "recorded" and s.reference is not None][:1]
        scenarios += rendered_scenarios(corpus, snrs_db=(0.0,), n_utterances=1, seed=seed)
        scenarios += simulated_scenarios(corpus, rt60s_s=(0.4,), snrs_db=(5.0,), seed=seed)
        # okay_nabu in espeak-ng's en-us voice: both engines fire on it when clean
        scenarios += wake_scenarios(corpus, phrases=("okay_nabu",), snrs_db=snrs, seed=seed)
        return scenarios
    snrs = (-5.0, 0.0, 5.0, 10.0)
    scenarios = recorded_scenarios(corpus, (0.0, 5.0), seed)
    scenarios += rendered_scenarios(corpus, snrs_db=snrs, n_utterances=4, seed=seed)
    scenarios += simulated_scenarios(corpus, rt60s_s=(0.2, 0.4, 0.7), snrs_db=snrs,
                                     interferer_offsets_deg=(60.0, 150.0), seed=seed)
    scenarios += wake_scenarios(corpus, phrases=tuple(WAKE_TEXT), snrs_db=snrs, seed=seed,
                                voices=("en-us", "en-gb"))
    return scenarios
