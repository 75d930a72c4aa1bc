"""Export a training checkpoint as a weights bundle (+ model card) and a torch reference pair.

    python -m mica.models.train.export --ckpt /tmp/mica-train/last.pt --out models/data

writes ``<name>.npz`` + ``<name>.json`` and ``<name>-reference.npz`` (a short noisy input
spectrum, the torch model's band gains for it, and its features; ``--name`` defaults to
``denoiser-v1``), which the tests replay through the Numba kernel without torch.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mica.array_dsp.stft import stft_reference
from mica.models import split
from mica.models.features import NORM_ALPHA, erb_weights, feats_per_band, features_reference
from mica.models.gru import count_macs_per_frame, count_params
from mica.models.train.net import BandGainNet

log = logging.getLogger(__name__)

FS, HOP = 16000, 160


def model_from_checkpoint(ckpt: dict[str, Any], n_bands: int = 32) -> BandGainNet:
    sd = ckpt["model"]
    n_in = sd["dense.weight"].shape[1]
    model = BandGainNet(n_in=n_in, n_bands=n_bands, n_dense=sd["dense.weight"].shape[0],
                        n_hidden=sd["gru1.weight_hh_l0"].shape[1])
    model.load_state_dict(sd)
    return model.eval()


def reference_pair(model: BandGainNet, weights: np.ndarray, seed: int = 7,
                   n_frames: int = 120, kind: str = "base") -> dict[str, np.ndarray]:
    """A deterministic noisy input (tone bursts in coloured noise), its features and the
    torch model's band gains for it."""
    n_streams = model.n_in // (feats_per_band(kind) * weights.shape[0])
    rng = np.random.default_rng(seed)
    n = n_frames * HOP
    t = np.arange(n) / FS
    sig = 0.05 * rng.standard_normal((n_streams, n))
    sig[0] += 0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    spectra = np.stack([stft_reference(sig[s:s + 1].astype(np.float32), HOP)[:, 0]
                        for s in range(n_streams)])
    feats = features_reference(spectra, weights, kind)
    with torch.no_grad():
        gains = model(torch.from_numpy(feats)[None])[0].numpy()
    return {"spectra": spectra.astype(np.complex64), "feats": feats,
            "band_gains": gains.astype(np.float32)}


def training_command(args: dict[str, Any]) -> str:
    """The ``train`` command line that reproduces a checkpoint, from its stored arguments."""
    parts = ["nice -n 19 python -m mica.models.train.train"]
    for key in ("out", "init", "seed", "steps", "minutes", "batch", "frames", "lr", "threads",
                "p_clean", "p_high_snr", "harm_weight", "quiet_db", "features",
                "noise_set", "reverb_target"):
        if args.get(key) is not None:
            parts.append(f"--{key.replace('_', '-')} {args[key]}")
    return " ".join(parts)


