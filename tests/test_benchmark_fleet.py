"""benchmarks/fleet.py, short: a few boards for two seconds, nothing lost."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "fleet.py"


def test_fleet_benchmark_short_run(tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(BENCH.parent))
    try:
        spec = importlib.util.spec_from_file_location("fleet", BENCH)
        assert spec is not None and spec.loader is not None
        fleet = importlib.util.module_from_spec(spec)
        sys.modules["fleet"] = fleet
        spec.loader.exec_module(fleet)
        out = tmp_path / "fleet.json"
        assert fleet.main(["--boards", "3", "--seconds", "2", "--procs", "1",
                           "--telemetry-interval-s", "0.5", "--json", str(out)]) == 0
    finally:
        sys.path.remove(str(BENCH.parent))
        sys.modules.pop("fleet", None)
    r = json.loads(out.read_text())
    assert r["published_audio"] == 3 * 100 and r["audio_lost"] == 0
    assert r["published_telemetry"] == 3 * 4 and r["telemetry_lost"] == 0
    assert r["audio_latency_ms"]["p50"] > 0
    assert "messages/s" in capsys.readouterr().out
