"""Held-apart mixtures for the denoiser tests (real speech + real noise from the corpus)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mica.models import split


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g noise`` with ``g`` such that the SNR over the clip is ``snr_db``."""
    g = np.sqrt(np.sum(speech.astype(np.float64) ** 2) / np.sum(noise.astype(np.float64) ** 2)
                / 10 ** (snr_db / 10))
    return (speech + g * noise).astype(np.float32)


@pytest.fixture(scope="session")
def held_clip(corpus_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(clean, noisy at 0 dB)``: a held-apart ARCTIC speaker in held-apart dishwasher
    noise (both real)."""
    speech_name, noise_name = "arctic_aew_a0001.wav", "household_dishwasher_2.wav"
    assert split.is_held_speech(speech_name) and noise_name in split.HELD_NOISES
    s, fs = sf.read(str(corpus_dir / "speech" / speech_name), dtype="float32")
    n, fs_n = sf.read(str(corpus_dir / "noise" / noise_name), dtype="float32")
    assert fs == fs_n == 16000
    n = n[16000:16000 + len(s)]
    return s, mix_at_snr(s, n, 0.0)
