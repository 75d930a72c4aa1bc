"""Board health from /sys and /proc: temperatures, CPU frequency and load, Raspberry Pi
throttling, memory and disk.

Every reader takes the root of the tree it reads (``/sys``, ``/proc``, or ``/`` for
:class:`BoardSampler`), so the tests run on a fake Raspberry Pi tree. A source that is missing
or unreadable (no thermal zone in a container, no cpufreq on a VM, not a Raspberry Pi) is left
out of the result, never raised: telemetry must not take the service down.

Field names follow Prometheus conventions (unit suffix ``_celsius``, ``_hertz``, ``_bytes``,
``_ratio`` for 0..1, ``_seconds``); see docs/mqtt.md for the telemetry they end up in.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

THROTTLE_BITS = {
    0: "under_voltage",
    1: "frequency_capped",
    2: "throttled",
    3: "soft_temperature_limit",
}
"""Raspberry Pi ``get_throttled`` bits (now); bit ``n + 16`` is the same since boot."""

PI_THROTTLED_SYSFS = "devices/platform/soc/soc:firmware/get_throttled"
"""The firmware driver's attribute under /sys (hex, no ``0x``)."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _int(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def _key(name: str) -> str:
    """A JSON/Prometheus-friendly key: ``cpu-thermal`` -> ``cpu_thermal``."""
    return re.sub(r"[^0-9a-zA-Z_]+", "_", name).strip("_").lower() or "zone"


