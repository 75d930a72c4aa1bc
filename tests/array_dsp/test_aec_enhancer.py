"""The echo stage inside the Enhancer: echo removed from the beam, residual-echo gains help,
clean input (no playback) comes out exactly as without the stage, nothing kept per block."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from mica.array_dsp.echo import EchoControl, EchoParams
from mica.array_dsp.enhancer import Enhancer
from mica.array_dsp.errors import MicaError
from mica.evaluation.echo_scene import make_echo_scene
from mica.evaluation.metrics import erle_db
from mica.evaluation.scenarios import circular_geometry

FS = 16000
HOP = 160


def enhance(enh: Enhancer, mic: np.ndarray, ref: np.ndarray | None) -> np.ndarray:
    out = np.zeros(mic.shape[1] // HOP * HOP, np.float32)
    for b in range(mic.shape[1] // HOP):
        sl = slice(b * HOP, (b + 1) * HOP)
        r = None if ref is None else np.ascontiguousarray(ref[:, sl])
        out[sl] = enh.process(np.ascontiguousarray(mic[:, sl]), reference=r)
    return out


@pytest.fixture(scope="module")
def scene(corpus_dir):
    return make_echo_scene(corpus_dir, seconds=6.0, n_mics=4)


def test_echo_stage_cancels_echo_in_the_beam(scene) -> None:
    """Echo only (6 s of far-end speech, measured 4-ch RIR): the beam's echo over seconds
    3-6 is >= 20 dB below the plain beam's with the canceller, and the residual-echo
    gains take it at least 3 dB further."""
    geometry = circular_geometry(4, 0.05)
    plain = enhance(Enhancer(geometry), scene.mic, None)
    results = {}
    for name, params in (("aec", EchoParams(res=None)), ("aec+res", EchoParams())):
        echo = EchoControl(4, 1, HOP, FS, params)
        results[name] = enhance(Enhancer(geometry, echo=echo), scene.mic, scene.ref)
    sl = slice(3 * FS, 6 * FS)
    erle_aec = erle_db(plain[sl], results["aec"][sl])
    erle_res = erle_db(plain[sl], results["aec+res"][sl])
    assert erle_aec >= 20.0, erle_aec
    assert erle_res >= erle_aec + 3.0, (erle_aec, erle_res)


def test_clean_input_is_untouched_by_the_echo_stage(corpus_dir) -> None:
    """Near-end speech, silent playback reference: output identical to the chain without
    the stage (bit for bit), with and without the suppressor."""
    talk = make_echo_scene(corpus_dir, seconds=3.0, n_mics=4, near_window_s=(0.0, 3.0))
    geometry = circular_geometry(4, 0.05)
    want = enhance(Enhancer(geometry), talk.near, None)
    got = enhance(
        Enhancer(geometry, echo=EchoControl(4, 1, HOP, FS)),
        talk.near,
        np.zeros((1, talk.near.shape[1]), np.float32),
    )
    assert np.array_equal(got, want)


def test_echo_stage_shape_mismatch_is_an_error() -> None:
    with pytest.raises(MicaError, match="echo"):
        Enhancer(circular_geometry(4, 0.05), echo=EchoControl(3, 1, HOP, FS))


def test_echo_stage_keeps_nothing_per_block(scene) -> None:
    enh = Enhancer(circular_geometry(4, 0.05), echo=EchoControl(4, 2, HOP, FS))
    enh.warmup()
    mic = scene.mic[:, : 40 * HOP]
    ref = np.concatenate([scene.ref, 0.5 * scene.ref])[:, : 40 * HOP]
    blocks = [
        (
            np.ascontiguousarray(mic[:, b * HOP : (b + 1) * HOP]),
            np.ascontiguousarray(ref[:, b * HOP : (b + 1) * HOP]),
        )
        for b in range(40)
    ]
    for i in range(200):
        enh.process(blocks[i % 40][0], reference=blocks[i % 40][1])
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for i in range(300):  # 3 s: the delay tracker's GCC-PHAT temporaries are freed
            enh.process(blocks[i % 40][0], reference=blocks[i % 40][1])
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < 1024, f"{end - start} bytes kept after 300 blocks"
