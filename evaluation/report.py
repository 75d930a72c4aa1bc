"""The evaluation report: ``report.md``, ``report.json`` and matplotlib PNGs.

:func:`summarise(result)` aggregates an :class:`~mica.evaluation.runner.EvalResult` into
per-method, per-SNR-group cells (mean, 95 % interval, n); :func:`write_report(result,
out_dir, meta)` writes the files and returns the summary. A cell with no value always
carries its reason (method unavailable, metric not applicable to any scenario of the group,
or the failure).

The 95 % interval is mean +- t(0.975, n-1) * s / sqrt(n) (Student t); with one sample it is
not defined and shown as the mean alone.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from mica.evaluation.runner import METRICS, EvalResult
from mica.evaluation.scenarios import FS_HZ

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("pesq", "stoi", "si_sdr_db", "dnsmos_ovrl", "wer",
                   "wake_hit_microwakeword", "wake_hit_openwakeword",
                   "false_accept_microwakeword", "false_accept_openwakeword")
"""Columns of the summary tables (every metric of :data:`METRICS` is in report.json)."""

SHORT = {"si_sdr_db": "SI-SDR dB", "pesq": "PESQ", "stoi": "STOI", "dnsmos_ovrl": "DNSMOS",
         "dnsmos_sig": "DNSMOS SIG", "dnsmos_bak": "DNSMOS BAK", "wer": "WER",
         "wake_hit_microwakeword": "wake hit µWW", "wake_hit_openwakeword": "wake hit oWW",
         "false_accept_microwakeword": "FA µWW", "false_accept_openwakeword": "FA oWW"}


def snr_group(snr_db: float | None) -> str:
    """Group label of a row: ``"0 dB"``, or ``"as recorded"`` for unmixed recordings."""
    return "as recorded" if snr_db is None else f"{snr_db:g} dB"


def _t975(df: int) -> float:
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
             9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.0}
    for k in sorted(table):
        if df <= k:
            return table[k]
    return 1.96


def mean_ci(values: list[float]) -> dict:
    """``{"mean", "ci95", "n"}`` of finite values (``ci95`` is ``None`` for one value)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if v.size == 0:
        return {"mean": None, "ci95": None, "n": 0}
    ci = None if v.size < 2 else float(_t975(v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return {"mean": float(v.mean()), "ci95": ci, "n": int(v.size)}


def summarise(result: EvalResult) -> dict:
    """``{method: {group: {metric: cell}}}`` with ``group`` from :func:`snr_group` plus
    ``"all"``; a cell is :func:`mean_ci` plus ``"why"`` when it has no value."""
    methods = [m["name"] for m in result.methods]
    groups = sorted({snr_group(r["snr_db"]) for r in result.rows},
                    key=lambda g: (g == "as recorded", float(g.split()[0]) if g[0] != "a" else 0))
    summary: dict = {}
    for m in methods:
        summary[m] = {}
        for g in [*groups, "all"]:
            rows = [r for r in result.rows if r["method"] == m
                    and (g == "all" or snr_group(r["snr_db"]) == g)]
            cells = {}
            for k in METRICS:
                cell = mean_ci([r.get(k) for r in rows])
                if cell["n"] == 0:
                    if m in result.unavailable:
                        cell["why"] = f"method unavailable: {result.unavailable[m]}"
                    else:
                        reasons = sorted({r["why"].get(k, "") for r in rows if "why" in r})
                        cell["why"] = "; ".join(reasons) or "no scenario in this group"
                cells[k] = cell
            summary[m][g] = cells
    return summary


def fmt_cell(cell: dict, metric: str) -> str:
    if cell["mean"] is None:
        return "n/a¹"
    digits = 1 if metric == "si_sdr_db" else 2
    s = f"{cell['mean']:.{digits}f}"
    if cell["ci95"] is not None:
        s += f" ±{cell['ci95']:.{digits}f}"
    return s


def markdown_tables(summary: dict, metrics: tuple[str, ...] = SUMMARY_METRICS,
                    groups: list[str] | None = None) -> str:
    """One table per SNR group: rows = methods, columns = ``metrics``; ``n/a¹`` cells are
    explained below each table."""
    methods = list(summary)
    all_groups = [g for g in next(iter(summary.values()))] if summary else []
    out = []
    for g in groups or all_groups:
        out.append(f"\n#### SNR {g}\n" if g not in ("all", "as recorded") else f"\n#### {g}\n")
        out.append("| method | " + " | ".join(SHORT.get(k, k) for k in metrics) + " |")
        out.append("|---|" + "---|" * len(metrics))
        notes: dict[str, list[str]] = {}
        for m in methods:
            cells = summary[m].get(g, {})
            row = []
            for k in metrics:
                cell = cells.get(k, {"mean": None, "ci95": None, "why": "not computed"})
                row.append(fmt_cell(cell, k))
                if cell["mean"] is None:
                    notes.setdefault(cell.get("why", ""), []).append(f"{m}/{SHORT.get(k, k)}")
            out.append(f"| {m} | " + " | ".join(row) + " |")
        for why, where in notes.items():
            shown = ", ".join(where[:6]) + (f" and {len(where) - 6} more" if len(where) > 6
                                            else "")
            out.append(f"\n¹ {shown}: {why}")
    return "\n".join(out) + "\n"


# -- figures ---------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def best_peer(summary: dict, result: EvalResult) -> str | None:
    """The peer with the highest mean PESQ over all scenarios (else DNSMOS)."""
    peers = [m["name"] for m in result.methods if m["kind"] in ("single", "array")
             and m["name"] not in result.unavailable]
    for key in ("pesq", "dnsmos_ovrl"):
        scored = [(summary[p]["all"][key]["mean"], p) for p in peers
                  if summary[p]["all"][key]["mean"] is not None]
        if scored:
            return max(scored)[1]
    return None


def best_mica(summary: dict, result: EvalResult) -> str | None:
    micas = [m["name"] for m in result.methods if m["kind"] == "mica"
             and m["name"] not in result.unavailable]
    scored = [(summary[p]["all"]["pesq"]["mean"] or -1.0, p) for p in micas]
    return max(scored)[1] if scored else None


def plot_spectrograms(result: EvalResult, scenario: str, methods: list[str],
                      path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(len(methods), 1, figsize=(8, 2.2 * len(methods)), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, m in zip(axes, methods, strict=True):
        x = result.outputs[(scenario, m)]
        ax.specgram(x + 1e-7, NFFT=512, Fs=FS_HZ, noverlap=384, cmap="magma", vmin=-130)
        ax.set_ylabel("Hz")
        ax.set_title(m, fontsize=9)
    axes[-1].set_xlabel("s")
    fig.suptitle(scenario, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_doa(result: EvalResult, path: Path, targets: dict[str, float]) -> bool:
    tracks = [(k, v) for k, v in result.extras.items() if "doa_track_deg" in v]
    if not tracks:
        return False
    plt = _plt()
    scen = sorted({k[0] for k, _ in tracks})[:6]
    fig, axes = plt.subplots(len(scen), 1, figsize=(8, 1.8 * len(scen)), squeeze=False)
    for ax, s in zip(axes[:, 0], scen, strict=True):
        for (sn, m), ex in tracks:
            if sn != s:
                continue
            tr = ex["doa_track_deg"]
            ax.plot(np.arange(tr.size) * ex["block_s"], tr, lw=1, label=m)
        ax.axhline(targets[s] % 360, color="k", ls="--", lw=0.8, label="target")
        ax.set_ylim(0, 360)
        ax.set_ylabel("az °")
        ax.set_title(s, fontsize=7)
    axes[0, 0].legend(fontsize=6, ncol=4)
    axes[-1, 0].set_xlabel("s")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_vs_snr(summary: dict, metric_keys: list[str], path: Path, title: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(metric_keys), figsize=(5 * len(metric_keys), 3.5),
                             squeeze=False)
    for ax, key in zip(axes[0], metric_keys, strict=True):
        for m, groups in summary.items():
            pts = [(float(g.split()[0]), c[key]["mean"]) for g, c in groups.items()
                   if g.endswith("dB") and c[key]["mean"] is not None]
            if pts:
                pts.sort()
                ax.plot(*zip(*pts, strict=True), marker="o", label=m,
                        lw=2 if m.startswith("mica") else 1)
        ax.set_xlabel("SNR (dB)")
        ax.set_title(METRICS[key], fontsize=9)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- writing ---------------------------------------------------------------------------------

def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def write_report(result: EvalResult, out_dir: Path, meta: dict,
                 scenario_info: list[dict]) -> dict:
    """Write ``report.md``, ``report.json`` and the PNGs into ``out_dir``; return the
    summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(result)
    figures: list[tuple[str, str]] = []
    peer = best_peer(summary, result)
    mica = best_mica(summary, result)
    with_ref = [s["name"] for s in scenario_info if s["has_reference"]]
    for i, s in enumerate(with_ref[:3]):
        ms = [m for m in ("noisy", mica, peer) if m and (s, m) in result.outputs]
        if len(ms) > 1:
            name = f"spectrogram_{i}.png"
            plot_spectrograms(result, s, ms, out_dir / name)
            figures.append((name, f"noisy / {mica} / best peer {peer}: {s}"))
    targets = {s["name"]: s["target_azimuth_deg"] for s in scenario_info}
    if plot_doa(result, out_dir / "doa_tracks.png", targets):
        figures.append(("doa_tracks.png", "DOA tracks of the chains (dashed: true direction)"))
    plot_vs_snr(summary, ["wer", "wake_hit_microwakeword", "wake_hit_openwakeword"],
                out_dir / "wer_wake_vs_snr.png", "WER and wake-word hit rate vs SNR")
    figures.append(("wer_wake_vs_snr.png", "WER and wake-word hit rate against SNR"))
    plot_vs_snr(summary, ["pesq", "stoi", "si_sdr_db"], out_dir / "quality_vs_snr.png",
                "Quality vs SNR")
    figures.append(("quality_vs_snr.png", "PESQ, STOI and SI-SDR against SNR"))

    doc = {"meta": meta, "methods": result.methods, "scenarios": scenario_info,
           "metrics": METRICS, "summary": summary, "rows": result.rows,
           "figures": [f for f, _ in figures]}
    (out_dir / "report.json").write_text(json.dumps(_jsonable(doc), indent=1))

    md = [f"# mica evaluation report\n\n{meta.get('command', '')}\n",
          f"- date: {meta.get('date')}\n- machine: {meta.get('machine')}\n"
          f"- corpus: {meta.get('corpus')}\n- seed: {meta.get('seed')}, quick: "
          f"{meta.get('quick')}\n- scenarios: {len(scenario_info)}, methods: "
          f"{len(result.methods)}, wall time: {meta.get('wall_s', 0):.0f} s\n",
          "Cells: mean ±95 % interval over the scenarios of the group. WER is per-utterance "
          "word error rate; wake hit = fraction of wake-phrase scenarios where the engine "
          "fired; FA = fraction of other scenarios where it fired on any wake phrase.\n",
          "## Methods\n"]
    for m in result.methods:
        md.append(f"- **{m['name']}** ({m['kind']}): {m['description']}"
                  + (f" — UNAVAILABLE: {m['unavailable']}" if m["unavailable"] else ""))
    md.append("\n## Summary by SNR\n")
    md.append(markdown_tables(summary))
    md.append("\n## Scenarios\n")
    md.append("| scenario | family | ch | s | SNR dB | RT60 s | transcript | wake |")
    md.append("|---|---|---|---|---|---|---|---|")
    for s in scenario_info:
        md.append(f"| {s['name']} | {s['family']} | {s['n_channels']} | "
                  f"{s['duration_s']:.1f} | {s['snr_db']} | {s['rt60_s']} | "
                  f"{'yes' if s['transcript'] else '—'} | {s['wake_word'] or '—'} |")
    md.append("\n## Figures\n")
    for f, cap in figures:
        md.append(f"![{cap}]({f})\n\n{cap}\n")
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    log.info("report written to %s", out_dir)
    return summary
