"""Open the capture source a :class:`CaptureConfig` describes."""

from __future__ import annotations

import logging

from mica.device.block import Source
from mica.device.config import CaptureConfig

log = logging.getLogger(__name__)


def open_source(cfg: CaptureConfig, mic_channels: list[int] | None = None) -> Source:
    """Open an :class:`AlsaSource` (``cfg.source == "alsa"``) or a :class:`WavSource`.

    Args:
        cfg: the ``[capture]`` section.
        mic_channels: captured channels that are microphones, in geometry order (the config's
            ``array.mic_channels``); ``None`` or empty delivers every channel in order.

    Raises:
        DeviceError: the ALSA device cannot be opened or refuses the parameters.
        AudioFileError: the file cannot be read or lacks a listed channel.
        ValueError: an unknown ``cfg.source``.
    """
    select = list(mic_channels) if mic_channels else None
    if cfg.source == "alsa":
        from mica.device.sources.alsa import AlsaSource

        return AlsaSource(cfg.alsa_device, channels=cfg.channels, fs_hz=cfg.fs_hz,
                          format=cfg.format, period_frames=cfg.period_frames,
                          periods=cfg.periods, select=select)
    if cfg.source == "wav":
        from mica.device.sources.wav import WavSource

        src = WavSource(cfg.wav_path, period_frames=cfg.period_frames,
                        realtime=cfg.wav_realtime, loop=cfg.wav_loop, channels=select)
        if src.fs_hz != cfg.fs_hz:
            log.info("wav source %s: file rate %d Hz, capture.fs_hz %d Hz: the file's rate "
                     "is used", cfg.wav_path, src.fs_hz, cfg.fs_hz)
        if select is None and src.n_channels != cfg.channels:
            log.warning("wav source %s: file has %d channels, capture.channels = %d",
                        cfg.wav_path, src.n_channels, cfg.channels)
        return src
    raise ValueError(f"unknown capture source {cfg.source!r} (alsa or wav)")
