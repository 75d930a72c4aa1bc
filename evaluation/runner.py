"""Run every method on every scenario and score the outputs.

:func:`evaluate(scenarios, methods, progress=None)` returns an :class:`EvalResult`: one row
per (scenario, method) with every metric that applies (``None`` plus a reason otherwise),
the estimates kept for the report's pictures, and the DOA tracks chains expose.

Metrics per row (keys of :data:`METRICS`): ``si_sdr_db``, ``pesq``, ``stoi`` (need a clean
reference), ``dnsmos_ovrl``/``dnsmos_sig``/``dnsmos_bak`` (always), ``wer`` (needs a
transcript), ``wake_hit_<engine>`` (wake scenarios: 1 when the engine fires on the spoken
phrase) and ``false_accept_<engine>`` (every other scenario: 1 when the engine fires on
any wake phrase of the run).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mica.evaluation import metrics
from mica.evaluation.peers import Method
from mica.evaluation.scenarios import Scenario

log = logging.getLogger(__name__)

METRICS: dict[str, str] = {
    "si_sdr_db": "SI-SDR (dB)",
    "pesq": "PESQ-wb",
    "stoi": "STOI",
    "dnsmos_ovrl": "DNSMOS OVRL",
    "dnsmos_sig": "DNSMOS SIG",
    "dnsmos_bak": "DNSMOS BAK",
    "wer": "WER",
    **{f"wake_hit_{e}": f"wake hit ({e})" for e in metrics.WAKE_ENGINES},
    **{f"false_accept_{e}": f"false accept ({e})" for e in metrics.WAKE_ENGINES},
}
"""Metric key -> column title, in report order."""

NEEDS = {
    "si_sdr_db": "no clean reference (real recording)",
    "pesq": "no clean reference (real recording)",
    "stoi": "no clean reference (real recording)",
    "wer": "no transcript",
    **{f"wake_hit_{e}": "not a wake-phrase scenario" for e in metrics.WAKE_ENGINES},
    **{f"false_accept_{e}": "wake-phrase scenario (scored as a hit)"
       for e in metrics.WAKE_ENGINES},
}
"""Why a metric does not apply to a scenario."""


@dataclass
class EvalResult:
    rows: list[dict] = field(default_factory=list)
    outputs: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    extras: dict[tuple[str, str], dict] = field(default_factory=dict)
    methods: list[dict] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)


def score(scenario: Scenario, estimate: np.ndarray, wake_words: tuple[str, ...]) -> dict:
    """All metrics of ``estimate`` for ``scenario``: ``{key: value or None}`` and
    ``{"why": {key: reason}}`` for the ones that do not apply or failed."""
    est = np.asarray(estimate, np.float32)
    n = scenario.mixture.shape[1]
    if est.shape != (n,) or not np.isfinite(est).all():
        raise ValueError(f"estimate must be finite with shape ({n},), got {est.shape}")
    vals: dict = {k: None for k in METRICS}
    why: dict[str, str] = {}
    ref = scenario.reference
    if ref is not None:
        vals["si_sdr_db"] = metrics.si_sdr_db(est, ref)
        for key, fn in (("pesq", metrics.pesq_wb), ("stoi", metrics.stoi_score)):
            try:
                vals[key] = fn(est, ref)
            except ValueError as err:
                why[key] = str(err)
    d = metrics.dnsmos(est)
    vals["dnsmos_ovrl"], vals["dnsmos_sig"], vals["dnsmos_bak"] = d["ovrl"], d["sig"], d["bak"]
    if scenario.transcript:
        vals["wer"] = metrics.word_error_rate(metrics.transcribe(est), scenario.transcript)
    for eng in metrics.WAKE_ENGINES:
        if scenario.wake_word:
            vals[f"wake_hit_{eng}"] = float(
                metrics.wake_word_detected(est, scenario.wake_word, eng))
        elif wake_words:
            vals[f"false_accept_{eng}"] = float(
                any(metrics.wake_words_detected(est, wake_words, eng).values()))
    for k in METRICS:
        if vals[k] is None and k not in why:
            why[k] = NEEDS.get(k, "not computed")
    vals["why"] = why
    return vals


class Progress:
    """A one-line progress bar with ETA on a stream (stderr), redrawn in place."""

    def __init__(self, total: int, stream, width: int = 30) -> None:
        self.total, self.stream, self.width = max(total, 1), stream, width
        self.done = 0
        self.t0 = time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        el = time.monotonic() - self.t0
        eta = el / self.done * (self.total - self.done)
        fill = int(self.width * self.done / self.total)
        self.stream.write(f"\r[{'#' * fill}{'.' * (self.width - fill)}] {self.done}/{self.total}"
                          f" {el:5.0f}s elapsed, ETA {eta:4.0f}s  {label[:50]:50s}")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


_WORK: tuple[list[Scenario], list[Method], tuple[str, ...], set[str]] | None = None
"""What forked workers inherit (methods hold closures, so they are not pickled)."""


def _run_scenario(i: int) -> tuple[int, list[dict], dict, dict]:
    assert _WORK is not None
    scenarios, methods, wake_words, unavailable = _WORK
    sc = scenarios[i]
    rows, outputs, extras_all = [], {}, {}
    for m in methods:
        if m.name in unavailable:
            continue
        row = {"scenario": sc.name, "family": sc.family, "method": m.name, "kind": m.kind,
               "snr_db": sc.snr_db, "rt60_s": sc.rt60_s, "n_channels": sc.n_channels,
               "duration_s": sc.duration_s}
        t0 = time.perf_counter()
        try:
            out = m.run(sc)
            extras: dict = {}
            if isinstance(out, tuple):
                out, extras = out
            row["process_s"] = time.perf_counter() - t0
            row.update(score(sc, out, wake_words))
            outputs[(sc.name, m.name)] = np.asarray(out, np.float32)
            if extras:
                extras_all[(sc.name, m.name)] = extras
        except Exception as err:  # one failure must not end the run: it is reported
            log.exception("%s on %s failed", m.name, sc.name)
            row.update({k: None for k in METRICS})
            row["why"] = {k: f"failed: {type(err).__name__}: {err}" for k in METRICS}
        rows.append(row)
    return i, rows, outputs, extras_all


def evaluate(scenarios: list[Scenario], methods: list[Method],
             progress: Callable[[str], None] | None = None, jobs: int = 1) -> EvalResult:
    """Run and score every available method on every scenario (see the module docstring).

    A method that is unavailable (its package missing) gets no rows and its reason in
    ``unavailable``; a method that raises on one scenario gets a row with every metric
    ``None`` and the error as the reason. ``jobs > 1`` runs scenarios in that many forked
    worker processes (results in the same order as with one).
    """
    global _WORK
    res = EvalResult()
    wake_words = tuple(sorted({s.wake_word for s in scenarios if s.wake_word}))
    for m in methods:
        reason = m.available()
        res.methods.append({"name": m.name, "kind": m.kind, "description": m.description,
                            "unavailable": reason})
        if reason:
            res.unavailable[m.name] = reason
            log.warning("method %s unavailable: %s", m.name, reason)
    n_run = len([m for m in methods if m.name not in res.unavailable])
    _WORK = (scenarios, methods, wake_words, set(res.unavailable))
    done: dict[int, tuple[list[dict], dict, dict]] = {}
    try:
        if jobs > 1 and len(scenarios) > 1:
            import multiprocessing

            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(min(jobs, len(scenarios))) as pool:
                for i, rows, outs, extras in pool.imap_unordered(_run_scenario,
                                                                 range(len(scenarios))):
                    done[i] = (rows, outs, extras)
                    for _ in range(n_run):
                        if progress:
                            progress(scenarios[i].name)
        else:
            for i in range(len(scenarios)):
                _, rows, outs, extras = _run_scenario(i)
                done[i] = (rows, outs, extras)
                for r in rows:
                    if progress:
                        progress(f"{r['method']} on {r['scenario']}")
    finally:
        _WORK = None
    for i in range(len(scenarios)):
        rows, outs, extras = done[i]
        res.rows.extend(rows)
        res.outputs.update(outs)
        res.extras.update(extras)
    return res
