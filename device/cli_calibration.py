"""``mica boards``, ``mica calibrate`` and ``mica usb``: board profiles, calibration from a
recording, and control of XMOS USB arrays."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mica.array_dsp.errors import MicaError

if TYPE_CHECKING:
    import numpy as np

    from mica.calibration.procedure import CalibrationReport

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def register(sub: Any) -> None:
    """Add the ``boards``, ``calibrate`` and ``usb`` sub-commands to ``mica``'s parser."""
    boards = sub.add_parser("boards", help="list the built-in board profiles (or show one)")
    boards.add_argument("name", nargs="?", help="show this profile with the source of every "
                        "number")
    boards.set_defaults(func=_cmd_boards)

    cal = sub.add_parser("calibrate", help="measure gains, dead mics, channel order, mic "
                         "delays and device drift from a recording (or live) and write a "
                         "calibration file")
    cal.add_argument("recording", type=Path, nargs="*", help="multichannel WAV of one source "
                     "(talker or loudspeaker, 1 m or more away), as captured (all channels) "
                     "or mics only; several files: one per capture device, in geometry row "
                     "order")
    cal.add_argument("--live", action="store_true", help="record from the configured capture "
                     "device(s) instead of a file")
    cal.add_argument("--seconds", type=float, default=10.0, help="--live: seconds to record "
                     "(default 10; 20 or more for a drift within 1 ppm)")
    cal.add_argument("--save-recording", type=Path, metavar="WAV", help="--live: also keep "
                     "the recording")
    geo = cal.add_mutually_exclusive_group()
    geo.add_argument("--board", metavar="NAME", help="board profile (mica boards)")
    geo.add_argument("--array", type=Path, metavar="JSON", help="geometry sidecar (geometry_m)")
    cal.add_argument("--config", type=Path, metavar="TOML", help="daemon config: capture "
                     "device(s), geometry and mic channels (with --board: the file over the "
                     "profile)")
    cal.add_argument("--noise", type=Path, metavar="WAV", help="diffuse-noise recording for the "
                     "gains (default: the main recording)")
    cal.add_argument("--played", type=Path, metavar="WAV", help="the signal the loudspeaker "
                     "played (a sweep): mic delays, and without --noise the gains, measured "
                     "against it")
    cal.add_argument("--device-split", metavar="N,N,...", help="the recording's mics come "
                     "from several devices: mics per device, in order (first: clock "
                     "reference)")
    cal.add_argument("--azimuth", type=float, metavar="DEG", help="source azimuth in the "
                     "profile frame, if known: pins down the order of symmetric arrays and "
                     "the mic delays")
    cal.add_argument("--elevation", type=float, metavar="DEG", help="source elevation, if known")
    cal.add_argument("--min-confidence", type=float, default=0.5, help="write a new channel "
                     "order only above this confidence (default 0.5)")
    cal.add_argument("--min-delay-us", type=float, default=None, metavar="US", help="write "
                     "mic delay corrections only when one reaches this (default 10 us)")
    cal.add_argument("--out", type=Path, help="calibration JSON to write (default: print only)")
    cal.add_argument("--json", action="store_true", help="print the result as JSON")
    cal.set_defaults(func=_cmd_calibrate)

    usb = sub.add_parser("usb", help="XMOS USB arrays (ReSpeaker USB Mic Array): list, get, "
                         "set tuning parameters")
    add_usb_arguments(usb)
    usb.set_defaults(func=lambda a: run_usb(a))


# --------------------------------------------------------------------------- boards


