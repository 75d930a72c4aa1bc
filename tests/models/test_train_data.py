"""Synthesized training noises of the v3 recipe: finite, seeded, and of the stated kind."""

from __future__ import annotations

import numpy as np
import pytest

from mica.models.train.data import FS, modulated, transients


@pytest.mark.parametrize("make", (transients, modulated), ids=lambda f: f.__name__)
def test_noise_is_finite_and_seeded(make) -> None:
    a = make(np.random.default_rng(3), 2 * FS)
    b = make(np.random.default_rng(3), 2 * FS)
    assert a.shape == (2 * FS,) and a.dtype == np.float32
    assert np.isfinite(a).all() and np.std(a) > 0
    np.testing.assert_array_equal(a, b)


def _frame_db(x: np.ndarray) -> np.ndarray:
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    return 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-20)


def test_transients_are_impulsive_and_modulated_noise_is_not() -> None:
    """Frame-level spread (95th minus 50th percentile of 10 ms frame energies): clicks stand
    far out of their floor, modulated noise moves by a few dB."""
    rng = np.random.default_rng(0)
    spread_t = [
        np.subtract(*np.percentile(_frame_db(transients(rng, 3 * FS)), [95, 50])) for _ in range(5)
    ]
    spread_m = [
        np.subtract(*np.percentile(_frame_db(modulated(rng, 3 * FS)), [95, 50])) for _ in range(5)
    ]
    assert np.median(spread_t) > 15.0
    assert max(spread_m) < 15.0


@pytest.mark.train
@pytest.mark.parametrize("small,large", [("base", "ext"), ("ext", "harm")])
def test_larger_feature_set_initialised_from_smaller_computes_the_same_gains(
        small: str, large: str) -> None:
    """Needs torch (``pytest -m train``): the zero-initialised extra inputs change nothing."""
    import torch

    from mica.models.features import feats_per_band
    from mica.models.train.net import BandGainNet
    from mica.models.train.train import init_from

    torch.manual_seed(0)
    n_small, n_large = (32 * feats_per_band(k) for k in (small, large))
    base = BandGainNet(n_in=n_small)
    ext = BandGainNet(n_in=n_large)
    init_from(ext, base.state_dict())
    x = torch.randn(2, 50, n_large)
    with torch.no_grad():
        torch.testing.assert_close(ext(x), base(x[..., :n_small]), rtol=0, atol=1e-6)


@pytest.mark.train
def test_quiet_frames_of_clean_examples_leave_the_loss() -> None:
    """``--quiet-db``: what the model does in the faint frames of a clean-only example does not
    count; in a noisy example every frame counts."""
    import torch

    from mica.models.features import erb_weights
    from mica.models.train.train import loss_fn

    w = torch.from_numpy(erb_weights())
    torch.manual_seed(0)
    s = torch.rand(2, 10, 161) + 0.1
    s[:, :4] *= 1e-3  # 60 dB below the rest
    y = s.clone()
    y[1] += 0.3  # example 1 is noisy
    batch = {"ymag": y, "smag": s}
    g = torch.rand(2, 10, 32)
    g2 = g.clone()
    g2[0, :4] = 0.0  # differs only in the quiet frames of the clean example
    assert loss_fn(g, batch, w, 0.5, 40.0) == loss_fn(g2, batch, w, 0.5, 40.0)
    assert loss_fn(g, batch, w, 0.5) != loss_fn(g2, batch, w, 0.5)
    g3 = g.clone()
    g3[1, :4] = 0.0  # the quiet frames of the noisy example still count
    assert loss_fn(g, batch, w, 0.5, 40.0) != loss_fn(g3, batch, w, 0.5, 40.0)


def test_wet_reverb_target_keeps_the_reverberant_speech(corpus_dir) -> None:
    """``reverb_target="wet"`` draws the same mixture as ``early`` (same random draws) and
    only its target differs: the reverberant speech instead of direct path + 50 ms; an
    unknown value is refused."""
    from mica.models.train.data import Sources, _read16k, make_example

    speech = [_read16k(corpus_dir / "speech" / "librispeech_2412-153948-0000.wav")]
    noises = [_read16k(corpus_dir / "noise" / "cafe_short_16k.wav")]
    rirs = [_read16k(corpus_dir / "rir" / "speechbrain_rir1.wav")]
    src = Sources(speech=speech, noises=noises, rirs=rirs)
    differs = 0
    for seed in range(12):
        noisy_e, tgt_e = make_example(np.random.default_rng(seed), src, FS, 0.0, 0.0, "v1")
        noisy_w, tgt_w = make_example(np.random.default_rng(seed), src, FS, 0.0, 0.0, "v1",
                                      "wet")
        assert np.array_equal(noisy_e, noisy_w)
        if not np.allclose(tgt_e, tgt_w):
            differs += 1
            # the wet target is the speech in the mixture: the mixture minus it is the noise,
            # which is uncorrelated with it
            n = noisy_w - tgt_w
            assert abs(np.dot(n, tgt_w)) < 0.2 * np.sqrt(np.dot(n, n) * np.dot(tgt_w, tgt_w))
            # and it holds more energy than the early target (the reverberant tail)
            assert np.sum(tgt_w**2) > np.sum(tgt_e**2)
    assert differs >= 3  # about half of the examples are reverberant
    with pytest.raises(ValueError, match="reverb_target"):
        make_example(np.random.default_rng(0), src, FS, reverb_target="dry")


@pytest.mark.train
@pytest.mark.parametrize("kind", ["ext", "harm"])
def test_export_card_records_refine_and_reverb_target(tmp_path, kind: str) -> None:
    """A bundle exported from a checkpoint carries ``refine`` (on unless ``--no-refine``),
    its feature set, and its training command the checkpoint's ``--reverb-target``; the
    bundle loads."""
    import json

    import torch

    from mica.models.features import erb_weights, feats_per_band
    from mica.models.gru import load_bundle, refine_params
    from mica.models.train.export import main as export_main
    from mica.models.train.net import BandGainNet

    n_bands = erb_weights().shape[0]
    model = BandGainNet(feats_per_band(kind) * n_bands, n_bands)
    args = {"seed": 1, "features": kind, "noise_set": "v3", "reverb_target": "wet"}
    torch.save({"model": model.state_dict(), "step": 3, "args": args, "val_loss": 0.1},
               tmp_path / "ck.pt")
    for extra, want in (([], True), (["--no-refine"], False)):
        assert export_main(["--ckpt", str(tmp_path / "ck.pt"), "--out", str(tmp_path),
                            "--name", "t", *extra]) == 0
        card = json.loads((tmp_path / "t.json").read_text())
        assert card["refine"] is want
        assert card["features"] == kind
        assert "--reverb-target wet" in card["training"]["command"]
        assert (refine_params(load_bundle(tmp_path / "t.npz")) is not None) is want
