"""systemd/mica.service: ``systemd-analyze verify`` prints nothing for it, and a real systemd as
PID 1 restarts mica (its own unit, run on a fake ALSA mic) when its watchdog pings stop."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "mica.service"
PID1 = Path(__file__).resolve().parent / "systemd_pid1"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found: apt-get install -y systemd util-linux")
    return path


def _unit_keys(text: str) -> dict[str, list[str]]:
    """``Key -> [values]`` over every section (a key may repeat)."""
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            keys.setdefault(m.group(1), []).append(m.group(2))
    return keys


def test_unit_has_what_the_board_needs() -> None:
    keys = _unit_keys(UNIT.read_text())
    expect = {"Type": "notify", "Restart": "on-failure", "User": "mica",
              "SupplementaryGroups": "audio plugdev", "ProtectSystem": "strict",
              "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
              "CacheDirectory": "mica", "StateDirectory": "mica",
              "ConfigurationDirectory": "mica", "DevicePolicy": "closed"}
    for key, value in expect.items():
        assert keys.get(key) == [value], f"{key}={keys.get(key)}"
    assert keys["WatchdogSec"] and keys["RestrictAddressFamilies"]
    assert set(keys["DeviceAllow"]) == {"char-alsa rw", "char-usb_device rw"}
    assert "NUMBA_CACHE_DIR=/var/cache/mica/numba" in keys["Environment"]
    assert "MemoryDenyWriteExecute" not in keys  # Numba needs W+X memory
    # the documented options are there, commented out
    for option in ("CPUSchedulingPolicy=fifo", "CPUAffinity=", "Nice="):
        assert f"#{option}" in UNIT.read_text()
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment]
    parser.read_string(UNIT.read_text())
    assert set(parser.sections()) == {"Unit", "Service", "Install"}


def test_systemd_analyze_verify_prints_nothing() -> None:
    """``verify`` exits 0 on unknown keys and bad values: any output is a failure. It also
    checks that ExecStart's program exists, so a private mount namespace gets a stub at the
    unit's install path (/opt/mica/venv/bin/mica) without touching the host's /opt."""
    _need("systemd-analyze")
    unshare = _need("unshare")
    user_ns = [] if os.geteuid() == 0 else ["--map-root-user"]
    script = ("set -e; mount -t tmpfs tmpfs /opt; mkdir -p /opt/mica/venv/bin; "
              "printf '#!/bin/sh\\n' > /opt/mica/venv/bin/mica; chmod +x /opt/mica/venv/bin/mica; "
              f"exec systemd-analyze verify '{UNIT}'")
    proc = subprocess.run([unshare, *user_ns, "--mount", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, check=False)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and output == "", f"exit {proc.returncode}:\n{output}"


# --------------------------------------------------------------------------- real systemd

TEST_OVERRIDES = {
    # the test runs as root on a CI machine without the mica user or the install in /opt
    "User": None, "Group": None, "ConfigurationDirectory": None,
    "After": None, "Wants": None, "StartLimitIntervalSec": None, "StartLimitBurst": None,
}


def _python_dirs() -> list[str]:
    """Where this interpreter lives: the venv and the base installation its python links to."""
    real = Path(os.path.realpath(sys.executable)).parent.parent
    return sorted({sys.prefix, sys.base_prefix, str(real)})


def _test_unit(config: Path, out: Path, alsa_conf: str, cache: Path, stall_after_s: float,
               watchdog_s: int, alsa_dirs: list[Path]) -> str:
    """mica.service with the test's program, config, shorter timers and fault injection.

    Everything else (Type=notify, Restart=on-failure, the hardening, Cache/StateDirectory=)
    stays as shipped, so the test also shows mica runs under the unit's sandbox.
    ``alsa_dirs``: folders the fake ALSA config reads (its own, and the plugin's and raw
    files', which CI builds before the tests in a folder of its own).
    """
    lines = []
    for line in UNIT.read_text().splitlines():
        key = line.partition("=")[0]
        if key in TEST_OVERRIDES or key in ("ExecStart", "WatchdogSec", "RestartSec"):
            continue
        if line.startswith("Environment=NUMBA_CACHE_DIR="):
            continue
        if line == "ProtectHome=yes" and any(p.startswith(("/root", "/home"))
                                             for p in _python_dirs()):
            line = "ProtectHome=tmpfs"  # the same, but the binds below can reach into it
        lines.append(line)
        if line == "[Unit]":
            lines.append("DefaultDependencies=no")
        if line == "[Service]":
            python = Path(sys.executable)
            lines += [
                f"ExecStart={python} -m mica.device.cli run --config {config}",
                f"WatchdogSec={watchdog_s}s",
                "RestartSec=1s",
                f"Environment=ALSA_CONFIG_PATH={alsa_conf}",
                f"Environment=NUMBA_CACHE_DIR={cache}",
                f"Environment=MICA_TEST_STALL_DSP_AFTER_S={stall_after_s}",
                f"Environment=PYTHONPATH={REPO}",
                f"StandardOutput=append:{out}/svc.log",
                "StandardError=inherit",
                # the test's files live under /tmp and /root (PrivateTmp, ProtectHome hide them)
                f"BindReadOnlyPaths={' '.join(_python_dirs())} {REPO} {config.parent} "
                f"{' '.join(sorted({str(d) for d in alsa_dirs}))}",
                f"BindPaths={cache} {out}",
            ]
    return "\n".join(lines) + "\n"


def _probe_unit(out: Path, wait_s: int) -> str:
    """Polls mica's unit until it was restarted and is active again; writes probe.txt."""
    show = ("systemctl show mica.service -p Type -p WatchdogUSec -p NRestarts -p Result "
            "-p ActiveState -p SubState -p StatusText -p MainPID -p ExecMainCode "
            "-p ExecMainStatus")
    script = (f"for i in $(seq {wait_s * 2}); do {show} > {out}/probe.tmp; "
              f"grep -q '^NRestarts=[1-9]' {out}/probe.tmp && grep -q '^ActiveState=active' "
              f"{out}/probe.tmp && grep -q '^StatusText=capturing' {out}/probe.tmp && break; "
              f"sleep 0.5; done; mv {out}/probe.tmp {out}/probe.txt")
    return f"""[Unit]
DefaultDependencies=no
[Service]
Type=oneshot
ExecStart=/bin/sh -c "{script}"
"""


def run_watchdog_restart(fake_alsa, tmp_path: Path, stall_after_s: float = 2.0,
                         watchdog_s: int = 2, budget_s: int = 90) -> dict[str, str]:
    """Start mica's unit under a private systemd; return ``systemctl show`` once it was
    restarted (or whatever it showed at the end of the budget)."""
    if os.geteuid() != 0:
        pytest.fail("the systemd-as-PID-1 test needs root (CI runs as root)")
    _need("unshare")
    if not Path("/lib/systemd/systemd").exists():
        pytest.fail("/lib/systemd/systemd missing: apt-get install -y systemd")
    out = tmp_path / "out"
    units = tmp_path / "units"
    cache = Path(os.environ.get("NUMBA_CACHE_DIR", tmp_path / "numba"))
    for d in (out, units, cache):
        d.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "cfg" / "mica.toml"
    config.parent.mkdir()
    config.write_text("""
[device]
id = "pid1-test"
[capture]
source = "alsa"
alsa_device = "mic4"
channels = 4
[array]
geometry_m = [[0.03, 0, 0], [0, 0.03, 0], [-0.03, 0, 0], [0, -0.03, 0]]
[mqtt]
enabled = false
[governor]
enabled = false
""")
    (units / "mica.service").write_text(
        _test_unit(config, out, str(fake_alsa.conf_path), cache, stall_after_s, watchdog_s,
                   [fake_alsa.conf_path.parent, *(c.parent for c in fake_alsa.base_confs)]))
    (units / "mica-probe.service").write_text(_probe_unit(out, budget_s - 10))
    (units / "mica-test.target").write_text(
        "[Unit]\nDefaultDependencies=no\nRequires=mica.service mica-probe.service\n")
    proc = subprocess.Popen(["bash", str(PID1 / "run_pid1.sh"), str(budget_s), str(units),
                             str(out)], start_new_session=True)
    try:
        deadline = time.monotonic() + budget_s + 5
        while time.monotonic() < deadline and not (out / "probe.txt").exists():
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)  # our own session: the script, timeout, unshare, systemd
        proc.wait(30)
    probe = (out / "probe.txt").read_text() if (out / "probe.txt").exists() else ""
    shown = dict(line.split("=", 1) for line in probe.splitlines() if "=" in line)
    shown["_svc_log"] = (out / "svc.log").read_text() if (out / "svc.log").exists() else ""
    shown["_pid1_log"] = (out / "pid1.log").read_text() if (out / "pid1.log").exists() else ""
    return shown


def test_systemd_restarts_mica_when_its_watchdog_stops(fake_alsa, tmp_path: Path) -> None:
    shown = run_watchdog_restart(fake_alsa, tmp_path)
    logs = f"\nsystemd:\n{shown['_pid1_log'][-4000:]}\nmica:\n{shown['_svc_log'][-4000:]}"
    assert shown.get("Type") == "notify", logs
    assert shown.get("WatchdogUSec") == "2s", logs
    assert int(shown.get("NRestarts", "0")) >= 1, f"{shown}{logs}"
    assert shown.get("ActiveState") == "active", logs
    assert shown.get("StatusText", "").startswith("capturing: 4 mics"), logs
    assert "stalling the DSP thread" in shown["_svc_log"], logs
    # the first run stalled (and never exited by itself); systemd started a second one
    assert shown["_svc_log"].count("running: device pid1-test") >= 2, logs
