"""The learned denoiser: ERB-band gains from two GRUs, Numba inference from a weights bundle.

Per 10 ms frame (RNNoise-like, Valin 2018): log ERB-band energies of each input stream (the
beam output; optionally a noise reference) with running-mean normalisation
(:mod:`mica.models.features`; a card with ``"features": "ext"`` adds per band a noise-floor
SNR, a temporal delta and the in-band spectral flatness, ``"harm"`` also the band's
autocorrelation at the frame's pitch lag) -> ``Linear + tanh`` -> ``GRU`` ->
``GRU`` -> ``Linear(h1 ++ h2) + sigmoid`` = one gain per band -> interpolated to bins ->
floored (or refined per bin, :mod:`mica.models.refine`, where the card asks for it) ->
applied to the beam spectrum. Causal, no look-ahead: it adds no latency to the
STFT chain.

The bundle is ``<name>.npz`` (float32 arrays, names as :meth:`BandGainNet.to_arrays` in the
training recipe) plus ``<name>.json``, the model card: ``version``, ``n_params``,
``macs_per_frame``, ``macs_per_s``, ``n_streams``, ``n_bands``, ``n_bins``, ``fs_hz``,
``hop_samples``, ``gain_floor_db``, ``features`` (``base`` when absent, ``ext`` or ``harm``),
``training`` (data, command, steps) and ``metrics``; optionally ``refine`` (``true``, or an
object of :class:`~mica.models.refine.RefineParams` fields): the output gain is refined per
bin by :mod:`mica.models.refine` (denoiser-v1 and -v3 ship with it on).
The default bundle is ``models/data/denoiser-v1`` (package data); ``denoiser-v2`` (v1
fine-tuned for do-no-harm) and ``denoiser-v3`` (extended features, more noise kinds) ship
beside it and load by path.

:class:`GruDenoiser` runs one Numba kernel per frame (two with the refinement) into buffers
allocated in its constructor (``nogil``; nothing is allocated per frame).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mica.array_dsp.errors import MicaError
from mica.array_dsp.jit import kernel
from mica.array_dsp.validate import check_array
from mica.models.features import (
    EPS,
    FEATURE_KINDS,
    FLAT_OFFSET,
    FLOOR_BELOW_MEAN,
    FLOOR_RISE,
    FLOOR_SMOOTH,
    NORM_ALPHA,
    bin_multiplicity,
    feats_per_band,
    features_reference,
    harmonic_lags,
    harmonic_table,
    parabolic_offset,
)
from mica.models.refine import RefineParams, refine_kernel, refine_reference

DEFAULT_BUNDLE = "denoiser-v1"
"""The shipped bundle behind a beamformer (array mode: best after MVDR, benchmarks/denoise.py)."""
SINGLE_MIC_BUNDLE = "denoiser-v3"
"""The shipped bundle for one microphone (best on a single channel; worse than v1 after
MVDR at 5-10 dB SNR, where the residual noise differs from what it trained on)."""
WEIGHT_NAMES = ("dense_w", "dense_b", "gru1_wi", "gru1_wh", "gru1_bi", "gru1_bh",
                "gru2_wi", "gru2_wh", "gru2_bi", "gru2_bh", "out_w", "out_b", "erb_w")


class BundleError(MicaError):
    """A weights bundle is missing, malformed or does not fit the chain."""


@dataclass(frozen=True)
class Bundle:
    """A loaded weights bundle: float32 arrays and the model card."""

    arrays: dict[str, np.ndarray]
    card: dict[str, Any]
    path: str

    @property
    def version(self) -> str:
        return str(self.card["version"])

    @property
    def n_streams(self) -> int:
        return int(self.card["n_streams"])

    @property
    def feature_kind(self) -> str:
        """The card's ``features``: ``base`` (when absent), ``ext`` or ``harm``."""
        return str(self.card.get("features", "base"))


def default_bundle_path(n_mics: int = 2) -> Path:
    """The shipped bundle for ``n_mics`` microphones: :data:`SINGLE_MIC_BUNDLE` for one,
    :data:`DEFAULT_BUNDLE` behind a beamformer."""
    name = SINGLE_MIC_BUNDLE if n_mics == 1 else DEFAULT_BUNDLE
    return Path(str(resources.files("mica.models") / "data" / f"{name}.npz"))


