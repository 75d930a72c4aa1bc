"""Bulk delay between the playback reference and the microphones, tracked with hysteresis.

The loudspeaker signal reaches the mics after the playback buffering plus the acoustic
path; the echo canceller's tail (``window`` samples) should cover the acoustic part.
Once per segment (``segment_s`` of signal in which the reference was active; the first
one ``first_segment_s``), the reference-to-mic impulse response over lags
``[0, max_delay + window)`` is estimated by regularised deconvolution (the cross-spectrum
over the reference's power, :func:`path_estimate`: the Roth processor of Knapp & Carter
1976). Until a first lag is accepted, each try deconvolves the spectra accumulated over
all the first segments so far (Welch-style averaging), so an echo buried in noise at the
mic (a car's engine at the echo's level) is found once enough of it has been heard,
instead of never; later segments stand on their own, so a new delay shows in full. This,
unlike GCC-PHAT's whitening of both signals, keeps the path's shape and lets bins the
reference does not excite (tonal music) add little. The lag is the latest start ``d`` of
a ``window``-long span whose path energy ``E(d) = sum_{k=d}^{d+window-1} h_k^2`` is
within ``energy_tolerance`` of the best span's, moved on to the span's first tap within
``onset_db`` of its strongest: the direct path at the span's start, with all the tail
room for the reverberation, and a room whose strongest reflections arrive tens of ms
after the direct path (where GCC-PHAT finds no distinct peak) still gets the span that
holds them. A lag is accepted when its span holds at least ``min_share`` of the
estimate's energy over all lags (an estimate of noise or of near-end speech spreads over
every lag) and, if it differs from the current lag by more than ``hysteresis_samples``,
only after ``confirm`` segments in a row agree (within the hysteresis). The delay
applied to the reference is ``lag - margin`` (floored at 0): the margin keeps the
filter's pre-echo inside the tail.

Shapes: :meth:`push` takes ``(N,)`` float32 blocks of the mono reference and one mic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mica.array_dsp.validate import SignalShapeError, check_array, check_positive_int


@dataclass(frozen=True)
class DelayParams:
    """Tuning of :class:`DelayTracker`.

    Attributes:
        max_delay_ms: largest lag searched (ms).
        segment_s: seconds of active reference per estimate.
        first_segment_s: seconds of active reference for the first estimate (shorter: the
            canceller, which keeps its learned taps and its least-squares segment when the
            delay moves, gets its tail onto the echo path sooner; later segments confirm or
            correct it).
        min_share: share of the path estimate's energy (all lags) the lag's span must hold.
        energy_tolerance: the lag is the latest span start within this share of the best
            span's energy (0.02: a span that loses at most 2 % of the path energy).
        onset_db: the lag is the span's first tap within this of its strongest (dB): the
            deconvolution of a band-limited or harmonic reference leaks a little energy
            before the path, which can pull the span's start early.
        hysteresis_ms: a new lag within this of the current one changes nothing (ms).
        confirm: segments in a row that must agree before the delay moves.
        margin_ms: applied delay = lag - margin (ms), floored at 0.
        active_rms: reference RMS (full scale 1) above which a block counts as active.
        ridge: regularisation of the deconvolution (:func:`path_estimate`), a share of
            the reference's mean power.
    """

    max_delay_ms: float = 200.0
    segment_s: float = 1.0
    first_segment_s: float = 0.5
    min_share: float = 0.7
    energy_tolerance: float = 0.02
    onset_db: float = -20.0
    hysteresis_ms: float = 5.0
    confirm: int = 2
    margin_ms: float = 4.0
    active_rms: float = 1e-3
    ridge: float = 1e-2

    def __post_init__(self) -> None:
        if not (
            self.max_delay_ms > 0
            and self.segment_s > 0
            and self.first_segment_s > 0
            and self.confirm >= 1
            and 0.0 <= self.min_share <= 1.0
            and 0.0 <= self.energy_tolerance < 1.0
            and self.onset_db <= 0.0
            and self.ridge > 0
            and self.hysteresis_ms >= 0
            and self.margin_ms >= 0
            and self.active_rms >= 0
        ):
            raise SignalShapeError(f"DelayParams: a value is out of range: {self!r}")


def path_estimate(ref: np.ndarray, mic: np.ndarray, n_lags: int, ridge: float = 1e-2) -> np.ndarray:
    """``(n_lags,)`` impulse response from ``ref (n,)`` to ``mic (n,)``, lags ``0 .. n_lags-1``,
    by regularised deconvolution: ``h = IFFT(Y X^* / (|X|^2 + ridge mean |X|^2))`` (the
    cross-spectrum weighted by the reference's own power: the Roth processor of Knapp &
    Carter 1976, with a ridge for the bins the reference does not excite); FFT length at
    least ``n + n_lags`` (no circular wrap onto the lags searched)."""
    ref = np.asarray(ref, np.float64)
    mic = np.asarray(mic, np.float64)
    if ref.ndim != 1 or ref.shape != mic.shape:
        raise SignalShapeError(
            f"path_estimate: two 1-D signals of one length, got {ref.shape} and {mic.shape}"
        )
    n_lags = check_positive_int(n_lags, "n_lags")
    n_fft = 1 << int(np.ceil(np.log2(ref.shape[0] + n_lags)))
    sxy, sxx = segment_spectra(ref, mic, n_fft)
    return path_from_spectra(sxy, sxx, n_fft, n_lags, ridge)


def segment_spectra(ref: np.ndarray, mic: np.ndarray, n_fft: int) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """``(Y X^*, |X|^2)`` of one segment, zero-padded to ``n_fft`` (``>= n + lags``): the
    Fourier transforms of its linear cross- and autocorrelation. Sums over segments are
    those of all their samples (less the pairs across segment edges)."""
    x = np.fft.rfft(np.asarray(ref, np.float64), n_fft)
    y = np.fft.rfft(np.asarray(mic, np.float64), n_fft)
    return y * np.conj(x), np.abs(x) ** 2


def path_from_spectra(sxy: np.ndarray, sxx: np.ndarray, n_fft: int, n_lags: int,
                      ridge: float = 1e-2) -> np.ndarray:
    """The first ``n_lags`` taps of ``IFFT(sxy / (sxx + ridge mean sxx))``."""
    return np.fft.irfft(sxy / (sxx + ridge * sxx.mean() + 1e-30), n_fft)[:n_lags]


def span_energy(h: np.ndarray, window: int, n_starts: int) -> np.ndarray:
    """``(n_starts,)`` ``E(d) = sum_{k=d}^{d+window-1} h_k^2`` for ``d = 0 .. n_starts-1``
    (``h`` zero beyond its end)."""
    c = np.concatenate([[0.0], np.cumsum(np.asarray(h, np.float64) ** 2)])
    d = np.arange(n_starts)
    return c[np.minimum(d + window, c.shape[0] - 1)] - c[np.minimum(d, c.shape[0] - 1)]


class DelayTracker:
    """Tracks the reference-to-mic bulk delay (see the module doc).

    Args:
        block_samples: ``N``.
        fs_hz: sample rate (Hz).
        params: :class:`DelayParams`.
        window_samples: the canceller's tail (samples; default 128 ms).

    After :meth:`push` returns True, :attr:`delay_samples` (applied delay) changed;
    :attr:`lag_samples` is the last accepted lag (``None`` before any).
    """

    def __init__(
        self,
        block_samples: int,
        fs_hz: float,
        params: DelayParams | None = None,
        window_samples: int | None = None,
    ) -> None:
        self.block_samples = check_positive_int(block_samples, "block_samples")
        self.params = p = params or DelayParams()
        self.fs_hz = float(fs_hz)
        self.max_lag = max(1, int(round(p.max_delay_ms * 1e-3 * fs_hz)))
        self.window = check_positive_int(
            window_samples if window_samples is not None else int(round(0.128 * fs_hz)),
            "window_samples",
        )
        self._seg = self._blocks(p.segment_s)
        self._seg_first = self._blocks(p.first_segment_s)
        self._ref = np.zeros(max(self._seg, self._seg_first), np.float32)
        self._mic = np.zeros_like(self._ref)
        n_lags = self.max_lag + self.window
        self._n_fft = 1 << int(np.ceil(np.log2(self._seg_first + n_lags)))
        self._sxy = np.zeros(self._n_fft // 2 + 1, np.complex128)  # first segments' spectra
        self._sxx = np.zeros(self._n_fft // 2 + 1, np.float64)
        self._fill = 0
        self._hyst = p.hysteresis_ms * 1e-3 * fs_hz
        self._margin = int(round(p.margin_ms * 1e-3 * fs_hz))
        self._thr = p.active_rms**2 * self.block_samples
        self.lag_samples: float | None = None
        self.delay_samples = 0
        self._candidate: float | None = None
        self._agree = 0
        self.estimates_total = 0
        self.rejected_total = 0
        self._previous: tuple[float | None, int] = (None, 0)

    def _blocks(self, seconds: float) -> int:
        """``seconds`` in samples, a whole number of blocks (at least one)."""
        n = self.block_samples
        return max(n, int(round(seconds * self.fs_hz)) // n * n)

    @property
    def delay_ms(self) -> float | None:
        """Accepted lag in ms (``None`` before any)."""
        return None if self.lag_samples is None else 1e3 * self.lag_samples / self.fs_hz

    def push(self, ref_block: np.ndarray, mic_block: np.ndarray) -> bool:
        """Add one block of the mono reference and a mic; True when the applied delay
        changed (at most once per segment)."""
        n = self.block_samples
        ref_block = check_array(ref_block, "ref_block", (n,), np.float32)
        mic_block = check_array(mic_block, "mic_block", (n,), np.float32)
        if float(np.dot(ref_block, ref_block)) < self._thr:
            return False  # only segments with playback say anything about the delay
        self._ref[self._fill : self._fill + n] = ref_block
        self._mic[self._fill : self._fill + n] = mic_block
        self._fill += n
        if self._fill < (self._seg_first if self.lag_samples is None else self._seg):
            return False
        length, self._fill = self._fill, 0
        return self._estimate(length)

    def _estimate(self, length: int) -> bool:
        ref, mic = self._ref[:length], self._mic[:length]
        if not np.any(mic):
            return False
        p = self.params
        n_lags = self.max_lag + self.window
        if self.lag_samples is None:  # all the first segments so far
            sxy, sxx = segment_spectra(ref, mic, self._n_fft)
            self._sxy += sxy
            self._sxx += sxx
            h = path_from_spectra(self._sxy, self._sxx, self._n_fft, n_lags, p.ridge)
        else:
            h = path_estimate(ref, mic, n_lags, p.ridge)
        energy = span_energy(h, self.window, self.max_lag + 1)
        total = float(np.sum(h**2))
        best = float(energy.max())
        self.estimates_total += 1
        if total <= 0.0 or best < p.min_share * total:
            return False
        start = int(np.nonzero(energy >= (1.0 - p.energy_tolerance) * best)[0].max())
        span = np.abs(h[start : start + self.window])
        lag = float(start + np.argmax(span >= 10.0 ** (p.onset_db / 20.0) * span.max()))
        if self.lag_samples is not None and abs(lag - self.lag_samples) <= self._hyst:
            self._agree = 0
            return False
        if self._candidate is not None and abs(lag - self._candidate) <= self._hyst:
            self._agree += 1
        else:
            self._candidate, self._agree = lag, 1
        need = 1 if self.lag_samples is None else self.params.confirm
        if self._agree < need:
            return False
        self._previous = (self.lag_samples, self.delay_samples)
        self.lag_samples = float(lag)
        self._forget_spectra()  # only the first lag's tries use them
        self._candidate, self._agree = None, 0
        new = max(0, int(round(lag)) - self._margin)
        changed = new != self.delay_samples
        self.delay_samples = new
        return changed

    def moved(self, shift_samples: int) -> None:
        """The caller moved the applied delay by ``shift_samples`` on its own evidence (the
        canceller realigned a slid reference): the accepted lag moves with it and a
        candidate in progress is dropped."""
        if self.lag_samples is not None:
            self.lag_samples += shift_samples
        self.delay_samples = max(0, self.delay_samples + shift_samples)
        self._candidate, self._agree = None, 0
        self._forget_spectra()  # they hold the reference at its old alignment

    def reject(self) -> None:
        """Undo the last accepted change (the caller found it contradicts what works)."""
        self.lag_samples, self.delay_samples = self._previous
        self.rejected_total += 1

    def _forget_spectra(self) -> None:
        self._sxy.fill(0.0)
        self._sxx.fill(0.0)

    def reset(self) -> None:
        """Forget the collected segment, the accumulated spectra and the estimate."""
        self._forget_spectra()
        self._fill = 0
        self.lag_samples = None
        self.delay_samples = 0
        self._candidate, self._agree = None, 0
