"""Measurements on real corpus recordings: channel order recovered after the test permutes the
channels, gains within 0.5 dB, dead mics found."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mica.calibration.measure import (
    CalibrationError,
    channel_health,
    check_channel_order,
    estimate_gains,
    gcc_phat,
    geometry_symmetries,
)

SPEECH_4 = "speechbrain_4mic_speech_-0.82918_0.55279_-0.082918"
UCA_8 = "mcwsjav_T10c0201_uca8"


def _load(corpus_dir: Path, name: str) -> tuple[np.ndarray, int, np.ndarray]:
    x, fs = sf.read(corpus_dir / "multichannel" / f"{name}.wav", always_2d=True)
    meta = json.loads((corpus_dir / "multichannel" / f"{name}.json").read_text())
    return x.T, fs, np.asarray(meta["geometry_m"])


def _speech_direction() -> tuple[float, float]:
    u = np.array([-0.82918, 0.55279, -0.082918])  # from the file name (unit DOA vector)
    return math.degrees(math.atan2(u[1], u[0])), math.degrees(math.asin(u[2]))


PERMS_4 = [(0, 1, 2, 3), (2, 0, 1, 3), (3, 2, 1, 0), (1, 3, 0, 2), (0, 1, 3, 2)]


@pytest.mark.parametrize("perm", PERMS_4)
def test_order_of_permuted_4mic_recording_is_undone(corpus_dir: Path, perm: tuple) -> None:
    x, fs, geo = _load(corpus_dir, SPEECH_4)
    az, el = _speech_direction()
    xp = x[list(perm)]  # recording channel i now carries mic perm[i]
    r = check_channel_order(xp, fs, geo, source_azimuth_deg=az, source_elevation_deg=el)
    assert r.mic_of_channel.tolist() == list(perm)
    assert np.array_equal(xp[r.mic_channels], x)  # the reported map restores the order
    assert r.is_identity == (list(perm) == [0, 1, 2, 3])
    assert r.confidence > 0.9 and r.rms_us < 5.0
    # azimuth only (elevation unknown) gives the same answer
    r2 = check_channel_order(xp, fs, geo, source_azimuth_deg=az)
    assert r2.mic_of_channel.tolist() == list(perm)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_order_of_permuted_8mic_real_recording_is_undone(corpus_dir: Path, seed: int) -> None:
    x, fs, geo = _load(corpus_dir, UCA_8)
    perm = np.random.default_rng(seed).permutation(8)
    xp = x[perm]
    # source azimuth 245.5 deg, estimated in the corpus sidecar (elevation poorly known)
    r = check_channel_order(xp, fs, geo, source_azimuth_deg=245.5)
    assert r.mic_of_channel.tolist() == perm.tolist()
    assert np.array_equal(xp[r.mic_channels], x)
    # the source sits 2 deg off the bisector of mics 5 and 6: only that swap is uncertain
    low = {int(i) for i in np.nonzero(r.channel_confidence < 0.2)[0]}
    assert {int(perm[i]) for i in low} <= {5, 6}


def test_without_direction_the_order_is_known_up_to_the_array_symmetry(corpus_dir: Path) -> None:
    x, fs, geo = _load(corpus_dir, SPEECH_4)
    perm = [2, 0, 1, 3]
    r = check_channel_order(x[perm], fs, geo)
    candidates = [r.mic_of_channel.tolist()] + r.equivalent
    assert perm in candidates and len(candidates) == len(geometry_symmetries(geo)) == 8
    assert r.confidence > 0.9
    assert any("symmetry" in n for n in r.notes)
    # unpermuted: identity is the representative (fewest channels moved)
    assert check_channel_order(x, fs, geo).is_identity


def test_square_symmetry_group_and_ring_candidates() -> None:
    square = np.array([[-1, -1, 0], [-1, 1, 0], [1, -1, 0], [1, 1, 0]]) * 0.05
    sym = geometry_symmetries(square)
    assert len(sym) == 8 and sym[0].tolist() == [0, 1, 2, 3]
    line = np.array([[0, 0, 0], [0.04, 0, 0], [0.08, 0, 0]])
    assert geometry_symmetries(line).tolist() == [[0, 1, 2], [2, 1, 0]]


def test_gcc_phat_measures_a_known_fractional_delay() -> None:
    rng = np.random.default_rng(0)
    s = rng.standard_normal(32000)
    spec = np.fft.rfft(s)
    f = np.fft.rfftfreq(s.size, 1 / 16000)
    delayed = np.fft.irfft(spec * np.exp(-2j * np.pi * f * 2.3 / 16000), n=s.size)
    t = gcc_phat(np.stack([delayed, s]), 16000, max_tau_s=0.001)
    assert t.tdoa_s[0, 1] * 16000 == pytest.approx(2.3, abs=0.05)


@pytest.mark.parametrize("ch", [0, 1, 2, 3])
def test_gain_of_a_channel_at_minus_6_db_within_half_a_db(corpus_dir: Path, ch: int) -> None:
    x, fs, _ = _load(corpus_dir, "speechbrain_4mic_noise_diffuse")
    x = x.copy()
    x[ch] *= 10 ** (-6 / 20)
    g = estimate_gains(x, fs)
    assert g.level_db[ch] == pytest.approx(-6.0, abs=0.5)
    assert g.correction_db[ch] == pytest.approx(6.0, abs=0.5)
    others = [i for i in range(4) if i != ch]
    assert np.all(np.abs(g.level_db[others]) < 0.5)


def test_dead_channels_of_a_real_recording_are_found(corpus_dir: Path) -> None:
    x, fs, _ = _load(corpus_dir, "sfa_ula8_xmas_spk1_noise_spk2_16k")
    h = channel_health(x, fs)
    assert h.dead == [0, 1]  # the sidecar's dead_channels
    assert h.verdicts[2:] == ["ok"] * 6
    g = estimate_gains(x, fs, exclude=h.dead)
    assert g.correction_db[0] == g.correction_db[1] == 0.0
    good, fs, _ = _load(corpus_dir, "sfa_ula8_noise_spk1_16k")
    assert channel_health(good, fs).dead == []


def test_bad_input_is_a_calibration_error() -> None:
    with pytest.raises(CalibrationError, match="too short"):
        estimate_gains(np.zeros((2, 10)), 16000)
    with pytest.raises(CalibrationError, match="3 channel"):
        check_channel_order(np.random.default_rng(0).standard_normal((3, 16000)), 16000,
                            np.eye(4, 3))