def load_bundle(path: str | Path | None = None) -> Bundle:
    """Load ``path`` (``.npz``; the card is the same stem ``.json``); default: shipped one.

    Raises :class:`BundleError` naming the file for a missing file, missing arrays or card
    keys, or shapes that do not agree with each other.
    """
    npz = Path(path) if path is not None else default_bundle_path()
    card_path = npz.with_suffix(".json")
    if not npz.is_file() or not card_path.is_file():
        raise BundleError(f"{npz}: weights bundle not found (needs {npz.name} and "
                          f"{card_path.name})")
    try:
        with np.load(npz) as z:
            arrays = {k: np.ascontiguousarray(z[k], np.float32) for k in z.files}
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"{npz}: cannot read weights bundle: {err}") from err
    missing = [k for k in WEIGHT_NAMES if k not in arrays]
    missing += [k for k in ("version", "n_streams", "n_bands", "n_bins", "gain_floor_db")
                if k not in card]
    if missing:
        raise BundleError(f"{npz}: bundle lacks {missing}")
    a = arrays
    n_bands, n_bins = a["erb_w"].shape
    hidden = a["gru1_wh"].shape[1]
    if card.get("features", "base") not in FEATURE_KINDS:
        raise BundleError(f"{npz}: card 'features' must be one of {list(FEATURE_KINDS)}, "
                          f"not {card['features']!r}")
    n_in = feats_per_band(card.get("features", "base")) * n_bands * int(card["n_streams"])
    want = {"dense_w": (a["dense_w"].shape[0], n_in), "gru1_wh": (3 * hidden, hidden),
            "gru2_wi": (3 * hidden, hidden), "gru2_wh": (3 * hidden, hidden),
            "out_w": (n_bands, 2 * hidden)}
    bad = [f"{k} {a[k].shape} != {v}" for k, v in want.items() if a[k].shape != v]
    if bad or n_bins != int(card["n_bins"]) or n_bands != int(card["n_bands"]):
        raise BundleError(f"{npz}: inconsistent bundle: {bad or 'n_bins/n_bands vs card'}")
    return Bundle(arrays=arrays, card=card, path=str(npz))


def refine_params(bundle: Bundle) -> RefineParams | None:
    """The card's per-bin refinement: ``None`` when ``refine`` is absent or false, the default
    :class:`RefineParams` for ``true``, those fields for an object. Raises :class:`BundleError`
    for anything else."""
    value = bundle.card.get("refine", False)
    if value is False:
        return None
    if value is True:
        return RefineParams()
    if isinstance(value, dict):
        try:
            return RefineParams(**value)
        except (TypeError, ValueError) as err:
            raise BundleError(f"{bundle.path}: card 'refine': {err}") from err
    raise BundleError(f"{bundle.path}: card 'refine' must be true, false or an object of "
                      f"RefineParams fields, not {value!r}")


def count_params(arrays: dict[str, np.ndarray]) -> int:
    """Learned parameters (the ERB weights are fixed, not counted)."""
    return int(sum(v.size for k, v in arrays.items() if k != "erb_w"))


def count_macs_per_frame(arrays: dict[str, np.ndarray], n_streams: int) -> int:
    """Multiply-accumulates per frame, as the kernel does them (features, net, gains; the
    extended features, when ``dense_w`` takes them, add one weighted log per band bin, the
    harmonic ones the autocorrelation at every candidate lag and two weighted sums per band
    bin)."""
    w = arrays["erb_w"]
    n_bands, n_bins = w.shape
    nz = int(np.count_nonzero(w))
    n_dense, n_in = arrays["dense_w"].shape
    h = arrays["gru1_wh"].shape[1]
    net = n_dense * n_in + 3 * h * (n_dense + h) + 3 * h * 2 * h + n_bands * 2 * h
    ext = n_in > 2 * n_bands * n_streams
    harm = n_in > 5 * n_bands * n_streams
    feats = n_streams * (2 * n_bins + nz + (nz if ext else 0)
                         + (len(harmonic_lags(n_bins)) * n_bins + n_bins + 2 * nz
                            if harm else 0))
    return int(feats + net + nz + w.shape[1])


# --- kernel --------------------------------------------------------------------------------


@kernel
def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@kernel
def _matvec_t(w_t: np.ndarray, x: np.ndarray, bias: np.ndarray, y: np.ndarray) -> None:
    """``y = w_t.T @ x + bias`` with ``w_t (n_in, n_out)``: the inner loop runs over
    independent outputs, so it vectorises without reassociating any sum."""
    n_out = y.shape[0]
    for j in range(n_out):
        y[j] = bias[j]
    for i in range(x.shape[0]):
        xi = x[i]
        for j in range(n_out):
            y[j] += w_t[i, j] * xi


