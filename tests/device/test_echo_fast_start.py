"""``echo.fast_start_s`` reaches the canceller: the least-squares bootstrap's length, and 0
turns it off (a board that cannot spare its cost); a bad value names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mica.array_dsp.errors import ConfigError
from mica.device.config import parse_config
from mica.device.echo_stage import echo_control


def _cfg(echo: dict) -> object:
    return parse_config(
        {
            "echo": {"enabled": True, **echo},
            "capture": {"channels": 5},
            "array": {"mic_channels": [0, 1, 2, 3], "reference_channels": [4]},
        },
        Path.cwd(),
    )


@pytest.mark.parametrize("fast_start_s", [None, 0.0, 2.5])
def test_fast_start_sets_the_bootstrap(fast_start_s: float | None) -> None:
    echo = echo_control(_cfg({} if fast_start_s is None else {"fast_start_s": fast_start_s}), 4)
    assert echo is not None
    want = 1.0 if fast_start_s is None else fast_start_s
    assert echo.aec.params.bootstrap_s == want


def test_fast_start_out_of_range_names_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        _cfg({"fast_start_s": -1.0})
    assert "echo.fast_start_s" in str(err.value)
