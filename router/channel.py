"""Store-and-forward bookkeeping for one (origin, destination) pair, on both ends, with no I/O.

Sender side, ``Channel``: every event this relay accepted for a destination
region gets the next number of that destination's sequence and is held until
the destination acknowledges that it applied it (delivered or durably
stored), whichever path it took. The relay keeps the same items in a Redis
stream per destination (``meshscope:out:<origin>:<dst>``), so a relay that
restarts resumes sending from what the destination acknowledged. ``epoch``
names the sequence; it only changes when the stored sequence was lost, which
the destination then reports as a gap. ``floor`` is the lowest number still
held: everything below it was acknowledged, or expired with a ``drop`` record.

Receiver side, ``OriginState``: what this relay applied from one origin, as a
contiguous watermark plus the numbers applied above it (items can arrive out
of order while a route changes). It makes every resend idempotent, and it
names gaps: when an origin's epoch changes, the numbers of the old epoch that
were announced but never applied are lost, and reported as such.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from router.envelope import Event

MAX_ABOVE = 200_000  # out-of-order numbers remembered per origin before the oldest are given up


def new_epoch() -> str:
    return secrets.token_hex(8)


@dataclass(slots=True)
class Held:
    """One event held for a destination until it is acknowledged."""

    seq: int
    event: Event
    span_id: str  # the publish span: the parent of every forward of this event
    principal: str
    accepted_us: int
    attempt: int = 0
    sent_at: float = 0.0  # monotonic time of the last send
    via: str = ""


@dataclass
class Channel:
    origin: str
    dst: str
    epoch: str = field(default_factory=new_epoch)
    next_seq: int = 1
    floor: int = 1
    held: OrderedDict[int, Held] = field(default_factory=OrderedDict)
    acked_above: set[int] = field(default_factory=set)
    cursor: int = 1  # the next number to send
    # the stored entries of this channel's Redis stream, oldest first: one entry per commit, holding the
    # numbers first..last; an entry is trimmed once the floor passed its last number
    segments: deque[tuple[int, int]] = field(default_factory=deque)
    trimmed: int = 0  # entries to trim from the stream at the next persist

    @property
    def depth(self) -> int:
        return len(self.held)

    @property
    def high(self) -> int:
        return self.next_seq - 1

    def assign(self, n: int) -> range:
        """Reserve the next ``n`` numbers (committed with ``hold``, or given back with ``unassign``)."""
        first = self.next_seq
        self.next_seq += n
        return range(first, first + n)

    def unassign(self, numbers: range) -> None:
        if numbers and numbers.stop == self.next_seq:
            self.next_seq = numbers.start

    def hold(self, item: Held) -> None:
        self.held[item.seq] = item

    def has_unsent(self) -> bool:
        return bool(self.held) and self.cursor <= next(reversed(self.held))

    def take(self, n: int, now: float, via: str) -> list[Held]:
        """Up to ``n`` held items from the cursor on, marked as sent now through ``via``."""
        out: list[Held] = []
        if not self.held or self.cursor > next(reversed(self.held)):
            return out
        for seq, item in self.held.items():
            if seq < self.cursor or seq in self.acked_above:
                continue
            item.attempt += 1
            item.sent_at = now
            item.via = via
            out.append(item)
            self.cursor = seq + 1
            if len(out) >= n:
                break
        else:
            self.cursor = self.next_seq
        return out

    def in_flight(self) -> int:
        return sum(1 for seq in self.held if seq < self.cursor and seq not in self.acked_above)

    def rewind(self, via: str | None = None) -> int:
        """Send again everything unacknowledged (sent through ``via``, or all); returns how many."""
        first = None
        for seq, item in self.held.items():
            if seq >= self.cursor:
                break
            if seq in self.acked_above or (via is not None and item.via != via):
                continue
            first = seq if first is None else first
        if first is None:
            return 0
        count = sum(1 for s in self.held if first <= s < self.cursor and s not in self.acked_above)
        self.cursor = first
        return count

    def overdue(self, now: float, timeout_s: float) -> bool:
        """Is the oldest unacknowledged sent item older than ``timeout_s``?"""
        for seq, item in self.held.items():
            if seq >= self.cursor:
                return False
            if seq in self.acked_above:
                continue
            return now - item.sent_at > timeout_s
        return False

    def ack(self, first: int, last: int) -> list[Held]:
        """The destination applied ``first..last``; returns the items no longer held."""
        done: list[Held] = []
        for seq in range(max(first, self.floor), last + 1) if last - first < 100_000 else ():
            if seq in self.held and seq not in self.acked_above:
                self.acked_above.add(seq)
        if last - first >= 100_000:  # a huge range: walk what we hold instead
            for seq in self.held:
                if first <= seq <= last:
                    self.acked_above.add(seq)
        while self.held:
            seq = next(iter(self.held))
            if seq not in self.acked_above:
                break
            done.append(self.held.pop(seq))
            self.acked_above.discard(seq)
            self.floor = seq + 1
        # numbers assigned to a commit that has not landed yet are not held yet: the floor stays below them
        self.cursor = max(self.cursor, self.floor)
        self._release_segments()
        return done

    def drop_oldest(self, n: int) -> list[Held]:
        """Give up the ``n`` oldest held items (store overflow or age); their drop records are the caller's."""
        out: list[Held] = []
        while self.held and len(out) < n:
            seq, item = self.held.popitem(last=False)
            self.acked_above.discard(seq)
            out.append(item)
        if self.held:
            self.floor = next(iter(self.held))
        elif out:
            self.floor = out[-1].seq + 1
        self.cursor = max(self.cursor, self.floor)
        self._release_segments()
        return out

    def _release_segments(self) -> None:
        while self.segments and self.segments[0][1] < self.floor:
            self.segments.popleft()
            self.trimmed += 1

    def expired(self, now_us: int, max_age_us: int) -> int:
        """How many of the oldest held items are older than ``max_age_us``."""
        n = 0
        for item in self.held.values():
            if now_us - item.accepted_us <= max_age_us:
                break
            n += 1
        return n

    def meta(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "next": self.next_seq, "floor": self.floor}


