"""`mica eval --quick` end to end on the real corpus: every metric for every method."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mica.evaluation.report import SUMMARY_METRICS


@pytest.fixture(scope="module")
def quick_report(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    env = {**os.environ, "MICA_CORPUS": str(corpus_dir)}
    proc = subprocess.run([sys.executable, "-m", "mica.device.cli", "eval", "--quick",
                           "--out", str(out), "--seed", "0"],
                          capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ETA" in proc.stderr  # progress bar on stderr
    assert "| method |" in proc.stdout
    return out


def test_report_files_exist(quick_report: Path) -> None:
    for name in ("report.md", "report.json", "wer_wake_vs_snr.png", "quality_vs_snr.png",
                 "spectrogram_0.png"):
        assert (quick_report / name).is_file(), name


def test_every_metric_for_every_method_is_present(quick_report: Path) -> None:
    doc = json.loads((quick_report / "report.json").read_text())
    names = [m["name"] for m in doc["methods"]]
    assert "noisy" in names and "mica-das" in names
    for peer in ("deepfilternet3", "gtcrn", "rnnoise", "webrtc-ns", "pra-das", "pra-mvdr"):
        assert peer in names
    for m in names:
        cells = doc["summary"][m]["all"]
        for key in doc["metrics"]:
            cell = cells[key]
            assert cell["mean"] is not None or cell.get("why"), (m, key)
            if key in SUMMARY_METRICS:
                assert cell["mean"] is not None, (m, key, cell.get("why"))


def test_every_empty_cell_states_its_reason(quick_report: Path) -> None:
    md = (quick_report / "report.md").read_text()
    doc = json.loads((quick_report / "report.json").read_text())
    for m, groups in doc["summary"].items():
        for cells in groups.values():
            for cell in cells.values():
                if cell["mean"] is None:
                    assert cell["why"], m
    assert md.count("n/a¹") == 0 or "\n¹ " in md


def test_seeded_and_reproducible(corpus_dir: Path) -> None:
    from mica.evaluation.scenarios import build_scenarios

    a = build_scenarios(corpus_dir, quick=True, seed=3)
    b = build_scenarios(corpus_dir, quick=True, seed=3)
    assert [s.name for s in a] == [s.name for s in b]
    for x, y in zip(a, b, strict=True):
        assert (x.mixture == y.mixture).all()
        if x.target_images is not None:
            assert abs(x.mixture - x.target_images - x.noise_images).max() < 1e-5
