"""The one place Numba options live.

Every kernel is ``@kernel``: ``njit`` (nopython), ``nogil`` (so DSP runs beside capture and MQTT
threads), ``cache=True`` (compiled once into ``NUMBA_CACHE_DIR``), no fastmath (the numpy
references must agree to float32 rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numba

JIT_OPTIONS: dict[str, bool] = {"nogil": True, "cache": True, "fastmath": False}

F = TypeVar("F", bound=Callable)


def kernel(fn: F) -> F:
    """Compile ``fn`` with mica's Numba options."""
    return numba.njit(**JIT_OPTIONS)(fn)  # type: ignore[return-value]