@dataclass
class OriginState:
    """What one relay applied of one origin's sequence for it."""

    epoch: str = ""
    watermark: int = 0  # everything up to here was applied (or accounted for by the origin)
    above: set[int] = field(default_factory=set)
    high: int = 0  # the highest number the origin said it assigned, in this epoch

    def to_json(self) -> dict[str, Any]:
        return {"e": self.epoch, "w": self.watermark, "a": sorted(self.above), "h": self.high}

    @classmethod
    def from_json(cls, obj: Any) -> OriginState:
        try:
            return cls(str(obj["e"]), int(obj["w"]), {int(x) for x in obj["a"]}, int(obj["h"]))
        except (KeyError, TypeError, ValueError):
            return cls()

    def copy(self) -> OriginState:
        return OriginState(self.epoch, self.watermark, set(self.above), self.high)

    def admit(self, epoch: str, seq: int, floor: int, high: int) -> tuple[bool, list[tuple[int, int]]]:
        """Decide one arriving item: (apply it?, gaps found as inclusive ranges).

        A new epoch means the origin lost its stored sequence: the numbers of the old epoch that
        were announced (up to ``high``) and never applied are gaps. Numbers below the origin's
        ``floor`` were acknowledged by us or expired (and recorded) by the origin: no gap.
        """
        gaps: list[tuple[int, int]] = []
        if epoch != self.epoch:
            if self.epoch:
                gaps = self._missing(self.high)
            self.epoch, self.watermark, self.above, self.high = epoch, floor - 1, set(), high
        self.high = max(self.high, high)
        if floor - 1 > self.watermark:
            self.watermark = floor - 1
            self.above = {s for s in self.above if s > self.watermark}
        if seq <= self.watermark or seq in self.above:
            return False, gaps
        self.above.add(seq)
        while self.watermark + 1 in self.above:
            self.watermark += 1
            self.above.discard(self.watermark)
        if len(self.above) > MAX_ABOVE:
            lowest = min(self.above)
            gaps.extend(self._missing(lowest - 1))
            self.watermark = lowest
            self.above.discard(lowest)
        return True, gaps

    def _missing(self, upto: int) -> list[tuple[int, int]]:
        """Inclusive ranges above the watermark, up to ``upto``, that were never applied."""
        out: list[tuple[int, int]] = []
        start = None
        for s in range(self.watermark + 1, upto + 1) if upto - self.watermark < 1_000_000 else ():
            if s in self.above:
                if start is not None:
                    out.append((start, s - 1))
                    start = None
            elif start is None:
                start = s
        if start is not None:
            out.append((start, upto))
        if upto - self.watermark >= 1_000_000:
            out.append((self.watermark + 1, upto))
        return out
