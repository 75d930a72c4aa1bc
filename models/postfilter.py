"""The interface every denoiser offers the Enhancer, and an offline runner for one channel.

A post-filter works on the beamformer output spectrum, one frame at a time::

    out = pf.process(spec)      # (n_bins,) complex64 in, (n_bins,) complex64 out (its buffer)
    pf.speech_mask              # (n_bins,) float32 in [0, 1] for the same frame
    pf.reset(); pf.warmup()

``speech_mask`` is what mask-based beamforming needs (speech-presence per bin, to weight
the speech and noise covariance updates); it is valid after each :meth:`process` call.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from mica.array_dsp.errors import ConfigError
from mica.array_dsp.stft import StreamingIstft, StreamingStft

DENOISERS: tuple[str, ...] = ("off", "mmse", "model")
"""Values of ``--denoiser`` / ``dsp.denoiser``."""


@runtime_checkable
class SpectralPostfilter(Protocol):
    """A per-frame spectral stage after the beamformer (see the module docstring)."""

    name: str
    version: str
    n_bins: int
    speech_mask: np.ndarray

    def process(self, spec: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...

    def warmup(self) -> None: ...


def make_postfilter(kind: str, n_bins: int, bundle: str | None = None,
                    n_mics: int = 2) -> SpectralPostfilter | None:
    """The post-filter for ``kind`` (one of :data:`DENOISERS`), or ``None`` for ``off``.

    ``bundle``: weights bundle path for ``model`` (default: the one shipped in the package
    for ``n_mics`` microphones, :func:`mica.models.gru.default_bundle_path`).
    Raises :class:`ConfigError` for an unknown kind.
    """
    if kind == "off":
        return None
    if kind == "mmse":
        from mica.models.mmse import MmseDenoiser

        return MmseDenoiser(n_bins)
    if kind == "model":
        from mica.models.gru import GruDenoiser, default_bundle_path, load_bundle

        return GruDenoiser(load_bundle(bundle or default_bundle_path(n_mics)), n_bins)
    raise ConfigError([f"denoiser: must be one of {list(DENOISERS)}, got {kind!r}"])


def denoise_signal(signal: np.ndarray, postfilter: SpectralPostfilter | None,
                   hop_samples: int = 160) -> np.ndarray:
    """Stream a mono ``(n,)`` float32 signal through STFT -> ``postfilter`` -> ISTFT.

    Returns ``(n,)`` float32 time-aligned with the input (the STFT latency removed). With
    ``postfilter=None`` the output is the input (perfect reconstruction).
    """
    x = np.asarray(signal, np.float32).reshape(-1)
    n = x.shape[0]
    stft = StreamingStft(1, hop_samples)
    istft = StreamingIstft(hop_samples)
    latency = istft.latency_samples
    n_blocks = -(-(n + latency) // hop_samples)
    padded = np.zeros((1, n_blocks * hop_samples), np.float32)
    padded[0, :n] = x
    out = np.empty(n_blocks * hop_samples, np.float32)
    for b in range(n_blocks):
        sl = slice(b * hop_samples, (b + 1) * hop_samples)
        spec = stft.process(padded[:, sl])[0]
        if postfilter is not None:
            spec = postfilter.process(spec)
        out[sl] = istft.process(spec)
    return out[latency:latency + n]