@kernel
def _gru_step(x: np.ndarray, h: np.ndarray, wi_t: np.ndarray, wh_t: np.ndarray,
              bi: np.ndarray, bh: np.ndarray, gi: np.ndarray, gh: np.ndarray) -> None:
    """torch ``nn.GRU`` cell, gates ``r, z, n`` (weights transposed); ``h`` in place."""
    nh = h.shape[0]
    _matvec_t(wi_t, x, bi, gi)
    _matvec_t(wh_t, h, bh, gh)
    for j in range(nh):
        r = _sigmoid(gi[j] + gh[j])
        z = _sigmoid(gi[nh + j] + gh[nh + j])
        n = math.tanh(gi[2 * nh + j] + r * gh[2 * nh + j])
        h[j] = np.float32((1.0 - z) * n + z * h[j])


@kernel
def _harmonic_features(spec: np.ndarray, erb_w: np.ndarray, band_lo: np.ndarray,
                       band_hi: np.ndarray, table_t: np.ndarray, lags: np.ndarray,
                       c: np.ndarray, r: np.ndarray, scratch: np.ndarray, feat: np.ndarray,
                       at: int) -> None:
    """``feat[at:at + n_bands]`` = each band's normalised circular autocorrelation at the
    frame's pitch lag (:func:`mica.models.features.harmonic_reference`). ``table_t (n_bins,
    n_lags)`` is the transposed lag table (the inner loop runs over independent lags, so it
    vectorises without reassociating a sum); ``r (n_lags,)``, ``scratch (2, n_bins)``."""
    n_bins, n_lags = table_t.shape
    n_fft = 2 * (n_bins - 1)
    for i in range(n_lags):
        r[i] = 0.0
    for k in range(n_bins):
        v = spec[k]
        pk = float(v.real) * float(v.real) + float(v.imag) * float(v.imag)
        scratch[0, k] = c[k] * pk
        for i in range(n_lags):
            r[i] += table_t[k, i] * pk
    best = 0
    for i in range(1, n_lags):
        if r[i] > r[best]:
            best = i
    d = 0.0
    if 0 < best < n_lags - 1:
        d = parabolic_offset(r[best - 1], r[best], r[best + 1])
    step = 2.0 * math.pi * (lags[best] + d) / n_fft
    for k in range(n_bins):
        scratch[1, k] = math.cos(step * k)
    for b in range(erb_w.shape[0]):
        num = 0.0
        den = 0.0
        for k in range(band_lo[b], band_hi[b]):
            cp = erb_w[b, k] * scratch[0, k]
            num += cp * scratch[1, k]
            den += cp
        feat[at + b] = np.float32(num / (den + EPS))


