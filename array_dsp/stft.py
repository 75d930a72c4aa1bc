"""Streaming STFT / ISTFT with perfect reconstruction (weighted overlap-add).

Frame ``L = 2 R`` for hop ``R``; analysis and synthesis window are both the periodic
sqrt-Hann ``w[n] = sqrt(0.5 - 0.5 cos(2 pi n / L))``, so ``w^2`` (periodic Hann) sums to
exactly 1 at 50 % overlap and WOLA reconstructs the input exactly (Crochiere 1980, "A
weighted overlap-add method of short-time Fourier analysis/synthesis"; Allen & Rabiner
1977). Frame ``b`` holds input samples ``[(b - 1) R, (b + 1) R)`` (zeros before the start).
The ISTFT output block ``b`` is input samples ``[(b - 1) R, b R)``: output sample ``n`` is
input sample ``n - (L - R)``, i.e. an algorithmic latency of ``L - R = R`` samples. In wall
time add one block of buffering (a block is only processed once complete): ``L`` in all.

The kernels do framing/windowing and overlap-add into preallocated buffers; the FFT itself
is ``numpy.fft`` in the wrapper (``out=`` on numpy >= 2, so nothing is allocated per block).
"""

from __future__ import annotations

import numpy as np
import scipy.signal

from mica.array_dsp.jit import kernel
from mica.array_dsp.validate import check_array, check_positive_int

_FFT_HAS_OUT = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


def sqrt_hann(frame_samples: int) -> np.ndarray:
    """``(frame_samples,)`` float32 periodic sqrt-Hann window (``scipy.signal.get_window``)."""
    frame_samples = check_positive_int(frame_samples, "frame_samples")
    return np.sqrt(scipy.signal.get_window("hann", frame_samples, fftbins=True)).astype(
        np.float32
    )


def stft_latency_samples(hop_samples: int) -> int:
    """Algorithmic latency of STFT -> ISTFT at hop ``R`` (frame ``2 R``): ``R`` samples."""
    hop = check_positive_int(hop_samples, "hop_samples")
    frame = 2 * hop
    return frame - hop


