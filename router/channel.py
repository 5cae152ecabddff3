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

The receiver's side, what it applied of each origin's sequences, is
``router.origin``.

When the store went back (Valkey lost its last writes and the numbering with
them), ``continue_in`` moves the channel to a new epoch that continues the old
one: the held events keep their numbers, which below ``base`` are the old
epoch's, and new events are numbered from ``base`` on in the new epoch, so no
number the destination applied is ever given to another event.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from router.envelope import Event


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
    prev: str = ""  # the epoch this one continues: numbers below ``base`` are that epoch's
    base: int = 0
    loaded_next: int = 0  # the next number when the channel was read from the store at start (0: not read)

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
            # past the last held, not to next_seq: numbers given to events whose commit is still in
            # flight are held when it lands, and must then be sent, not left for the ack timeout
            self.cursor = max(self.cursor, next(reversed(self.held)) + 1)
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

    def continue_in(self, epoch: str, base: int) -> None:
        """Number from ``base`` on in ``epoch``, which continues this one (the store went back below base)."""
        self.prev, self.base, self.epoch = self.epoch, base, epoch
        self.next_seq = max(self.next_seq, base)
        self.cursor = self.floor  # everything unacknowledged goes again, under the new epoch

    @property
    def lineage(self) -> tuple[str, int] | None:
        return (self.prev, self.base) if self.base else None

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epoch": self.epoch, "next": self.next_seq, "floor": self.floor}
        if self.base:
            out["prev"], out["base"] = self.prev, self.base
        return out