@kernel
def gru_denoiser_kernel(
    spec: np.ndarray, erb_w: np.ndarray, band_lo: np.ndarray, band_hi: np.ndarray,
    dense_w: np.ndarray, dense_b: np.ndarray,
    gru1_wi: np.ndarray, gru1_wh: np.ndarray, gru1_bi: np.ndarray, gru1_bh: np.ndarray,
    gru2_wi: np.ndarray, gru2_wh: np.ndarray, gru2_bi: np.ndarray, gru2_bh: np.ndarray,
    out_w: np.ndarray, out_b: np.ndarray, norm_alpha: float, gain_floor: float,
    mu: np.ndarray, started: np.ndarray, h1: np.ndarray, h2: np.ndarray,
    smooth: np.ndarray, floor: np.ndarray, prev: np.ndarray, wsum: np.ndarray,
    harm_table_t: np.ndarray, harm_lags: np.ndarray, harm_c: np.ndarray, harm_r: np.ndarray,
    harm_scratch: np.ndarray,
    feat: np.ndarray, dense: np.ndarray, gi: np.ndarray, gh: np.ndarray, hcat: np.ndarray,
    band_gain: np.ndarray, bin_gain: np.ndarray, out: np.ndarray,
) -> None:
    """One frame: ``spec (n_streams, n_bins)`` complex64 -> ``out (n_bins,)`` = gain * stream 0.

    Every weight matrix is passed transposed (``(n_in, n_out)``, see :func:`_matvec_t`).

    State: ``mu (n_streams, n_bands)``, ``started (1,)`` int64 (frames so far, saturating),
    ``h1, h2 (H,)``; for the
    extended features (when ``feat`` is longer than the base features) also ``smooth``,
    ``floor``, ``prev (n_streams, n_bands)`` (see :mod:`mica.models.features`) with
    ``wsum (n_bands,)`` the band weight sums; for the harmonic features (when ``feat`` is
    longer still) ``harm_table_t (n_bins, n_lags)`` (the transposed
    :func:`~mica.models.features.harmonic_table`), ``harm_lags (n_lags,)`` and ``harm_c
    (n_bins,)`` of :mod:`mica.models.features` (float64); scratch ``harm_r (n_lags,)``,
    ``harm_scratch (2, n_bins)``;
    ``feat (n_in,)``, ``dense (n_dense,)``, ``gi, gh (3H,)``, ``hcat (2H,)``; outputs
    ``band_gain (n_bands,)``, ``bin_gain (n_bins,)`` (unfloored: the speech mask), ``out``.
    """
    n_streams, n_bins = spec.shape
    n_bands = erb_w.shape[0]
    first = started[0] == 0
    n_base = 2 * n_bands * n_streams
    ext = feat.shape[0] > n_base
    harm = feat.shape[0] > 5 * n_bands * n_streams
    alpha = norm_alpha
    if ext:  # warm start of the running mean (see mica.models.features)
        t = float(started[0])
        alpha = min(norm_alpha, t / (t + 1.0))
    for s in range(n_streams):
        for b in range(n_bands):
            e = 0.0
            ml = 0.0
            for k in range(band_lo[b], band_hi[b]):
                v = spec[s, k]
                pk = float(v.real) * float(v.real) + float(v.imag) * float(v.imag)
                e += erb_w[b, k] * pk
                if ext:
                    ml += erb_w[b, k] * math.log(pk + EPS)
            lg = math.log(e + EPS)
            m = lg if first else alpha * mu[s, b] + (1.0 - alpha) * lg
            mu[s, b] = np.float32(m)
            feat[s * 2 * n_bands + b] = np.float32((lg - m) / 4.0)
            feat[s * 2 * n_bands + n_bands + b] = np.float32((lg + 10.0) / 5.0)
            if ext:
                if first:
                    sm = lg
                    fl = lg
                    dl = 0.0
                else:
                    sm = FLOOR_SMOOTH * smooth[s, b] + (1.0 - FLOOR_SMOOTH) * lg
                    fl = max(min(sm, floor[s, b] + FLOOR_RISE), m - FLOOR_BELOW_MEAN)
                    dl = lg - prev[s, b]
                smooth[s, b] = np.float32(sm)
                floor[s, b] = np.float32(fl)
                prev[s, b] = np.float32(lg)
                flat = math.log(e / wsum[b] + EPS) - ml / wsum[b]
                base = n_base + s * 3 * n_bands
                feat[base + b] = np.float32((lg - fl) / 4.0)
                feat[base + n_bands + b] = np.float32(dl / 4.0)
                feat[base + 2 * n_bands + b] = np.float32((flat - FLAT_OFFSET) / 2.0)
        if harm:
            _harmonic_features(spec[s], erb_w, band_lo, band_hi, harm_table_t, harm_lags,
                               harm_c, harm_r, harm_scratch, feat,
                               5 * n_bands * n_streams + s * n_bands)
    if started[0] < 1_000_000:
        started[0] += 1
    _matvec_t(dense_w, feat, dense_b, dense)
    for j in range(dense.shape[0]):
        dense[j] = np.float32(math.tanh(dense[j]))
    _gru_step(dense, h1, gru1_wi, gru1_wh, gru1_bi, gru1_bh, gi, gh)
    _gru_step(h1, h2, gru2_wi, gru2_wh, gru2_bi, gru2_bh, gi, gh)
    nh = h1.shape[0]
    for j in range(nh):
        hcat[j] = h1[j]
        hcat[nh + j] = h2[j]
    _matvec_t(out_w, hcat, out_b, band_gain)
    for b in range(n_bands):
        band_gain[b] = np.float32(_sigmoid(band_gain[b]))
    for k in range(n_bins):
        bin_gain[k] = 0.0
    for b in range(n_bands):
        for k in range(band_lo[b], band_hi[b]):
            bin_gain[k] += erb_w[b, k] * band_gain[b]
    for k in range(n_bins):
        g = max(bin_gain[k], gain_floor)
        out[k] = spec[0, k] * np.float32(g)


