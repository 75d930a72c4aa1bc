"""Train the band-gain GRU denoiser; checkpoints every ``--ckpt-every`` steps and resumes.

    nice -n 19 python -m mica.models.train.train --out /tmp/mica-train --minutes 50

Stop at any time; the same command resumes from ``OUT/last.pt`` (model, optimizer, step, and
the data stream, since batch ``k`` is drawn from the generator seeded ``(seed, k)``).
``--minutes`` bounds this run's wall time, ``--steps`` the total number of steps. The full
recipe (about 2 hours on 2 cores) is ``--steps 12000``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from mica.models.features import FEATURE_KINDS, erb_weights, feats_per_band
from mica.models.train.data import Sources, make_batch
from mica.models.train.net import BandGainNet

log = logging.getLogger("mica.models.train")


def loss_fn(g: torch.Tensor, batch: dict[str, torch.Tensor], w: torch.Tensor,
            harm_weight: float = 0.5, quiet_db: float | None = None) -> torch.Tensor:
    """Band-gain MSE on sqrt gains + compressed-magnitude MSE + over-suppression penalty.

    ``quiet_db``: in clean-only examples (noisy == target), frames more than ``quiet_db``
    below the example's loudest frame are left out of the loss: there the input is the
    recording's own background, and "keep it" would teach the model to leave any faint
    stationary noise alone (the residual noise of a beamformer, say).
    """
    ymag, smag = batch["ymag"], batch["smag"]
    e_y = (ymag ** 2) @ w.T
    e_s = (smag ** 2) @ w.T
    g_t = torch.clamp(torch.sqrt(e_s / (e_y + 1e-12)), 0.0, 1.0)
    sqrt_g = torch.sqrt(g + 1e-6)  # a sigmoid that underflows to 0 has an infinite sqrt slope
    g_bin = g @ w
    harm = torch.relu(torch.sqrt(g_t) - sqrt_g) ** 2 * (g_t > 0.5)
    l_gain_tf = torch.mean((sqrt_g - torch.sqrt(g_t)) ** 2, dim=-1)
    l_mag_tf = torch.mean(((g_bin * ymag + 1e-8) ** 0.3 - (smag + 1e-8) ** 0.3) ** 2, dim=-1)
    l_tf = l_gain_tf + 2.0 * l_mag_tf + harm_weight * torch.mean(harm, dim=-1)  # (B, T)
    if quiet_db is None:
        return torch.mean(l_tf)
    clean = torch.all(ymag == smag, dim=-1).all(dim=-1, keepdim=True)  # (B, 1)
    fe = torch.sum(smag ** 2, dim=-1)
    loud = fe > fe.amax(dim=1, keepdim=True) * 10 ** (-quiet_db / 10)
    keep = (loud | ~clean).to(l_tf.dtype)
    return torch.sum(l_tf * keep) / torch.clamp(torch.sum(keep), min=1.0)


def init_from(model: BandGainNet, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model``; a checkpoint with fewer inputs (base features into an
    ``ext`` model) gets zero weights on the new input columns, so the model starts out
    computing exactly what the checkpoint computed."""
    state = dict(state)
    w_in = state["dense.weight"]
    if w_in.shape[1] < model.n_in:
        state["dense.weight"] = torch.cat(
            [w_in, torch.zeros(w_in.shape[0], model.n_in - w_in.shape[1])], dim=1)
    model.load_state_dict(state)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="checkpoint/log folder")
    ap.add_argument("--corpus", type=Path, default=Path(os.environ.get(
        "MICA_CORPUS", Path(__file__).resolve().parents[3] / "shared" / "corpus")))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--minutes", type=float, default=1e9, help="wall-time limit of this run")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=300, help="frames per example (10 ms each)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-espeak", type=int, default=300)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fresh-every", type=int, default=3,
                    help="draw a fresh batch of mixtures every N steps; each step trains on "
                         "examples sampled from the last --pool fresh batches")
    ap.add_argument("--pool", type=int, default=6)
    ap.add_argument("--p-clean", type=float, default=0.05,
                    help="share of clean-only examples (do no harm)")
    ap.add_argument("--p-high-snr", type=float, default=0.0,
                    help="share of examples at 20-40 dB SNR instead of -5..20 dB")
    ap.add_argument("--harm-weight", type=float, default=0.5,
                    help="weight of the over-suppression penalty (bands with ideal gain > 0.5)")
    ap.add_argument("--features", choices=FEATURE_KINDS, default="base",
                    help="base: 2 features per band; ext: + noise-floor SNR, delta, flatness; "
                         "harm: ext + the band's autocorrelation at the pitch lag "
                         "(mica.models.features)")
    ap.add_argument("--noise-set", choices=("v1", "v3"), default="v1",
                    help="v3 adds transients, modulated noise/hum and two-noise mixtures")
    ap.add_argument("--reverb-target", choices=("early", "wet"), default="early",
                    help="target of reverberant examples: early (direct + 50 ms: the model "
                         "dereverberates too) or wet (the reverberant speech: denoise only)")
    ap.add_argument("--quiet-db", type=float, default=None,
                    help="leave frames this far below the loudest out of the loss of "
                         "clean-only examples (default: keep every frame)")
    ap.add_argument("--init", type=Path,
                    help="start from this checkpoint's model weights (fresh optimizer and "
                         "schedule; a model with fewer features initialises one with more "
                         "(base -> ext -> harm) with zero weights on the new inputs); "
                         "ignored when OUT/last.pt exists")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    weights = erb_weights()
    n_bands = weights.shape[0]
    kind = args.features
    model = BandGainNet(n_in=feats_per_band(kind) * n_bands, n_bands=n_bands)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * max(0.05, 1 - s / args.steps))
    step = 0
    last = args.out / "last.pt"
    if last.exists():
        ck = torch.load(last, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        step = ck["step"]
        log.info("resumed from %s at step %d", last, step)
    elif args.init is not None:
        init_from(model, torch.load(args.init, weights_only=False)["model"])
        log.info("initialised from %s", args.init)
    log.info("model: %d parameters", model.n_params())
    src = Sources.load(args.corpus, args.out / "espeak", args.n_espeak, args.seed)
    w_t = torch.from_numpy(weights)
    val = {k: torch.from_numpy(v) for k, v in
           make_batch(args.seed + 999, 0, src, 32, args.frames, weights,
                      args.p_clean, args.p_high_snr, kind, args.noise_set,
                      args.reverb_target).items()}
    ema = None
    best_val = float("inf")
    if (args.out / "best.pt").exists():
        best_val = torch.load(args.out / "best.pt", weights_only=False)["val_loss"]
    pool: dict[int, dict[str, np.ndarray]] = {}

    def fresh(k: int) -> dict[str, np.ndarray]:
        if k not in pool:
            pool[k] = make_batch(args.seed, k, src, args.batch, args.frames, weights,
                                 args.p_clean, args.p_high_snr, kind, args.noise_set,
                                 args.reverb_target)
            for old in [j for j in pool if j <= k - args.pool]:
                del pool[old]
        return pool[k]

    while step < args.steps:
        # Mixing is the costly part on 2 cores: a fresh batch every ``fresh_every`` steps,
        # each step samples its examples from the last ``pool`` fresh batches. Everything is
        # a function of (seed, step), so a resumed run regenerates the same pool.
        newest = step // args.fresh_every
        keys = [k for k in range(max(0, newest - args.pool + 1), newest + 1)]
        batches = [fresh(k) for k in keys]
        rng = np.random.default_rng([args.seed, step, 1])
        pick = [(int(rng.integers(len(batches))), int(rng.integers(args.batch)))
                for _ in range(args.batch)]
        batch = {name: torch.from_numpy(np.stack([batches[b][name][i] for b, i in pick]))
                 for name in ("feats", "ymag", "smag")}
        model.train()
        loss = loss_fn(model(batch["feats"]), batch, w_t, args.harm_weight, args.quiet_db)
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if torch.isfinite(loss) and torch.isfinite(norm):
            opt.step()
            ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        else:  # never let one bad batch poison the weights
            log.warning("step %d: non-finite loss or gradient, update skipped", step)
        sched.step()
        step += 1
        done = time.monotonic() - t_start > args.minutes * 60 or step >= args.steps
        if step % args.ckpt_every == 0 or done:
            model.eval()
            with torch.no_grad():
                vloss = loss_fn(model(val["feats"]), val, w_t, args.harm_weight,
                                args.quiet_db).item()
            state = {"model": model.state_dict(), "opt": opt.state_dict(),
                     "sched": sched.state_dict(), "step": step, "args": vars(args) | {
                         "out": str(args.out), "corpus": str(args.corpus),
                         "init": str(args.init) if args.init else None},
                     "val_loss": vloss}
            torch.save(state, args.out / "tmp.pt")
            os.replace(args.out / "tmp.pt", last)
            if vloss < best_val:
                best_val = vloss
                torch.save(state, args.out / "tmp.pt")
                os.replace(args.out / "tmp.pt", args.out / "best.pt")
            with open(args.out / "history.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "train_loss": ema, "val_loss": vloss,
                                    "lr": sched.get_last_lr()[0],
                                    "elapsed_s": time.monotonic() - t_start}) + "\n")
            log.info("step %d train %.4f val %.4f", step, ema, vloss)
        if done:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
