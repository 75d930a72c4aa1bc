"""Offline multi-device input: ``mica drift`` and ``mica enhance A.wav B.wav ... OUT.wav``.

The two "devices" are the two halves of a real 4-mic corpus recording (talker plus a
directional noise recording of the same array, 20 s: the 10 s files twice): channels 0-1
are the reference device, channels 2-3 the other one, whose clock runs 150 ppm fast (its
half resampled by 1000150 / 1000000 with ``scipy.signal.resample_poly``) and which starts
37 samples late.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from mica.device.cli import EXIT_ERROR, main
from mica.evaluation.metrics import si_sdr_db

FS = 16000
PPM = 150
LATE = 37
STEM = "multichannel/speechbrain_4mic_speech_-0.82918_0.55279_-0.082918"
NOISE = "multichannel/speechbrain_4mic_noise_0.70225_-0.70225_0.11704"
AZIMUTH, ELEVATION = "146.3", "-4.76"  # the talker's direction (the file name's vector)


def _device_b(x: np.ndarray) -> np.ndarray:
    """``(n, ch)`` as a device ``PPM`` fast that starts ``LATE`` samples late."""
    fr = Fraction(1_000_000 + PPM, 1_000_000)
    y = scipy.signal.resample_poly(x.astype(np.float64), fr.numerator, fr.denominator, axis=0)
    return np.concatenate([np.zeros((LATE, x.shape[1])), y]).astype(np.float32)


@pytest.fixture(scope="module")
def recordings(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("multi_file")
    speech, fs = sf.read(corpus_dir / f"{STEM}.wav", dtype="float64")
    noise, _ = sf.read(corpus_dir / f"{NOISE}.wav", dtype="float64")
    assert fs == FS
    speech = np.concatenate([speech, speech])
    noisy = speech + 0.15 * np.concatenate([noise, noise])
    (tmp / "geom.json").write_text((corpus_dir / f"{STEM}.json").read_text())
    files = {}
    for name, x in (("noisy", noisy), ("clean", speech)):
        for part, data in (("A", x[:, :2].astype(np.float32)), ("B", _device_b(x[:, 2:])),
                           ("sync", x.astype(np.float32))):
            files[f"{name}_{part}"] = tmp / f"{name}_{part}.wav"
            sf.write(files[f"{name}_{part}"], data, FS, subtype="FLOAT")
    files["geom"] = tmp / "geom.json"
    files["tmp"] = tmp
    files["target"] = speech[:, 0]
    return files


def test_mica_drift_converges_to_the_known_ppm(recordings: dict, capsys) -> None:
    """JSON lines per second: within 1 ppm of +150 ppm after 10 s (and to the end),
    locked. The offset is the 37 late samples plus 150 ppm of the time elapsed: within
    the array's delay range without a geometry (it includes the dominant source's
    acoustic delay: here the louder noise's), within 1 sample with ``--array`` and the
    talker's direction (its acoustic delay taken out)."""
    files = [str(recordings["noisy_A"]), str(recordings["noisy_B"])]
    look = ["--array", str(recordings["geom"]), "--steer-azimuth", AZIMUTH,
            "--steer-elevation", ELEVATION]
    for extra, tolerance in (([], 0.1 / 343 * FS + 0.5), (look, 1.0)):
        assert main(["drift", *files, *extra]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["t_s"] for r in rows] == [float(t) for t in range(1, 21)]
        assert {r["device"] for r in rows} == {"noisy_B.wav"}
        assert set(rows[0]) == {"t_s", "device", "drift_ppm", "offset_samples", "locked",
                                "lock"}
        assert rows[9]["locked"] and rows[-1]["locked"], rows
        for r in rows[9:]:
            assert abs(r["drift_ppm"] - PPM) < 1.0, rows
            want = LATE + PPM * 1e-6 * r["t_s"] * FS
            assert abs(r["offset_samples"] - want) < tolerance, (extra, r, want)


def _enhance(inputs: list[Path], out: Path, geom: Path, *extra: str) -> np.ndarray:
    assert main(["enhance", *map(str, inputs), str(out), "--array", str(geom),
                 "--beamformer", "mvdr", "--steer-azimuth", AZIMUTH,
                 "--steer-elevation", ELEVATION, *extra]) == 0
    y, fs = sf.read(out, dtype="float64")
    assert fs == FS
    return y


