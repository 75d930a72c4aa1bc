"""Short versions of the service benchmarks (startup, soak) that CI runs; the full ones are
``python benchmarks/startup.py`` and ``python benchmarks/soak.py`` (README, Benchmarks)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_warm_start_is_the_numba_cache_at_work(tmp_path: Path) -> None:
    """Start to READY with a fresh Numba cache, then twice with the cache it filled: the warm
    start must cost well under half the cold one's CPU time (the kernels load instead of
    compiling). A ratio in one run, not an absolute limit: the absolute goals (warm <= 3 s,
    cold <= 30 s) are printed by ``python benchmarks/startup.py``."""
    startup = _bench("startup")
    config = startup._scene(tmp_path)
    cache = tmp_path / "fresh-numba-cache"
    cold_wall_s, cold_cpu_s = startup.time_to_ready(config, cache)
    warm = [startup.time_to_ready(config, cache) for _ in range(2)]
    warm_wall_s, warm_cpu_s = min(warm, key=lambda r: r[1])
    print(f"start to READY: cold {cold_wall_s:.2f} s wall / {cold_cpu_s:.2f} s CPU, "
          f"warm {warm_wall_s:.2f} s wall / {warm_cpu_s:.2f} s CPU")
    assert warm_cpu_s < 0.5 * cold_cpu_s


def test_soak_short_rss_flat() -> None:
    """8000 blocks (80 s of audio) through the full service; RSS growth after 3000 < 1 MB."""
    soak = _bench("soak")
    r = soak.soak(blocks=8000, warmup_blocks=3000, sample_s=0.25)
    print(r)
    assert r["blocks"] >= 8000
    assert r["rss_growth_bytes"] < soak.GOAL_BYTES, r


@pytest.mark.slow
def test_soak_long_rss_flat() -> None:
    soak = _bench("soak")
    r = soak.soak(blocks=200_000, warmup_blocks=20_000)
    assert r["rss_growth_bytes"] < soak.GOAL_BYTES, r
