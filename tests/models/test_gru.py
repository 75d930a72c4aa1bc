"""The learned denoiser: bundle and card, Numba == torch (stored pair, and live when torch is
installed) == numpy reference, and quality on held-apart real audio."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mica.array_dsp.enhancer import Enhancer
from mica.array_dsp.stft import stft_reference
from mica.evaluation.metrics import pesq_wb, si_sdr_db, stoi_score
from mica.models.features import FEATURE_KINDS, erb_weights, feats_per_band, features_reference
from mica.models.gru import (
    DEFAULT_BUNDLE,
    SINGLE_MIC_BUNDLE,
    BundleError,
    GruDenoiser,
    count_macs_per_frame,
    count_params,
    default_bundle_path,
    gru_reference,
    load_bundle,
    net_reference,
)
from mica.models.mmse import MmseDenoiser
from mica.models.postfilter import denoise_signal, make_postfilter

SHIPPED = sorted(p for p in default_bundle_path().parent.glob("denoiser-v*.npz")
                 if not p.stem.endswith("-reference"))
"""Every shipped bundle version (the default and the older ones kept for comparison)."""


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


def run_kernel(pf: GruDenoiser, spectra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    outs, gains = [], []
    for t in range(spectra.shape[1]):
        ref = spectra[1, t] if spectra.shape[0] > 1 else None
        outs.append(pf.process(spectra[0, t], ref).copy())
        gains.append(pf.band_gain.copy())
    return np.stack(outs), np.stack(gains)


def test_default_bundle_is_shipped() -> None:
    assert default_bundle_path() in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_card_states_budget_and_provenance(path: Path) -> None:
    bundle = load_bundle(path)
    card = bundle.card
    assert card["version"] and card["n_bins"] == 161 and card["hop_samples"] == 160
    assert card["n_params"] == count_params(bundle.arrays) <= 100_000
    assert card["macs_per_s"] == count_macs_per_frame(bundle.arrays, bundle.n_streams) * 100
    assert card["macs_per_s"] <= 40e6
    assert card["lookahead_samples"] == 0
    for key in ("command", "data", "steps"):
        assert card["training"][key]
    assert "held_apart_noises" in card["training"]["data"]
    assert card["name"] == path.stem
    size = sum(p.stat().st_size for p in path.parent.glob(f"{path.stem}*"))
    assert size < 1_000_000


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_numba_matches_stored_torch_output(path: Path) -> None:
    """The pair was written by ``mica.models.train.export`` from the torch model."""
    bundle = load_bundle(path)
    ref = np.load(path.with_name(f"{path.stem}-reference.npz"))
    np.testing.assert_allclose(features_reference(ref["spectra"], bundle.arrays["erb_w"],
                                                  bundle.feature_kind), ref["feats"], atol=1e-5)
    _, gains = run_kernel(GruDenoiser(bundle, 161), ref["spectra"])
    np.testing.assert_allclose(gains, ref["band_gains"], atol=1e-4)


@pytest.mark.train
def test_numba_matches_live_torch(bundle) -> None:
    """Needs the ``train`` extra (torch): ``pip install -e '.[train]' && pytest -m train``.
    CI, which has no torch, checks the stored torch pair above instead."""
    import torch

    from mica.models.train.net import BandGainNet

    a = bundle.arrays
    net = BandGainNet(a["dense_w"].shape[1], a["out_w"].shape[0], a["dense_w"].shape[0],
                      a["gru1_wh"].shape[1])
    names = {"dense_w": "dense.weight", "dense_b": "dense.bias", "out_w": "out.weight",
             "out_b": "out.bias"}
    for g in ("gru1", "gru2"):
        names |= {f"{g}_wi": f"{g}.weight_ih_l0", f"{g}_wh": f"{g}.weight_hh_l0",
                  f"{g}_bi": f"{g}.bias_ih_l0", f"{g}_bh": f"{g}.bias_hh_l0"}
    net.load_state_dict({v: torch.from_numpy(a[k]) for k, v in names.items()})
    rng = np.random.default_rng(3)
    x = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    spectra = stft_reference(x[None], 160)[None, :, 0]
    feats = features_reference(spectra, a["erb_w"])
    with torch.no_grad():
        want = net(torch.from_numpy(feats)[None])[0].numpy()
    _, gains = run_kernel(GruDenoiser(bundle, 161), spectra)
    np.testing.assert_allclose(gains, want, atol=1e-4)


def random_bundle(tmp_path: Path, n_streams: int, seed: int = 0, kind: str = "base"):
    """A bundle with random weights (no torch needed) of ``n_streams`` inputs and feature
    set ``kind``."""
    rng = np.random.default_rng(seed)
    w = erb_weights()
    n_in, d, h, nb = feats_per_band(kind) * 32 * n_streams, 16, 12, 32
    shapes = {"dense_w": (d, n_in), "dense_b": (d,), "gru1_wi": (3 * h, d),
              "gru1_wh": (3 * h, h), "gru1_bi": (3 * h,), "gru1_bh": (3 * h,),
              "gru2_wi": (3 * h, h), "gru2_wh": (3 * h, h), "gru2_bi": (3 * h,),
              "gru2_bh": (3 * h,), "out_w": (nb, 2 * h), "out_b": (nb,)}
    arrays = {k: (0.5 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    path = tmp_path / f"rand{n_streams}{kind}.npz"
    np.savez(path, erb_w=w, **arrays)
    path.with_suffix(".json").write_text(json.dumps(
        {"version": "test", "n_streams": n_streams, "n_bands": 32, "n_bins": 161,
         "gain_floor_db": -25.0, "features": kind}))
    return load_bundle(path)


@pytest.mark.parametrize("kind", FEATURE_KINDS)
@pytest.mark.parametrize("n_streams", (1, 2))
def test_numba_matches_numpy_reference(tmp_path: Path, n_streams: int, kind: str) -> None:
    b = random_bundle(tmp_path, n_streams, kind=kind)
    rng = np.random.default_rng(n_streams)
    x = (0.05 * rng.standard_normal((n_streams, 60 * 160))).astype(np.float32)
    x[0, 3000:6000] += np.sin(np.arange(3000) * 0.2).astype(np.float32)
    x[:, 7000:7040] += 0.8  # a click: the delta feature jumps
    x[:, 8000:] *= 0.01  # a 40 dB level drop: the noise floor follows it down
    x[:, :400] = 0.0  # a silent start: the noise floor must not stay stuck at ln(EPS)
    spectra = np.stack([stft_reference(x[s:s + 1], 160)[:, 0] for s in range(n_streams)])
    out, gains = run_kernel(GruDenoiser(b, 161), spectra)
    ref_out, ref_gains = gru_reference(spectra, b)
    np.testing.assert_allclose(gains, ref_gains, atol=1e-5)
    np.testing.assert_allclose(out, ref_out, atol=1e-5 * np.abs(ref_out).max())
    feats = features_reference(spectra, b.arrays["erb_w"], kind)
    assert feats.shape == (spectra.shape[1], feats_per_band(kind) * 32 * n_streams)
    np.testing.assert_allclose(net_reference(feats, b.arrays), ref_gains, atol=1e-6)
    pf = GruDenoiser(b, 161)
    for t in range(spectra.shape[1]):  # the kernel's features are the reference's
        pf.process(spectra[0, t], spectra[1, t] if n_streams > 1 else None)
        np.testing.assert_allclose(pf._feat, feats[t], atol=1e-5)


def test_process_reuses_buffers_and_reset_restarts(bundle) -> None:
    pf = GruDenoiser(bundle, 161)
    pf.warmup()
    x = (np.random.default_rng(0).standard_normal(161) * 0.01).astype(np.complex64)
    first = pf.process(x).copy()
    out = pf.process(x)
    assert out is pf.process(x)
    pf.reset()
    np.testing.assert_array_equal(pf.process(x), first)
    assert 0.0 <= pf.speech_mask.min() and pf.speech_mask.max() <= 1.0


def test_bad_bundles(tmp_path: Path, bundle) -> None:
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope.npz")
    with pytest.raises(BundleError, match="bins"):
        GruDenoiser(bundle, 129)
    src = default_bundle_path()
    shutil.copy(src, tmp_path / "b.npz")
    card = json.loads(src.with_suffix(".json").read_text())
    del card["n_streams"]
    (tmp_path / "b.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="n_streams"):
        load_bundle(tmp_path / "b.npz")
    b2 = random_bundle(tmp_path, 2)
    with pytest.raises(BundleError, match="noise_ref"):
        GruDenoiser(b2, 161).process(np.zeros(161, np.complex64))


def test_shipped_bundle_follows_the_microphone_count() -> None:
    """One microphone gets the single-channel bundle, an array the one made for the beam."""
    assert make_postfilter("model", 161, n_mics=1).version == load_bundle(
        default_bundle_path(1)).version
    assert default_bundle_path(1).stem == SINGLE_MIC_BUNDLE
    for n_mics in (2, 4, 8):
        assert default_bundle_path(n_mics).stem == DEFAULT_BUNDLE
    assert SINGLE_MIC_BUNDLE != DEFAULT_BUNDLE


@pytest.mark.parametrize("n_mics", [1, 4])
def test_improves_sisdr_and_stoi_on_held_apart_clip_at_0db(held_clip, n_mics: int) -> None:
    clean, noisy = held_clip
    out = denoise_signal(noisy, make_postfilter("model", 161, n_mics=n_mics))
    mmse = denoise_signal(noisy, MmseDenoiser(161))
    assert si_sdr_db(out, clean) >= si_sdr_db(noisy, clean) + 3.0
    assert stoi_score(out, clean) >= stoi_score(noisy, clean) + 0.005
    assert pesq_wb(out, clean) >= pesq_wb(mmse, clean)  # the model beats the fallback


@pytest.mark.parametrize("n_mics", [1, 4])
def test_clean_speech_stays_clean(held_clip, n_mics: int) -> None:
    clean, _ = held_clip
    out = denoise_signal(clean, make_postfilter("model", 161, n_mics=n_mics))
    assert si_sdr_db(out, clean) >= 15.0
    assert pesq_wb(out, clean) >= 4.0  # identity: 4.64


def test_enhancer_postfilter_hook_equals_offline_runner(bundle, held_clip) -> None:
    """One microphone: delay-and-sum is the identity, so the chain is the denoiser alone."""
    _, noisy = held_clip
    n = (len(noisy) // 160) * 160
    x = noisy[:n]
    enh = Enhancer(np.zeros((1, 3)), postfilter=GruDenoiser(bundle, 161))
    enh.warmup()
    got = np.concatenate([enh.process(x[None, i:i + 160]).copy() for i in range(0, n, 160)])
    want = denoise_signal(x, GruDenoiser(bundle, 161))
    lat = enh.latency_samples
    np.testing.assert_allclose(got[lat:], want[: n - lat], atol=2e-5)


def test_enhance_file_with_denoiser(tmp_path: Path, corpus_dir: Path) -> None:
    from mica.device.enhance_file import enhance_file

    stem = "speechbrain_4mic_speech_-0.82918_0.55279_-0.082918"
    wav, geometry = (corpus_dir / "multichannel" / f"{stem}{ext}" for ext in (".wav", ".json"))
    x, fs = sf.read(str(wav), dtype="float32")
    sf.write(str(tmp_path / "in.wav"), x[: 2 * fs], fs)
    for kind in ("mmse", "model"):
        summary = enhance_file(tmp_path / "in.wav", tmp_path / f"{kind}.wav",
                               geometry, denoiser=kind)
        assert summary["denoiser"] == kind and summary["denoiser_version"]
        assert sf.info(str(tmp_path / f"{kind}.wav")).frames == 2 * 16000
