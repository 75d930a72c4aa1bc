"""A real ALSA capture device without hardware: the ``fake_alsa`` session fixture.

It builds the ``fakemic`` ioplug plugin from ``../shared/tools/alsa-fakemic`` (or
``$MICA_SHARED/tools/alsa-fakemic``) with that folder's ``setup_fake_alsa.sh`` into a
temporary folder, then points ``ALSA_CONFIG_PATH`` (in ``os.environ``, so alsa-lib in this
process sees it) at a config file of the fixture's own that includes the built one. PCMs it
offers: ``mic4`` (4 ch S16_LE, 16 kHz, looping), ``mic4_fast`` (the same at +1000 ppm),
``mic8`` (8 ch S32_LE, 16 kHz, not looping, silence after 5 s), all playing
``gen_test_raw.py`` marker files (see :func:`marker_frame_index`), plus whatever a test adds
with :meth:`FakeAlsa.add_pcm` / :meth:`FakeAlsa.add_pcm_from_samples`.

If ``ALSA_CONFIG_PATH`` already names a config that defines ``pcm.mic4`` and ``pcm.mic8``
(CI runs ``.ci/setup_fake_alsa.sh`` beforehand), that config is included instead and nothing
is built. Otherwise a missing compiler, ALSA headers or tools folder makes the fixture FAIL,
never skip.

ALSA config caching (measured with alsa-lib 1.2.8): alsa-lib caches the parsed config per
process, but every ``snd_pcm_open`` (and ``alsaaudio.pcms()``) calls ``snd_config_update``,
which re-reads ``ALSA_CONFIG_PATH`` from the environment and reloads when the list of files
changes or one file's (device, inode, mtime in whole seconds) changes. An in-place append
within the same second as the last load is therefore missed (the new PCM is "Unknown");
a file renamed over the old one is seen only while its inode number differs from the cached
one (inode numbers get reused), and a different file name always is. So
:meth:`FakeAlsa.add_pcm` writes each version of the config under a new name
(``tests-alsa.<n>.conf``) and points ``ALSA_CONFIG_PATH`` at it: PCMs can be added at any
time, also after other PCMs were opened; PCMs already open are not affected.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from mica.device.sources.pcm import float_to_pcm, frame_bytes

REPO = Path(__file__).resolve().parent.parent
MARKER_PCMS = ("mic4", "mic8")
PLUGIN_FORMATS = ("S16_LE", "S32_LE")
"""Sample formats the fakemic plugin itself plays."""
"""PCMs the fixture needs from a config it reuses."""
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def fakemic_tools_dir() -> Path:
    """``$MICA_SHARED/tools/alsa-fakemic`` or ``<repo>/../shared/tools/alsa-fakemic``."""
    shared = os.environ.get("MICA_SHARED")
    base = Path(shared) if shared else REPO.parent / "shared"
    return base / "tools" / "alsa-fakemic"


def marker_frame_index(samples: np.ndarray) -> np.ndarray:
    """Frame index encoded by ``gen_test_raw.py`` in decoded ``(n_ch, n)`` float samples.

    The marker files hold ``frame // 100`` in channel 0 and ``frame % 100`` in channel 1 as
    S16 integers (S32: the same shifted left by 16), i.e. ``value / 2**15`` after decoding
    either format.
    """
    ints = np.rint(samples[:2].astype(np.float64) * 2 ** 15).astype(np.int64)
    return ints[0] * 100 + ints[1]


def _defines(conf: Path, name: str) -> bool:
    try:
        text = conf.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(rf"^\s*pcm\.{re.escape(name)}\s*\{{", text, re.MULTILINE) is not None


@dataclass
class FakeAlsa:
    """Where the fake devices live and how to add more."""

    dir: Path
    """Folder of the fixture's own files (its configs, raw files written by tests)."""
    base_confs: list[Path]
    """Configs it includes: the built (or reused) ``mica-alsa.conf``."""
    built: bool
    """True when the plugin was built by the fixture, False when a preset config is reused."""
    pcms: dict[str, str] = field(default_factory=dict)
    """PCMs added by tests: name -> definition."""
    conf_path: Path | None = None
    """The config ``ALSA_CONFIG_PATH`` points at now (a new file after each addition)."""

    def _write_conf(self) -> None:
        """Write the next version of the config and point ``ALSA_CONFIG_PATH`` at it."""
        lines = ["# Written by tests/fixtures_alsa.py: the fake devices plus those tests add."]
        lines += [f"<{p}>" for p in self.base_confs]
        lines += list(self.pcms.values())
        path = self.dir / f"tests-alsa.{len(self.pcms)}.conf"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.conf_path = path
        os.environ["ALSA_CONFIG_PATH"] = str(path)   # a new name: alsa-lib reloads on next open

    def add_pcm(self, name: str, raw_path: str | Path, channels: int, fs_hz: int,
                fmt: str = "S16_LE", loop: bool = True, ppm: float = 0.0) -> str:
        """Define capture PCM ``name`` playing interleaved raw ``raw_path`` in real time.

        Paced at ``fs_hz * (1 + ppm/1e6)``, real overruns, looping or silent after the end.
        Usable from the next PCM open on (see the module doc). Returns ``name``.
        """
        if not _NAME_RE.match(name):
            raise ValueError(f"bad PCM name {name!r}")
        if name in self.pcms or name in ("mic4", "mic4_fast", "mic8", "file4", "fifo4"):
            raise ValueError(f"PCM {name!r} is already defined")
        if fmt not in PLUGIN_FORMATS:
            raise ValueError(f"the fakemic plugin plays {PLUGIN_FORMATS}, not {fmt!r} "
                             "(S24_3LE is covered by the PCM codec tests)")
        raw = Path(raw_path).resolve()
        size = raw.stat().st_size
        if size == 0 or size % frame_bytes(fmt, channels):
            raise ValueError(f"{raw}: {size} bytes is not whole {channels}-ch {fmt} frames")
        self.pcms[name] = (
            f'pcm.{name} {{ type fakemic file "{raw}" channels {int(channels)} '
            f'rate {int(fs_hz)} format "{fmt}" loop {"true" if loop else "false"} '
            f'ppm {float(ppm)} }}')
        self._write_conf()
        return name

    def add_pcm_from_samples(self, name: str, samples: np.ndarray, fs_hz: int,
                             fmt: str = "S16_LE", loop: bool = True, ppm: float = 0.0) -> str:
        """Write float ``(n_ch, n)`` samples as a raw file in :attr:`dir`, then :meth:`add_pcm`."""
        x = np.atleast_2d(np.asarray(samples, dtype=np.float32))
        raw = self.dir / f"{name}.raw"
        raw.write_bytes(float_to_pcm(x, fmt))
        return self.add_pcm(name, raw, x.shape[0], fs_hz, fmt, loop=loop, ppm=ppm)


