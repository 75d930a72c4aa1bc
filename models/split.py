"""Which corpus speakers and noises the denoiser never trains on (the held-apart set).

The training recipe, the tests and ``benchmarks/denoise.py`` all take the split from here,
so a benchmark number is always measured on audio the model has not seen.

Held apart (real recordings in ``../shared/corpus``):

- speech: every LibriSpeech speaker whose id is in :data:`HELD_LIBRISPEECH_SPEAKERS` (15 of
  235, every 15th by id), both CMU ARCTIC speakers (``aew``, ``axb``), the LibriVox and
  LJSpeech readers, ``jfk``, ``xmas``, ``pesq_speech`` and the FSDD digits (8 kHz);
- noise: :data:`HELD_NOISES` (street with bus/tram/people, cafe babble, dishwasher, car
  engine, exercise bike, keyboard typing).

Everything else in ``speech/librispeech_*`` and ``noise/`` (minus the music with vocals,
which is speech, not noise) may be trained on.
"""

from __future__ import annotations

from pathlib import Path

HELD_LIBRISPEECH_SPEAKERS: frozenset[str] = frozenset(
    "150 307 587 1183 1737 2196 2911 3664 4267 5049 5703 6367 7113 7780 8324".split()
)
HELD_SPEECH_PREFIXES: tuple[str, ...] = (
    "arctic_", "librivox_", "ljspeech_", "jfk", "xmas", "pesq_speech", "fsdd_",
)
HELD_NOISES: frozenset[str] = frozenset({
    "berlinnoise_street_bus_tram_people.wav",
    "cafe_short.wav",
    "cafe_short_16k.wav",
    "household_dishwasher_2.wav",
    "freesound_345558_car_engine.wav",
    "speechcommands_exercise_bike.wav",
    "freesound_393902_keyboard_typing.wav",
})
EXCLUDED_NOISES: frozenset[str] = frozenset({"music_karissa_hobbs_lets_go_fishin_vocal.wav"})
"""Not noise for a speech denoiser (sung vocals): neither trained on nor benchmarked."""


def _librispeech_speaker(name: str) -> str | None:
    if not name.startswith("librispeech_"):
        return None
    return name[len("librispeech_"):].split("-", 1)[0]


def is_held_speech(name: str) -> bool:
    """Whether the speech file ``name`` (a file name in ``corpus/speech``) is held apart."""
    spk = _librispeech_speaker(name)
    if spk is not None:
        return spk in HELD_LIBRISPEECH_SPEAKERS
    return not name.startswith("ami_")  # only LibriSpeech and the AMI clip are trained on


def training_speech(corpus: Path) -> list[Path]:
    """16 kHz speech files the recipe may train on (sorted)."""
    files = sorted((corpus / "speech").glob("librispeech_*.wav"))
    files += sorted((corpus / "speech").glob("ami_*.wav"))
    return [f for f in files if not is_held_speech(f.name)]


def held_speech(corpus: Path) -> list[Path]:
    """Held-apart 16 kHz speech files (sorted): LibriSpeech held speakers, ARCTIC, LJSpeech
    16 kHz copies and LibriVox."""
    out = [f for f in sorted((corpus / "speech").glob("librispeech_*.wav"))
           if is_held_speech(f.name)]
    out += sorted((corpus / "speech").glob("arctic_*.wav"))
    out += sorted((corpus / "speech").glob("ljspeech_*_16k.wav"))
    out += sorted((corpus / "speech").glob("librivox_*.wav"))
    return out


def training_noises(corpus: Path) -> list[Path]:
    """Noise files the recipe may train on (sorted)."""
    return [f for f in sorted((corpus / "noise").glob("*.wav"))
            if f.name not in HELD_NOISES and f.name not in EXCLUDED_NOISES
            and f.name != "cafe_short.wav"]


def held_noises(corpus: Path) -> list[Path]:
    """Held-apart 16 kHz noise files (sorted)."""
    return [corpus / "noise" / n for n in sorted(HELD_NOISES) if n != "cafe_short.wav"]
