"""Store-and-forward spool: a bounded FIFO of MQTT messages, on disk or in memory.

While the broker is unreachable, :class:`~mica.device.mqtt_link.MqttLink` appends its QoS 1
messages (telemetry, events) here; after the reconnect it sends them oldest first and removes
each one once the broker has acknowledged it. On disk the spool survives a restart of mica:
what was not delivered before goes out after the next connect, before anything newer.

On disk each message is one file ``<number>.msg`` in the spool folder, written to a temporary
name and renamed into place, so a crash leaves either the whole message or none of it. The
number grows with every message (and goes on from the highest one found at start), so the
sort order of the names is the delivery order. File layout: ``MICA-SPOOL-1\\n``, then a
2-byte big-endian topic length, the UTF-8 topic, one byte QoS, one byte retain, the payload.

The spool is bounded in bytes (the files' sizes): when a new message does not fit, the oldest
are removed and counted in :attr:`Spool.dropped_total`. A file that cannot be read back
(corrupt, truncated by a power cut before the rename was on disk) is removed and counted
the same way.

Thread use: every method takes the spool's lock; any thread may call them.
"""

from __future__ import annotations

import collections
import logging
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from mica.array_dsp.errors import MicaError

log = logging.getLogger(__name__)

MAGIC = b"MICA-SPOOL-1\n"
_HEADER = struct.Struct(">H")
_SUFFIX = ".msg"


class SpoolError(MicaError):
    """The spool folder cannot be created or written."""


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False

    def encode(self) -> bytes:
        topic = self.topic.encode("utf-8")
        return (MAGIC + _HEADER.pack(len(topic)) + topic
                + bytes((self.qos, int(self.retain))) + self.payload)

    @classmethod
    def decode(cls, blob: bytes) -> SpooledMessage:
        """Raises ``ValueError`` on anything that is not a whole message."""
        if not blob.startswith(MAGIC):
            raise ValueError("bad magic")
        pos = len(MAGIC)
        if len(blob) < pos + _HEADER.size:
            raise ValueError("truncated")
        (n,) = _HEADER.unpack_from(blob, pos)
        pos += _HEADER.size
        if len(blob) < pos + n + 2:
            raise ValueError("truncated")
        topic = blob[pos:pos + n].decode("utf-8")
        qos, retain = blob[pos + n], blob[pos + n + 1]
        if qos not in (0, 1, 2) or retain not in (0, 1):
            raise ValueError("bad flags")
        return cls(topic, blob[pos + n + 2:], qos, bool(retain))


