"""Input checks shared by the DSP stages' public wrappers (never called inside kernels)."""

from __future__ import annotations

import numpy as np

from mica.array_dsp.errors import MicaError


class SignalShapeError(MicaError, ValueError):
    """A block or spectrum handed to a DSP stage has the wrong shape or dtype."""


def check_array(
    value: object, name: str, shape: tuple[int | None, ...], dtype: type[np.generic]
) -> np.ndarray:
    """Return ``value`` as a C-contiguous array (no copy if it already is one).

    Raises :class:`SignalShapeError` naming ``name``, the expected and the actual
    ``shape``/``dtype``. ``shape`` must match exactly (``None``: any length on that
    axis). No dtype conversion is done: a silent cast in the hot path would hide a caller's
    bug and allocate every block.
    """
    if not isinstance(value, np.ndarray):
        raise SignalShapeError(f"{name}: expected a numpy array, got {type(value).__name__}")
    if value.dtype != np.dtype(dtype):
        raise SignalShapeError(
            f"{name}: expected dtype {np.dtype(dtype).name}, got {value.dtype.name}"
        )
    if value.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(value.shape, shape, strict=True)
    ):
        raise SignalShapeError(f"{name}: expected shape {shape}, got {value.shape}")
    return np.ascontiguousarray(value)


def check_output(
    value: object, name: str, shape: tuple[int | None, ...], dtype: type[np.generic]
) -> np.ndarray:
    """Like :func:`check_array` for a buffer a kernel writes into: it must also be
    C-contiguous and writeable (a copy would silently swallow the result)."""
    out = check_array(value, name, shape, dtype)
    if out is not value or not out.flags.writeable:
        raise SignalShapeError(f"{name}: output buffer must be C-contiguous and writeable")
    return out


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an ``int`` > 0, else :class:`SignalShapeError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise SignalShapeError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)
