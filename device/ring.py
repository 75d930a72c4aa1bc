"""A bounded hand-off queue between threads that drops the oldest item when full.

The capture thread must never wait on the DSP (architecture: "the capture thread only
reads, converts and enqueues"), and the DSP thread must never wait on the network. So a
full queue does not block the producer: it discards its oldest item and counts it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """Bounded FIFO for one producer and one consumer; ``put`` never blocks."""

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        self._items: deque[T] = deque()
        self._maxlen = maxlen
        self._cond = threading.Condition()
        self._closed = False
        self.dropped_total = 0
        """Items discarded because the queue was full."""

    def put(self, item: T) -> bool:
        """Append ``item``; if full, drop the oldest first. Returns False if one was dropped."""
        with self._cond:
            dropped = len(self._items) >= self._maxlen
            if dropped:
                self._items.popleft()
                self.dropped_total += 1
            self._items.append(item)
            self._cond.notify()
        return not dropped

    def get(self, timeout_s: float | None = None) -> T | None:
        """Oldest item, waiting up to ``timeout_s``; None on timeout or when closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout_s)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        """No more items will come: wake the consumer; what is queued can still be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
