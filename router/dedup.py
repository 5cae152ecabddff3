"""Duplicate suppression at the edge, with no I/O: which (principal, source, id) a relay accepted lately.

An event is named by an 8-byte digest of its principal, source and id
(``dedup_key``): a producer's retry of an event this relay already made durable
is answered as a duplicate. ``DedupWindow`` is the fast path, in memory: the
last ``size`` keys accepted, plus keys whose commit is still in flight.

So that a retry is recognized after the relay restarts too, the keys of every
publish go into the region's store in the same commit as its events (one
stream entry per commit, the digests side by side: 8 bytes an event), and a
starting relay reads the newest of them back into the window before it takes
a publish. ``DedupLog`` decides how much of that stream to keep: entries
younger than the restart window, and no more than the window's size in keys
(the oldest beyond either bound are trimmed with the next commit).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque

import orjson

KEY_BYTES = 8
TRIM_SLACK_MS = 5_000  # the relay's clock and the store's, which numbers the entries, may differ this much


def dedup_key(principal: str, source: str, event_id: str) -> bytes:
    """The digest that names an event for duplicate suppression (collisions: ~1 in 2^64 per pair)."""
    return hashlib.blake2b(orjson.dumps((principal, source, event_id)), digest_size=KEY_BYTES).digest()


def pack_keys(keys: list[bytes]) -> bytes:
    return b"".join(keys)


def unpack_keys(blob: bytes) -> list[bytes]:
    """The keys of one stored entry; a trailing partial key (a damaged entry) is left out."""
    return [blob[i : i + KEY_BYTES] for i in range(0, len(blob) - KEY_BYTES + 1, KEY_BYTES)]


class DedupWindow:
    """The last ``size`` keys accepted, plus keys whose commit is still in flight.

    ``reserve`` before an event is made durable, ``commit`` once it is, ``release`` when it
    failed: an event is only marked as seen once it was delivered or durably stored, so a
    publisher's retry after a failure is accepted, not called a duplicate.
    """

    __slots__ = ("_pending", "_seen", "size")

    def __init__(self, size: int):
        self.size = size
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._pending: set[bytes] = set()

    def state(self, key: bytes) -> str:
        """``seen``, ``pending`` or ``new``."""
        if key in self._seen:
            return "seen"
        if key in self._pending:
            return "pending"
        return "new"

    def reserve(self, key: bytes) -> bool:
        if key in self._seen or key in self._pending:
            return False
        self._pending.add(key)
        return True

    def commit(self, key: bytes) -> None:
        self._pending.discard(key)
        self._seen[key] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)

    def release(self, key: bytes) -> None:
        self._pending.discard(key)

    def load(self, keys: list[bytes]) -> None:
        """Keys accepted before a restart, oldest first (at most ``size`` are kept)."""
        for key in keys[-self.size :]:
            self.commit(key)

    def __len__(self) -> int:
        return len(self._seen)


class DedupLog:
    """Which of the stored key entries to keep: the restart window in time, the window's size in keys.

    ``wrote(now_ms, n)`` after each commit of ``n`` keys; ``min_id_ms(now_ms)`` is the oldest
    entry time to keep (the stream is trimmed with MINID to it).
    """

    __slots__ = ("_entries", "_keys", "max_keys", "window_ms")

    def __init__(self, window_s: float, max_keys: int):
        self.window_ms = int(window_s * 1000)
        self.max_keys = max_keys
        self._entries: deque[tuple[int, int]] = deque()  # (time ms, keys) of this relay's recent entries
        self._keys = 0

    def wrote(self, now_ms: int, n: int) -> None:
        self._entries.append((now_ms, n))
        self._keys += n
        while self._entries and (
            self._keys - self._entries[0][1] >= self.max_keys or self._entries[0][0] < now_ms - self.window_ms
        ):
            self._keys -= self._entries.popleft()[1]

    def min_id_ms(self, now_ms: int) -> int:
        oldest = now_ms - self.window_ms
        if self._entries and self._keys >= self.max_keys:
            oldest = max(oldest, self._entries[0][0])
        return max(0, oldest - TRIM_SLACK_MS)