# --- numpy reference ---------------------------------------------------------------------


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def net_reference(feats: np.ndarray, a: dict[str, np.ndarray]) -> np.ndarray:
    """Band gains ``(n_frames, n_bands)`` from features ``(n_frames, n_in)`` (float64)."""
    d = np.tanh(feats.astype(np.float64) @ a["dense_w"].T + a["dense_b"])

    def gru(x: np.ndarray, wi: str, wh: str, bi: str, bh: str) -> np.ndarray:
        nh = a[wh].shape[1]
        h = np.zeros(nh)
        hs = np.empty((x.shape[0], nh))
        gi_all = x @ a[wi].T + a[bi]
        for t in range(x.shape[0]):
            gi, gh = gi_all[t], a[wh] @ h + a[bh]
            r = _np_sigmoid(gi[:nh] + gh[:nh])
            z = _np_sigmoid(gi[nh:2 * nh] + gh[nh:2 * nh])
            n = np.tanh(gi[2 * nh:] + r * gh[2 * nh:])
            h = (1 - z) * n + z * h
            hs[t] = h
        return hs

    h1 = gru(d, "gru1_wi", "gru1_wh", "gru1_bi", "gru1_bh")
    h2 = gru(h1, "gru2_wi", "gru2_wh", "gru2_bi", "gru2_bh")
    return _np_sigmoid(np.concatenate([h1, h2], 1) @ a["out_w"].T + a["out_b"])


