"""The drop-oldest hand-off queue and the period -> hop reblocker."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mica.device.block import Block
from mica.device.reblock import Reblocker
from mica.device.ring import DropOldestQueue


def test_queue_drops_oldest_and_counts() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(3)
    assert all(q.put(i) for i in range(3))
    assert q.put(3) is False and q.put(4) is False
    assert q.dropped_total == 2
    assert [q.get(0), q.get(0), q.get(0)] == [2, 3, 4]
    assert q.get(0.01) is None


def test_queue_close_wakes_consumer_and_keeps_items() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(4)
    q.put(1)
    q.close()
    assert q.get(1.0) == 1
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(q.get(10.0)))
    t.start()
    t.join(2.0)
    assert not t.is_alive() and got == [None] and q.closed


def test_queue_rejects_zero_length() -> None:
    with pytest.raises(ValueError):
        DropOldestQueue(0)


@pytest.mark.parametrize(("period", "hop"), [(160, 160), (100, 160), (256, 160), (1024, 64)])
def test_reblocker_keeps_every_sample_and_its_time(period: int, hop: int) -> None:
    fs_hz, n_ch = 16000, 3
    total = period * 20
    signal = np.arange(n_ch * total, dtype=np.float32).reshape(n_ch, total)
    t0_ns = 1_000_000_000
    rb = Reblocker(n_ch, hop, fs_hz)
    out: list[Block] = []
    for i in range(20):
        block = Block(signal[:, i * period:(i + 1) * period], i,
                      t0_ns + i * period * 1_000_000_000 // fs_hz)
        out.extend(rb.push(block))
    assert [b.seq for b in out] == list(range(total // hop))
    np.testing.assert_array_equal(np.concatenate([b.samples for b in out], axis=1),
                                  signal[:, :len(out) * hop])
    for b in out:  # each hop's time is its first sample's time, to within 1 ns rounding
        expected = t0_ns + b.seq * hop * 1_000_000_000 / fs_hz
        assert abs(b.t_capture_ns - expected) <= 2


def test_reblocker_carries_the_gap_flag_once() -> None:
    rb = Reblocker(1, 160, 16000)
    first = list(rb.push(Block(np.zeros((1, 320), np.float32), 0, 0)))
    after_gap = list(rb.push(Block(np.ones((1, 320), np.float32), 1, 30_000_000, 160)))
    assert [b.gap_frames for b in first] == [0, 0]
    assert [b.gap_frames for b in after_gap] == [160, 0]
    assert after_gap[0].t_capture_ns == 30_000_000
