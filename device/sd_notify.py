"""systemd's notify protocol (sd_notify(3)), implemented on a plain datagram socket.

The service manager names a ``SOCK_DGRAM`` Unix socket in ``NOTIFY_SOCKET``: a file path
(``/run/systemd/notify``) or an abstract name (``@...``, sent with a leading NUL byte). Each
message is newline-separated ``KEY=VALUE`` lines; mica sends

- ``READY=1`` once every kernel is compiled or loaded and the capture source is open,
- ``STATUS=<one human line>`` (``capturing ...``, ``degraded: ...``, ``stopping``),
- ``WATCHDOG=1`` when the DSP has made progress (see :class:`Watchdog`),
- ``STOPPING=1`` when shutdown begins.

Without ``NOTIFY_SOCKET`` (not started by systemd, or ``Type=simple``) every call is a cheap
no-op. Sending never blocks and never raises: a full or vanished socket is logged once and
the message is dropped, because the service must not fail on its supervisor's account.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(name: str) -> str | bytes:
    """``@abstract`` -> ``b"\\0abstract"``; a path stays a path."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def watchdog_interval_s(env: Mapping[str, str] | None = None, pid: int | None = None
                        ) -> float | None:
    """The watchdog timeout systemd set (``WATCHDOG_USEC``), in seconds; ``None`` if none.

    Honours ``WATCHDOG_PID``: when it names another process (a child that inherited the
    environment), the watchdog is not this process's to feed.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    wd_pid = env.get("WATCHDOG_PID", "")
    if wd_pid:
        try:
            if int(wd_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class Notifier:
    """A connection to the service manager's notify socket.

    Args:
        socket_name: the socket (path or ``@abstract``); default ``$NOTIFY_SOCKET``. Empty or
            unset: every call is a no-op.
    """

    def __init__(self, socket_name: str | None = None) -> None:
        name = os.environ.get("NOTIFY_SOCKET", "") if socket_name is None else socket_name
        self.socket_name = name
        self._sock: socket.socket | None = None
        self._addr: str | bytes = b""
        self._lock = threading.Lock()
        self._warned = False
        self.sent_total = 0
        """Messages handed to the socket."""
        if name and (name.startswith("@") or name.startswith("/")):
            self._addr = _address(name)
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        elif name:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract name: ignored", name)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to talk to."""
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True if it was sent."""
        sock = self._sock
        if sock is None:
            return False
        data = "\n".join(lines).encode("utf-8", "replace")
        try:
            with self._lock:
                sock.sendto(data, self._addr)
        except OSError as err:
            if not self._warned:
                log.warning("sd_notify to %s failed: %s (further failures not logged)",
                            self.socket_name, err)
                self._warned = True
            return False
        self.sent_total += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and a status line)."""
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        """``STATUS=<text>``: shown by ``systemctl status``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def stopping(self, status: str = "stopping") -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.notify("STOPPING=1", f"STATUS={_one_line(status)}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: one keep-alive ping."""
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class Watchdog:
    """Feeds systemd's watchdog from progress, never from a timer.

    The DSP thread calls :meth:`progress` after every block it finishes (and while it idles
    on purpose, e.g. waiting for a lost device to come back). A ping goes out at most once
    per ``interval_s`` (half the watchdog timeout, as sd_watchdog_enabled(3) advises), and
    only from inside :meth:`progress`: a DSP thread that hangs sends nothing, so systemd
    kills and restarts the service after ``WatchdogSec``. Cost per call without a ping: one
    clock read and one comparison; nothing is allocated that outlives the call.

    Args:
        notifier: where pings go.
        timeout_s: the watchdog timeout (default: :func:`watchdog_interval_s`); ``None``
            or no socket: :meth:`progress` does nothing.
    """

    def __init__(self, notifier: Notifier, timeout_s: float | None = None) -> None:
        self.notifier = notifier
        self.timeout_s = watchdog_interval_s() if timeout_s is None else timeout_s
        self.interval_s = self.timeout_s / 2 if self.timeout_s else 0.0
        self.enabled = bool(self.timeout_s) and notifier.enabled
        self._next = 0.0
        self.pings_total = 0

    def progress(self) -> None:
        """Record progress; ping when the last ping is ``interval_s`` old."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval_s
            if self.notifier.watchdog():
                self.pings_total += 1