def _preset_confs() -> list[Path] | None:
    """The configs in an already set ``ALSA_CONFIG_PATH`` if they define the marker PCMs."""
    value = os.environ.get("ALSA_CONFIG_PATH", "")
    confs = [Path(p) for p in re.split(r"[:\s]+", value) if p]
    if confs and all(any(_defines(c, n) for c in confs) for n in MARKER_PCMS):
        return confs
    return None


def build_fake_alsa(dest: Path) -> Path:
    """Build the plugin and marker files into ``dest``; return its ``mica-alsa.conf``.

    Fails the test session (``pytest.fail``) when anything needed is missing.
    """
    tools = fakemic_tools_dir()
    script = tools / "setup_fake_alsa.sh"
    if not script.is_file():
        pytest.fail(f"fake ALSA tools not found at {tools} (set MICA_SHARED)")
    for tool in ("gcc", "bash"):
        if shutil.which(tool) is None:
            pytest.fail(f"fake ALSA needs {tool}: apt-get install -y --no-install-recommends "
                        "libasound2-dev alsa-utils gcc")
    proc = subprocess.run(["bash", str(script), str(dest)], capture_output=True, text=True,
                          check=False, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})
    conf = dest / "mica-alsa.conf"
    if proc.returncode != 0 or not conf.is_file():
        pytest.fail(f"building the fake ALSA plugin failed (exit {proc.returncode}; needs "
                    f"libasound2-dev and gcc):\n{proc.stdout}\n{proc.stderr}")
    return conf


@pytest.fixture(scope="session")
def fake_alsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAlsa]:
    """Fake ALSA capture devices for the whole session (see the module doc)."""
    root = tmp_path_factory.mktemp("fake_alsa")
    preset = _preset_confs()
    if preset is not None:
        bases, built = preset, False
    else:
        bases, built = [build_fake_alsa(root / "build")], True
    old = os.environ.get("ALSA_CONFIG_PATH")
    fa = FakeAlsa(dir=root, base_confs=bases, built=built)
    fa._write_conf()
    try:
        yield fa
    finally:
        if old is None:
            os.environ.pop("ALSA_CONFIG_PATH", None)
        else:
            os.environ["ALSA_CONFIG_PATH"] = old