class Spool:
    """Bounded FIFO of :class:`SpooledMessage`, oldest first.

    Args:
        folder: where the message files live (created if missing); ``None`` keeps the
            messages in memory (same bound and order, lost when the process ends).
        max_bytes: cap on the encoded size of all messages held; 0 accepts nothing (every
            append is dropped and counted).
        fsync: flush each message file to the storage before renaming it into place.

    Raises:
        SpoolError: the folder cannot be created.
    """

    def __init__(self, folder: str | Path | None, max_bytes: int, *, fsync: bool = True) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.max_bytes = int(max_bytes)
        self._fsync = fsync
        self._lock = threading.Lock()
        # (number, encoded size, message or None when it lives on disk)
        self._entries: collections.deque[tuple[int, int, SpooledMessage | None]] = \
            collections.deque()
        self._bytes = 0
        self._next = 0
        self.dropped_total = 0
        """Messages removed unsent: the oldest when the spool was full, or unreadable files."""
        self.appended_total = 0
        """Messages taken in since start."""
        if self.folder is not None:
            self._load()

    # ------------------------------------------------------------------ disk

    def _path(self, number: int) -> Path:
        assert self.folder is not None
        return self.folder / f"{number:020d}{_SUFFIX}"

    def _load(self) -> None:
        assert self.folder is not None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            names = os.listdir(self.folder)
        except OSError as err:
            raise SpoolError(f"spool folder {self.folder}: {err}") from err
        numbers = []
        for name in names:
            path = self.folder / name
            stem, dot, _ = name.partition(".")
            if name.endswith(_SUFFIX) and stem.isdigit() and dot:
                numbers.append(int(stem))
            elif name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write cut short before its rename
        for number in sorted(numbers):
            try:
                size = self._path(number).stat().st_size
            except OSError:
                continue
            self._entries.append((number, size, None))
            self._bytes += size
        self._next = max(numbers, default=-1) + 1
        if self._entries:
            log.info("spool %s: %d message(s), %d bytes waiting from before", self.folder,
                     len(self._entries), self._bytes)
        self._trim(0)

    def _write(self, number: int, blob: bytes) -> None:
        path = self._path(number)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(blob)
            if self._fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)

    def _read(self, number: int) -> SpooledMessage | None:
        try:
            return SpooledMessage.decode(self._path(number).read_bytes())
        except (OSError, ValueError, UnicodeDecodeError) as err:
            log.warning("spool: dropping unreadable message %d: %s", number, err)
            return None

    def _unlink(self, number: int) -> None:
        if self.folder is not None:
            try:
                self._path(number).unlink(missing_ok=True)
            except OSError as err:
                log.warning("spool: cannot remove message %d: %s", number, err)

    # ------------------------------------------------------------------ queue

    def _trim(self, room: int) -> None:
        """Drop the oldest until ``room`` more bytes fit (lock held)."""
        while self._entries and self._bytes + room > self.max_bytes:
            number, size, _ = self._entries.popleft()
            self._bytes -= size
            self._unlink(number)
            self.dropped_total += 1

    def append(self, message: SpooledMessage) -> bool:
        """Add ``message`` at the end, dropping the oldest to make room.

        Returns:
            ``False`` if it was dropped itself (larger than the whole spool, or the write
            failed: disk full, read-only file system), counted in :attr:`dropped_total`.
        """
        blob = message.encode()
        with self._lock:
            self.appended_total += 1
            if len(blob) > self.max_bytes:
                self.dropped_total += 1
                return False
            self._trim(len(blob))
            number = self._next
            self._next += 1
            if self.folder is not None:
                try:
                    self._write(number, blob)
                except OSError as err:
                    log.warning("spool: cannot write message to %s: %s", self.folder, err)
                    self.dropped_total += 1
                    return False
            self._entries.append((number, len(blob),
                                  message if self.folder is None else None))
            self._bytes += len(blob)
            return True

    def peek(self, n: int = 1) -> list[tuple[int, SpooledMessage]]:
        """Up to ``n`` oldest messages as ``(id, message)``; they stay until :meth:`remove`.

        Unreadable files met on the way are removed (counted as dropped).
        """
        out: list[tuple[int, SpooledMessage]] = []
        with self._lock:
            i = 0
            while i < len(self._entries) and len(out) < n:
                number, size, message = self._entries[i]
                if message is None:
                    message = self._read(number)
                    if message is None:
                        del self._entries[i]
                        self._bytes -= size
                        self._unlink(number)
                        self.dropped_total += 1
                        continue
                out.append((number, message))
                i += 1
        return out

    def remove(self, number: int) -> None:
        """Forget the message ``number`` (delivered); unknown ids are ignored."""
        with self._lock:
            for i, (num, size, _) in enumerate(self._entries):
                if num == number:
                    del self._entries[i]
                    self._bytes -= size
                    self._unlink(number)
                    return

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def bytes(self) -> int:
        """Encoded size of the messages held."""
        with self._lock:
            return self._bytes

    def stats(self) -> dict[str, int]:
        """Telemetry fields: ``spool_messages``, ``spool_bytes``, ``spool_dropped_total``."""
        with self._lock:
            return {"spool_messages": len(self._entries), "spool_bytes": self._bytes,
                    "spool_dropped_total": self.dropped_total}
