"""A private mosquitto broker on a loopback port, for ``mica demo`` and the tests.

:class:`PrivateBroker` writes a mosquitto config of its own into a temporary folder (one
``listener PORT 127.0.0.1``, anonymous access unless told otherwise, no persistence, logs to
stderr), starts ``mosquitto -c`` in the foreground as a child process, and waits until it
answers an MQTT CONNECT on that port (a bare TCP connect could reach whatever else holds
it). The port is picked by binding port 0 and closing the socket just before mosquitto binds
it; if another process takes it in between, mosquitto fails with
"Address already in use" and a new port is tried.

The broker's stderr goes to a file in that folder (a pipe nobody reads would fill up and stall
it); its tail is quoted when it fails to start.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from mica.array_dsp.errors import MicaError

log = logging.getLogger(__name__)

_FALLBACK_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_PORT_TRIES = 5


class BrokerError(MicaError):
    """The private mosquitto broker cannot be found, started or reached."""


class BrokerNotFoundError(BrokerError):
    """No ``mosquitto`` binary on PATH nor in /usr/sbin."""


def find_mosquitto() -> str | None:
    """Path of the ``mosquitto`` binary: on PATH, else in /usr/sbin (Debian puts it there)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for folder in _FALLBACK_DIRS:
        candidate = Path(folder) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_loopback_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# MQTT 3.1.1 CONNECT: clean session, keepalive 60 s, empty client id; and its CONNACK.
_PROBE_CONNECT = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"
_PROBE_DISCONNECT = b"\xe0\x00"


def broker_answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether an MQTT broker accepts a connection on ``host:port`` now.

    Sends a bare anonymous MQTT CONNECT and wants a CONNACK (a refusal counts: the broker
    answered), so a port held by something else, or a mosquitto still binding, does not.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(_PROBE_CONNECT)
            reply = b""
            while len(reply) < 4:
                data = sock.recv(4 - len(reply))
                if not data:
                    return False
                reply += data
            if reply[0] != 0x20 or reply[1] != 2:
                return False
            if reply[3] == 0:
                sock.sendall(_PROBE_DISCONNECT)
            return True
    except OSError:
        return False


def _tail(path: Path, n_lines: int = 15) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no stderr captured)"
    return "\n".join(lines[-n_lines:]) or "(stderr empty)"


class PrivateBroker:
    """mosquitto on ``127.0.0.1:<free port>``, owned by this process.

    Use as a context manager (``with PrivateBroker() as broker: ... broker.port``) or call
    :meth:`start` / :meth:`stop`.

    Args:
        binary: mosquitto binary; ``None`` finds it with :func:`find_mosquitto`.
        port: fixed port (e.g. to restart a broker where clients expect it); ``None`` picks a
            free one.
        allow_anonymous: written as ``allow_anonymous``; set ``False`` with a
            ``password_file`` line in ``extra_config`` to require a login.
        extra_config: more mosquitto config lines, appended as they are.
        start_timeout_s: how long to wait for it to answer.
    """

    host = "127.0.0.1"

    def __init__(self, binary: str | None = None, *, port: int | None = None,
                 allow_anonymous: bool = True, extra_config: Sequence[str] = (),
                 start_timeout_s: float = 5.0) -> None:
        self._binary = binary
        self._fixed_port = port
        self._allow_anonymous = allow_anonymous
        self._extra_config = list(extra_config)
        self._start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self.port: int = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def address(self) -> str:
        """``host:port``, the form of ``MICA_TEST_BROKER``."""
        return f"{self.host}:{self.port}"

    def start(self) -> PrivateBroker:
        """Start mosquitto and wait until it answers an MQTT CONNECT.

        Raises:
            BrokerNotFoundError: no mosquitto binary.
            BrokerError: it exited or did not listen in time (with its stderr tail).
        """
        if self.running:
            return self
        binary = self._binary or find_mosquitto()
        if binary is None:
            raise BrokerNotFoundError(
                "mosquitto not found on PATH nor in /usr/sbin; install it "
                "(Debian: apt-get install mosquitto) or point mqtt.host at a broker")
        self._workdir = Path(tempfile.mkdtemp(prefix="mica-broker-"))
        tries = 1 if self._fixed_port is not None else _PORT_TRIES
        last_error: BrokerError | None = None
        for _ in range(tries):
            port = self._fixed_port or free_loopback_port(self.host)
            try:
                self._launch(binary, port)
                return self
            except _PortTaken as err:
                last_error = err.error
                log.debug("port %d taken before mosquitto bound it; trying another", port)
            except BrokerError:
                self._cleanup()
                raise
        self._cleanup()
        assert last_error is not None
        raise last_error

    def _write_config(self, port: int) -> Path:
        assert self._workdir is not None
        lines = [
            f"listener {port} {self.host}",
            f"allow_anonymous {'true' if self._allow_anonymous else 'false'}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            *self._extra_config,
        ]
        conf = self._workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return conf

    def _launch(self, binary: str, port: int) -> None:
        assert self._workdir is not None
        conf = self._write_config(port)
        stderr_path = self._workdir / "mosquitto.stderr"
        with open(stderr_path, "wb") as err_file:
            try:
                proc = subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                        stdout=err_file, stderr=err_file,
                                        start_new_session=True)
            except OSError as err:
                raise BrokerError(f"cannot run {binary}: {err}") from err
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = _tail(stderr_path)
                error = BrokerError(f"mosquitto exited with status {proc.returncode} before "
                                    f"listening on {self.host}:{port}:\n{tail}")
                if "address already in use" in tail.lower():
                    raise _PortTaken(error)
                raise error
            if broker_answers(self.host, port, timeout_s=0.2):
                self._proc = proc
                self.port = port
                log.info("private mosquitto (pid %d) listening on %s:%d", proc.pid,
                         self.host, port)
                return
            time.sleep(0.02)
        _end_process(proc, 1.0)
        raise BrokerError(f"mosquitto did not answer on {self.host}:{port} within "
                          f"{self._start_timeout_s:g} s:\n{_tail(stderr_path)}")

    def stop(self, timeout_s: float = 3.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``timeout_s``); idempotent."""
        if self._proc is not None:
            _end_process(self._proc, timeout_s)
            log.info("private mosquitto (pid %d) stopped", self._proc.pid)
            self._proc = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"PrivateBroker({self.host}:{self.port}, {state})"


class _PortTaken(Exception):
    def __init__(self, error: BrokerError) -> None:
        super().__init__(str(error))
        self.error = error


def _end_process(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM ``proc`` by pid, wait up to ``timeout_s``, then SIGKILL and reap it."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        # A stopped process (SIGSTOP) acts on SIGTERM only once continued.
        os.kill(proc.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("mosquitto (pid %d) ignored SIGTERM for %.1f s; killing it", proc.pid,
                    timeout_s)
        proc.kill()
        proc.wait()
