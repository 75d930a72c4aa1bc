"""The ``mica`` command line: run, demo, enhance, config check."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from mica.array_dsp.errors import ConfigError, MicaError

log = logging.getLogger("mica")

EXIT_CONFIG = 2
EXIT_ERROR = 1

COMMAND_GROUP = "mica.commands"
"""Entry-point group through which packages add ``mica`` sub-commands (``mica eval`` comes
from ``mica.evaluation`` this way, so the board code never imports the evaluation package).
Each entry point is ``register(subparsers) -> None``; the parser it adds sets ``func``."""


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _cmd_config_check(args: argparse.Namespace) -> int:
    from mica.device.config import load_config

    try:
        cfg = load_config(args.file)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.file}: ok (config hash {cfg.config_hash})")
    return 0


def _cmd_config_example(_: argparse.Namespace) -> int:
    print((resources.files("mica.device") / "data" / "mica.example.toml").read_text(), end="")
    return 0


STALL_ENV = "MICA_TEST_STALL_DSP_AFTER_S"
"""Fault injection for the watchdog tests: when set, the DSP thread blocks for good this many
seconds after its first block, so systemd sees the watchdog pings stop."""


def _stall_hook() -> Callable[[object], None] | None:
    value = os.environ.get(STALL_ENV)
    if not value:
        return None
    after_s = float(value)
    state: dict[str, float] = {}

    def hook(_block: object) -> None:
        t0 = state.setdefault("t0", time.monotonic())
        if time.monotonic() - t0 >= after_s:
            log.warning("%s: stalling the DSP thread for good", STALL_ENV)
            threading.Event().wait()

    return hook


def install_mute_signals(service: Any) -> dict[int, Any]:
    """Privacy mute by signal: SIGUSR1 mutes, SIGUSR2 unmutes (each idempotent, so a
    repeated or lost signal cannot leave the opposite state, as a toggle could). Main thread
    only. Returns the handlers it replaced, by signal number."""
    old = {}
    for signum, muted in ((signal.SIGUSR1, True), (signal.SIGUSR2, False)):
        name = signal.Signals(signum).name

        def handler(_signum: int, _frame: object, muted: bool = muted, name: str = name) -> None:
            service.set_muted(muted, f"signal {name}")

        old[signum] = signal.signal(signum, handler)
    return old


def _cmd_run(args: argparse.Namespace) -> int:
    from mica.device.config import load_config
    from mica.device.service import Service

    cfg = load_config(args.config, board=args.board)
    _setup_logging(args.log_level or cfg.service.log_level)
    service = Service(cfg, dsp_hook=_stall_hook())
    service.config_path = str(args.config) if args.config else None  # for `reload`

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        service.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    install_mute_signals(service)
    service.start()
    log.info("running: device %s, publishing under %s/", cfg.device.id, cfg.topic_base)
    service.wait()
    service.stop(timeout_s=1.0)
    return EXIT_ERROR if service.fault else 0


def _channel_list(text: str) -> list[int]:
    """``"6,7"`` -> ``[6, 7]`` (argparse type)."""
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected channel numbers like 6,7, got {text!r}"
                                         ) from err


def _cmd_enhance(args: argparse.Namespace) -> int:
    from mica.device.enhance_file import enhance_file

    _setup_logging(args.log_level or "WARNING")
    steer, zones = args.steer, None
    if args.config is not None:
        from mica.device.config import load_config

        dsp = load_config(args.config).dsp
        zones = {name: (float(v[0]), float(v[1])) for name, v in dsp.zones.items()}
        if args.beamformer is None:
            args.beamformer = dsp.beamformer
        if steer is None and dsp.steer != "fixed":
            steer = dsp.steer
        if args.denoiser is None:
            args.denoiser = dsp.denoiser
    args.beamformer = args.beamformer or "das"
    args.denoiser = args.denoiser or "off"
    inputs = args.input if len(args.input) > 1 else args.input[0]
    summary = enhance_file(inputs, args.output, args.array,
                           steer_azimuth_deg=args.steer_azimuth,
                           steer_elevation_deg=args.steer_elevation,
                           beamformer=args.beamformer, steer=steer, zones=zones,
                           report_path=args.report,
                           denoiser=args.denoiser,
                           reference_channels=args.reference_channels)
    print(f"wrote {args.output}: {summary}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mica.device.cli_demo import run_demo

    _setup_logging(args.log_level or "WARNING")
    return run_demo(input_wav=args.input, array_json=args.array, broker=args.broker,
                    out_dir=args.out_dir, seconds=args.seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mica", description="Microphone-array speech enhancement daemon: ALSA in, "
        "clean speech and board health out over MQTT.")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="override the configured logging level")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, help="TOML config (default: built-in defaults)")
    run.add_argument("--board", metavar="NAME", help="board profile that fills the capture and "
                     "array settings (mica boards lists them); config keys override it")
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", help="replay a recording as the array through a private "
                          "broker and show live telemetry (no hardware needed)")
    demo.add_argument("--input", type=Path, help="multichannel WAV (default: a generated scene)")
    demo.add_argument("--array", type=Path, help="geometry JSON for --input")
    demo.add_argument("--broker", help="HOST:PORT of a broker to use when no mosquitto binary "
                      "is installed")
    demo.add_argument("--out-dir", type=Path, help="where to write the results "
                      "(default: a new temp folder)")
    demo.add_argument("--seconds", type=float, default=None,
                      help="stop after this long (default: the whole recording)")
    demo.set_defaults(func=_cmd_demo)

    enh = sub.add_parser("enhance", help="enhance a multichannel WAV file with the daemon's "
                         "streaming chain")
    enh.add_argument("input", type=Path, nargs="+", help="multichannel WAV, any rate; several: "
                     "one per capture device, each with its own clock (channels in geometry "
                     "order: the first file's, then the next's), aligned onto the first's")
    enh.add_argument("output", type=Path, help="16 kHz mono 16-bit WAV to write")
    enh.add_argument("--array", type=Path, required=True, help="geometry JSON (geometry_m)")
    enh.add_argument("--steer-azimuth", type=float, default=None, metavar="DEG",
                     help="look direction, degrees CCW from +x (default 0)")
    enh.add_argument("--steer-elevation", type=float, default=0.0, metavar="DEG",
                     help="look direction elevation in degrees (default 0)")
    enh.add_argument("--denoiser", choices=["off", "mmse", "model"], default=None,
                     help="post-filter on the beam output: off, mmse (statistical) or "
                     "model (the learned denoiser); default: dsp.denoiser of --config, "
                     "else off")
    enh.add_argument("--beamformer", choices=["das", "superdirective", "mvdr"], default=None,
                     help="das (delay-and-sum, default), superdirective or mvdr (online, "
                     "adaptive)")
    enh.add_argument("--steer", metavar="auto|AZIMUTH_DEG|zone:NAME", default=None,
                     help="auto: follow the talker's tracked direction; a number: azimuth "
                     "(like --steer-azimuth); zone:NAME: a zone from --config's [dsp.zones]")
    enh.add_argument("--config", type=Path, default=None,
                     help="daemon TOML: its [dsp] beamformer, steer and zones are the defaults")
    enh.add_argument("--report", type=Path, default=None, metavar="REPORT.json",
                     help="write a JSON report: per second DOA, speech presence, channels "
                     "used (and each device's clock drift when several files are given)")
    enh.add_argument("--reference-channels", type=_channel_list, default=None,
                     metavar="6,7", help="input channels carrying the playback loopback: "
                     "cancel the loudspeaker's echo (per mic, before the beamformer); the "
                     "other channels are the microphones")
    enh.set_defaults(func=_cmd_enhance)

    config = sub.add_parser("config", help="configuration tools")
    csub = config.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="report every problem in a config file")
    check.add_argument("file", type=Path)
    check.set_defaults(func=_cmd_config_check)
    example = csub.add_parser("example", help="print the documented example config")
    example.set_defaults(func=_cmd_config_example)

    from mica.device.cli_calibration import register as register_calibration

    register_calibration(sub)
    from mica.device.cli_devices import register as register_devices

    register_devices(sub)
    from mica.device.cli_drift import register as register_drift

    register_drift(sub)
    for ep in entry_points(group=COMMAND_GROUP):
        try:
            ep.load()(sub)
        except Exception as err:  # a broken extra must not take the daemon's CLI down
            log.warning("mica sub-command %r from %s unavailable: %s", ep.name, ep.value, err)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"mica: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except MicaError as err:
        print(f"mica: {err}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
