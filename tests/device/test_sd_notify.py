"""sd_notify against real datagram sockets (a file path and an abstract name), and the service's
READY / WATCHDOG / STATUS / STOPPING as a service manager receives them."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numba
import numpy as np
import pytest
import soundfile as sf

from mica.device.config import parse_config
from mica.device.sd_notify import Notifier, Watchdog, watchdog_interval_s
from mica.device.service import Service


class Manager:
    """The service manager's end: a bound datagram socket and what arrived on it, with times."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self.on_message = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            text = data.decode()
            if self.on_message is not None:
                self.on_message(text)
            self.messages.append((time.monotonic(), text))

    def lines(self, since: float = 0.0) -> list[str]:
        return [line for t, m in list(self.messages) if t >= since for line in m.split("\n")]

    def wait_for(self, line: str, timeout_s: float = 60.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for t, m in list(self.messages):
                if line in m.split("\n"):
                    return t
            time.sleep(0.01)
        raise AssertionError(f"{line!r} never arrived; got {self.lines()}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Manager, str]]:
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        mgr, name = Manager(path), path
    else:
        name = f"@mica-test-{uuid.uuid4().hex}"
        mgr = Manager(b"\0" + name[1:].encode())
    yield mgr, name
    mgr.close()


def test_messages_arrive_on_path_and_abstract_sockets(manager) -> None:
    mgr, name = manager
    n = Notifier(name)
    assert n.enabled
    assert n.ready("capturing: 4 mics")
    assert n.status("degraded:\nline two")
    assert n.watchdog()
    assert n.stopping()
    mgr.wait_for("STOPPING=1", 5)
    assert [m for _, m in mgr.messages] == [
        "READY=1\nSTATUS=capturing: 4 mics", "STATUS=degraded: line two", "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping"]
    n.close()


def test_without_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and not n.ready() and not n.watchdog()
    wd = Watchdog(n, timeout_s=1.0)
    wd.progress()
    assert wd.pings_total == 0


def test_a_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert n.enabled and not n.ready() and not n.watchdog()


def test_watchdog_usec_and_pid() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000"}) == 2.0
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "x"}) is None
    mine = {"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval_s(mine) == 0.5
    assert watchdog_interval_s({**mine, "WATCHDOG_PID": str(os.getpid() + 1)}) is None


def test_watchdog_pings_only_on_progress_at_half_the_timeout(manager) -> None:
    mgr, name = manager
    wd = Watchdog(Notifier(name), timeout_s=0.2)
    assert wd.interval_s == pytest.approx(0.1)
    t_end = time.monotonic() + 0.55
    while time.monotonic() < t_end:  # progress every 10 ms: a ping per 0.1 s
        wd.progress()
        time.sleep(0.01)
    assert 5 <= wd.pings_total <= 7
    time.sleep(0.5)  # no progress: nothing is sent, however long
    assert wd.pings_total <= 7
    assert sum(m == "WATCHDOG=1" for _, m in mgr.messages) == wd.pings_total


# --------------------------------------------------------------------------- the service


def _array_wav(path: Path, seconds: float = 2.0, n_ch: int = 4) -> Path:
    rng = np.random.default_rng(1)
    sf.write(path, (0.05 * rng.standard_normal((int(16000 * seconds), n_ch))).astype(np.float32),
             16000, subtype="PCM_16")
    return path


def _service_config(wav: Path, **governor):
    return parse_config({
        "capture": {"source": "wav", "wav_path": str(wav), "wav_loop": True, "channels": 4},
        "array": {"geometry_m": [[0.03, 0, 0], [0, 0.03, 0], [-0.03, 0, 0], [0, -0.03, 0]]},
        "mqtt": {"enabled": False},
        "governor": {"enabled": False, **governor},
    }, wav.parent)


def _mica_kernels() -> list[numba.core.registry.CPUDispatcher]:
    """Every public Numba kernel of the board's DSP packages loaded in this process.

    Private ``_helpers`` are left out: they are only called from inside other kernels, whose
    compiled (or cached) code holds them, so their own dispatchers never need compiling."""
    found = []
    for name, module in list(sys.modules.items()):
        if not name.startswith(("mica.array_dsp", "mica.models")) or module is None:
            continue
        for key, value in vars(module).items():
            if isinstance(value, numba.core.registry.CPUDispatcher) and value not in found \
                    and value.__module__ == name and not key.startswith("_"):
                found.append(value)
    return found


def test_service_ready_watchdog_hang_and_stopping(manager, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """READY after warm-up and open source; pings while the DSP makes progress; none while the
    DSP thread hangs (a hook that blocks); they resume when it moves again; STOPPING at stop."""
    mgr, name = manager
    monkeypatch.setenv("WATCHDOG_USEC", "400000")   # ping every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    stall = threading.Event()
    release = threading.Event()
    stalled = threading.Event()

    def hook(_block) -> None:
        if stall.is_set() and not release.is_set():
            stalled.set()
            release.wait(30)

    compiled_at_ready: dict[str, int] = {}

    def on_message(text: str) -> None:
        if "READY=1" in text.split("\n"):
            compiled_at_ready.update({k.__name__: len(k.signatures) for k in _mica_kernels()})

    mgr.on_message = on_message
    svc = Service(_service_config(_array_wav(tmp_path / "a.wav")), dsp_hook=hook,
                  notifier=Notifier(name))
    svc.start()
    try:
        t_ready = mgr.wait_for("READY=1", 30)
        assert svc.ready.is_set() and svc.startup_seconds is not None
        assert compiled_at_ready, "no kernels found"
        first = mgr.lines()
        assert first[0].startswith("STATUS=starting")
        assert any(line.startswith("STATUS=capturing: 4 mics") for line in first)

        time.sleep(1.2)
        pings = mgr.lines(t_ready).count("WATCHDOG=1")
        assert pings >= 4, f"only {pings} pings in 1.2 s of progress"

        stall.set()
        assert stalled.wait(5)
        t_hang = time.monotonic()
        time.sleep(1.5)
        assert mgr.lines(t_hang + 0.05).count("WATCHDOG=1") == 0, "pinged while the DSP hung"

        release.set()
        t_release = time.monotonic()
        time.sleep(0.8)
        assert mgr.lines(t_release).count("WATCHDOG=1") >= 2, "pings did not resume"
        # every kernel the running service calls was compiled (or loaded) before READY:
        # none compiled a signature while it ran
        late = {k.__name__: len(k.signatures) for k in _mica_kernels()
                if len(k.signatures) > compiled_at_ready.get(k.__name__, 0)}
        assert not late, f"compiled after READY: {late}"
    finally:
        release.set()
        svc.request_stop()
        svc.stop(timeout_s=2.0)
    mgr.wait_for("STOPPING=1", 5)


def test_ready_waits_for_the_capture_device(manager, tmp_path: Path) -> None:
    """A device missing at start: STATUS degraded, no READY; READY once it opens."""
    from mica.array_dsp.errors import DeviceError
    from mica.device.sources.wav import WavSource

    mgr, name = manager
    wav = _array_wav(tmp_path / "a.wav")
    attempts = []

    def factory():
        attempts.append(time.monotonic())
        if len(attempts) < 2:
            raise DeviceError("not plugged in yet")
        return WavSource(wav, loop=True)

    svc = Service(_service_config(wav), source_factory=factory, notifier=Notifier(name))
    svc.start()
    try:
        mgr.wait_for("STATUS=degraded: capture device " + str(wav) + " lost, reopening", 10)
        assert "READY=1" not in mgr.lines()
        mgr.wait_for("READY=1", 10)
        assert len(attempts) == 2
    finally:
        svc.request_stop()
        svc.stop()
