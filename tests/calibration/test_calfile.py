"""The calibration file: round trip, every problem reported, the streaming corrector against
its whole-signal reference, and the daemon applying a file (gain and excluded mic)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mica.calibration.calfile import (
    Calibration,
    CalibrationFileError,
    ChannelCorrector,
    apply_calibration,
    correct_reference,
    load_calibration,
    save_calibration,
)
from mica.device.config import parse_config
from mica.device.service import Service

SQUARE = [[-0.05, -0.05, 0.0], [-0.05, 0.05, 0.0], [0.05, -0.05, 0.0], [0.05, 0.05, 0.0]]


def test_round_trip(tmp_path: Path) -> None:
    cal = Calibration(n_mics=3, gain_db=(1.5, 0.0, -2.25), delay_s=(0.0, 1e-5, 0.0),
                      position_offset_m=((0, 0, 0), (0.001, 0, 0), (0, 0, 0)),
                      excluded_mics=(2,), mic_channels=(1, 0, 2),
                      board="respeaker-4mic-hat", created_utc="2025-01-01T00:00:00Z",
                      method="test", measurements={"order_confidence": 0.9})
    path = save_calibration(cal, tmp_path / "cal.json")
    back = load_calibration(path)
    assert back.to_dict() == cal.to_dict()
    assert back.info()["excluded_mics"] == [2] and back.info()["position_offsets"]


def test_every_problem_is_reported(tmp_path: Path) -> None:
    doc = {"format": "mica-calibration", "version": 2, "n_mics": 2, "gain_db": [0, 99],
           "delay_s": [0], "excluded_mics": [5], "mic_channels": [0, 0],
           "position_offset_m": [[0, 0]]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CalibrationFileError) as info:
        load_calibration(path)
    text = str(info.value)
    for needle in ("version", "gain_db", "delay_s", "excluded_mics", "mic_channels",
                   "position_offset_m"):
        assert needle in text
    with pytest.raises(CalibrationFileError, match="not found"):
        load_calibration(tmp_path / "missing.json")


def test_apply_drops_excluded_mics_and_combines_gains() -> None:
    cal = Calibration(n_mics=4, gain_db=(6.0, 0, 0, 0), excluded_mics=(1,),
                      mic_channels=(3, 2, 1, 0),
                      position_offset_m=((0.01, 0, 0),) + ((0, 0, 0),) * 3)
    arr = apply_calibration(np.array(SQUARE), [0, 1, 2, 3], cal, (0.0, 0.0, -6.0, 0.0))
    assert arr.kept_mics == [0, 2, 3] and arr.mic_channels == [3, 1, 0]
    assert arr.positions_m[0] == pytest.approx([-0.04, -0.05, 0.0])
    assert arr.gains == pytest.approx([2.0, 0.5, 1.0], rel=5e-3)
    with pytest.raises(CalibrationFileError, match="for 4 mics, the configured array has 3"):
        apply_calibration(np.array(SQUARE[:3]), None, cal)


@pytest.mark.parametrize("n_ch", [1, 3, 8])
@pytest.mark.parametrize("blocks", [[160] * 10, [7, 300, 1, 1000, 292]])
def test_streaming_corrector_matches_reference(n_ch: int, blocks: list[int]) -> None:
    rng = np.random.default_rng(n_ch)
    x = rng.standard_normal((n_ch, sum(blocks))).astype(np.float32)
    gains = rng.uniform(0.5, 2, n_ch)
    for delays in (np.zeros(n_ch), rng.uniform(0, 4e-4, n_ch)):
        c = ChannelCorrector(gains, delays, 16000)
        out, i = [], 0
        for n in blocks:
            out.append(c.process(x[:, i:i + n]))
            i += n
        ref = correct_reference(x, gains, delays, 16000)
        np.testing.assert_allclose(np.concatenate(out, axis=1), ref, atol=1e-5)


def _run_service(tmp_path: Path, wav: Path, calibration: dict | None) -> tuple[np.ndarray,
                                                                                Service]:
    array = {"geometry_m": SQUARE}
    if calibration is not None:
        (tmp_path / "cal.json").write_text(json.dumps(calibration))
        array["calibration_file"] = "cal.json"
    cfg = parse_config({"capture": {"source": "wav", "wav_path": str(wav), "wav_realtime": False,
                                    "channels": 4},
                        "array": array, "mqtt": {"enabled": False},
                        "governor": {"enabled": False}}, tmp_path)
    chunks: list[np.ndarray] = []
    lock = threading.Lock()

    def sink(y: np.ndarray) -> None:
        with lock:
            chunks.append(y.copy())

    svc = Service(cfg, audio_sink=sink)
    svc.start()
    try:
        assert svc.wait(timeout_s=60)
    finally:
        svc.stop(timeout_s=2.0)
    assert svc.fault is None
    return np.concatenate(chunks), svc


def test_daemon_applies_gain_and_drops_excluded_mic(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = np.zeros((16000, 4), dtype=np.float32)
    x[:, 2] = 0.1 * rng.standard_normal(16000)  # only mic 2 hears anything
    wav = tmp_path / "one.wav"
    sf.write(wav, x, 16000, subtype="FLOAT")
    base, svc0 = _run_service(tmp_path, wav, None)
    assert svc0.info["calibration"] is None and svc0.geometry.n_channels == 4
    doc = {"format": "mica-calibration", "version": 1, "n_mics": 4,
           "gain_db": [0.0, 0.0, 6.0206, 0.0], "excluded_mics": [0],
           "created_utc": "2025-01-01T00:00:00Z", "method": "test"}
    boosted, svc = _run_service(tmp_path, wav, doc)
    # mic 0 dropped: 3 mics beamformed, and the one live mic is twice as loud going in
    assert svc.geometry.n_channels == 3
    info = svc.info["calibration"]
    assert info["excluded_mics"] == [0] and info["gain_db"][2] == pytest.approx(6.02)
    assert info["file"].endswith("cal.json")
    rms0 = float(np.sqrt(np.mean(base[4000:] ** 2)))
    rms1 = float(np.sqrt(np.mean(boosted[4000:] ** 2)))
    # delay-and-sum: 1 live mic of 4 -> of 3, and x2 gain: 2 * 4 / 3 = 2.67 louder
    assert rms1 / rms0 == pytest.approx(2 * 4 / 3, rel=0.15)
