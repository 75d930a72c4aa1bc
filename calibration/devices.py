"""Start offset and nominal clock drift between the capture devices of one array.

A recording made with several devices (one file per device, or one file whose channel groups
came from different devices) is streamed through the daemon's own online estimator,
:class:`mica.array_dsp.drift.DriftCompensator` (GCC-PHAT acquisition, coherence-drift rate
estimate: see that module), exactly as the daemon would run it, one non-reference device at a
time against the reference device's first mic. What it ends with is the device's nominal
drift (ppm, positive: the device's clock runs fast) and its offset at the start of the
recording (device sample index of reference sample 0). The nominal drift goes to the
calibration file, where the daemon uses it as the drift prior; the aligned signals are
returned so that the other procedures see one clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mica.array_dsp.drift import DriftCompensator, DriftSettings
from mica.calibration.measure import CalibrationError

BLOCK_SAMPLES = 160
"""Block size streamed through the estimator (the daemon's 10 ms period)."""


@dataclass(frozen=True)
class DeviceTiming:
    """One non-reference device against the reference.

    Attributes:
        name: the device's name (file or ALSA PCM).
        drift_ppm: clock rate error against the reference (ppm; + runs fast).
        stderr_ppm: the estimator's standard error (``inf`` before enough measurements).
        offset_samples: device sample index that lines up with reference sample 0, minus
            the acoustic delay of the source between the two analysis mics when it is known.
        offset_s: the same in seconds.
        lock: the estimator's state at the end (``acquiring``, ``tracking``, ``locked``).
        measurements: drift measurements made.
    """

    name: str
    drift_ppm: float
    stderr_ppm: float
    offset_samples: float
    offset_s: float
    lock: str
    measurements: int


def measure_device_timing(ref: np.ndarray, dev: np.ndarray, fs_hz: float, name: str = "",
                          expected_delay_samples: float = 0.0,
                          settings: DriftSettings | None = None
                          ) -> tuple[DeviceTiming, np.ndarray]:
    """Offset and drift of ``dev`` ``(n_ch, n_dev)`` against the reference mic ``ref``
    ``(n,)``; also the device resampled onto the reference clock, ``(n_ch, n_out)``.

    The device's channel 0 is compared with ``ref``. ``expected_delay_samples``: the acoustic
    delay of the dominant source at that channel behind ``ref`` (from the geometry and a
    known source direction; 0 when unknown), which the alignment keeps.
    """
    ref = np.asarray(ref, np.float32).ravel()
    dev = np.atleast_2d(np.asarray(dev, np.float32))
    hop = BLOCK_SAMPLES
    s = settings or DriftSettings()
    if ref.size < 2 * s.update_s * fs_hz + 2 * hop:
        raise CalibrationError(f"device {name!r}: {ref.size / fs_hz:.1f} s is too short to "
                               f"measure drift; record at least {4 * s.update_s:.0f} s "
                               "(20 s or more for a drift within 1 ppm)")
    comp = DriftCompensator(dev.shape[0], fs_hz, s)
    comp.expected_delay_samples = float(expected_delay_samples)
    out = np.zeros((dev.shape[0], hop), np.float32)
    aligned = np.zeros((dev.shape[0], ref.size), np.float32)
    pushed = 0
    done = 0
    for k in range(ref.size // hop):
        while not comp.ready(hop) and pushed < dev.shape[1]:
            comp.push(np.ascontiguousarray(dev[:, pushed:pushed + hop]))
            pushed += hop
        if not comp.ready(hop):
            break  # the device's recording ended first
        comp.process(ref[k * hop:(k + 1) * hop], out)
        aligned[:, k * hop:(k + 1) * hop] = out
        done = (k + 1) * hop
    drift = float(comp.drift_ppm)
    # offset_samples = p(k) - k = offset0 + k * drift: back to the recording's start (the
    # compensator already keeps the expected acoustic delay out of its read position)
    offset0 = float(comp.offset_samples) - done * drift * 1e-6
    timing = DeviceTiming(name=name, drift_ppm=drift, stderr_ppm=float(comp.stderr_ppm),
                          offset_samples=offset0, offset_s=offset0 / fs_hz, lock=comp.state,
                          measurements=int(comp.measurements))
    return timing, aligned[:, :done]