def _numbered(folder: Path, prefix: str) -> list[tuple[int, Path]]:
    """``prefix<N>`` entries of ``folder``, by N."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    out = []
    for entry in entries:
        rest = entry.name[len(prefix):]
        if entry.name.startswith(prefix) and rest.isdigit():
            out.append((int(rest), entry))
    return sorted(out)


# --------------------------------------------------------------------------- temperatures


def thermal_zones(sys_root: str | Path = "/sys") -> dict[str, float]:
    """Every thermal zone's temperature in degrees Celsius, keyed by its ``type``.

    Reads ``<sys_root>/class/thermal/thermal_zone<N>/{type,temp}`` (millidegrees). A second
    zone with the same type gets its number appended (``cpu_thermal``, ``cpu_thermal_1``).
    """
    out: dict[str, float] = {}
    for n, zone in _numbered(Path(sys_root) / "class" / "thermal", "thermal_zone"):
        milli = _int(_read(zone / "temp"))
        if milli is None:
            continue
        name = _key(_read(zone / "type") or f"zone{n}")
        if name in out:
            name = f"{name}_{n}"
        out[name] = round(milli / 1000.0, 3)
    return out


# --------------------------------------------------------------------------- cpufreq


def cpu_frequencies(sys_root: str | Path = "/sys") -> dict[str, dict[str, int]]:
    """Per core: ``{"cpu0": {"cur": Hz, "max": Hz}, ...}`` from cpufreq (kHz in sysfs).

    ``cur`` is ``scaling_cur_freq`` (or ``cpuinfo_cur_freq``), ``max`` is
    ``scaling_max_freq`` (the current cap; or ``cpuinfo_max_freq``). A core without cpufreq
    is left out; a core with only one of the two has only that one.
    """
    out: dict[str, dict[str, int]] = {}
    for n, cpu in _numbered(Path(sys_root) / "devices" / "system" / "cpu", "cpu"):
        freq = cpu / "cpufreq"
        entry = {}
        for key, names in (("cur", ("scaling_cur_freq", "cpuinfo_cur_freq")),
                           ("max", ("scaling_max_freq", "cpuinfo_max_freq"))):
            for name in names:
                khz = _int(_read(freq / name))
                if khz is not None:
                    entry[key] = khz * 1000
                    break
        if entry:
            out[f"cpu{n}"] = entry
    return out


# --------------------------------------------------------------------------- Pi throttling


def decode_throttled(value: int) -> dict[str, bool]:
    """The four throttling conditions, now and ``*_since_boot``."""
    out = {}
    for bit, name in THROTTLE_BITS.items():
        out[name] = bool(value >> bit & 1)
        out[f"{name}_since_boot"] = bool(value >> (bit + 16) & 1)
    return out


def _run_vcgencmd(binary: str) -> str | None:
    try:
        done = subprocess.run([binary, "get_throttled"], capture_output=True, text=True,
                              timeout=2.0, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        log.debug("vcgencmd failed: %s", err)
        return None
    return done.stdout if done.returncode == 0 else None


def pi_throttled(sys_root: str | Path = "/sys", vcgencmd: str | None = None) -> int | None:
    """The Raspberry Pi ``get_throttled`` word, or ``None`` when not a Pi.

    Reads the firmware driver's sysfs attribute (hex); failing that, runs ``vcgencmd
    get_throttled`` (``throttled=0x50005``) when ``vcgencmd`` names a binary that exists.
    """
    text = _read(Path(sys_root) / PI_THROTTLED_SYSFS)
    value = _int(text.removeprefix("0x"), 16) if text else None
    if value is not None:
        return value
    if vcgencmd and shutil.which(vcgencmd):
        out = _run_vcgencmd(vcgencmd)
        match = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", out or "")
        if match:
            return int(match.group(1), 0)
    return None


# --------------------------------------------------------------------------- /proc


def read_cpu_ticks(proc_root: str | Path = "/proc") -> dict[str, tuple[int, int]]:
    """``{"cpu": (busy, total), "cpu0": ...}`` jiffies from ``<proc_root>/stat``.

    Idle is ``idle + iowait``; busy is the rest of user..steal (guest time is already in user).
    """
    text = _read(Path(proc_root) / "stat")
    out: dict[str, tuple[int, int]] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith("cpu"):
            continue
        try:
            values = [int(v) for v in parts[1:9]]
        except ValueError:
            continue
        if len(values) < 4:
            continue
        total = sum(values)
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        out[parts[0]] = (total - idle, total)
    return out


class CpuUsage:
    """Per-core CPU use between two reads of /proc/stat, as a 0..1 ratio.

    The first :meth:`sample` measures since construction. A core whose counters did not
    advance (idle tickless core, or two samples within a tick) is left out of that sample.
    """

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.proc_root = Path(proc_root)
        self._last = read_cpu_ticks(self.proc_root)

    def sample(self) -> dict[str, float]:
        """``{"cpu": all cores, "cpu0": ..., ...}`` busy ratio since the previous sample."""
        now = read_cpu_ticks(self.proc_root)
        out = {}
        for name, (busy, total) in now.items():
            prev = self._last.get(name)
            if prev is None or total <= prev[1]:
                continue
            out[name] = round(min(1.0, max(0.0, (busy - prev[0]) / (total - prev[1]))), 4)
        if now:
            self._last = now
        return out


def memory(proc_root: str | Path = "/proc") -> dict[str, int]:
    """``memory_total_bytes``, ``memory_available_bytes``, ``swap_used_bytes`` from meminfo."""
    text = _read(Path(proc_root) / "meminfo")
    kib: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, sep, rest = line.partition(":")
        value = _int(rest.split()[0]) if sep and rest.split() else None
        if value is not None:
            kib[key.strip()] = value
    out = {}
    if "MemTotal" in kib:
        out["memory_total_bytes"] = kib["MemTotal"] * 1024
    if "MemAvailable" in kib:
        out["memory_available_bytes"] = kib["MemAvailable"] * 1024
    if "SwapTotal" in kib and "SwapFree" in kib:
        out["swap_used_bytes"] = (kib["SwapTotal"] - kib["SwapFree"]) * 1024
    return out


def load_averages(proc_root: str | Path = "/proc") -> dict[str, float]:
    """``load1``, ``load5``, ``load15`` from loadavg."""
    parts = (_read(Path(proc_root) / "loadavg") or "").split()
    try:
        return {"load1": float(parts[0]), "load5": float(parts[1]), "load15": float(parts[2])}
    except (IndexError, ValueError):
        return {}


def system_uptime_s(proc_root: str | Path = "/proc") -> float | None:
    """Seconds since boot (first field of uptime)."""
    parts = (_read(Path(proc_root) / "uptime") or "").split()
    try:
        return float(parts[0])
    except (IndexError, ValueError):
        return None


def disk_free_bytes(path: str | Path) -> int | None:
    """Bytes free to an unprivileged writer on the file system holding ``path`` (or its
    nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


# --------------------------------------------------------------------------- all together


class BoardSampler:
    """Everything above in one telemetry dict, from a root holding ``sys/`` and ``proc/``.

    Args:
        root: ``/`` on the board; a fake tree in tests.
        spool_dir: the store-and-forward folder whose file system's free space is reported
            (``None``: not reported).
        vcgencmd: the binary asked for the Pi throttling word when the sysfs attribute is
            missing (``None``: never run).
    """

    def __init__(self, root: str | Path = "/", *, spool_dir: str | Path | None = None,
                 vcgencmd: str | None = "vcgencmd") -> None:
        self.root = Path(root)
        self.sys_root = self.root / "sys"
        self.proc_root = self.root / "proc"
        self.spool_dir = spool_dir
        self._vcgencmd = vcgencmd if self.root == Path("/") else None
        self._cpu = CpuUsage(self.proc_root)

    def sample(self) -> dict[str, Any]:
        """One reading; sources that are missing are absent from the dict."""
        out: dict[str, Any] = {}
        zones = thermal_zones(self.sys_root)
        if zones:
            out["thermal_celsius"] = zones
        freqs = cpu_frequencies(self.sys_root)
        if freqs:
            out["cpu_frequency_hertz"] = {cpu: f["cur"] for cpu, f in freqs.items()
                                          if "cur" in f}
            out["cpu_frequency_max_hertz"] = {cpu: f["max"] for cpu, f in freqs.items()
                                              if "max" in f}
            out = {k: v for k, v in out.items() if v != {}}
        throttled = pi_throttled(self.sys_root, self._vcgencmd)
        if throttled is not None:
            out["throttled"] = decode_throttled(throttled)
            out["throttled_raw"] = throttled
        usage = self._cpu.sample()
        if usage:
            out["cpu_usage_ratio"] = usage
        out.update(load_averages(self.proc_root))
        out.update(memory(self.proc_root))
        up = system_uptime_s(self.proc_root)
        if up is not None:
            out["system_uptime_seconds"] = round(up, 2)
        if self.spool_dir is not None:
            free = disk_free_bytes(self.spool_dir)
            if free is not None:
                out["spool_disk_free_bytes"] = free
        return out
