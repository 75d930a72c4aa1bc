"""``mica boards``, ``mica calibrate`` and ``mica usb``: board profiles, calibration from a
recording, and control of XMOS USB arrays."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mica.array_dsp.errors import MicaError

if TYPE_CHECKING:
    import numpy as np

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

    cal = sub.add_parser("calibrate", help="measure gains, dead mics and channel order from a "
                         "recording and write a calibration file")
    cal.add_argument("recording", type=Path, help="multichannel WAV of one source (talker or "
                     "loudspeaker, 1 m or more away), as captured (all channels) or mics only")
    geo = cal.add_mutually_exclusive_group(required=True)
    geo.add_argument("--board", metavar="NAME", help="board profile (mica boards)")
    geo.add_argument("--array", type=Path, metavar="JSON", help="geometry sidecar (geometry_m)")
    cal.add_argument("--noise", type=Path, metavar="WAV", help="diffuse-noise recording for the "
                     "gains (default: the main recording)")
    cal.add_argument("--azimuth", type=float, metavar="DEG", help="source azimuth in the "
                     "profile frame, if known: pins down the order of symmetric arrays")
    cal.add_argument("--elevation", type=float, metavar="DEG", help="source elevation, if known")
    cal.add_argument("--min-confidence", type=float, default=0.5, help="write a new channel "
                     "order only above this confidence (default 0.5)")
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


def _select_mics(x: np.ndarray, channels: int | None, mic_channels: list[int],
                 path: Path) -> tuple[np.ndarray, list[int]]:
    """The mic channels of a recording and their capture channel numbers."""
    from mica.calibration.measure import CalibrationError

    n_mics = len(mic_channels)
    if x.shape[0] == n_mics:
        return x, list(mic_channels)
    if channels is not None and x.shape[0] == channels:
        return x[mic_channels], list(mic_channels)
    raise CalibrationError(f"{path}: {x.shape[0]} channel(s); expected {n_mics} (mics only)"
                           + (f" or {channels} (as captured)" if channels else ""))


def calibrate(recording: Path, positions_m: np.ndarray, mic_channels: list[int],
              capture_channels: int | None = None, noise: Path | None = None,
              azimuth_deg: float | None = None, elevation_deg: float | None = None,
              min_confidence: float = 0.5, board: str = "") -> dict[str, Any]:
    """Run every procedure on a recording; return the report and the :class:`Calibration`.

    The report (a dict) holds ``health``, ``gains``, ``order``, ``summary`` (lines for a
    technician) and ``calibration`` (the object to save).
    """
    import numpy as np

    from mica.calibration.calfile import Calibration, utc_now
    from mica.calibration.measure import channel_health, check_channel_order, estimate_gains

    x_all, fs = _read_wav(recording)
    x, chans = _select_mics(x_all, capture_channels, mic_channels, recording)
    n = len(chans)
    health = channel_health(x, fs)
    dead = health.dead
    live = [i for i in range(n) if i not in dead]
    if noise is not None:
        xn_all, fs_n = _read_wav(noise)
        xn, _ = _select_mics(xn_all, capture_channels, mic_channels, noise)
        gains = estimate_gains(xn, fs_n, exclude=dead)
    else:
        gains = estimate_gains(x, fs, exclude=dead)
    # order among the live channels; a dead channel keeps its profile mic
    order = None
    mic_of_channel = np.arange(n)
    if len(live) >= 2:
        order = check_channel_order(x[live], fs, np.asarray(positions_m)[live], azimuth_deg,
                                    elevation_deg)
        mic_of_channel[live] = np.asarray(live)[order.mic_of_channel]
    reorder = (order is not None and not order.is_identity
               and order.confidence >= min_confidence)
    use_map = mic_of_channel if reorder else np.arange(n)
    channel_of_mic = np.argsort(use_map)
    gain_db = [float(gains.correction_db[channel_of_mic[k]]) for k in range(n)]
    excluded = sorted(int(use_map[i]) for i in dead)
    cal = Calibration(
        n_mics=n, gain_db=tuple(gain_db), excluded_mics=tuple(excluded),
        mic_channels=tuple(int(chans[channel_of_mic[k]]) for k in range(n)) if reorder
        else None,
        board=board, created_utc=utc_now(),
        method=("gain: diffuse-noise PSD ratio vs array median "
                f"({gains.band_hz[0]:.0f}-{gains.band_hz[1]:.0f} Hz); order: GCC-PHAT "
                "delays vs far-field model; dead mic: level/coherence"),
        recording=str(recording),
        measurements={
            "level_db": [round(float(v), 3) for v in gains.level_db],
            "gain_spread_db": [round(float(v), 3) for v in gains.spread_db],
            "rms_dbfs": [round(float(v), 2) for v in health.rms_dbfs],
            "verdicts": health.verdicts,
            "order_confidence": None if order is None else round(order.confidence, 3),
            "order_rms_us": None if order is None else round(order.rms_us, 2),
            "order_mic_of_channel": [int(v) for v in mic_of_channel],
            "source_azimuth_deg": None if order is None else round(order.azimuth_deg, 1),
            "noise_recording": str(noise) if noise else None,
        })
    summary = _summary(chans, health, gains, order, mic_of_channel, reorder, min_confidence)
    return {"health": health, "gains": gains, "order": order, "summary": summary,
            "calibration": cal, "mic_of_channel": mic_of_channel}


def _summary(chans: list[int], health: Any, gains: Any, order: Any, mic_of_channel: np.ndarray,
             reorder: bool, min_confidence: float) -> list[str]:
    import numpy as np

    lines = ["channel  mic  level    rel.level  gain fix  verdict"]
    for i, ch in enumerate(chans):
        lines.append(f"{ch:7d}  {int(mic_of_channel[i]):3d}  {health.rms_dbfs[i]:6.1f} dBFS "
                     f"{gains.level_db[i]:+6.2f} dB {gains.correction_db[i]:+6.2f} dB  "
                     f"{health.verdicts[i]}")
    dead = health.dead
    lines.append(f"dead mics: {', '.join(f'channel {chans[i]}' for i in dead) or 'none'}")
    spread = float(np.max(gains.spread_db))
    lines.append(f"gains: max spread of the per-band estimates {spread:.2f} dB"
                 + (" (noise not diffuse enough: use --noise with a fan or pink noise)"
                    if spread > 3.0 else ""))
    if order is None:
        lines.append("channel order: not checked (fewer than 2 live mics)")
    else:
        found = [int(m) for m in mic_of_channel]
        verdict = ("matches the profile" if order.is_identity else
                   f"DIFFERS from the profile: channels carry mics {found}")
        lines.append(f"channel order: {verdict}; confidence {order.confidence:.2f} "
                     f"(fit {order.rms_us:.1f} us, next {order.rms_next_us:.1f} us), "
                     f"source at {order.azimuth_deg:.0f} deg")
        if not order.is_identity and not reorder:
            lines.append(f"  not written: confidence below {min_confidence}")
        lines.extend(f"  note: {n}" for n in order.notes)
    return lines


def _cmd_calibrate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from mica.array_dsp.geometry import load_geometry_json
    from mica.calibration.calfile import save_calibration
    from mica.calibration.profiles import load_profile

    if args.board:
        profile = load_profile(args.board)
        positions, chans, capture = (profile.geometry.positions_m, list(profile.mic_channels),
                                     profile.channels)
        board = profile.name
    else:
        geom = load_geometry_json(args.array)
        positions, chans, capture, board = (geom.positions_m, list(range(geom.n_channels)),
                                            None, "")
    report = calibrate(args.recording, positions, chans, capture, args.noise, args.azimuth,
                       args.elevation, args.min_confidence, board)
    cal = report["calibration"]
    if args.json:
        out.write(json.dumps(cal.to_dict(), indent=2) + "\n")
    else:
        out.write("\n".join(report["summary"]) + "\n")
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
