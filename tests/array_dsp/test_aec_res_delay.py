"""Residual-echo suppressor (kernel == numpy reference, suppresses residual echo, leaves
clean input alone) and the bulk-delay tracker (finds the playback delay, hysteresis)."""

from __future__ import annotations

import numpy as np
import pytest

from mica.array_dsp.echo import EchoControl
from mica.array_dsp.echo_delay import DelayParams, DelayTracker, path_estimate, span_energy
from mica.array_dsp.errors import MicaError
from mica.array_dsp.res import ResidualEchoSuppressor, ResParams, res_gain_reference
from mica.evaluation.echo_scene import make_echo_scene
from mica.evaluation.metrics import erle_db
from mica.evaluation.scenarios import read_mono_16k

FS = 16000
HOP = 160


def spectra(n_frames: int, n_bins: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n_frames, n_bins)) + 1j * rng.standard_normal((n_frames, n_bins))
    ).astype(np.complex64)


@pytest.mark.parametrize(
    ("n_bins", "params"),
    [(161, ResParams()), (65, ResParams(-10.0, 1.0)), (257, ResParams(-30.0, 3.0, 0.0, 0.5))],
)
def test_res_kernel_equals_reference(n_bins: int, params: ResParams) -> None:
    echo = spectra(80, n_bins, 1)
    err = (0.3 * echo + spectra(80, n_bins, 2) * 0.2).astype(np.complex64)
    err[40:50] = 0  # silent frames
    res = ResidualEchoSuppressor(n_bins, params)
    got = np.stack([res.process(err[f], echo[f]).copy() for f in range(80)])
    want = res_gain_reference(err, echo, params)
    assert np.allclose(got, want, atol=1e-6)
    assert got.min() < 0.9  # it did suppress something
    assert got.min() >= 10 ** (params.floor_db / 20) - 1e-6


def test_res_without_echo_estimate_is_unity() -> None:
    res = ResidualEchoSuppressor(161)
    speech = spectra(50, 161, 3)
    silent = np.zeros(161, np.complex64)
    gains = [res.process(speech[f], silent).copy() for f in range(50)]
    assert np.array_equal(np.stack(gains), np.ones((50, 161), np.float32))


def test_res_suppresses_residual_more_than_near_end() -> None:
    """Residual = 0.1 x echo estimate in frames 0-99; near-end only (uncorrelated with the
    estimate) in 100-199: the first are pushed down, the second kept."""
    n_bins = 161
    echo = spectra(200, n_bins, 4)
    near = spectra(200, n_bins, 5)
    err = np.where(np.arange(200)[:, None] < 100, 0.3 * echo, near).astype(np.complex64)
    echo[100:] *= 0.01  # playback nearly stops while the near end talks
    res = ResidualEchoSuppressor(n_bins)
    g = np.stack([res.process(err[f], echo[f]).copy() for f in range(200)])
    assert g[50:100].mean() < 0.5
    assert g[150:200].mean() > 0.9


def test_res_bad_input() -> None:
    with pytest.raises(MicaError, match="err"):
        ResidualEchoSuppressor(161).process(
            np.zeros(160, np.complex64), np.zeros(161, np.complex64)
        )
    with pytest.raises(MicaError, match="ResParams"):
        ResParams(floor_db=3.0)


