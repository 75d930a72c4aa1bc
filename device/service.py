"""The daemon: capture thread -> DSP thread -> publisher thread, with bounded queues.

::

    source.read() ──capture──▶ ring (drop-oldest) ──DSP──▶ Enhancer ──▶ out (drop-oldest)
                                                                          │
                           MQTT: audio chunks, telemetry every N s ◀──publisher──┘

The capture thread only reads and enqueues; it never waits on the DSP. The DSP thread
never waits on the network. A capture device that fails is reopened with backoff. Stop
(SIGTERM/SIGINT or end of a file source) drains what is queued, publishes ``offline`` and
returns within about one second.

Privacy mute (``mute`` command, ``capture.muted``, SIGUSR1/SIGUSR2 in ``mica run``): the
capture thread replaces each block's samples by zeros before it enters the ring, so no
stage after it (self-checks, DSP, AEC, MQTT audio, spool, Wyoming, the local audio sink)
sees the microphones. The DSP thread leaves muted blocks out (the adaptive state is kept as
it was before the mute, not decayed on silence) and publishes nothing for them. Inside a
multi-device source the drift aligner keeps comparing the devices' live signals (to stay
locked); only drift numbers leave it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from mica.array_dsp.enhancer import Enhancer
from mica.array_dsp.errors import ConfigError, MicaError
from mica.array_dsp.geometry import ArrayGeometry, geometry_from_list, load_geometry_json
from mica.calibration.calfile import (
    Calibration,
    ChannelCorrector,
    apply_calibration,
    load_calibration,
    nominal_drift_by_device,
)
from mica.device.block import Block, Source
from mica.device.commands import Command, CommandError
from mica.device.config import Config, load_config
from mica.device.echo_stage import (
    EchoReport,
    capture_channels,
    echo_control,
    n_reference_channels,
    split_reference,
)
from mica.device.governor import (
    DspLoadMeter,
    Governor,
    GovernorLoop,
    GovernorSettings,
    LevelChange,
    apply_level,
    board_sensors,
    resolve_levels,
)
from mica.device.ha_discovery import discovery_messages
from mica.device.mqtt_link import AudioChunk, AudioChunker, MqttLink
from mica.device.multi_capture import (
    ROLE_REFERENCE,
    MultiCapture,
    clock_reference_index,
    open_multi_capture,
)
from mica.device.reblock import Reblocker
from mica.device.ring import DropOldestQueue
from mica.device.sd_notify import Notifier, Watchdog
from mica.device.selfcheck import CaptureSelfCheck
from mica.device.sources.factory import open_source
from mica.device.spool import Spool
from mica.device.stage_stats import StageStats
from mica.device.sysfs import BoardSampler
from mica.device.telemetry import ChannelLevels, ProcessSampler, telemetry_payload
from mica.models.postfilter import make_postfilter

log = logging.getLogger(__name__)

REOPEN_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
"""Waits between attempts to reopen a failed capture device (the last one repeats)."""


def mica_version() -> str:
    try:
        return version("mica-array")
    except PackageNotFoundError:
        return "0+unknown"


def resolve_geometry(cfg: Config) -> ArrayGeometry:
    """The array geometry named by the config (file or inline), checked against the channels."""
    if cfg.array.geometry_file:
        geometry = load_geometry_json(cfg.array.geometry_file)
    elif cfg.array.geometry_m:
        geometry = geometry_from_list(cfg.array.geometry_m)
    else:
        raise ConfigError(["array: give array.geometry_file or array.geometry_m "
                           "(the microphone positions)"])
    n_mics = len(cfg.array.mic_channels) or cfg.capture.channels
    if cfg.capture.devices:
        n_mics = sum(len(d.geometry_rows) for d in cfg.capture.devices)
    if geometry.n_channels != n_mics:
        what = "array.mic_channels" if cfg.array.mic_channels else "capture.channels"
        raise ConfigError([f"{what}: {n_mics} microphone channel(s) but the geometry has "
                           f"{geometry.n_channels} row(s)"])
    return geometry


def calibrated_array(cfg: Config, geometry: ArrayGeometry) -> tuple[
        Calibration | None, ArrayGeometry, list[int] | None, ChannelCorrector | None]:
    """Apply ``array.calibration_file`` (and the board profile's nominal gains) to the array.

    Returns the calibration (``None`` without a file), the geometry with measured offsets and
    without excluded mics, the capture channel of each kept mic (``None``: the configured
    order) and the per-channel corrector to run before the Enhancer (``None``: nothing to
    correct).
    """
    from mica.calibration.profiles import ProfileError, list_profiles, load_profile

    nominal = None
    if cfg.device.board in list_profiles():
        try:
            profile = load_profile(cfg.device.board)
        except ProfileError as err:
            raise ConfigError([f"device.board: {err}"]) from err
        if profile.n_mics == geometry.n_channels:
            nominal = profile.nominal_gain_db
    cal = load_calibration(cfg.array.calibration_file) if cfg.array.calibration_file else None
    mics = list(cfg.array.mic_channels) or None
    if cal is None and not any(nominal or ()):
        return None, geometry, mics, None
    arr = apply_calibration(geometry.positions_m, mics, cal, nominal)
    if cal is not None:
        log.info("calibration %s (%s, %s): gains %s dB, excluded mics %s", cal.source,
                 cal.created_utc or "undated", cal.method or "method not given",
                 [round(g, 2) for g in cal.gain_db], list(cal.excluded_mics) or "none")
        geometry = ArrayGeometry(arr.positions_m, fs_hz=geometry.fs_hz,
                                 source=f"{geometry.source} + {cal.source}")
        mics = arr.mic_channels
        if any(c >= cfg.capture.channels for c in mics):
            raise ConfigError([f"array.calibration_file: mic_channels {mics} name a channel "
                               f">= capture.channels = {cfg.capture.channels}"])
    corrector = ChannelCorrector(arr.gains, arr.delays_s, cfg.dsp.fs_hz)
    return cal, geometry, mics, (None if corrector.is_identity else corrector)


def enhancer_options(dsp: Any) -> dict[str, Any]:
    """Enhancer keyword arguments from the ``[dsp]`` config (beamformer, steering, zones)."""
    auto = dsp.steer == "auto"
    opts: dict[str, Any] = {"beamformer": dsp.beamformer, "auto_steer": auto,
                            "track_doa": dsp.doa_enabled or auto,
                            "exclude_dead_channels": dsp.exclude_dead_channels,
                            "steer_azimuth_deg": dsp.steer_azimuth_deg,
                            "steer_elevation_deg": dsp.steer_elevation_deg}
    if dsp.steer.startswith("zone:"):
        azimuth_deg, elevation_deg = dsp.zones[dsp.steer[5:]]
        opts["steer_azimuth_deg"], opts["steer_elevation_deg"] = azimuth_deg, elevation_deg
    return opts


class Service:
    """mica's main job on one array; ``start()``, then ``wait()``, then ``stop()``.

    Args:
        cfg: the checked configuration.
        source_factory: opens the capture source (default: from ``cfg.capture``); called
            again to reopen after a device failure.
        audio_sink: also called (publisher thread) with each enhanced ``(hop,)`` block, e.g.
            to write the audio locally when there is no broker.
        dsp_hook: called in the DSP thread with each hop before it is processed, inside the
            block's timing (a test hook: one that blocks stalls the DSP and the watchdog
            pings stop; one that sleeps loads the DSP budget).
        notifier: the systemd notify socket (default: ``$NOTIFY_SOCKET``, no-op without).
        usb_backend: the pyusb backend the ``[usb]`` poller uses (default: libusb; tests
            pass an emulated array).
    """

    def __init__(self, cfg: Config, source_factory: Callable[[], Source] | None = None,
                 audio_sink: Callable[[np.ndarray], None] | None = None,
                 dsp_hook: Callable[[Block], None] | None = None,
                 notifier: Notifier | None = None, usb_backend: Any = None) -> None:
        self.cfg = cfg
        self.geometry = resolve_geometry(cfg)
        self.calibration, self.geometry, mics, self.corrector = calibrated_array(cfg,
                                                                                 self.geometry)
        if cfg.capture.fs_hz != cfg.dsp.fs_hz:
            raise ConfigError([f"capture.fs_hz: {cfg.capture.fs_hz} Hz capture needs "
                               f"resampling to dsp.fs_hz = {cfg.dsp.fs_hz}, which the daemon "
                               "does not do yet: capture at the DSP rate"])
        self._audio_sink = audio_sink
        self._source_factory = source_factory or (
            (lambda: open_multi_capture(cfg, self._on_drift_event, self.geometry.positions_m,
                                        nominal_drift_by_device(
                                            self.calibration,
                                            [d.alsa_device for d in cfg.capture.devices]),
                                        on_device_event=self._on_capture_device_event))
            if cfg.capture.devices
            else (lambda: open_source(cfg.capture, capture_channels(cfg, mics))))
        self.enhancer = Enhancer(self.geometry.positions_m, fs_hz=cfg.dsp.fs_hz,
                                 hop_samples=cfg.dsp.hop_samples,
                                 **enhancer_options(cfg.dsp),
                                 echo=echo_control(cfg, self.geometry.n_channels),
                                 sound_speed_m_s=cfg.dsp.sound_speed_m_s,
                                 postfilter=make_postfilter(
                                     cfg.dsp.denoiser, cfg.dsp.hop_samples + 1,
                                     cfg.dsp.denoiser_bundle or None,
                                     n_mics=self.geometry.n_channels))
        self.doa_azimuth_deg: float | None = None
        self.echo_report = EchoReport(self.enhancer.echo)  # [echo]: telemetry, events
        self._n_refs = n_reference_channels(cfg)  # after the mics in each block (0: no echo)
        self._speech_active = False
        self._speech_start_ns: int | None = None
        self._dead_channels: tuple[int, ...] = ()
        self._vad_blocks = self._vad_speech_blocks = 0
        self.ring: DropOldestQueue[Block] = DropOldestQueue(cfg.service.ring_blocks)
        self.out: DropOldestQueue[Block] = DropOldestQueue(cfg.service.out_queue_blocks)
        self.dsp_stats = StageStats(window=1000)
        self.sampler = ProcessSampler()
        self.link = self._make_link(cfg) if cfg.mqtt.enabled else None
        self.config_path: str | None = None
        """The config file, for the ``reload`` command (set by ``mica run``)."""
        self.muted = bool(getattr(cfg.capture, "muted", False))
        """Privacy mute (``mute`` command, ``capture.muted``, SIGUSR1): audio zeroed at
        capture, nothing processed or published; see :meth:`set_muted`."""
        self.muted_blocks_total = 0
        """Capture blocks zeroed by the mute (capture thread)."""
        self.audio_on = cfg.mqtt.audio_enabled
        self._steer_requests: list[tuple[float, float, Callable[..., None]]] = []
        self._steer_lock = threading.Lock()
        self.channel_levels = ChannelLevels(self.geometry.n_channels)
        self.selfcheck = CaptureSelfCheck(self.geometry.positions_m, cfg.dsp.fs_hz,
                                          cfg.dsp.hop_samples, mics,
                                          reference_rows(cfg, mics), self._on_selfcheck_event)
        self.wyoming = None  # the optional Wyoming mic server (mqtt.wyoming_uri)
        if cfg.mqtt.wyoming_uri:
            from mica.device.wyoming_mic import WyomingMicServer

            self.wyoming = WyomingMicServer(cfg.mqtt.wyoming_uri, cfg.dsp.fs_hz, cfg.device.id)
        self.board = BoardSampler(spool_dir=cfg.mqtt.spool_dir or None)
        self.usb_poller = None  # the XMOS array's own DOA/VAD ([usb], device/usb_poller.py)
        if cfg.usb.poll_onboard or cfg.usb.raw_channels:
            from mica.device.usb_poller import OnboardPoller

            self.usb_poller = OnboardPoller(
                cfg.usb.poll_interval_s, cfg.usb.poll_onboard, cfg.usb.raw_channels,
                cfg.usb.device or None, cfg.usb.timeout_ms, cfg.usb.reconnect_s,
                backend=usb_backend)
        self._stop = threading.Event()
        self._stop_requested_at: float | None = None
        self._finished = threading.Event()
        self._threads: list[threading.Thread] = []
        self._source: Source | None = None
        self._t_start = time.monotonic()
        self.blocks_total = 0
        self.xruns_total = 0
        self.device_errors_total = 0
        self.downtime_seconds_total = 0.0
        self._lost_at: float | None = None
        self._device_name = (cfg.capture.alsa_device if cfg.capture.source == "alsa"
                             else cfg.capture.wav_path)
        if cfg.capture.devices:  # a multi-device array stops with its reference (the clock)
            self._device_name = cfg.capture.devices[
                clock_reference_index(cfg.capture.devices)].alsa_device
        self.chunks_published = 0
        self.fault: BaseException | None = None
        self._dsp_hook = dsp_hook
        self.notifier = notifier or Notifier()
        self.watchdog = Watchdog(self.notifier)
        self.startup_seconds: float | None = None
        self.ready = threading.Event()
        gcfg = cfg.governor
        levels = resolve_levels(gcfg.levels, best=getattr(self.enhancer, "beamformer", None))
        self.governor = Governor(levels, GovernorSettings(
            temp_high_c=gcfg.temp_high_c, temp_hysteresis_c=gcfg.temp_hysteresis_c,
            dsp_budget=gcfg.dsp_budget, dsp_recover=gcfg.dsp_recover,
            min_dwell_s=gcfg.min_dwell_s, down_dwell_s=gcfg.down_dwell_s))
        self._load_meter = DspLoadMeter(self.dsp_stats, self.governor.settings.min_blocks)
        temperature, throttled = board_sensors(gcfg.root, gcfg.vcgencmd or None)
        self.governor_loop = GovernorLoop(
            self.governor, temperature, throttled,
            lambda: self._load_meter.load(cfg.dsp.hop_samples / cfg.dsp.fs_hz),
            self._on_quality_change, gcfg.interval_s)

    # ------------------------------------------------------------------ lifecycle

    @property
    def latency_s(self) -> float:
        """Algorithmic latency, sound in to sound out: one hop of block buffering plus the
        chain's stream delay (``out[n] = in[n - stream_delay]``); DSP time comes on top."""
        return (self.cfg.dsp.hop_samples + self.enhancer.latency_samples) / self.cfg.dsp.fs_hz

    @property
    def info(self) -> dict[str, Any]:
        """The retained ``info`` message."""
        cfg = self.cfg
        return {
            "version": mica_version(),
            "device_id": cfg.device.id,
            "board": cfg.device.board,
            "calibration": self.calibration.info() if self.calibration else None,
            "channels": self.geometry.n_channels,
            "capture": {"source": cfg.capture.source, "device": cfg.capture.alsa_device
                        if cfg.capture.source == "alsa" else cfg.capture.wav_path,
                        "fs_hz": cfg.capture.fs_hz, "format": cfg.capture.format,
                        "period_frames": cfg.capture.period_frames},
            "geometry_m": self.geometry.positions_m.round(5).tolist(),
            "fs_hz": cfg.dsp.fs_hz,
            "hop_samples": cfg.dsp.hop_samples,
            "denoiser": {"kind": cfg.dsp.denoiser,
                         "version": getattr(self.enhancer.postfilter, "version", None)},
            "latency_seconds": self.latency_s,
            "stream_delay_samples": self.enhancer.latency_samples,
            "steer_azimuth_deg": self.enhancer.steer_azimuth_deg,
            "steer_elevation_deg": self.enhancer.steer_elevation_deg,
            "streams": [cfg.mqtt.audio_stream] if getattr(self, "audio_on", False) else [],
            "muted": getattr(self, "muted", False),
            "config_hash": cfg.config_hash,
            "quality_level": self.governor.level_name,
            "quality_levels": list(self.governor.levels),
            "startup_seconds": self.startup_seconds,
        }

    def start(self) -> None:
        """Compile the kernels, open the source, connect, and start the threads."""
        t0 = time.monotonic()
        self.notifier.status("starting: compiling or loading the DSP kernels")
        self.enhancer.warmup()
        log.info("DSP ready: %d mics, hop %d, algorithmic latency %.1f ms (kernels ready in "
                 "%.2f s)", self.geometry.n_channels, self.cfg.dsp.hop_samples,
                 1e3 * self.latency_s, time.monotonic() - t0)
        try:
            self._source = self._source_factory()
        except MicaError as err:  # e.g. a USB array not plugged in yet: keep trying
            self._device_lost(str(err))
        self.startup_seconds = _process_age_s(self.sampler, t0)
        if self.link is not None:
            self.link.set_info(self.info)
            self.link.start()
        if self.wyoming is not None:
            self.wyoming.start()
        self._t_start = time.monotonic()
        for name, target in (("mica-capture", self._capture_loop), ("mica-dsp", self._dsp_loop),
                             ("mica-publish", self._publish_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.cfg.governor.enabled:
            self.governor_loop.start()
        if self.usb_poller is not None:
            self.usb_poller.start()
        self.selfcheck.start()
        if self._source is not None:
            self._announce_ready()

    def _announce_ready(self) -> None:
        """``READY=1`` once: kernels are compiled or loaded and the source is open."""
        if not self.ready.is_set():
            self.ready.set()
            log.info("ready %.2f s after process start", self.startup_seconds or 0.0)
            self.notifier.ready(self._status_line())
        else:
            self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        """The human ``STATUS=`` line for systemctl status."""
        if self._lost_at is not None:
            return f"degraded: capture device {self._device_name} lost, reopening"
        return (f"capturing: {self.geometry.n_channels} mics at {self.cfg.dsp.fs_hz} Hz, "
                f"quality {self.governor.level_name}")

    def _on_quality_change(self, change: LevelChange) -> None:
        """Governor thread: announce a level change; the DSP thread applies it."""
        self._load_meter.restart()
        if self.link is not None:
            self.link.publish_event("quality", change.event())
            self.link.set_info(self.info)
        self.notifier.status(self._status_line())

    def set_quality_level(self, index: int, reason: str = "requested") -> None:
        """Force quality level ``index`` (0 = best), e.g. from a command."""
        change = self.governor.set_level(index, reason)
        if change is not None:
            self._on_quality_change(change)

    def set_muted(self, muted: bool, by: str = "requested") -> None:
        """Privacy mute on or off, at once and without a restart (safe from a signal handler
        and paho's thread). Muted, the capture thread zeroes every block it hands on, the DSP
        leaves them out and no audio leaves the board; ``muted`` in info and telemetry."""
        muted = bool(muted)
        changed = muted != self.muted
        self.muted = muted
        log.info("audio %s by %s%s", "muted" if muted else "unmuted", by,
                 "" if changed else " (already)")
        if changed and self.link is not None:
            self.link.set_info(self.info)

    def request_stop(self) -> None:
        """Ask every thread to finish (safe from a signal handler)."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        self._stop.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until a stop is requested or a finite source is fully published."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not (self._stop.is_set() or self._finished.is_set()):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._stop.wait(0.1 if left is None else min(0.1, left))
        return True

    def stop(self, timeout_s: float = 1.0) -> None:
        """Drain the queues, publish ``offline`` and join the threads (within ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        self.request_stop()
        self.notifier.stopping()
        self.governor_loop.stop()
        if self.usb_poller is not None:
            self.usb_poller.stop(timeout_s=0.2)
        self.selfcheck.stop()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic() - 0.3))
            if thread.is_alive():
                log.warning("thread %s did not stop in time", thread.name)
        if self.wyoming is not None:
            self.wyoming.stop()
        if self.link is not None:
            self.link.stop(timeout_s=max(0.1, deadline - time.monotonic()))
        assert self._stop_requested_at is not None
        log.info("stopped in %.3f s: %d blocks, %d xruns, %d dropped at capture, %d dropped "
                 "at output", time.monotonic() - self._stop_requested_at, self.blocks_total,
                 self.xruns_total, self.ring.dropped_total, self.out.dropped_total)

    # ------------------------------------------------------------------ threads

    def _capture_loop(self) -> None:
        """Read blocks, enqueue them; reopen the device with backoff when it fails. The first
        block after a reopen carries the frames missed while the device was gone as its
        ``gap_frames`` (from the capture times), like a block after an overrun."""
        attempt = 0
        next_t_ns: int | None = None  # capture time the next block would have had
        reopened = False
        try:
            while not self._stop.is_set():
                source = self._source
                if source is None:
                    self._reopen(attempt)
                    attempt += 1
                    reopened = self._source is not None
                    continue
                try:
                    block = source.read()
                except MicaError as err:
                    self._device_lost(str(err))
                    continue
                if block is None:
                    log.info("capture source ended")
                    break
                attempt = 0
                if reopened and next_t_ns is not None:
                    lost = round((block.t_capture_ns - next_t_ns) * self.cfg.capture.fs_hz / 1e9)
                    block = dataclasses.replace(block, gap_frames=block.gap_frames + max(0, lost))
                reopened = False
                next_t_ns = (block.t_capture_ns
                             + block.n_samples * 1_000_000_000 // self.cfg.capture.fs_hz)
                if self.muted:  # privacy: the microphones go no further than this thread
                    block = dataclasses.replace(block, samples=np.zeros_like(block.samples),
                                                muted=True)
                    self.muted_blocks_total += 1
                self.ring.put(block)
        finally:
            self._close_source()
            self.ring.close()

    def _device_lost(self, reason: str) -> None:
        """Count and announce a failed device (``event/device_lost``), then close it."""
        self.device_errors_total += 1
        self._lost_at = time.monotonic()
        log.error("capture device lost: %s; reopening with backoff", reason)
        self._close_source()
        self.notifier.status(self._status_line())
        if self.link is not None:
            self.link.publish_event("device_lost", {"device": self._device_name,
                                                    "reason": reason,
                                                    "t_ns": time.monotonic_ns()})

    def _reopen(self, attempt: int) -> None:
        """One reopen attempt after the backoff wait; ``event/device_back`` with the downtime."""
        wait_s = REOPEN_BACKOFF_S[min(attempt, len(REOPEN_BACKOFF_S) - 1)]
        if self._stop.wait(wait_s):
            return
        if self.enhancer.echo is not None:  # a new capture set: a loopback missing from it
            self.enhancer.echo.hold(False)  # holds the canceller again (device_lost)
        try:
            self._source = self._source_factory()
        except MicaError as err:
            log.warning("reopen attempt %d failed: %s", attempt + 1, err)
            return
        downtime_s = time.monotonic() - (self._lost_at or time.monotonic())
        self.downtime_seconds_total += downtime_s
        self._lost_at = None
        log.info("capture device back after %.2f s (%d attempt(s))", downtime_s, attempt + 1)
        self._announce_ready()
        if self.link is not None:
            self.link.publish_event("device_back", {"device": self._device_name,
                                                    "downtime_seconds": round(downtime_s, 3),
                                                    "attempts": attempt + 1,
                                                    "t_ns": time.monotonic_ns()})

    def _close_source(self) -> None:
        if self._source is not None:
            source, self._source = self._source, None
            self.xruns_total += source.xruns_total
            try:
                source.close()
            except Exception:  # closing a broken device must not take the thread down
                log.exception("closing the capture source failed")

    def _dsp_loop(self) -> None:
        """Re-cut to hops, enhance, time each block, enqueue the result."""
        hop = self.cfg.dsp.hop_samples
        n_mics = self.geometry.n_channels
        reblocker = Reblocker(n_mics + self._n_refs, hop, self.cfg.dsp.fs_hz)
        audio_s = hop / self.cfg.dsp.fs_hz
        applied = 0  # the governor's level the enhancer runs (0: as constructed, the best)
        apply_level(self.enhancer, self.governor.levels[0])
        try:
            while True:
                block = self.ring.get(timeout_s=0.1)
                if self._steer_requests:
                    self._apply_steer()
                if block is None:
                    if self.ring.closed:
                        break
                    if self._lost_at is not None:  # no device: waiting for it is progress
                        self.watchdog.progress()
                    continue
                for hop_block in reblocker.push(block):
                    if block.muted:  # zeros: keep the adaptive state as it was, emit nothing
                        if self._dsp_hook is not None:
                            self._dsp_hook(hop_block)
                        self.watchdog.progress()
                        continue
                    hop_block, reference = split_reference(hop_block, n_mics)
                    if self.governor.level != applied:  # between blocks, in this thread
                        applied = self.governor.level
                        apply_level(self.enhancer, self.governor.levels[applied])
                    t0 = time.perf_counter()
                    if self._dsp_hook is not None:  # timed: a slow hook is a slow DSP
                        self._dsp_hook(hop_block)
                    x = self.selfcheck.process(hop_block.samples)  # checks; DC blocker
                    x = x if self.corrector is None else self.corrector.process(x)
                    y = self.enhancer.process(x, reference=reference)
                    self._dsp_events(hop_block.t_capture_ns)
                    self.dsp_stats.record(time.perf_counter() - t0, audio_s)
                    self.channel_levels.add(hop_block.samples)
                    self.out.put(Block(y[np.newaxis, :].copy(), hop_block.seq,
                                       hop_block.t_capture_ns, hop_block.gap_frames))
                    self.blocks_total += 1
                    self.watchdog.progress()
        except BaseException as err:  # a DSP bug: log it loudly, stop the service
            self.fault = err
            log.exception("DSP thread failed")
            self._stop.set()
        finally:
            self.out.close()

    def _publish_loop(self) -> None:
        """Send audio chunks as they fill and telemetry every interval; drain at the end."""
        cfg = self.cfg.mqtt
        chunk_samples = cfg.audio_chunk_ms * self.cfg.dsp.fs_hz // 1000
        chunker = AudioChunker(chunk_samples, self.cfg.dsp.fs_hz)
        next_telemetry = time.monotonic() + cfg.telemetry_interval_s
        telemetry_seq = 0
        while True:
            block = self.out.get(timeout_s=0.05)
            if block is not None and self._audio_sink is not None:
                self._audio_sink(block.samples[0])
            if block is not None and self._audio_wanted():
                for chunk in chunker.push(block.samples[0], block.t_capture_ns, block.seq):
                    self._publish_chunk(chunk)
            now = time.monotonic()
            if now >= next_telemetry and self.link is not None:
                payload = self.telemetry(telemetry_seq)
                if telemetry_seq == 0 and cfg.ha_discovery:
                    self.link.set_retained(discovery_messages(self.cfg, payload, self.info))
                self.link.publish_telemetry(payload)
                telemetry_seq += 1
                next_telemetry = now + cfg.telemetry_interval_s
            if block is None and self.out.closed:
                break
        last = chunker.flush()
        if last is not None and self._audio_wanted():
            self._publish_chunk(last)
        if self.link is not None:
            self.link.publish_telemetry(self.telemetry(telemetry_seq))
        self._finished.set()

    def _audio_wanted(self) -> bool:
        """Whether enhanced audio leaves the board now: MQTT audio on or a Wyoming server,
        and not muted (``mute`` stops both)."""
        return not self.muted and (self.wyoming is not None
                                    or (self.link is not None and self.audio_on))

    def _publish_chunk(self, chunk: AudioChunk) -> None:
        if self.wyoming is not None:
            self.wyoming.push(chunk.pcm, chunk.t_capture_ns)
        if self.link is not None and self.audio_on:
            self.link.publish_audio(chunk.pcm, chunk.seq, chunk.t_capture_ns,
                                    self.cfg.mqtt.audio_stream, self._audio_properties())
        self.chunks_published += 1

    # ------------------------------------------------------------------ DOA / VAD (issue 12)

    def _dsp_events(self, t_capture_ns: int) -> None:
        """DSP thread, after each block: ``event/speech_start``/``speech_stop``,
        ``event/doa`` (the tracked talker moved past the hysteresis) and
        ``event/channels`` (a microphone was left out or taken back)."""
        enh = self.enhancer
        doa = enh.doa_azimuth_deg
        self.doa_azimuth_deg = None if doa != doa else doa  # read by _audio_properties
        self._vad_blocks += 1
        self._vad_speech_blocks += int(enh.speech_active)
        events: list[tuple[str, dict[str, Any]]] = []
        if enh.speech_active != self._speech_active:
            self._speech_active = enh.speech_active
            if enh.speech_active:
                self._speech_start_ns = t_capture_ns
                events.append(("speech_start", {"t_capture_ns": t_capture_ns}))
            else:
                start = self._speech_start_ns or t_capture_ns
                events.append(("speech_stop", {"t_capture_ns": t_capture_ns,
                                               "t_start_ns": start,
                                               "duration_s": (t_capture_ns - start) / 1e9}))
        if enh.doa_changed and self.doa_azimuth_deg is not None:
            events.append(("doa", {"t_capture_ns": t_capture_ns,
                                   "azimuth_deg": round(self.doa_azimuth_deg, 2),
                                   "steer_azimuth_deg": round(enh.steer_azimuth_deg, 2),
                                   "auto_steer": enh.auto_steer}))
        dead = enh.dead_channels
        if dead != self._dead_channels:
            self._dead_channels = dead
            events.append(("channels", {"t_capture_ns": t_capture_ns,
                                        "dead_channels": list(dead),
                                        "active_channels": list(enh.active_channels)}))
        events += self.echo_report.events(t_capture_ns)
        if self.link is not None:
            for kind, payload in events:
                self.link.publish_event(kind, payload)

    def _dsp_telemetry(self) -> dict[str, Any]:
        """DOA, voice activity and microphones in use (telemetry fields, docs/mqtt.md)."""
        enh = self.enhancer
        duty = self._vad_speech_blocks / self._vad_blocks if self._vad_blocks else 0.0
        self._vad_blocks = self._vad_speech_blocks = 0
        return {"beamformer": enh.beamformer,
                "steer_azimuth_deg": round(enh.steer_azimuth_deg, 2),
                "doa_azimuth_deg": (None if self.doa_azimuth_deg is None
                                    else round(self.doa_azimuth_deg, 2)),
                "speech_active": bool(enh.speech_active),
                "vad_duty": round(duty, 4),
                "active_channels": list(enh.active_channels),
                "dead_channels": list(enh.dead_channels)}

    def telemetry(self, seq: int) -> dict[str, Any]:
        """One telemetry message (see docs/mqtt.md for the fields and units)."""
        source = self._source
        return telemetry_payload(
            seq=seq,
            uptime_seconds=time.monotonic() - self._t_start,
            process=self.sampler.sample(),
            dsp=self.dsp_stats,
            xruns_total=self.xruns_total + (source.xruns_total if source else 0),
            dropped_blocks_total=self.ring.dropped_total + self.out.dropped_total,
            dropped_audio_total=self.link.dropped_audio_total if self.link else 0,
            blocks_total=self.blocks_total,
            latency_seconds=self.latency_s,
            device_errors_total=self.device_errors_total,
            **self._dsp_telemetry(),
            device_downtime_seconds_total=round(self.downtime_seconds_total
                                                + (time.monotonic() - self._lost_at
                                                   if self._lost_at else 0.0), 3),
            device_up=int(self._lost_at is None),
            quality_level=self.governor.level_name,
            quality_level_index=self.governor.level,
            **self._mqtt_telemetry(),
            **self._drift_telemetry(),
            **self.echo_report.telemetry(),
            **self.selfcheck.telemetry(),
            **(self.usb_poller.telemetry(self.muted) if self.usb_poller is not None else {}),
        )

    # ------------------------------------------------------------------ multi-device drift

    def _drift_telemetry(self) -> dict[str, Any]:
        """``drift``: per capture device drift_ppm, offset and lock state (multi-device)."""
        source = self._source
        if not isinstance(source, MultiCapture):
            return {}
        return {"drift": source.drift_status()}

    def _on_selfcheck_event(self, kind: str, payload: dict[str, Any]) -> None:
        """``event/channel_health`` or ``event/channel_order`` (device/selfcheck.py)."""
        if self.link is not None:
            self.link.publish_event(kind, payload)

    def _on_capture_device_event(self, kind: str, payload: dict[str, Any]) -> None:
        """One device of a multi-device array lost or back (the array goes on without it):
        ``event/device_lost`` / ``event/device_back`` naming it; counted as a device error.
        The echo reference device (``"role": "reference"``) lost holds the echo canceller
        (its reference rows are zeros while the loudspeaker may play), back releases it
        (:meth:`~mica.array_dsp.echo.EchoControl.hold`: a flag the DSP thread reads)."""
        if kind == "device_lost":
            self.device_errors_total += 1
        echo = self.enhancer.echo
        if echo is not None and payload.get("role") == ROLE_REFERENCE:
            echo.hold(kind == "device_lost")
        if self.link is not None:
            self.link.publish_event(kind, payload)

    def _on_drift_event(self, event: dict[str, Any]) -> None:
        """A drift estimate jumped, locked or re-locked: ``event/drift``."""
        if self.link is not None:
            self.link.publish_event("drift", event)

    # ------------------------------------------------------------------ MQTT extras

    def _make_link(self, cfg: Config) -> MqttLink:
        """The MQTT link with its spool (on disk under ``mqtt.spool_dir/<device id>``)."""
        spool = None
        if cfg.mqtt.spool_dir and cfg.mqtt.spool_max_bytes > 0:
            spool = Spool(f"{cfg.mqtt.spool_dir}/{cfg.device.id}", cfg.mqtt.spool_max_bytes)
        return MqttLink(cfg, spool=spool, command_handler=self._on_command)

    def _audio_properties(self) -> dict[str, Any]:
        """Extra MQTT 5 user properties of each audio chunk."""
        props: dict[str, Any] = {"steer_azimuth_deg": round(self.enhancer.steer_azimuth_deg, 2)}
        props.update(self.echo_report.audio_properties())  # playback_active, with [echo]
        doa = getattr(self, "doa_azimuth_deg", None)  # set by the DOA tracker when present
        if doa is not None:
            props["doa_azimuth_deg"] = round(float(doa), 2)
        return props

    def _mqtt_telemetry(self) -> dict[str, Any]:
        """Board health, channel levels, mute/audio state and the link's counters."""
        fields: dict[str, Any] = self.board.sample()
        fields.pop("load1", None)  # telemetry_payload takes it from the process sampler
        fields.update(self.channel_levels.take())
        fields["muted"] = self.muted
        fields["audio_enabled"] = self.audio_on
        if self.link is not None:
            fields.update(self.link.stats())
        return fields

    def _apply_steer(self) -> None:
        """DSP thread, between blocks: point the beam as the ``steer`` commands asked."""
        with self._steer_lock:
            requests, self._steer_requests = self._steer_requests, []
        for azimuth_deg, elevation_deg, reply in requests:
            try:
                self.enhancer.steer(azimuth_deg, elevation_deg)
            except (MicaError, ValueError) as err:
                reply(error=CommandError("failed", str(err)))
                continue
            if isinstance(self._source, MultiCapture):  # align on the new look direction
                self._source.aligner.set_look_direction(
                    self.geometry.positions_m, azimuth_deg, elevation_deg,
                    self.cfg.dsp.sound_speed_m_s,
                    mask=getattr(self.cfg.dsp, "steer", "fixed") != "auto")  # as at open
            reply({"steer_azimuth_deg": self.enhancer.steer_azimuth_deg,
                   "steer_elevation_deg": self.enhancer.steer_elevation_deg})
        if requests and self.link is not None:
            self.link.set_info(self.info)

    def _on_command(self, command: Command, reply: Callable[..., None]) -> None:
        """paho's thread: apply a validated command (docs/mqtt.md, "Commands")."""
        name, args = command.name, command.args
        if name in ("mute", "unmute"):
            self.set_muted(name == "mute", "command")
            reply({"muted": self.muted})
        elif name == "audio":
            self.audio_on = bool(args["enabled"])
            reply({"audio_enabled": self.audio_on, "muted": self.muted})
        elif name == "steer":
            with self._steer_lock:
                self._steer_requests.append((args["azimuth_deg"], args["elevation_deg"], reply))
            return  # answered by the DSP thread once applied
        elif name == "quality":
            level = args["level"]
            levels = self.governor.levels
            index = level if isinstance(level, int) else (
                levels.index(level) if level in levels else -1)
            if not 0 <= index < len(levels):
                reply(error=CommandError("bad_payload", f"unknown quality level {level!r}; "
                                         f"this device has {levels}"))
                return
            self.set_quality_level(index, "command")
            reply({"quality_level": self.governor.level_name,
                   "quality_level_index": self.governor.level})
        elif name == "zone":
            zones = self.cfg.dsp.zones
            if args["zone"] not in zones:
                known = ", ".join(sorted(zones)) or "none configured in [dsp.zones]"
                reply(error=CommandError("bad_payload", f"unknown zone {args['zone']!r}; "
                                         f"zones: {known}"))
                return
            azimuth_deg, elevation_deg = zones[args["zone"]]
            zone = args["zone"]

            def zone_reply(result: dict[str, Any] | None = None, **kw: Any) -> None:
                reply({"zone": zone, **result} if result is not None else None, **kw)

            with self._steer_lock:  # the beam moves in the DSP thread, as for `steer`
                self._steer_requests.append((float(azimuth_deg), float(elevation_deg),
                                             zone_reply))
            return
        elif name == "reload":
            try:
                reply(self._reload())
            except CommandError as err:
                reply(error=err)
        else:
            reply(error=CommandError("not_supported", f"command {name!r} not supported"))
        if self.link is not None:
            self.link.set_info(self.info)

    def _reload(self) -> dict[str, Any]:
        """Re-read the config file; apply the look direction and the audio switch now, and
        list the sections whose other changes need a restart. Raises :class:`CommandError`
        for a missing or bad file (the running config stays)."""
        if not self.config_path:
            raise CommandError("not_supported", "started without a config file")
        try:
            new = load_config(self.config_path)
        except ConfigError as err:
            raise CommandError("failed", f"config not reloaded: {err}") from err
        with self._steer_lock:
            self._steer_requests.append((new.dsp.steer_azimuth_deg,
                                         new.dsp.steer_elevation_deg, lambda *a, **k: None))
        self.audio_on = new.mqtt.audio_enabled
        live = {"dsp": {"steer_azimuth_deg", "steer_elevation_deg"},
                "mqtt": {"audio_enabled"}}
        restart = []
        for section in dataclasses.fields(new):
            old_keys = dataclasses.asdict(getattr(self.cfg, section.name))
            new_keys = dataclasses.asdict(getattr(new, section.name))
            changed = {k for k in new_keys if new_keys[k] != old_keys.get(k)}
            if changed - live.get(section.name, set()):
                restart.append(section.name)
        return {"applied": ["dsp.steer_azimuth_deg", "dsp.steer_elevation_deg",
                            "mqtt.audio_enabled"], "restart_required": restart,
                "config_hash": new.config_hash}


def reference_rows(cfg: Config, mics: list[int] | None) -> list[int]:
    """Rows of the delivered blocks that are playback-reference channels
    (``array.reference_channels``, when the config has it): the self-checks leave them out."""
    refs = set(getattr(cfg.array, "reference_channels", None) or ())
    order = mics if mics else list(range(cfg.capture.channels))
    return [row for row, ch in enumerate(order) if ch in refs]


def _process_age_s(sampler: ProcessSampler, fallback_t0: float) -> float:
    """Seconds since this process started (/proc), or since ``fallback_t0`` (monotonic)."""
    age = sampler.sample().uptime_s
    return round(age if age is not None else time.monotonic() - fallback_t0, 3)