def test_enhance_of_two_device_files_matches_the_synchronous_recording(
        recordings: dict) -> None:
    """MVDR on the two drifting files (aligned as the daemon aligns) after 10 s: within
    1 dB SI-SDR of MVDR on the synchronous recording (measured: 0.35 dB), and better than
    the input by more than 6 dB; clean speech through the same path stays within 1 dB of
    clean speech through the synchronous path. The report has each second's drift."""
    r, tmp, geom = recordings, recordings["tmp"], recordings["geom"]
    target = r["target"]
    report = tmp / "report.json"
    multi = _enhance([r["noisy_A"], r["noisy_B"]], tmp / "multi.wav", geom,
                     "--report", str(report))
    sync = _enhance([r["noisy_sync"]], tmp / "sync.wav", geom)
    assert multi.size == sync.size == target.size
    late = slice(10 * FS, None)
    got, want = si_sdr_db(multi[late], target[late]), si_sdr_db(sync[late], target[late])
    noisy_in = sf.read(r["noisy_sync"], dtype="float64")[0][:, 0]
    assert got > want - 1.0, (got, want)
    assert got > si_sdr_db(noisy_in[late], target[late]) + 6.0
    clean_multi = _enhance([r["clean_A"], r["clean_B"]], tmp / "cm.wav", geom)
    clean_sync = _enhance([r["clean_sync"]], tmp / "cs.wav", geom)
    assert si_sdr_db(clean_multi[late], target[late]) > si_sdr_db(clean_sync[late],
                                                                  target[late]) - 1.0
    doc = json.loads(report.read_text())
    assert doc["inputs"] == [str(r["noisy_A"]), str(r["noisy_B"])]
    per_second = doc["per_second"]
    assert len(per_second) == 20
    drift = [row["drift"]["noisy_B.wav"] for row in per_second[10:19]]
    assert all(abs(d["drift_ppm"] - PPM) < 1.0 and d["locked"] for d in drift), drift
    assert {e["kind"] for e in doc["drift_events"]} >= {"acquired", "locked"}


def test_bad_multi_file_inputs_name_the_file(recordings: dict, tmp_path: Path,
                                             capsys) -> None:
    """A different rate, channels that do not add up to the geometry, a missing file:
    clear errors naming the file (exit 1), for ``enhance`` and ``drift``."""
    r = recordings
    a, b = r["noisy_A"], r["noisy_B"]
    slow = tmp_path / "b_8k.wav"
    sf.write(slow, sf.read(b, dtype="float32")[0][::2], 8000, subtype="FLOAT")
    mono = tmp_path / "b_mono.wav"
    sf.write(mono, sf.read(b, dtype="float32")[0][:, 0], FS, subtype="FLOAT")
    missing = tmp_path / "nowhere.wav"
    out = tmp_path / "out.wav"
    cases = [
        ([a, slow], [str(slow), "8000 Hz", str(a), "16000 Hz"]),
        ([a, mono], [str(a), "(2 ch)", str(mono), "(1 ch)", "3 channel(s)",
                     str(r["geom"]), "4 microphone(s)"]),
        ([a, missing], [str(missing), "not found"]),
    ]
    for inputs, words in cases:
        code = main(["enhance", *map(str, inputs), str(out), "--array", str(r["geom"])])
        err = capsys.readouterr().err
        assert code == EXIT_ERROR and all(w in err for w in words), err
        assert not out.exists()
    for inputs, words in (cases[0], cases[2]):
        code = main(["drift", *map(str, inputs)])
        err = capsys.readouterr().err
        assert code == EXIT_ERROR and all(w in err for w in words), err
    assert main(["drift", str(a)]) == 2  # one file: nothing to compare
    assert "at least two" in capsys.readouterr().err


def test_spatial_statistics_reset_where_a_device_is_reacquired() -> None:
    """``acquired``/``relock`` events become reset points of the offline chain, and
    ``enhance_signal`` resets the enhancer's spatial statistics (only) at the block
    holding each: the same output as resetting by hand there."""
    from mica.array_dsp.enhancer import Enhancer
    from mica.device.enhance_file import enhance_signal
    from mica.device.multi_file import resync_samples

    events = [{"t_s": 1.0, "kind": "acquired"}, {"t_s": 9.0, "kind": "locked"},
              {"t_s": 12.5, "kind": "jump"}, {"t_s": 13.25, "kind": "relock"}]
    assert resync_samples(events, FS) == [FS, round(13.25 * FS)]
    geom = np.array([[0.0, 0, 0], [0.05, 0, 0], [0, 0.05, 0], [0.05, 0.05, 0]])
    x = np.random.default_rng(1).standard_normal((4, 40 * 160)).astype(np.float32)
    x[2:] = np.roll(x[2:], 5, axis=1)  # a delayed "device": MVDR statistics matter
    made = [Enhancer(geom, beamformer="mvdr") for _ in range(3)]
    at = 17 * 160 + 3
    reset = enhance_signal(x, made[0], reset_spatial_at=[at])
    kept = enhance_signal(x, made[1])
    enh, lat = made[2], made[2].latency_samples
    padded = np.zeros((4, 41 * 160), np.float32)
    padded[:, :x.shape[1]] = x
    by_hand = []
    for b in range(41):
        if b == 17:
            enh.reset_spatial()
        by_hand.append(enh.process(padded[:, b * 160:(b + 1) * 160]).copy())
    np.testing.assert_array_equal(reset, np.concatenate(by_hand)[lat:lat + x.shape[1]])
    assert not np.array_equal(reset, kept)
    np.testing.assert_array_equal(reset[:17 * 160 - lat], kept[:17 * 160 - lat])