def feed(tracker: DelayTracker, ref: np.ndarray, mic: np.ndarray) -> list[int]:
    changes = []
    for b in range(ref.shape[0] // HOP):
        sl = slice(b * HOP, (b + 1) * HOP)
        if tracker.push(np.ascontiguousarray(ref[sl]), np.ascontiguousarray(mic[sl])):
            changes.append(b)
    return changes


def span_share(scene, delay: int, window: int) -> float:
    """Share of the scene's true playback path (buffering + RIR of mic 0) in the
    canceller's span ``[delay, delay + window)``."""
    path = np.concatenate([np.zeros(scene.playback_delay_samples), scene.paths[0]]) ** 2
    return float(path[delay : delay + window].sum() / path.sum())


# a pure delay of speech comes back from the deconvolution with leakage around it (its
# harmonic spectrum leaves bins the ridge mutes): the lag may come up to 10 ms early
EARLY_MAX = 160


@pytest.mark.parametrize(
    ("rir", "delay_ms"),
    [
        ("mit_ir_survey_h010_livingroom_16k.wav", 80.0),
        ("lhotse_real_8ch.wav", 60.0),  # strongest taps 7/33/46/97 ms: no GCC-PHAT peak
        ("rir_clap_seminar_room_16k.wav", 150.0),
    ],
)
def test_delay_tracker_finds_playback_delay(corpus_dir, rir: str, delay_ms: float) -> None:
    """Playback buffering on top of measured RIRs (a living room with its direct path at
    ~4 ms, a room whose strongest reflections are spread over 90 ms, a seminar room with
    150 ms buffering): the first estimate comes within 4 s, and the canceller's span
    ``[delay, delay + 128 ms)`` then holds >= 99 % of the true path's energy (97 % of the
    seminar room's path fits any 128 ms span: 99 % of that), never starting after the
    buffering ends."""
    scene = make_echo_scene(corpus_dir, seconds=4.0, n_mics=1, rir=rir, playback_delay_ms=delay_ms)
    tracker = DelayTracker(HOP, FS, window_samples=2048)
    changes = feed(tracker, scene.ref[0], scene.mic[0])
    assert changes, "no delay found"
    path = np.concatenate([np.zeros(scene.playback_delay_samples), scene.paths[0]]) ** 2
    best = max(path[d : d + 2048].sum() for d in range(0, 3201, 16)) / path.sum()
    got = span_share(scene, tracker.delay_samples, 2048)
    assert got >= 0.99 * best, (got, best, tracker.delay_samples)
    assert tracker.delay_samples <= scene.playback_delay_samples + 64
    assert tracker.delay_samples == int(round(tracker.lag_samples)) - 64


def test_delay_tracker_finds_the_delay_under_engine_noise(corpus_dir) -> None:
    """Speech behind 80 ms of buffering with a car engine at the mic as loud as the echo
    (0 dB echo-to-noise): one 0.5 s segment's path estimate drowns in the noise (every try
    alone is rejected: measured, no delay in 8 s), but the tries before the first lag
    deconvolve the spectra of all first segments so far, so the delay is found within 4 s
    with a span holding >= 95 % of the path's energy."""
    scene = make_echo_scene(corpus_dir, seconds=4.0, n_mics=1,
                            rir="mit_ir_survey_h010_livingroom_16k.wav", playback_delay_ms=80.0)
    noise = read_mono_16k(corpus_dir / "noise" / "freesound_345558_car_engine.wav")
    noise = np.resize(noise, scene.echo[0].shape)
    noise *= np.sqrt(np.mean(scene.echo[0] ** 2) / np.mean(noise**2))
    mic = (scene.mic[0] + noise).astype(np.float32)
    tracker = DelayTracker(HOP, FS, window_samples=2048)
    changes = feed(tracker, scene.ref[0], mic)
    assert changes and tracker.estimates_total >= 2, (changes, tracker.estimates_total)
    assert span_share(scene, tracker.delay_samples, 2048) >= 0.95
    single = [path_estimate(scene.ref[0][a : a + FS // 2], mic[a : a + FS // 2], 3200 + 2048)
              for a in range(0, 4 * FS - FS // 2 + 1, FS // 2)]
    shares = [span_energy(h, 2048, 3201).max() / np.sum(h**2) for h in single]
    assert max(shares) < DelayParams().min_share, shares  # no single segment would do


def test_delay_tracker_hysteresis_and_confirmation(corpus_dir) -> None:
    """A 1 ms wobble moves nothing; a real 40 ms move needs two agreeing segments."""
    x = read_mono_16k(corpus_dir / "speech" / "librispeech_2412-153948-0000.wav")[: 8 * FS]
    tracker = DelayTracker(HOP, FS, DelayParams(margin_ms=0.0))
    d0 = 800
    feed(tracker, x[: 2 * FS], np.roll(x, d0)[: 2 * FS])
    first = tracker.delay_samples
    assert d0 - EARLY_MAX <= first <= d0
    assert not feed(tracker, x[2 * FS : 4 * FS], np.roll(x, d0 + 16)[2 * FS : 4 * FS])
    assert tracker.delay_samples == first
    d1 = d0 + 640
    before, at_move = tracker.estimates_total, []
    y = np.roll(x, d1)
    for b in range(4 * FS // HOP, 8 * FS // HOP):
        sl = slice(b * HOP, (b + 1) * HOP)
        if tracker.push(np.ascontiguousarray(x[sl]), np.ascontiguousarray(y[sl])):
            at_move.append(tracker.estimates_total - before)
    assert len(at_move) == 1 and d1 - EARLY_MAX <= tracker.delay_samples <= d1
    assert at_move[0] >= 2  # the second segment with the new lag, not the first


def test_delay_tracker_ignores_silence() -> None:
    tracker = DelayTracker(HOP, FS)
    assert not feed(tracker, np.zeros(3 * FS, np.float32), np.zeros(3 * FS, np.float32))
    assert tracker.lag_samples is None and tracker.estimates_total == 0


def test_delay_tracker_first_estimate_after_first_segment(corpus_dir) -> None:
    """The first lag comes after ``first_segment_s`` (0.5 s) of playback, not after a whole
    ``segment_s`` (1 s); the next estimate needs a whole segment."""
    x = read_mono_16k(corpus_dir / "speech" / "librispeech_2412-153948-0000.wav")[: 3 * FS]
    blocks = x[: x.shape[0] // HOP * HOP].reshape(-1, HOP).astype(np.float64)
    active = np.nonzero(np.sqrt(np.mean(blocks**2, axis=1)) > 1e-3)[0]
    tracker = DelayTracker(HOP, FS, DelayParams(margin_ms=0.0))
    changes = feed(tracker, x, np.roll(x, 800))
    assert changes == [active[49]], (changes, active[49])  # the 50th block with playback
    assert 800 - EARLY_MAX <= tracker.delay_samples <= 800
    assert tracker.estimates_total == 1 + (active.size - 50) // 100


def test_a_delay_that_contradicts_a_working_filter_is_refused(corpus_dir) -> None:
    """After 3 s on corpus speech through the measured 8-ch RIR (no playback delay), the
    filter cancels > 20 dB; a new lag of 190 ms (a wrong GCC-PHAT peak) would shift all of
    its taps out: it is refused, the tracker goes back to the delay in use, and the echo
    stays cancelled. A fresh filter takes the same delay."""
    scene = make_echo_scene(corpus_dir, seconds=4.0, n_mics=1)
    ec = EchoControl(1, 1, HOP, FS)
    n_blocks = scene.mic.shape[1] // HOP
    out = np.zeros(n_blocks * HOP, np.float32)

    def feed_blocks(lo: int, hi: int) -> None:
        for b in range(lo, hi):
            sl = slice(b * HOP, (b + 1) * HOP)
            out[sl] = ec.process(
                np.ascontiguousarray(scene.mic[:, sl]), np.ascontiguousarray(scene.ref[:, sl])
            )[0]

    feed_blocks(0, 300)
    assert ec.erle_db > 20.0 and ec.aec.delay_samples == 0, (ec.erle_db, ec.aec.delay_samples)
    assert ec.aec.kept_energy_share(3040) < 0.05
    assert ec.aec.kept_energy_share(16) > 0.9
    # what DelayTracker._estimate does when it accepts a lag
    ec.tracker._previous = (ec.tracker.lag_samples, ec.tracker.delay_samples)
    ec.tracker.lag_samples, ec.tracker.delay_samples = 3104.0, 3040
    ec._new_delay(3040)
    assert ec.aec.delay_samples == 0 and not ec.path_changed
    assert ec.tracker.delay_samples == 0 and ec.tracker.rejected_total == 1
    feed_blocks(300, n_blocks)
    sl = slice(300 * HOP, n_blocks * HOP)
    assert erle_db(scene.echo[0, sl], out[sl]) > 20.0
    fresh = EchoControl(1, 1, HOP, FS)
    fresh._new_delay(3040)
    assert fresh.aec.delay_samples == 3040 and fresh.path_changed