def _rfft_into(frames: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = rfft(frames, axis=-1)`` without allocating where numpy allows it."""
    if _FFT_HAS_OUT:
        np.fft.rfft(frames, axis=-1, out=out)
    else:  # pragma: no cover - numpy < 2
        out[...] = np.fft.rfft(frames, axis=-1)


def _irfft_into(spec: np.ndarray, n: int, out: np.ndarray) -> None:
    """``out[...] = irfft(spec, n)`` without allocating where numpy allows it."""
    if _FFT_HAS_OUT:
        np.fft.irfft(spec, n=n, out=out)
    else:  # pragma: no cover - numpy < 2
        out[...] = np.fft.irfft(spec, n=n)


# --- analysis ------------------------------------------------------------------------------


@kernel
def analysis_kernel(
    history: np.ndarray, block: np.ndarray, window: np.ndarray, frames: np.ndarray
) -> None:
    """Shift ``block`` into ``history`` and window it: ``frames = history * window``.

    history: ``(n_ch, L)`` float32, the last ``L`` input samples (updated in place);
    block: ``(n_ch, R)`` float32; window: ``(L,)`` float32; frames: ``(n_ch, L)`` float32 out.
    """
    n_ch, frame = history.shape
    hop = block.shape[1]
    keep = frame - hop
    for m in range(n_ch):
        for i in range(keep):
            history[m, i] = history[m, i + hop]
        for i in range(hop):
            history[m, keep + i] = block[m, i]
        for i in range(frame):
            frames[m, i] = history[m, i] * window[i]


def analysis_reference(
    history: np.ndarray, block: np.ndarray, window: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy reference of :func:`analysis_kernel`: ``(new_history, frames)``, both ``(n_ch, L)``."""
    new_history = np.concatenate([history[:, block.shape[1]:], block], axis=1)
    return new_history, new_history * window


def stft_reference(signal: np.ndarray, hop_samples: int) -> np.ndarray:
    """Whole-signal reference of :class:`StreamingStft`: ``(n_blocks, n_ch, R + 1)`` complex64.

    signal: ``(n_ch, n_blocks * R)`` float32; frame ``b`` is
    ``rfft(w * x[:, (b - 1) R:(b + 1) R])`` with zeros before sample 0.
    """
    n_ch, n = signal.shape
    hop = hop_samples
    padded = np.concatenate([np.zeros((n_ch, hop), np.float32), signal], axis=1)
    window = sqrt_hann(2 * hop)
    starts = range(0, n, hop)
    frames = np.stack([padded[:, s:s + 2 * hop] * window for s in starts])
    return np.fft.rfft(frames, axis=-1).astype(np.complex64)


class StreamingStft:
    """Block-by-block analysis: ``(n_ch, R)`` float32 in, ``(n_ch, R + 1)`` complex64 out.

    Args:
        n_channels: channels per block ``n_ch``.
        hop_samples: hop ``R``; the frame is ``L = 2 R`` with a periodic sqrt-Hann window.
    """

    def __init__(self, n_channels: int, hop_samples: int) -> None:
        self.n_channels = check_positive_int(n_channels, "n_channels")
        self.hop_samples = check_positive_int(hop_samples, "hop_samples")
        self.frame_samples = 2 * self.hop_samples
        self.n_bins = self.frame_samples // 2 + 1
        self.window = sqrt_hann(self.frame_samples)
        self._history = np.zeros((self.n_channels, self.frame_samples), np.float32)
        self._frames = np.zeros((self.n_channels, self.frame_samples), np.float32)
        self._spec = np.zeros((self.n_channels, self.n_bins), np.complex64)
        # numpy's pocketfft works in double: own double buffers, so no block allocates one
        self._frames64 = np.zeros((self.n_channels, self.frame_samples), np.float64)
        self._spec128 = np.zeros((self.n_channels, self.n_bins), np.complex128)

    def process(self, block: np.ndarray) -> np.ndarray:
        """Analyse one ``(n_ch, R)`` float32 block; return ``(n_ch, R + 1)`` complex64.

        The returned array is this object's buffer, overwritten by the next call: copy it
        to keep it.
        """
        block = check_array(block, "block", (self.n_channels, self.hop_samples), np.float32)
        analysis_kernel(self._history, block, self.window, self._frames)
        np.copyto(self._frames64, self._frames)
        _rfft_into(self._frames64, self._spec128)
        np.copyto(self._spec, self._spec128, casting="same_kind")
        return self._spec

    def reset(self) -> None:
        """Forget the past input (back to silence)."""
        self._history.fill(0.0)


# --- synthesis -----------------------------------------------------------------------------


@kernel
def synthesis_kernel(
    frame: np.ndarray, window: np.ndarray, overlap: np.ndarray, out: np.ndarray
) -> None:
    """Weighted overlap-add of one frame; emit the ``R`` finished samples.

    frame: ``(L,)`` float32 (irfft of the spectrum); window: ``(L,)`` float32;
    overlap: ``(L,)`` float32 running sum (updated in place); out: ``(R,)`` float32.
    ``overlap += frame * window; out = overlap[:R]; overlap <- overlap[R:] ++ zeros(R)``.
    """
    frame_len = frame.shape[0]
    hop = out.shape[0]
    for i in range(frame_len):
        overlap[i] += frame[i] * window[i]
    for i in range(hop):
        out[i] = overlap[i]
    for i in range(frame_len - hop):
        overlap[i] = overlap[i + hop]
    for i in range(frame_len - hop, frame_len):
        overlap[i] = 0.0


def synthesis_reference(
    frame: np.ndarray, window: np.ndarray, overlap: np.ndarray, hop_samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy reference of :func:`synthesis_kernel`: ``(new_overlap (L,), out (R,))``."""
    summed = overlap + frame * window
    new_overlap = np.concatenate([summed[hop_samples:], np.zeros(hop_samples, np.float32)])
    return new_overlap, summed[:hop_samples].copy()


def istft_reference(spectra: np.ndarray, hop_samples: int) -> np.ndarray:
    """Whole-signal reference of :class:`StreamingIstft`: ``(n_blocks * R,)`` float32.

    spectra: ``(n_blocks, R + 1)`` complex; output block ``b`` is the overlap-add of the
    second half of windowed frame ``b - 1`` and the first half of frame ``b``.
    """
    hop = hop_samples
    frames = np.fft.irfft(spectra, n=2 * hop, axis=-1) * sqrt_hann(2 * hop)
    out = frames[:, :hop].copy()
    out[1:] += frames[:-1, hop:]
    return out.reshape(-1).astype(np.float32)


class StreamingIstft:
    """Block-by-block synthesis: ``(R + 1,)`` complex64 in, ``(R,)`` float32 out.

    Paired with :class:`StreamingStft` at the same hop, output sample ``n`` equals input
    sample ``n - latency_samples`` (``latency_samples = R``) up to float32 rounding.
    """

    def __init__(self, hop_samples: int) -> None:
        self.hop_samples = check_positive_int(hop_samples, "hop_samples")
        self.frame_samples = 2 * self.hop_samples
        self.n_bins = self.frame_samples // 2 + 1
        self.latency_samples = stft_latency_samples(self.hop_samples)
        self.window = sqrt_hann(self.frame_samples)
        self._frame = np.zeros(self.frame_samples, np.float32)
        self._spec128 = np.zeros(self.n_bins, np.complex128)  # double FFT buffers (see above)
        self._frame64 = np.zeros(self.frame_samples, np.float64)
        self._overlap = np.zeros(self.frame_samples, np.float32)
        self._out = np.zeros(self.hop_samples, np.float32)

    def process(self, spec: np.ndarray) -> np.ndarray:
        """Synthesize one ``(R + 1,)`` complex64 spectrum; return ``(R,)`` float32.

        The returned array is this object's buffer, overwritten by the next call: copy it
        to keep it.
        """
        spec = check_array(spec, "spec", (self.n_bins,), np.complex64)
        np.copyto(self._spec128, spec)
        _irfft_into(self._spec128, self.frame_samples, self._frame64)
        np.copyto(self._frame, self._frame64, casting="same_kind")
        synthesis_kernel(self._frame, self.window, self._overlap, self._out)
        return self._out

    def reset(self) -> None:
        """Drop the pending overlap (back to silence)."""
        self._overlap.fill(0.0)