def gru_reference(spectra: np.ndarray, bundle: Bundle,
                  refine: bool | RefineParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Whole-signal reference of :class:`GruDenoiser` (``refine`` as there).

    spectra: ``(n_streams, n_frames, n_bins)`` complex; returns ``(out (n_frames, n_bins)
    complex64, band gains (n_frames, n_bands) float32)``.
    """
    a = bundle.arrays
    band = net_reference(features_reference(spectra, a["erb_w"], bundle.feature_kind), a)
    floor = 10.0 ** (float(bundle.card["gain_floor_db"]) / 20.0)
    params = _resolve_refine(bundle, refine)
    if params is not None:
        mask = (band.astype(np.float32) @ a["erb_w"]).astype(np.float32)
        out, _ = refine_reference(spectra[0], mask, floor, params)
        return out, band.astype(np.float32)
    g = np.maximum(band @ a["erb_w"].astype(np.float64), floor)
    return (spectra[0] * g).astype(np.complex64), band.astype(np.float32)


def _resolve_refine(bundle: Bundle, refine: bool | RefineParams | None) -> RefineParams | None:
    if refine is None:
        return refine_params(bundle)
    if refine is True:
        return RefineParams()
    return refine or None


# --- streaming stage -----------------------------------------------------------------------


class GruDenoiser:
    """Streaming learned post-filter: ``process(spec[, noise_ref]) -> spec``, ``(n_bins,)``.

    Args:
        bundle: a :class:`Bundle` (see :func:`load_bundle`).
        n_bins: bins per frame of the chain; must equal the bundle's.
        gain_floor_db: overrides the card's gain floor.
        refine: per-bin refinement of the output gain (:mod:`mica.models.refine`): ``None``
            follows the card (``refine``), ``False`` off, ``True`` the default
            :class:`RefineParams`, or those params. :attr:`speech_mask` stays the model's.
    """

    name = "model"

    def __init__(self, bundle: Bundle, n_bins: int, gain_floor_db: float | None = None,
                 refine: bool | RefineParams | None = None) -> None:
        card = bundle.card
        if int(card["n_bins"]) != n_bins:
            raise BundleError(f"{bundle.path}: model expects {card['n_bins']} bins per frame "
                              f"(hop {card.get('hop_samples')}), the chain has {n_bins}")
        self.bundle = bundle
        self.version = bundle.version
        self.n_bins = n_bins
        self.n_streams = bundle.n_streams
        a = bundle.arrays
        self._w = tuple(np.ascontiguousarray(a[k].T) if a[k].ndim == 2 else a[k]
                        for k in WEIGHT_NAMES[:-1])
        erb = a["erb_w"]
        nz = erb != 0
        self._erb = erb
        self._lo = np.array([int(np.argmax(r)) for r in nz], np.int64)
        self._hi = np.array([len(r) - int(np.argmax(r[::-1])) for r in nz], np.int64)
        floor_db = float(card["gain_floor_db"] if gain_floor_db is None else gain_floor_db)
        self._gain_floor = 10.0 ** (floor_db / 20.0)
        n_bands = erb.shape[0]
        hidden = a["gru1_wh"].shape[1]
        self._in = np.zeros((self.n_streams, n_bins), np.complex64)
        self._mu = np.zeros((self.n_streams, n_bands), np.float32)
        self._started = np.zeros(1, np.int64)
        self._smooth = np.zeros((self.n_streams, n_bands), np.float32)
        self._noise_floor = np.zeros((self.n_streams, n_bands), np.float32)
        self._prev = np.zeros((self.n_streams, n_bands), np.float32)
        self._wsum = erb.sum(1).astype(np.float32)
        harm = bundle.feature_kind == "harm"
        self._harm_table_t = np.ascontiguousarray(
            harmonic_table(n_bins).T if harm else np.zeros((n_bins, 0)))
        self._harm_lags = harmonic_lags(n_bins)
        self._harm_c = bin_multiplicity(n_bins)
        self._harm_r = np.zeros(self._harm_table_t.shape[1], np.float64)
        self._harm_scratch = np.zeros((2, n_bins), np.float64)
        self._h1 = np.zeros(hidden, np.float32)
        self._h2 = np.zeros(hidden, np.float32)
        self._feat = np.zeros(a["dense_w"].shape[1], np.float32)
        self._dense = np.zeros(a["dense_w"].shape[0], np.float32)
        self._gi = np.zeros(3 * hidden, np.float32)
        self._gh = np.zeros(3 * hidden, np.float32)
        self._hcat = np.zeros(2 * hidden, np.float32)
        self.band_gain = np.zeros(n_bands, np.float32)
        self.speech_mask = np.zeros(n_bins, np.float32)
        """Unfloored per-bin gain of the last frame, in [0, 1] (the speech mask)."""
        self._out = np.zeros(n_bins, np.complex64)
        self.refine = _resolve_refine(bundle, refine)
        """The per-bin refinement's params, or ``None`` when it is off."""
        self._refine_scalars = self.refine.scalars() if self.refine is not None else ()
        self._noise_psd = np.zeros(n_bins, np.float64)
        self._prev_a2 = np.zeros(n_bins, np.float64)
        self._refine_seen = np.zeros(1, np.int64)
        self._gain = np.zeros(n_bins, np.float32)

    @property
    def latency_samples(self) -> int:
        """Extra algorithmic latency of this stage (none: causal, no look-ahead)."""
        return 0

    @property
    def n_params(self) -> int:
        return count_params(self.bundle.arrays)

    def process(self, spec: np.ndarray, noise_ref: np.ndarray | None = None) -> np.ndarray:
        """Denoise one ``(n_bins,)`` complex64 frame (``noise_ref``: the second stream of an
        array-input model); returns this object's buffer."""
        spec = check_array(spec, "spec", (self.n_bins,), np.complex64)
        self._in[0] = spec
        if self.n_streams > 1:
            if noise_ref is None:
                raise BundleError(f"{self.bundle.path}: array-input model needs noise_ref")
            self._in[1] = check_array(noise_ref, "noise_ref", (self.n_bins,), np.complex64)
        gru_denoiser_kernel(self._in, self._erb, self._lo, self._hi, *self._w, NORM_ALPHA,
                            self._gain_floor, self._mu, self._started, self._h1, self._h2,
                            self._smooth, self._noise_floor, self._prev, self._wsum,
                            self._harm_table_t, self._harm_lags, self._harm_c,
                            self._harm_r, self._harm_scratch,
                            self._feat, self._dense, self._gi, self._gh, self._hcat,
                            self.band_gain, self.speech_mask, self._out)
        if self.refine is not None:
            refine_kernel(self._in[0], self.speech_mask, self._gain_floor,
                          *self._refine_scalars, self._noise_psd, self._prev_a2,
                          self._refine_seen, self._gain, self._out)
        return self._out

    def reset(self) -> None:
        """Back to the state before the first frame."""
        for arr in (self._mu, self._h1, self._h2, self.band_gain, self.speech_mask,
                    self._smooth, self._noise_floor, self._prev, self._noise_psd,
                    self._prev_a2, self._gain):
            arr.fill(0.0)
        self._started.fill(0)
        self._refine_seen.fill(0)

    def warmup(self) -> None:
        """Compile (or load) the kernel, then reset."""
        self.process(np.full(self.n_bins, 1e-3, np.complex64),
                     np.full(self.n_bins, 1e-3, np.complex64) if self.n_streams > 1 else None)
        self.reset()
