"""``mica eval``: build the scenarios, run mica's chains and the peers, write the report.

Registered as a ``mica`` sub-command through the ``mica.commands`` entry-point group
(:func:`register`), so the board's CLI never imports this package. Also runnable as
``python -m mica.evaluation.cli``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def default_corpus() -> Path:
    """``$MICA_CORPUS``, else ``../shared/corpus`` from the working directory."""
    return Path(os.environ.get("MICA_CORPUS", Path.cwd().parent / "shared" / "corpus"))


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def run_eval(corpus: Path, out_dir: Path, quick: bool, seed: int,
             methods: list[str] | None = None, stream=sys.stderr, jobs: int = 0) -> dict:
    """Everything ``mica eval`` does; returns the report summary."""
    import numpy as np

    from mica.evaluation.chains import mica_methods, noisy_method
    from mica.evaluation.peers import peer_methods
    from mica.evaluation.report import write_report
    from mica.evaluation.runner import Progress, evaluate
    from mica.evaluation.scenarios import build_scenarios

    t0 = time.monotonic()
    np.random.seed(seed)
    stream.write(f"mica eval: building scenarios from {corpus} (seed {seed}"
                 f"{', quick' if quick else ''})\n")
    scenarios = build_scenarios(corpus, quick=quick, seed=seed)
    all_methods = [noisy_method(), *mica_methods(), *peer_methods()]
    if methods:
        all_methods = [m for m in all_methods if m.name in methods]
    stream.write(f"mica eval: {len(scenarios)} scenarios x {len(all_methods)} methods\n")
    progress = Progress(len(scenarios) * len(all_methods), stream)
    jobs = jobs or os.cpu_count() or 1
    result = evaluate(scenarios, all_methods, progress.step, jobs=jobs)
    wall_s = time.monotonic() - t0
    cmd = "mica eval " + " ".join(
        [f"--corpus {corpus}", f"--out {out_dir}", f"--seed {seed}"] + (["--quick"] if quick
                                                                        else []))
    meta = {"command": f"`{cmd}`", "date": dt.datetime.now().astimezone().isoformat(
        timespec="seconds"), "machine": machine_description(), "corpus": str(corpus),
        "seed": seed, "quick": quick, "wall_s": wall_s}
    info = [{"name": s.name, "family": s.family, "n_channels": s.n_channels,
             "duration_s": s.duration_s, "snr_db": s.snr_db, "rt60_s": s.rt60_s,
             "transcript": s.transcript, "wake_word": s.wake_word,
             "has_reference": s.reference is not None,
             "target_azimuth_deg": s.target_azimuth_deg, "notes": s.notes}
            for s in scenarios]
    return write_report(result, out_dir, meta, info)


def _cmd_eval(args: argparse.Namespace) -> int:
    from mica.evaluation.report import markdown_tables

    logging.basicConfig(level=getattr(logging, args.log_level or "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    corpus = args.corpus or default_corpus()
    if not corpus.is_dir():
        print(f"mica eval: corpus folder {corpus} not found (--corpus DIR or MICA_CORPUS)",
              file=sys.stderr)
        return 2
    summary = run_eval(corpus, args.out, args.quick, args.seed,
                       methods=args.methods.split(",") if args.methods else None,
                       jobs=args.jobs)
    groups = [g for g in ("0 dB", "5 dB") if g in next(iter(summary.values()))]
    print(markdown_tables(summary, ("pesq", "stoi", "wer", "wake_hit_microwakeword",
                                    "wake_hit_openwakeword"), groups or None))
    print(f"report: {args.out / 'report.md'}")
    return 0


def register(subparsers) -> None:
    """Add ``mica eval`` to the ``mica`` CLI (entry point ``mica.commands``)."""
    p = subparsers.add_parser("eval", help="measure mica and its peers on a corpus; write a "
                              "report (needs the .[eval] extra)")
    add_arguments(p)
    p.set_defaults(func=_cmd_eval)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", type=Path, default=None,
                   help="corpus folder (default: $MICA_CORPUS or ../shared/corpus)")
    p.add_argument("--out", type=Path, default=Path("eval-report"),
                   help="where to write report.md, report.json and the PNGs")
    p.add_argument("--quick", action="store_true", help="small scenario set (CI)")
    p.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    p.add_argument("--jobs", type=int, default=0,
                   help="worker processes (default: one per CPU)")
    p.add_argument("--methods", default=None,
                   help="comma-separated method names to run (default: all)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mica eval")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_arguments(parser)
    return _cmd_eval(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
