"""``mica calibrate``'s procedure on recorded samples: every measurement, the calibration and
the technician's summary.

Order of the steps (each uses what the previous ones found):

1. select the mic channels (a recording may hold every captured channel);
2. several devices: offset and drift of each against the first (:mod:`.devices`), and the
   devices resampled onto one clock;
3. dead-mic test (:func:`~.measure.channel_health`);
4. gains from diffuse noise (:func:`~.measure.estimate_gains`; ``--noise`` or the recording
   itself) or, given the played signal and no noise recording, from the transfer function
   of each mic (:func:`~.played_gain.estimate_gains_played`);
5. channel order from inter-mic delays (:func:`~.measure.check_channel_order`);
6. per-mic delay errors against the plane-wave model of the source (:mod:`.delays`),
   with the channels in the order found.

Steps 5 and 6 run on the whole array when it is one device or the source direction is
known; otherwise on each device's mics alone (the alignment of step 2 then also aligns the
source, so delays across devices say nothing about the mics).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mica.array_dsp.steering import far_field_delays_s
from mica.calibration.calfile import Calibration, DeviceOffset, utc_now
from mica.calibration.delays import MIN_DELAY_US, DelayEstimate, estimate_mic_delays
from mica.calibration.devices import DeviceTiming, measure_device_timing
from mica.calibration.measure import (
    CalibrationError,
    ChannelHealth,
    ChannelOrder,
    GainEstimate,
    channel_health,
    check_channel_order,
    estimate_gains,
)
from mica.calibration.played_gain import estimate_gains_played


@dataclass
class CalibrationReport:
    """What :func:`calibrate_samples` found; ``calibration`` is what gets saved."""

    calibration: Calibration
    summary: list[str]
    health: ChannelHealth
    gains: GainEstimate
    order: ChannelOrder | None
    mic_of_channel: np.ndarray
    delays: list[DelayEstimate] = field(default_factory=list)
    devices: list[DeviceTiming] = field(default_factory=list)


def select_mics(x: np.ndarray, capture_channels: int | None, mic_channels: list[int],
                name: str) -> tuple[np.ndarray, list[int]]:
    """The mic rows of a recording ``(n_ch, n)`` (mics only, or every captured channel) and
    their capture channel numbers."""
    n_mics = len(mic_channels)
    if x.shape[0] == n_mics:
        return x, list(mic_channels)
    if capture_channels is not None and x.shape[0] == capture_channels:
        return x[mic_channels], list(mic_channels)
    raise CalibrationError(f"{name}: {x.shape[0]} channel(s); expected {n_mics} (mics only)"
                           + (f" or {capture_channels} (as captured)"
                              if capture_channels else ""))


def _align_devices(x: np.ndarray, fs_hz: float, positions_m: np.ndarray,
                   devices: list[tuple[str, list[int]]], azimuth_deg: float | None,
                   elevation_deg: float | None) -> tuple[np.ndarray, list[DeviceTiming]]:
    """Measure each device against ``devices[0]`` and resample it onto that clock."""
    rows = sorted(r for _, g in devices for r in g)
    if rows != list(range(x.shape[0])):
        raise CalibrationError(f"device groups {[g for _, g in devices]} must cover the "
                               f"{x.shape[0]} mics once each")
    ref_row = devices[0][1][0]
    tau = None
    if azimuth_deg is not None:
        tau = far_field_delays_s(positions_m, azimuth_deg, elevation_deg or 0.0,
                                 reference_channel=ref_row) * fs_hz
    timings = [DeviceTiming(devices[0][0], 0.0, 0.0, 0.0, 0.0, "reference", 0)]
    aligned: dict[int, np.ndarray] = {}
    n_out = x.shape[1]
    for name, group in devices[1:]:
        expected = float(tau[group[0]]) if tau is not None else 0.0
        timing, out = measure_device_timing(x[ref_row], x[group], fs_hz, name, expected)
        timings.append(timing)
        for i, r in enumerate(group):
            aligned[r] = out[i]
        n_out = min(n_out, out.shape[1])
    y = x[:, :n_out].copy()
    for r, sig in aligned.items():
        y[r] = sig[:n_out]
    return y, timings


def calibrate_samples(x_all: np.ndarray, fs_hz: int, positions_m: np.ndarray,
                      mic_channels: list[int], capture_channels: int | None = None,
                      noise: np.ndarray | None = None, azimuth_deg: float | None = None,
                      elevation_deg: float | None = None, min_confidence: float = 0.5,
                      board: str = "", recording: str = "", noise_name: str | None = None,
                      played: np.ndarray | None = None,
                      devices: list[tuple[str, list[int]]] | None = None,
                      min_delay_us: float = MIN_DELAY_US) -> CalibrationReport:
    """Run every procedure (module doc) on ``x_all`` ``(n_ch, n)``.

    ``devices``: for a multi-device array, each device's name and its mics (rows of the
    selected mic signal, the first device is the clock reference). ``played``: the signal a
    loudspeaker played (delays then measured against it). ``noise``: a separate diffuse-noise
    recording for the gains (same channels as ``x_all``).
    """
    positions_m = np.asarray(positions_m, np.float64)
    x, chans = select_mics(np.asarray(x_all, np.float64), capture_channels, mic_channels,
                           recording or "recording")
    n = len(chans)
    timings: list[DeviceTiming] = []
    multi = devices is not None and len(devices) > 1
    if multi:
        assert devices is not None
        x, timings = _align_devices(x, fs_hz, positions_m, devices, azimuth_deg,
                                    elevation_deg)
    health = channel_health(x, fs_hz)
    dead = health.dead
    if noise is not None:
        xn, _ = select_mics(np.asarray(noise, np.float64), capture_channels, mic_channels,
                            noise_name or "noise")
        gains = estimate_gains(xn, fs_hz, exclude=dead)
        gain_method = "diffuse-noise PSD ratio vs array median"
    elif played is not None:
        gains = estimate_gains_played(x, played, fs_hz, exclude=dead)
        gain_method = "H1 transfer from the played signal vs array median"
    else:
        gains = estimate_gains(x, fs_hz, exclude=dead)
        gain_method = "diffuse-noise PSD ratio vs array median"
    blocks = ([g for _, g in devices] if multi and azimuth_deg is None and devices
              else [list(range(n))])
    # order among the live channels of each block; a dead channel keeps its profile mic.
    # found: what the check says; use_map: what is applied (confident blocks only)
    orders: list[ChannelOrder] = []
    found = np.arange(n)
    use_map = np.arange(n)
    for block in blocks:
        live = [i for i in block if i not in dead]
        if len(live) < 2:
            continue
        o = check_channel_order(x[live], fs_hz, positions_m[live], azimuth_deg, elevation_deg)
        orders.append(o)
        found[live] = np.asarray(live)[o.mic_of_channel]
        if not o.is_identity and o.confidence >= min_confidence:
            use_map[live] = found[live]
    reorder = bool(np.any(use_map != np.arange(n)))
    order = min(orders, key=lambda o: o.confidence) if orders else None
    mic_of_channel = use_map
    channel_of_mic = np.argsort(mic_of_channel)
    x_mic = x[channel_of_mic]
    gain_db = [float(gains.correction_db[channel_of_mic[k]]) for k in range(n)]
    excluded = sorted(int(mic_of_channel[i]) for i in dead)
    # per-mic delay errors, in mic order
    delay_s = np.zeros(n)
    delays: list[DelayEstimate] = []
    order_applied = bool(np.array_equal(found, use_map))
    for block in blocks if order_applied else []:  # wrong order: delays would be nonsense
        mics = [m for m in block if m not in excluded]
        if len(mics) < 2:
            continue
        est = estimate_mic_delays(x_mic[mics], fs_hz, positions_m[mics], azimuth_deg,
                                  elevation_deg, played=played, min_delay_us=min_delay_us)
        delays.append(est)
        delay_s[mics] = est.correction_s
    write_channels = reorder and not multi
    cal = Calibration(
        n_mics=n, gain_db=tuple(gain_db), delay_s=tuple(float(d) for d in delay_s),
        excluded_mics=tuple(excluded),
        mic_channels=(tuple(int(chans[channel_of_mic[k]]) for k in range(n))
                      if write_channels else None),
        devices=tuple(DeviceOffset(t.name, t.offset_s, t.drift_ppm) for t in timings),
        board=board, created_utc=utc_now(),
        method=(f"gain: {gain_method} "
                f"({gains.band_hz[0]:.0f}-{gains.band_hz[1]:.0f} Hz); order: GCC-PHAT "
                "delays vs far-field model; dead mic: level/coherence; delay: "
                + ("GCC-PHAT against the played signal" if played is not None
                   else "GCC-PHAT arrival times") + " vs the plane-wave model"
                + ("; devices: offset and drift from the online drift estimator"
                   if multi else "")),
        recording=recording,
        measurements={
            "level_db": [round(float(v), 3) for v in gains.level_db],
            "gain_spread_db": [round(float(v), 3) for v in gains.spread_db],
            "rms_dbfs": [round(float(v), 2) for v in health.rms_dbfs],
            "verdicts": health.verdicts,
            "order_confidence": None if order is None else round(order.confidence, 3),
            "order_rms_us": None if order is None else round(order.rms_us, 2),
            "order_mic_of_channel": [int(v) for v in found],
            "source_azimuth_deg": None if order is None else round(order.azimuth_deg, 1),
            "noise_recording": noise_name,
            "delay_residual_us": _residuals_us(delays, blocks, excluded, n),
            "delay_fit_rms_us": [round(d.rms_us, 2) for d in delays],
            "devices": [{"name": t.name, "drift_ppm": round(t.drift_ppm, 3),
                         "drift_stderr_ppm": (round(t.stderr_ppm, 3)
                                              if np.isfinite(t.stderr_ppm) else None),
                         "offset_samples": round(t.offset_samples, 3), "lock": t.lock}
                        for t in timings],
        })
    summary = _summary(chans, health, gains, gain_method, order, found, reorder,
                       min_confidence, delays, delay_s, timings, multi and not write_channels
                       and reorder)
    if not order_applied:
        summary.append("mic delays: not measured (the channel order found differs and was "
                       "not written)")
    return CalibrationReport(cal, summary, health, gains, order, found,
                             delays, timings)


def _residuals_us(delays: list[DelayEstimate], blocks: list[list[int]], excluded: list[int],
                  n: int) -> list[float]:
    """Measured residual of every mic (us), also where none was written."""
    out = [0.0] * n
    for est, block in zip(delays, [b for b in blocks
                                   if len([m for m in b if m not in excluded]) >= 2],
                          strict=False):
        mics = [m for m in block if m not in excluded]
        for m, r in zip(mics, est.residual_s, strict=True):
            out[m] = round(float(r) * 1e6, 2)
    return out


def _summary(chans: list[int], health: ChannelHealth, gains: GainEstimate, gain_method: str,
             order: ChannelOrder | None, mic_of_channel: np.ndarray, reorder: bool,
             min_confidence: float, delays: list[DelayEstimate], delay_s: np.ndarray,
             timings: list[DeviceTiming], multi_order_unwritten: bool) -> list[str]:
    """Lines a technician reads: one per channel, then the verdicts."""
    lines = ["channel  mic  level    rel.level  gain fix  verdict"]
    for i, ch in enumerate(chans):
        lines.append(f"{ch:7d}  {int(mic_of_channel[i]):3d}  {health.rms_dbfs[i]:6.1f} dBFS "
                     f"{gains.level_db[i]:+6.2f} dB {gains.correction_db[i]:+6.2f} dB  "
                     f"{health.verdicts[i]}")
    dead = health.dead
    lines.append(f"dead mics: {', '.join(f'channel {chans[i]}' for i in dead) or 'none'}")
    spread = float(np.max(gains.spread_db))
    played = gain_method.startswith("H1")
    lines.append(f"gains ({'from the played signal' if played else 'from the noise field'}):"
                 f" max spread of the per-band estimates {spread:.2f} dB"
                 + ((" (strong reflections: move the loudspeaker, or use --noise)" if played
                     else " (noise not diffuse enough: use --noise with a fan or pink noise)")
                    if spread > 3.0 else ""))
    if order is None:
        lines.append("channel order: not checked (fewer than 2 live mics)")
    else:
        found = [int(m) for m in mic_of_channel]
        identity = found == list(range(len(found)))
        verdict = ("matches the profile" if identity else
                   f"DIFFERS from the profile: channels carry mics {found}")
        lines.append(f"channel order: {verdict}; confidence {order.confidence:.2f} "
                     f"(fit {order.rms_us:.1f} us, next {order.rms_next_us:.1f} us), "
                     f"source at {order.azimuth_deg:.0f} deg")
        if not identity and not reorder:
            lines.append(f"  not written: confidence below {min_confidence}")
        if multi_order_unwritten:
            lines.append("  not written: several devices; fix mic_channels / geometry_rows "
                         "in [[capture.devices]]")
        lines.extend(f"  note: {n}" for n in order.notes)
    for est in delays:
        worst = float(np.max(np.abs(est.residual_s))) * 1e6
        what = ("against the played signal" if est.method == "played"
                else f"for the source at {est.azimuth_deg:.0f} deg")
        if est.written:
            lines.append(f"mic delays {what}: largest error {worst:.1f} us (fit RMS "
                         f"{est.rms_us:.1f} us); corrections written")
        else:
            lines.append(f"mic delays {what}: largest error {worst:.1f} us, below "
                         "the threshold: none written")
    if any(delay_s):
        lines.append("  delay_s (us): " + ", ".join(f"mic {m} {d * 1e6:+.1f}"
                                                   for m, d in enumerate(delay_s)))
    for t in timings[1:]:
        se = f" +- {t.stderr_ppm:.1f}" if np.isfinite(t.stderr_ppm) else ""
        lines.append(f"device {t.name}: drift {t.drift_ppm:+.2f}{se} ppm against "
                     f"{timings[0].name}, offset {t.offset_samples:+.1f} samples "
                     f"({t.offset_s * 1e3:+.3f} ms), estimator {t.lock}")
        if t.lock != "locked":
            lines.append("  not locked: record 20 s or more for a drift within 1 ppm")
    return lines
