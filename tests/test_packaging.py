"""A plain (non-editable) install of mica's wheel works: namespace, package data, console script."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_installs_and_runs_without_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(REPO)],
                   check=True, timeout=300, cwd=tmp_path)
    (wheel,) = wheels.glob("mica_array-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mica/device/data/mica.example.toml" in names
    assert not any(n.startswith(("device/", "array_dsp/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mica = mica.device.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, timeout=300, cwd=tmp_path)
    # -S: no site-packages, so the editable install of the checkout cannot answer the imports
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (
        "import mica.device, mica.array_dsp, mica.models, mica.calibration, mica.evaluation\n"
        "import importlib.util, pathlib\n"
        f"assert pathlib.Path(mica.device.__file__).is_relative_to({str(target)!r})\n"
        "assert importlib.util.find_spec('device') is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    cli = subprocess.run([sys.executable, "-S", "-m", "mica.device.cli", "config", "example"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "[mqtt]" in cli.stdout and "audio_enabled = false" in cli.stdout