def export(ckpt_path: Path, out_dir: Path, name: str, version: str, gain_floor_db: float,
           metrics: dict[str, Any] | None = None, command: str | None = None,
           refine: bool = True) -> Path:
    ckpt = torch.load(ckpt_path, weights_only=False, map_location="cpu")
    weights = erb_weights()
    model = model_from_checkpoint(ckpt, weights.shape[0])
    arrays = model.to_arrays() | {"erb_w": weights}
    args = ckpt.get("args", {})
    kind = args.get("features", "base")
    n_streams = model.n_in // (feats_per_band(kind) * weights.shape[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    npz = out_dir / f"{name}.npz"
    np.savez_compressed(npz, **arrays)
    macs = count_macs_per_frame(arrays, n_streams)
    feat_text = ("log ERB energies (running-mean normalised + absolute) per stream"
                 + (" + noise-floor SNR, temporal delta, in-band flatness"
                    if kind != "base" else "")
                 + (" + band autocorrelation at the pitch lag" if kind == "harm" else ""))
    card = {
        "name": name,
        "version": version,
        "architecture": f"ERB-band gains: Linear({model.n_in},64)+tanh, GRU(64,80), "
                        f"GRU(80,80), Linear(160,32)+sigmoid; features = {feat_text}",
        "features": kind,
        "n_params": count_params(arrays),
        "macs_per_frame": macs,
        "macs_per_s": macs * FS // HOP,
        "n_streams": n_streams,
        "inputs": ["beam output"] + (["noise reference"] if n_streams > 1 else []),
        "n_bands": int(weights.shape[0]),
        "n_bins": int(weights.shape[1]),
        "fs_hz": FS,
        "hop_samples": HOP,
        "frame_samples": 2 * HOP,
        "lookahead_samples": 0,
        "norm_alpha": NORM_ALPHA,
        "gain_floor_db": gain_floor_db,
        "refine": refine,
        "training": {
            "steps": int(ckpt["step"]),
            "seed": args.get("seed"),
            "batch": args.get("batch"),
            "frames_per_example": args.get("frames"),
            "val_loss": ckpt.get("val_loss"),
            "command": command or training_command(args),
            "init": args.get("init"),
            "data": {
                "speech": "corpus/speech librispeech_* (220 train-clean-100 speakers) + "
                          "ami clip + espeak-ng utterances (16 voices x 12 variants, "
                          f"{args.get('n_espeak')} clips)",
                "noise": "corpus/noise (training side of mica.models.split) + synthesized "
                         "car cabin, fan/HVAC, babble"
                         + (", transients (clicks, clatter), AM-modulated coloured noise and "
                            "hum, two-noise mixtures" if args.get("noise_set") == "v3" else ""),
                "rir": "corpus/rir (7) + synthetic exponential RIRs (RT60 0.15-0.8 s), p=0.5; "
                       + ("target the reverberant speech (denoise only)"
                          if args.get("reverb_target") == "wet"
                          else "target direct path + 50 ms (dereverberates too)"),
                "snr_db": [-5, 20],
                "share_clean_only": args.get("p_clean", 0.05),
                "share_snr_20_40_db": args.get("p_high_snr", 0.0),
                "level_dbfs": [-45, -15],
                "held_apart_speakers": sorted(split.HELD_LIBRISPEECH_SPEAKERS)
                + list(split.HELD_SPEECH_PREFIXES),
                "held_apart_noises": sorted(split.HELD_NOISES),
            },
        },
        "metrics": metrics or {},
    }
    npz.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    np.savez_compressed(out_dir / f"{name}-reference.npz",
                        **reference_pair(model, weights, kind=kind))
    return npz


def card_metrics(report: dict[str, Any], row: str, command: str) -> dict[str, Any]:
    """The model card's ``metrics`` from a ``benchmarks/denoise.py --json`` report: every
    method's numbers, with ``row`` (this bundle's row, e.g. ``mica-model[denoiser-v2]``)
    named so the card says which line is the model it describes."""
    out: dict[str, Any] = {"benchmark": command, "this_model_row": row}
    for src, dst in (("single", "single_channel"), ("clean", "clean_input"),
                     ("array", "array_ring4"), ("model_stage", "model_stage")):
        if src in report:
            out[dst] = report[src]
    if row not in out.get("single_channel", {}):
        raise SystemExit(f"--metrics-row {row!r} is not a row of the benchmark report")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data")
    ap.add_argument("--name", default="denoiser-v1")
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--gain-floor-db", type=float, default=-25.0)
    ap.add_argument("--no-refine", action="store_true",
                    help="card without the per-bin refinement (mica.models.refine)")
    ap.add_argument("--metrics", type=Path, help="JSON report of benchmarks/denoise.py --json")
    ap.add_argument("--metrics-row", default="mica-model",
                    help="this bundle's row in that report (mica-model[<name>] when the "
                         "benchmark ran it with --bundle)")
    ap.add_argument("--metrics-command", default="python benchmarks/denoise.py --json OUT",
                    help="the benchmark command that wrote --metrics, for the card")
    ap.add_argument("--command", help="training command for the card (default: rebuilt from "
                                      "the checkpoint's arguments)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics = None
    if args.metrics:
        metrics = card_metrics(json.loads(args.metrics.read_text()), args.metrics_row,
                               args.metrics_command)
    path = export(args.ckpt, args.out, args.name, args.version, args.gain_floor_db, metrics,
                  command=args.command, refine=not args.no_refine)
    log.info("%s written; card: %s", path, path.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
