"""``mica drift A.wav B.wav ...``: the clock drift between recordings of separate devices.

Each file is one capture device (the first is the clock reference); the estimate comes
from the signal alone, streamed through the daemon's aligner
(:func:`~mica.device.multi_file.align_recordings`). Prints one JSON line per second and
non-reference device::

    {"t_s": 10.0, "device": "B.wav", "drift_ppm": 99.87, "offset_samples": 40.3,
     "locked": true, "lock": "locked"}

``offset_samples`` is the device's sample index minus the reference's at that moment
(at the files' rate), ``drift_ppm`` how much faster the device's clock runs. Without
``--array`` the offset includes the acoustic delay between the devices' first channels of
whichever source dominates; with ``--array GEOMETRY.json`` and the look direction it is
measured on the talker there and its acoustic delay is taken out (the devices' own
offset), as ``mica enhance`` and the daemon align.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    """Add the ``drift`` sub-command to ``mica``'s parser."""
    drift = sub.add_parser(
        "drift",
        help="estimate the clock drift between recordings made by "
        "separate devices (JSON lines, one per second and device)",
    )
    drift.add_argument(
        "inputs",
        type=Path,
        nargs="+",
        metavar="WAV",
        help="one recording per device, the first is the clock reference",
    )
    drift.add_argument(
        "--max-offset-ms",
        type=float,
        default=250.0,
        help="how far apart the files may start (default 250 ms)",
    )
    drift.add_argument(
        "--array",
        type=Path,
        default=None,
        metavar="GEOMETRY.json",
        help="geometry of all the files' channels (in file order): the offset is then "
        "measured on the talker in the look direction and reported without its acoustic delay",
    )
    drift.add_argument(
        "--steer-azimuth", type=float, default=0.0, metavar="DEG", help="look azimuth (default 0)"
    )
    drift.add_argument(
        "--steer-elevation",
        type=float,
        default=0.0,
        metavar="DEG",
        help="look elevation (default 0)",
    )
    drift.set_defaults(func=_cmd_drift)


def _cmd_drift(args: argparse.Namespace) -> int:
    from mica.array_dsp.drift import DriftSettings
    from mica.array_dsp.errors import ConfigError
    from mica.array_dsp.geometry import load_geometry_json
    from mica.device.multi_file import align_device_files

    if len(args.inputs) < 2:
        raise ConfigError(["drift: give at least two recordings (the first is the reference)"])
    if not args.max_offset_ms > 0:
        raise ConfigError([f"--max-offset-ms: must be > 0, got {args.max_offset_ms}"])

    def emit(row: dict[str, Any]) -> None:
        keys = ("t_s", "device", "drift_ppm", "offset_samples", "locked", "lock")
        print(json.dumps({k: row[k] for k in keys}), flush=True)

    geometry = None if args.array is None else load_geometry_json(args.array)
    settings = DriftSettings(max_offset_s=args.max_offset_ms / 1e3)
    _, _, result = align_device_files(
        list(args.inputs),
        geometry,
        args.array,
        None,
        args.steer_azimuth,
        args.steer_elevation,
        settings,
        on_second=emit,
    )
    for event in result.events:
        log.info("drift event: %s", event)
    if not result.per_second:
        print(
            f"mica drift: {args.inputs[0]} is shorter than one second: no estimate", file=sys.stderr
        )
        return 1
    return 0
