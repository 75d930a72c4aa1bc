"""The on-board DOA and voice activity of an XMOS USB array, polled in a side thread.

The ReSpeaker USB Mic Array (XVF-3000) runs its own direction-of-arrival and voice-activity
detectors. :class:`OnboardPoller` reads ``DOAANGLE``, ``VOICEACTIVITY`` and
``SPEECHDETECTED`` over USB control transfers every ``interval_s`` (``[usb]
poll_onboard``) in its own thread, and the service publishes the latest values as the
``onboard`` telemetry object. Optionally (``[usb] raw_channels``) it switches the board's
own AGC, noise and echo suppression off each time it connects, for when mica processes the
raw channels (a re-plugged array comes back with its defaults, so this is repeated).

The DSP never waits on USB: the thread is the only one that touches the device, and
:meth:`OnboardPoller.telemetry` copies a small dict under a lock held for microseconds.
Timeouts, stalls and unplugging are counted per kind and logged (a change of state at
WARNING, repeats at DEBUG); after an unplug, or ``reconnect_after`` failures in a row, the
array is closed and looked for again every ``reconnect_s``. Nothing raised by USB leaves
the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from mica.device import usb_xmos as ux

log = logging.getLogger(__name__)

ERROR_KINDS = ("timeout", "stall", "disconnected", "not_found", "permission", "other")
"""Keys of ``onboard.errors``: how each USB failure is counted."""


def _kind(err: ux.UsbError) -> str:
    if isinstance(err, ux.UsbTimeoutError):
        return "timeout"
    if isinstance(err, ux.UsbStallError):
        return "stall"
    if isinstance(err, ux.UsbDisconnectedError):
        return "disconnected"
    if isinstance(err, ux.UsbNotFoundError):
        return "not_found"
    if isinstance(err, ux.UsbPermissionError):
        return "permission"
    return "other"


class OnboardPoller:
    """Poll an XMOS array's on-board detections in a daemon thread (module doc).

    Args:
        interval_s: seconds between two polls (each poll is three control transfers).
        poll_onboard: read DOA / VAD (False: only connect, apply ``raw_channels`` and
            check the array is still there).
        raw_channels: switch the board's own processing off at each connection
            (:data:`mica.device.usb_xmos.ONBOARD_PROCESSING_OFF`).
        location: ``bus:address`` of the array when several are plugged in (``None``:
            the only one).
        timeout_ms: per control transfer.
        reconnect_s: wait between attempts to find the array again.
        reconnect_after: consecutive failed polls (timeouts, stalls) that make it close and
            reopen the array.
        backend: the pyusb backend (``None``: libusb); tests pass an emulated one.
    """

    def __init__(self, interval_s: float = 0.5, poll_onboard: bool = True,
                 raw_channels: bool = False, location: str | None = None,
                 timeout_ms: int = 200, reconnect_s: float = 2.0, reconnect_after: int = 3,
                 backend: Any = None) -> None:
        if not interval_s > 0 or not reconnect_s > 0 or timeout_ms < 1 or reconnect_after < 1:
            raise ValueError(f"bad poller timing: interval_s={interval_s} "
                             f"reconnect_s={reconnect_s} timeout_ms={timeout_ms} "
                             f"reconnect_after={reconnect_after}")
        self.interval_s = float(interval_s)
        self.poll_onboard = bool(poll_onboard)
        self.raw_channels = bool(raw_channels)
        self.location = location or None
        self.timeout_ms = int(timeout_ms)
        self.reconnect_s = float(reconnect_s)
        self.reconnect_after = int(reconnect_after)
        self.backend = backend
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._array: ux.XvfArray | None = None
        self._values: dict[str, Any] = {}
        self._t_values: float | None = None
        self._errors = dict.fromkeys(ERROR_KINDS, 0)
        self._connects = 0
        self._polls = 0
        self._failed_in_row = 0
        self._last_error: str | None = None
        self._raw_applied = False
        self._connected = False
        self._logged_state: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="mica-usb-poll",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop the thread and release the array (a transfer in flight ends by its timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s + self.timeout_ms / 1e3)
            if self._thread.is_alive():
                log.warning("usb poller did not stop within %.1f s", timeout_s)
            self._thread = None
        self._close()

    # ------------------------------------------------------------------ telemetry

    def telemetry(self, muted: bool = False) -> dict[str, Any]:
        """``{"onboard": {...}}`` for the telemetry message (docs/mqtt.md): the latest
        values (left out until read), their age, connection state and error counters.

        ``muted``: the privacy mute is on, so the board's detections (direction, voice
        activity, speech) are left out: they tell who speaks while the user asked for none
        of the microphones to go further; connection state and counters stay."""
        with self._lock:
            entry: dict[str, Any] = {} if muted else dict(self._values)
            if self._t_values is not None and not muted:
                entry["age_seconds"] = round(time.monotonic() - self._t_values, 3)
            entry["connected"] = self._connected
            entry["raw_channels"] = self._raw_applied
            entry["polls_total"] = self._polls
            entry["connects_total"] = self._connects
            entry["errors_total"] = sum(self._errors.values())
            entry["errors"] = {k: v for k, v in self._errors.items() if v}
            if self._last_error is not None:
                entry["last_error"] = self._last_error
        return {"onboard": entry}

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self._step()
            except Exception:  # never let the thread die: log, back off, go on
                log.exception("usb poller: unexpected error")
                self._close()
                wait = self.reconnect_s
            self._stop.wait(wait)

    def _step(self) -> float:
        """One connect attempt or one poll; the seconds to wait before the next."""
        if self._array is None:
            try:
                arr = ux.open_array(self.backend, self.location, timeout_ms=self.timeout_ms)
                if self.raw_channels:
                    arr.disable_onboard_processing()
            except ux.UsbError as err:
                self._failed(err)
                return self.reconnect_s
            self._array = arr
            with self._lock:
                self._connects += 1
                self._connected = True
                self._raw_applied = self.raw_channels
                self._failed_in_row = 0
            self._log_state("connected", f"usb array {arr.location} connected"
                            + (", on-board processing off" if self.raw_channels else ""))
        try:
            if self.poll_onboard:
                status = self._array.status()
                values = {"doa_deg": int(status["doa_deg"]),
                          "voice_activity": bool(status["voice"]),
                          "speech_detected": bool(status["speech"])}
            else:
                self._array.version()  # still there?
                values = {}
        except ux.UsbError as err:
            self._failed(err)
            if (isinstance(err, ux.UsbDisconnectedError)
                    or self._failed_in_row >= self.reconnect_after):
                self._close()
                return self.reconnect_s
            return self.interval_s
        with self._lock:
            self._values = values
            self._t_values = time.monotonic() if values else self._t_values
            self._polls += 1
            self._failed_in_row = 0
        self._log_state("ok", "usb array polled again")
        return self.interval_s

    def _failed(self, err: ux.UsbError) -> None:
        kind = _kind(err)
        with self._lock:
            self._errors[kind] += 1
            self._failed_in_row += 1
            self._last_error = str(err)
        self._log_state(kind, f"usb array: {err}")

    def _log_state(self, state: str, message: str) -> None:
        """WARNING when the state changes (INFO for good news), DEBUG while it persists."""
        if state == self._logged_state:
            log.debug("%s", message)
            return
        level = logging.INFO if state in ("ok", "connected") else logging.WARNING
        if state == "ok" and self._logged_state in (None, "connected"):
            level = logging.DEBUG
        log.log(level, "%s", message)
        self._logged_state = state

    def _close(self) -> None:
        arr, self._array = self._array, None
        with self._lock:
            self._connected = False
            self._raw_applied = False
        if arr is not None:
            arr.close()
