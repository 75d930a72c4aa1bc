"""The daemon's side of echo cancellation: which capture channels are the playback
reference, the :class:`~mica.array_dsp.echo.EchoControl` the ``[echo]`` section describes,
and what it reports (telemetry ``echo``, ``event/echo_path``, the ``playback_active``
audio property; docs/mqtt.md).

Capture layout: with ``[echo] enabled``, the source delivers the microphones
(``array.mic_channels``, geometry order) followed by the reference channels
(``array.reference_channels``); :func:`split_reference` cuts each hop into the two. A
multi-device array (``[[capture.devices]]``) delivers the same layout: every microphone in
geometry row order, then every channel of its ``role = "reference"`` device (the playback
loopback on its own clock, resampled onto the array's by
:class:`~mica.device.multi_capture.MultiCapture`); lost, those channels are zeros.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mica.array_dsp.aec import AecParams
from mica.array_dsp.echo import EchoControl, EchoParams
from mica.array_dsp.echo_delay import DelayParams
from mica.array_dsp.res import ResParams
from mica.device.block import Block


def reference_device(cfg: Any) -> Any | None:
    """The ``[[capture.devices]]`` table with ``role = "reference"`` (``None``: none)."""
    for dev in getattr(cfg.capture, "devices", ()):
        if getattr(dev, "role", "mics") == "reference":
            return dev
    return None


def n_reference_channels(cfg: Any) -> int:
    """Playback reference channels the source delivers after the microphones (0: none or
    ``[echo]`` off): ``array.reference_channels``, or every channel of the reference
    device."""
    if not cfg.echo.enabled:
        return 0
    dev = reference_device(cfg)
    if getattr(cfg.capture, "devices", None):
        return 0 if dev is None else int(dev.channels)
    return len(cfg.array.reference_channels)


def echo_enabled(cfg: Any) -> bool:
    """``[echo] enabled`` and reference channels to feed it."""
    return n_reference_channels(cfg) > 0


def echo_control(cfg: Any, n_mics: int) -> EchoControl | None:
    """The echo stage for ``n_mics`` microphones (``None`` when ``[echo]`` is off)."""
    if not echo_enabled(cfg):
        return None
    e = cfg.echo
    params = EchoParams(
        aec=AecParams(tail_ms=e.tail_ms, bootstrap_s=e.fast_start_s),
        delay=DelayParams(max_delay_ms=e.max_delay_ms) if e.max_delay_ms > 0 else None,
        res=ResParams(floor_db=e.res_floor_db) if e.res else None,
    )
    return EchoControl(
        n_mics, n_reference_channels(cfg), cfg.dsp.hop_samples, cfg.dsp.fs_hz, params
    )


def capture_channels(cfg: Any, mics: list[int] | None) -> list[int] | None:
    """Channels the source delivers: the microphones, then (echo on) the references."""
    if not echo_enabled(cfg):
        return mics
    return list(mics or range(cfg.capture.channels)) + list(cfg.array.reference_channels)


def split_reference(block: Block, n_mics: int) -> tuple[Block, np.ndarray | None]:
    """``(microphone block, (n_ref, n) reference or None)`` of one delivered hop (views)."""
    if block.samples.shape[0] == n_mics:
        return block, None
    mic = Block(block.samples[:n_mics], block.seq, block.t_capture_ns, block.gap_frames)
    return mic, block.samples[n_mics:]


class EchoReport:
    """Telemetry, events and audio properties of an echo stage (or of none)."""

    def __init__(self, echo: EchoControl | None) -> None:
        self.echo = echo

    def events(self, t_capture_ns: int) -> list[tuple[str, dict[str, Any]]]:
        """``event/echo_path`` when the last block changed the echo path or the delay."""
        echo = self.echo
        if echo is None or not echo.path_changed:
            return []
        delay = echo.delay_ms
        return [
            (
                "echo_path",
                {
                    "t_capture_ns": t_capture_ns,
                    "reason": echo.change_reason,
                    "delay_ms": None if delay is None else round(delay, 2),
                    "changes_total": echo.path_changes_total,
                },
            )
        ]

    def telemetry(self) -> dict[str, Any]:
        """``{"echo": {"enabled", "erle_db", "double_talk", "delay_ms", "playback_active"}}``."""
        if self.echo is None:
            return {
                "echo": {
                    "enabled": False,
                    "erle_db": None,
                    "double_talk": False,
                    "delay_ms": None,
                    "playback_active": False,
                }
            }
        status = self.echo.status()
        erle = status["erle_db"]
        if isinstance(erle, float) and not math.isfinite(erle):
            status["erle_db"] = None
        return {"echo": {"enabled": True, **status}}

    def audio_properties(self) -> dict[str, Any]:
        """``playback_active`` (``true``/``false``) when the echo stage runs."""
        if self.echo is None:
            return {}
        return {"playback_active": "true" if self.echo.playback_active else "false"}