def _cmd_boards(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from mica.calibration.profiles import list_profiles, load_profile

    if args.name:
        p = load_profile(args.name)
        out.write(f"{p.name}: {p.title}\n")
        out.write(f"  mics {p.n_mics}, aperture {p.aperture_m * 1000:.1f} mm, capture "
                  f"{p.channels} ch {p.format} at {p.fs_hz} Hz\n")
        out.write(f"  mic channels {list(p.mic_channels)}, reference channels "
                  f"{list(p.reference_channels)}, processed {list(p.processed_channels)}\n")
        out.write(f"  ALSA: {', '.join(p.alsa_device_hints)}\n")
        for k, row in enumerate(p.geometry.positions_m):
            out.write(f"  mic {k}: channel {p.mic_channels[k]}, "
                      f"[{row[0]:+.4f}, {row[1]:+.4f}, {row[2]:+.4f}] m, "
                      f"nominal {p.nominal_gain_db[k]:+.1f} dB\n")
        out.write("  sources:\n")
        for key, text in p.sources.items():
            out.write(f"    {key}: {text}\n")
        if p.notes:
            out.write(f"  notes: {p.notes}\n")
        return EXIT_OK
    for name in list_profiles():
        p = load_profile(name)
        out.write(f"{name:24s} {p.n_mics} mics, {p.aperture_m * 1000:5.1f} mm, "
                  f"{p.channels} ch {p.format}  {p.title}\n")
    return EXIT_OK


# --------------------------------------------------------------------------- calibrate


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    from mica.array_dsp.errors import AudioFileError

    try:
        data, fs = sf.read(str(path), dtype="float64", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError) as err:
        raise AudioFileError(f"{path}: cannot read: {err}") from err
    return data.T, int(fs)


@dataclass
class _Array:
    """What the calibration is measured against (profile, sidecar or daemon config)."""

    positions_m: Any
    mic_channels: list[int]
    capture_channels: int | None
    board: str
    cfg: Any = None


def _array_from_args(args: argparse.Namespace) -> _Array:
    from mica.array_dsp.geometry import load_geometry_json
    from mica.calibration.profiles import load_profile

    if args.config is not None or (args.live and args.board):
        from mica.device.config import load_config
        from mica.device.service import resolve_geometry

        cfg = load_config(args.config, board=args.board)
        geom = resolve_geometry(cfg)
        mics = list(cfg.array.mic_channels) or list(range(geom.n_channels))
        board = args.board or cfg.device.board
        return _Array(geom.positions_m, mics, cfg.capture.channels, board, cfg)
    if args.board:
        profile = load_profile(args.board)
        return _Array(profile.geometry.positions_m, list(profile.mic_channels),
                      profile.channels, profile.name)
    if args.array:
        geom = load_geometry_json(args.array)
        return _Array(geom.positions_m, list(range(geom.n_channels)), None, "")
    raise CalibrationUsageError("give the array: --board NAME, --array JSON or --config TOML")


class CalibrationUsageError(MicaError):
    """The calibrate command line does not describe a measurement."""


def record_live(cfg: Any, seconds: float, mic_channels: list[int] | None = None
                ) -> tuple[np.ndarray, int, list[tuple[str, list[int]]]]:
    """Record ``seconds`` from the capture device(s) of ``cfg`` (the daemon's sources).

    Returns the mics ``(n_mics, n)`` in geometry row order, the rate, and for several
    devices (``[[capture.devices]]``) each device's name and geometry rows.
    """
    import threading

    import numpy as np

    from mica.device.sources.factory import open_source

    cap = cfg.capture
    n_blocks = max(1, int(round(seconds * cap.fs_hz / cap.period_frames)))
    if cap.devices:
        from mica.device.multi_capture import clock_reference_index
        from mica.device.sources.alsa import AlsaSource

        # a playback loopback (role "reference") holds no microphones: not calibrated
        mic_devices = [d for d in cap.devices if d.role != "reference"]
        sources = []
        groups: list[tuple[str, list[int]]] = []
        try:
            for dev in mic_devices:
                mics = list(dev.mic_channels) or list(range(dev.channels))
                sources.append(AlsaSource(dev.alsa_device, channels=dev.channels,
                                          fs_hz=cap.fs_hz, format=dev.format,
                                          period_frames=cap.period_frames,
                                          periods=cap.periods, select=mics))
                groups.append((dev.alsa_device, list(dev.geometry_rows)))
        except BaseException:
            for src in sources:
                src.close()
            raise
        # the reference device first: it is the clock the others are measured against
        ref = clock_reference_index(mic_devices)
        order = [ref] + [i for i in range(len(sources)) if i != ref]
    else:
        sources = [open_source(cap, mic_channels)]
        groups = []
        order = [0]
    chunks: list[list[np.ndarray]] = [[] for _ in sources]
    errors: list[BaseException] = []

    def read_all(i: int) -> None:
        try:
            for _ in range(n_blocks):
                chunks[i].append(sources[i].read().samples)
        except BaseException as err:  # reported below, in the caller's thread
            errors.append(err)

    threads = [threading.Thread(target=read_all, args=(i,), daemon=True)
               for i in range(len(sources))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for src in sources:
            src.close()
    if errors:
        raise errors[0]
    per_dev = [np.concatenate(c, axis=1).astype(np.float64) for c in chunks]
    fs = int(getattr(sources[0], "fs_hz", cap.fs_hz))
    if not groups:
        return per_dev[0], fs, []
    n = min(d.shape[1] for d in per_dev)
    n_rows = sum(len(g) for _, g in groups)
    x = np.zeros((n_rows, n))
    for (_, rows), d in zip(groups, per_dev, strict=True):
        x[rows] = d[:, :n]
    return x, fs, [groups[i] for i in order]


def _read_recordings(paths: list[Path]) -> tuple[np.ndarray, int, list[tuple[str, list[int]]]]:
    """One or several WAVs (one per device) as one ``(n_ch, n)`` signal and its groups."""
    import numpy as np

    from mica.calibration.measure import CalibrationError

    parts = [_read_wav(p) for p in paths]
    rates = {fs for _, fs in parts}
    if len(rates) != 1:
        raise CalibrationError(f"recordings at different rates {sorted(rates)} Hz: "
                               f"{', '.join(map(str, paths))}")
    n = min(x.shape[1] for x, _ in parts)
    x = np.concatenate([x[:, :n] for x, _ in parts], axis=0)
    groups, row = [], 0
    for p, (xi, _) in zip(paths, parts, strict=True):
        groups.append((p.name, list(range(row, row + xi.shape[0]))))
        row += xi.shape[0]
    return x, rates.pop(), (groups if len(paths) > 1 else [])


def _split_groups(spec: str, n: int) -> list[tuple[str, list[int]]]:
    try:
        sizes = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if len(sizes) < 2 or any(s < 1 for s in sizes) or sum(sizes) != n:
        raise CalibrationUsageError(f"--device-split {spec!r}: give the mics of each device, "
                                    f"two or more positive counts adding up to {n}")
    groups, row = [], 0
    for i, size in enumerate(sizes):
        groups.append((f"device{i}", list(range(row, row + size))))
        row += size
    return groups


def calibrate(recording: Path | list[Path], positions_m: np.ndarray, mic_channels: list[int],
              capture_channels: int | None = None, noise: Path | None = None,
              azimuth_deg: float | None = None, elevation_deg: float | None = None,
              min_confidence: float = 0.5, board: str = "", played: Path | None = None,
              device_split: str | None = None, min_delay_us: float | None = None
              ) -> CalibrationReport:
    """Run every procedure on recorded file(s) (see :mod:`mica.calibration.procedure`)."""
    from mica.calibration.delays import MIN_DELAY_US

    paths = recording if isinstance(recording, list) else [recording]
    x_all, fs, groups = _read_recordings(paths)
    if len(paths) > 1 and x_all.shape[0] != len(mic_channels):
        from mica.calibration.measure import CalibrationError

        raise CalibrationError(f"{len(paths)} recordings hold {x_all.shape[0]} channels in "
                               f"all; one file per device needs the {len(mic_channels)} mics "
                               "only, in geometry row order")
    return _run(x_all, fs, positions_m, mic_channels, capture_channels, noise, azimuth_deg,
                elevation_deg, min_confidence, board, ", ".join(map(str, paths)), played,
                device_split, groups, MIN_DELAY_US if min_delay_us is None else min_delay_us)


def _run(x_all: np.ndarray, fs: int, positions_m: np.ndarray, mic_channels: list[int],
         capture_channels: int | None, noise: Path | None, azimuth_deg: float | None,
         elevation_deg: float | None, min_confidence: float, board: str, recording: str,
         played: Path | None, device_split: str | None,
         groups: list[tuple[str, list[int]]], min_delay_us: float) -> CalibrationReport:
    from mica.calibration.measure import CalibrationError
    from mica.calibration.procedure import calibrate_samples

    noise_x = None
    if noise is not None:
        noise_x, fs_n = _read_wav(noise)
        if fs_n != fs:
            raise CalibrationError(f"{noise}: {fs_n} Hz, the recording {fs} Hz")
    played_x = None
    if played is not None:
        p, fs_p = _read_wav(played)
        if fs_p != fs:
            raise CalibrationError(f"{played}: {fs_p} Hz, the recording {fs} Hz")
        played_x = p.mean(axis=0)
    if device_split:
        if groups:
            raise CalibrationUsageError("--device-split is for one recording holding every "
                                        "device's mics; several files already split them")
        groups = _split_groups(device_split, len(mic_channels))
    return calibrate_samples(x_all, fs, positions_m, mic_channels, capture_channels, noise_x,
                             azimuth_deg, elevation_deg, min_confidence, board, recording,
                             str(noise) if noise else None, played_x, groups or None,
                             min_delay_us)


def _cmd_calibrate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from mica.calibration.calfile import save_calibration
    from mica.calibration.delays import MIN_DELAY_US

    min_delay = MIN_DELAY_US if args.min_delay_us is None else args.min_delay_us
    try:
        if args.live == bool(args.recording):
            raise CalibrationUsageError("give a recording or --live (not both)")
        arr = _array_from_args(args)
        if args.live:
            if arr.cfg is None:
                raise CalibrationUsageError("--live needs the capture device: --board NAME "
                                            "and/or --config TOML")
            if not args.seconds > 0:
                raise CalibrationUsageError(f"--seconds must be > 0, got {args.seconds}")
            out.write(f"recording {args.seconds:g} s from "
                      + (", ".join(d.alsa_device for d in arr.cfg.capture.devices
                                   if d.role != "reference")
                         or arr.cfg.capture.alsa_device) + " ...\n")
            out.flush()
            mics = list(arr.cfg.array.mic_channels) or None
            x, fs, groups = record_live(arr.cfg, args.seconds, mics)
            name = f"live:{arr.cfg.capture.alsa_device}"
            if args.save_recording:
                import soundfile as sf

                sf.write(str(args.save_recording), x.T, fs, subtype="FLOAT")
                name = str(args.save_recording)
            report = _run(x, fs, arr.positions_m, arr.mic_channels, arr.capture_channels,
                          args.noise, args.azimuth, args.elevation, args.min_confidence,
                          arr.board, name, args.played, args.device_split, groups, min_delay)
        else:
            report = calibrate(list(args.recording), arr.positions_m, arr.mic_channels,
                               arr.capture_channels, args.noise, args.azimuth, args.elevation,
                               args.min_confidence, arr.board, args.played, args.device_split,
                               min_delay)
    except CalibrationUsageError as err:
        sys.stderr.write(f"mica calibrate: {err}\n")
        return EXIT_USAGE
    cal = report.calibration
    if args.json:
        out.write(json.dumps(cal.to_dict(), indent=2) + "\n")
    else:
        out.write("\n".join(report.summary) + "\n")
    if args.out:
        save_calibration(cal, args.out)
        out.write(f"wrote {args.out} (set array.calibration_file to use it)\n")
    return EXIT_OK


# --------------------------------------------------------------------------- usb


def add_usb_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", metavar="BUS:ADDRESS", help="which array when several are "
                        "plugged in (see mica usb list)")
    parser.add_argument("--timeout-ms", type=int, default=1000, help="control transfer timeout")
    usub = parser.add_subparsers(dest="usb_command", required=True)
    usub.add_parser("list", help="arrays plugged in")
    usub.add_parser("params", help="the parameter table")
    get = usub.add_parser("get", help="read parameters")
    get.add_argument("names", nargs="*", metavar="NAME", help="parameter names (default: all)")
    st = usub.add_parser("set", help="write a parameter")
    st.add_argument("name", metavar="NAME")
    st.add_argument("value", metavar="VALUE")
    usub.add_parser("raw", help="switch the board's own AGC, noise and echo suppression off "
                    "(mica processes the raw channels)")


def run_usb(args: argparse.Namespace, backend: Any = None, out: TextIO | None = None,
            err: TextIO | None = None) -> int:
    """Run ``mica usb ...``; USB problems are reported on ``err`` with exit code 1 (2 for a
    bad parameter name or value), never as a traceback."""
    from mica.device import usb_xmos as ux

    out = out or sys.stdout
    err = err or sys.stderr
    cmd = args.usb_command
    try:
        if cmd == "params":
            for p in sorted(ux.PARAMETERS.values(), key=lambda q: q.name):
                out.write(f"{p.name:22s} {p.type:5s} {'rw' if p.writable else 'ro'} "
                          f"[{p.min:g} .. {p.max:g}]  {p.doc}\n")
            return EXIT_OK
        if cmd == "get":  # check names before touching USB
            for name in args.names:
                ux.parameter(name)
        if cmd == "list":
            arrays = ux.find_arrays(backend, timeout_ms=args.timeout_ms)
            if not arrays:
                out.write("no XMOS USB array found\n")
                return EXIT_OK
            for a in arrays:
                try:
                    version = f"protocol version {a.version()}"
                except ux.UsbError as e:
                    version = f"version unreadable: {e}"
                out.write(f"{a.location}  {ux.XMOS_VENDOR_ID:04x}:{ux.XVF3000_PRODUCT_ID:04x}  "
                          f"ReSpeaker USB Mic Array (XVF-3000), {version}\n")
            return EXIT_OK
        arr = ux.open_array(backend, args.device, timeout_ms=args.timeout_ms)
        try:
            if cmd == "get":
                names = args.names or sorted(ux.PARAMETERS)
                for name in names:
                    value = arr.read(name)
                    shown = f"{value:.6g}" if isinstance(value, float) else str(value)
                    out.write(f"{ux.parameter(name).name} {shown}\n")
            elif cmd == "set":
                arr.write(args.name, args.value)
                value = arr.read(args.name)
                out.write(f"{ux.parameter(args.name).name} {value:.6g}\n"
                          if isinstance(value, float) else
                          f"{ux.parameter(args.name).name} {value}\n")
            elif cmd == "raw":
                arr.disable_onboard_processing()
                out.write("on-board AGC, noise and echo suppression off\n")
        finally:
            arr.close()
        return EXIT_OK
    except ux.ParameterError as e:
        err.write(f"mica usb: {e}\n")
        return EXIT_USAGE
    except MicaError as e:
        err.write(f"mica usb: {e}\n")
        return EXIT_ERROR


def usb_main(argv: list[str], backend: Any = None, out: TextIO | None = None,
             err: TextIO | None = None) -> int:
    """``mica usb ARGV...`` with an explicit pyusb backend (tests, tools)."""
    parser = argparse.ArgumentParser(prog="mica usb")
    add_usb_arguments(parser)
    return run_usb(parser.parse_args(argv), backend, out, err)
