"""mica's own chains, run exactly as the daemon runs them: block by block through the
streaming :class:`mica.array_dsp.enhancer.Enhancer`.

:func:`mica_methods` enumerates one :class:`~mica.evaluation.peers.Method` per beamformer
in ``mica.array_dsp.enhancer.BEAMFORMERS`` (just ``"das"`` on an Enhancer that predates
that tuple), plus each denoiser of ``mica.models.postfilter.DENOISERS`` after the
beamformers in :data:`DENOISED_BEAMFORMERS` (the post-filter is built by
``make_postfilter`` and passed as ``postfilter=``: array_dsp cannot import models). Names
are ``mica-<beamformer>`` and ``mica-<beamformer>+<denoiser>``.

Every chain is steered at the scenario's target direction, its output is phase-aligned to
the scenario's reference microphone and time-aligned by removing the enhancer's own
``latency_samples``. When the enhancer can track the DOA (``track_doa=``), the per-block
``doa_azimuth_deg`` is returned as the ``doa_track_deg`` extra for the report.
"""

from __future__ import annotations

import inspect
import math

import numpy as np

from mica.evaluation.peers import Method
from mica.evaluation.scenarios import FS_HZ, Scenario

HOP_SAMPLES = 160
"""Block length of the chains (10 ms at 16 kHz, the daemon's default)."""

DENOISED_BEAMFORMERS = ("mvdr",)
"""Beamformers that are also evaluated with each denoiser (the governor's best levels);
every combination would multiply the run time for little information."""


def _enhancer_module():
    from mica.array_dsp import enhancer

    return enhancer


def beamformers() -> tuple[str, ...]:
    """Beamformer names the installed Enhancer accepts."""
    return tuple(getattr(_enhancer_module(), "BEAMFORMERS", ("das",)))


def denoisers() -> tuple[str, ...]:
    """Denoiser variants, ``"off"`` first (``mica.models.postfilter.DENOISERS``)."""
    from mica.models.postfilter import DENOISERS

    return ("off",) + tuple(d for d in DENOISERS if d != "off")


def _init_params() -> set[str]:
    return set(inspect.signature(_enhancer_module().Enhancer.__init__).parameters)


def make_enhancer(scenario: Scenario, beamformer: str = "das", denoiser: str = "off",
                  track_doa: bool = True, hop_samples: int = HOP_SAMPLES):
    """An :class:`Enhancer` for ``scenario``'s array, steered at its target."""
    mod = _enhancer_module()
    params = _init_params()
    kwargs: dict = {
        "fs_hz": FS_HZ, "hop_samples": hop_samples,
        "steer_azimuth_deg": scenario.target_azimuth_deg,
        "steer_elevation_deg": scenario.target_elevation_deg,
        "reference_channel": scenario.reference_channel,
    }
    if "beamformer" in params:
        kwargs["beamformer"] = beamformer
    elif beamformer != "das":
        raise ValueError(f"this Enhancer has no beamformer {beamformer!r}")
    if denoiser != "off":
        from mica.models.postfilter import make_postfilter

        kwargs["postfilter"] = make_postfilter(denoiser, hop_samples + 1)
    if track_doa and "track_doa" in params:
        kwargs["track_doa"] = True
    return mod.Enhancer(scenario.geometry_m, **kwargs)


def run_chain(scenario: Scenario, beamformer: str = "das", denoiser: str = "off",
              hop_samples: int = HOP_SAMPLES) -> tuple[np.ndarray, dict]:
    """Stream ``scenario.mixture`` through the chain; return the aligned ``(n,)`` output
    and extras (``doa_track_deg``: ``(n_blocks,)`` azimuths, NaN while unknown)."""
    enh = make_enhancer(scenario, beamformer, denoiser, hop_samples=hop_samples)
    enh.warmup()
    x = scenario.mixture.astype(np.float32)
    n_ch, n = x.shape
    latency = enh.latency_samples
    n_blocks = -(-(n + latency) // hop_samples)
    padded = np.zeros((n_ch, n_blocks * hop_samples), np.float32)
    padded[:, :n] = x
    out = np.empty(n_blocks * hop_samples, np.float32)
    has_doa = hasattr(enh, "doa_azimuth_deg") and getattr(enh, "tracks_doa", False)
    doa = np.full(n_blocks, math.nan)
    for b in range(n_blocks):
        sl = slice(b * hop_samples, (b + 1) * hop_samples)
        out[sl] = enh.process(padded[:, sl])
        if has_doa:
            doa[b] = float(enh.doa_azimuth_deg)
    extras = {"doa_track_deg": doa, "block_s": hop_samples / FS_HZ} if has_doa else {}
    return out[latency:latency + n], extras


def mica_methods() -> list[Method]:
    """Each beamformer alone, and the denoisers after :data:`DENOISED_BEAMFORMERS`."""
    combos = [(bf, "off") for bf in beamformers()]
    combos += [(bf, dn) for bf in DENOISED_BEAMFORMERS if bf in beamformers()
               for dn in denoisers() if dn != "off"]
    methods = []
    for bf, dn in combos:
        name = f"mica-{bf}" if dn == "off" else f"mica-{bf}+{dn}"

        def run(sc: Scenario, bf: str = bf, dn: str = dn) -> tuple[np.ndarray, dict]:
            return run_chain(sc, bf, dn)

        methods.append(Method(name, "mica", run,
                              description=f"mica Enhancer: {bf} beamformer, denoiser {dn}"))
    return methods


def noisy_method() -> Method:
    """The unprocessed reference microphone: the baseline every method must beat."""
    return Method("noisy", "noisy", lambda sc: sc.reference_mic_signal.astype(np.float32),
                  description="unprocessed reference microphone")
