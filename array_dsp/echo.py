"""The echo stage of the chain: bulk delay, per-mic cancellation, residual-echo gains.

:class:`EchoControl` ties :class:`~mica.array_dsp.echo_delay.DelayTracker` (bulk delay
from the deconvolved playback path, hysteresis), :class:`~mica.array_dsp.aec.EchoCanceller`
(partitioned-block Kalman filter per mic) and, optionally,
:class:`~mica.array_dsp.res.ResidualEchoSuppressor` together. The
:class:`~mica.array_dsp.enhancer.Enhancer` calls :meth:`process` on each
``(n_mic, N)`` block with its ``(n_ref, N)`` reference before the STFT, and, after the
beamformer, :meth:`res_gains` with the beam and the beamformed echo estimate
(:attr:`echo`, transformed by the enhancer's own STFT). Zero added latency.

Hold (:meth:`EchoControl.hold`): while the reference cannot be trusted (its loopback
device is lost: its rows are zeros while the loudspeaker may still play) the canceller
does not adapt (``EchoCanceller.process(adapt=False)``), the bulk-delay tracker is not fed
and no LS bootstrap starts; the output is the microphones less the echo estimate of
whatever reference arrives. After the release the canceller waits for the reference's
first non-zero block (a returning loopback device delivers zeros until its timestamps
place it) and adapts again only once its regressor, ``P`` partitions of ``2 N`` samples
behind the bulk delay, holds nothing but reference from after the return: the zeros
that stood for playback it never saw would otherwise be taken as the echo path's
answer to that playback. Measured (2 s loss, ERLE 0.25-0.75 s after the return, see
``tests/device/test_echo_reference_device.py``): not held 19.6 dB, held and adapting at
once on release 27.9, held and waiting ``P + 1`` blocks 32.2 (``P - 7``: 27.7, ``P - 2``:
31.2, ``P + 5``: 31.9, ``P + 21``: 31.0), uninterrupted 31.4.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from mica.array_dsp.aec import AecParams, EchoCanceller
from mica.array_dsp.echo_delay import DelayParams, DelayTracker
from mica.array_dsp.res import ResidualEchoSuppressor, ResParams
from mica.array_dsp.validate import check_array, check_positive_int

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EchoParams:
    """Everything :class:`EchoControl` needs.

    Attributes:
        aec: the canceller's tuning (``tail_ms`` ...).
        delay: bulk-delay tracking (``None``: no tracking, the reference is used as is).
        res: residual-echo suppression (``None``: off).
        playback_hold_s: :attr:`EchoControl.playback_active` stays on this long after the
            reference falls silent.
        delay_guard_erle_db: a new bulk delay is refused while the canceller cancels
            this much (ERLE, dB) ...
        delay_guard_kept_share: ... and moving its taps by the delay change would keep
            less than this share of their energy: the delay that works is kept (a wrong
            lag would otherwise throw a converged filter away; a real change of
            the playback buffering makes the echo uncancelled first, and then passes).
    """

    aec: AecParams = field(default_factory=AecParams)
    delay: DelayParams | None = field(default_factory=DelayParams)
    res: ResParams | None = field(default_factory=ResParams)
    playback_hold_s: float = 0.5
    delay_guard_erle_db: float = 10.0
    delay_guard_kept_share: float = 0.5


class EchoControl:
    """Echo cancellation for ``n_mics`` microphones and ``n_refs`` reference channels.

    After each :meth:`process`: :attr:`erle_db`, :attr:`double_talk`, :attr:`delay_ms`,
    :attr:`playback_active`, :attr:`path_changed` (an echo-path change or a new bulk
    delay in this block) and :attr:`change_reason`.
    """

    def __init__(
        self,
        n_mics: int,
        n_refs: int,
        block_samples: int,
        fs_hz: float,
        params: EchoParams | None = None,
    ) -> None:
        self.params = p = params or EchoParams()
        self.n_mics = check_positive_int(n_mics, "n_mics")
        self.n_refs = check_positive_int(n_refs, "n_refs")
        self.block_samples = n = check_positive_int(block_samples, "block_samples")
        self.fs_hz = float(fs_hz)
        max_delay = 0 if p.delay is None else int(round(p.delay.max_delay_ms * 1e-3 * fs_hz))
        self.aec = EchoCanceller(n_mics, n_refs, n, fs_hz, p.aec, max_delay_samples=max_delay)
        self.tracker = (
            None
            if p.delay is None
            else DelayTracker(n, fs_hz, p.delay, self.aec.n_partitions * n)
        )
        self.res = None if p.res is None else ResidualEchoSuppressor(n + 1, p.res)
        self._ref_mono = np.zeros(n, np.float32)
        self._mic0 = np.zeros(n, np.float32)
        self._hold_blocks = int(round(p.playback_hold_s * fs_hz / n))
        self._since_far = 1 << 30
        self.path_changed = False
        self.change_reason = ""
        self.path_changes_total = 0
        self._hold_request = False  # set by hold() (any thread), read once per process()
        self._held = False
        self._await_ref = False  # released: waiting for the reference's first non-zero block
        self._resume_left = 0  # then this many blocks more without adaptation

    @property
    def echo(self) -> np.ndarray:
        """``(n_mic, N)`` float32 echo estimate of the last block (a view)."""
        return self.aec.echo

    @property
    def erle_db(self) -> float:
        """Echo return loss enhancement (dB, pooled over mics; ``nan`` before any
        far-end-only block)."""
        return self.aec.erle_db

    @property
    def double_talk(self) -> bool:
        """Far end and near end both active."""
        return self.aec.double_talk

    @property
    def playback_active(self) -> bool:
        """The reference carried playback within the last ``playback_hold_s``."""
        return self._since_far <= self._hold_blocks

    @property
    def delay_ms(self) -> float | None:
        """Estimated reference-to-mic lag (ms; ``None`` before any estimate or without
        tracking)."""
        return None if self.tracker is None else self.tracker.delay_ms

    @property
    def held(self) -> bool:
        """Adaptation stands still: :meth:`hold` is on, or the canceller waits after its
        release for a regressor of fresh reference (as of the last :meth:`process`)."""
        return self._held or self._await_ref or self._resume_left > 0

    def hold(self, on: bool) -> None:
        """Hold (``True``) or release (``False``) the canceller (see the module doc); safe
        from any thread: only a flag, which the next :meth:`process` reads."""
        self._hold_request = bool(on)

    def _adapt_now(self, ref: np.ndarray) -> bool:
        """Advance the hold state for this block; whether the canceller may adapt on it."""
        held = self._hold_request
        if held != self._held:
            log.info("echo: canceller %s", "held" if held else "released")
            self._held = held
            self._await_ref = not held
            self._resume_left = 0
        if held:
            return False
        if self._await_ref and ref.any():
            self._await_ref = False
            delay_blocks = -(-self.aec.delay_samples // self.block_samples)
            self._resume_left = self.aec.n_partitions + 1 + delay_blocks
        if self._await_ref:
            return False
        if self._resume_left:
            self._resume_left -= 1
            return False
        return True

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Cancel the echo in ``mic (n_mic, N)`` given ``ref (n_ref, N)`` (float32); return
        the ``(n_mic, N)`` float32 echo-cancelled block (a buffer reused next call)."""
        n = self.block_samples
        mic = check_array(mic, "mic", (self.n_mics, n), np.float32)
        ref = check_array(ref, "ref", (self.n_refs, n), np.float32)
        self.path_changed = False
        adapt = self._adapt_now(ref)
        if self.tracker is not None and adapt:
            np.sum(ref, axis=0, out=self._ref_mono)
            self._ref_mono *= np.float32(1.0 / self.n_refs)
            np.copyto(self._mic0, mic[0])
            if self.tracker.push(self._ref_mono, self._mic0):
                self._new_delay(self.tracker.delay_samples)
        out = self.aec.process(mic, ref, adapt)
        if self.aec.path_changed:
            self.path_changed, self.change_reason = True, "echo_path"
        elif self.aec.realigned_samples:  # the reference slid: the delay moved, filter kept
            if self.tracker is not None:
                self.tracker.moved(self.aec.realigned_samples)
            self.path_changed, self.change_reason = True, "delay"
        self.path_changes_total += int(self.path_changed)
        self._since_far = 0 if self.aec.far_active else min(self._since_far + 1, 1 << 30)
        return out

    def _new_delay(self, delay_samples: int) -> None:
        """Apply the tracker's new delay, unless it contradicts a filter that works (see
        :class:`EchoParams`); then the tracker goes back to the delay in use."""
        p = self.params
        erle = self.aec.erle_db
        if (
            not math.isnan(erle)
            and erle >= p.delay_guard_erle_db
            and self.aec.kept_energy_share(delay_samples) < p.delay_guard_kept_share
        ):
            log.info(
                "echo: delay %d samples refused (ERLE %.1f dB with %d samples)",
                delay_samples,
                erle,
                self.aec.delay_samples,
            )
            self.tracker.reject()
            return
        self.aec.set_delay(delay_samples)
        self.path_changed, self.change_reason = True, "delay"

    def res_gains(self, beam: np.ndarray, echo_beam: np.ndarray) -> np.ndarray | None:
        """``(K,)`` float32 residual-echo gains for the ``(K,)`` complex64 beam and its
        beamformed echo estimate (``None`` when the suppressor is off)."""
        return None if self.res is None else self.res.process(beam, echo_beam)

    def status(self) -> dict[str, float | bool | None]:
        """``{"erle_db", "double_talk", "delay_ms", "playback_active", "held"}`` (telemetry)."""
        erle = self.erle_db
        delay = self.delay_ms
        return {
            "erle_db": None if math.isnan(erle) else round(erle, 2),
            "double_talk": self.double_talk,
            "delay_ms": None if delay is None else round(delay, 2),
            "playback_active": self.playback_active,
            "held": self.held,
        }

    def reset(self) -> None:
        """Back to silence (filters, delay estimate, suppressor)."""
        self.aec.reset()
        if self.tracker is not None:
            self.tracker.reset()
            self.aec.set_delay(0, keep_filter=False)
        if self.res is not None:
            self.res.reset()
        self._since_far = 1 << 30
        self.path_changed = False
        self._held = self._await_ref = False
        self._resume_left = 0

    def warmup(self) -> None:
        """Compile every kernel, then :meth:`reset`."""
        self.aec.warmup()
        if self.res is not None:
            k = self.block_samples + 1
            self.res.process(np.zeros(k, np.complex64), np.zeros(k, np.complex64))
        self.reset()
