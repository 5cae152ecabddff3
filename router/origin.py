"""What a destination applied of an origin's sequences, and who may move it, with no I/O.

An origin numbers the events it sends this region (``router.channel.Channel``):
``epoch`` names the sequence, ``seq`` the event in it, ``floor`` is the lowest
number the origin still holds and ``high`` the highest it assigned. For each
epoch it has seen of an origin (a ``Sequence``) a destination keeps a
contiguous watermark and the numbers applied above it: a resend is recognized,
a gap named.

Who may move that state. Items come over the origin's own link (the sender is
the origin, authenticated) or over a detour, from a transit relay that may lie
about anything in them but its own region. So:

- the origin's own link is believed: its epoch becomes the current one (and
  ends the one before, whose numbers it announced and this relay never
  applied are named as gaps), its floor moves the watermark, its high bounds
  the gaps that can be named;
- a detour moves nothing the origin's own link has not established: its floor
  moves no watermark (a hole it would close stays open until the origin's link
  closes it, or is given up and named as a gap), its high names no gap, an
  epoch seen only over detours is kept beside the current one (a few at most)
  and ends nothing, and an item more than ``WINDOW`` numbers above what is
  established is refused (acknowledged, with a drop record) instead of filling
  the state. What a detour can still do is deliver an event under a number of
  its choosing, as it can deliver any event it carries.

Rollback. An origin whose store lost its last writes (Valkey's everysec sync
allows a second) would restart its numbering below numbers this relay already
applied, and new events would be taken for resends. Instead it continues in a
new epoch with a ``lineage`` (previous epoch, ``base``): its numbers below base
are the previous epoch's, the same events it still holds, recognized as
resends; numbers from base on are new. When the origin's own link confirms such
an epoch, the previous epoch's numbers from base up to its announced high that
were never applied are named as gaps. Should the origin not notice its store
went back, this relay does: an item over the origin's own link, sent after the
one that announced the current high, that claims a lower high, is held back
(not applied, not acknowledged) and the origin is told it is ``behind``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_ABOVE = 200_000  # out-of-order numbers remembered per sequence before the oldest are given up
WINDOW = 200_000  # numbers above what the origin's own link established that a detour may still bring
MAX_EPOCHS = 4  # sequences kept per origin (the current one, its predecessor, ones seen over detours)

Range = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Claim:
    """What an item says of its origin's sequence."""

    epoch: str
    seq: int
    floor: int
    high: int
    sent_us: int = 0
    lineage: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """The decision on one item: apply it or not; gaps found; refused for good; or its origin is behind."""

    apply: bool
    gaps: tuple[Range, ...] = ()
    refused: str = ""  # acknowledged and dropped, with a record saying why
    behind: int = 0  # not applied, not acknowledged: the origin went back below this high


@dataclass
class Sequence:
    """What was applied of one epoch of one origin's numbering."""

    epoch: str
    watermark: int = 0  # everything up to here was applied (or accounted for by the origin)
    above: set[int] = field(default_factory=set)
    high: int = 0  # the highest number the origin itself announced in this epoch
    claim_us: int = 0  # when it sent the item that announced it
    confirmed: bool = False  # the origin's own link has carried this epoch
    prev: str = ""  # the epoch this one continues
    base: int = 0  # numbers below it are ``prev``'s (0: no lineage)
    prev_done: bool = False  # the origin holds nothing below ``base`` any more

    def applied(self, seq: int) -> bool:
        return seq <= self.watermark or seq in self.above

    def add(self, seq: int) -> list[Range]:
        """Apply ``seq``; returns the numbers given up if too many wait above a hole (named as gaps)."""
        self.above.add(seq)
        while self.watermark + 1 in self.above:
            self.watermark += 1
            self.above.discard(self.watermark)
        if len(self.above) <= MAX_ABOVE:
            return []
        lowest = min(self.above)
        gaps = self.missing(self.watermark + 1, lowest - 1)
        self.raise_watermark(lowest)
        return gaps

    def raise_watermark(self, to: int) -> None:
        if to > self.watermark:
            self.watermark = to
            self.above = {s for s in self.above if s > to}
            while self.watermark + 1 in self.above:
                self.watermark += 1
                self.above.discard(self.watermark)

    def missing(self, first: int, upto: int) -> list[Range]:
        """Inclusive ranges of ``first..upto`` never applied."""
        first = max(first, self.watermark + 1)
        if upto < first:
            return []
        if upto - first >= 1_000_000:
            return [(first, upto)]
        out: list[Range] = []
        start = None
        for s in range(first, upto + 1):
            if s in self.above:
                if start is not None:
                    out.append((start, s - 1))
                    start = None
            elif start is None:
                start = s
        if start is not None:
            out.append((start, upto))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "e": self.epoch,
            "w": self.watermark,
            "a": sorted(self.above),
            "h": self.high,
            "t": self.claim_us,
            "c": self.confirmed,
            "p": self.prev,
            "b": self.base,
            "d": self.prev_done,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Sequence:
        return cls(
            str(obj["e"]),
            int(obj["w"]),
            {int(x) for x in obj["a"]},
            int(obj["h"]),
            int(obj.get("t", 0)),
            bool(obj.get("c", True)),
            str(obj.get("p", "")),
            int(obj.get("b", 0)),
            bool(obj.get("d", False)),
        )


@dataclass
class OriginState:
    """What one relay applied of one origin's sequences for it."""

    sequences: dict[str, Sequence] = field(default_factory=dict)  # oldest first
    current: str = ""  # the epoch the origin's own link established last

    def admit(self, claim: Claim, direct: bool) -> Admission:
        """Decide one arriving item; ``direct``: it came over the origin's own link."""
        gaps: list[Range] = []
        sequence = self.sequences.get(claim.epoch)
        if sequence is None:
            unconfirmed = sum(not s.confirmed for s in self.sequences.values())
            if not direct and unconfirmed >= MAX_EPOCHS - 1:
                return Admission(False, refused="too many sequences of this origin not confirmed by its own link")
            sequence = self._open(claim)
        if direct:
            behind = self._believe(sequence, claim, gaps)
            if behind:
                return Admission(False, tuple(gaps), behind=behind)
        else:
            established = max(sequence.high, sequence.watermark, sequence.base - 1)
            if claim.seq > established + WINDOW:
                return Admission(
                    False,
                    tuple(gaps),
                    refused=f"number {claim.seq} came over a detour, more than {WINDOW} above what the origin "
                    f"established ({established})",
                )
        target = sequence
        for _ in range(MAX_EPOCHS):  # a number below base is the previous epoch's (which may continue another)
            if not target.base or claim.seq >= target.base:
                break
            if target.prev_done:
                return Admission(False, tuple(gaps))  # the origin holds nothing below base any more: a resend
            target = self.sequences.get(target.prev) or self._open(Claim(target.prev, claim.seq, 1, 0))
        if target.applied(claim.seq):
            return Admission(False, tuple(gaps))
        gaps += target.add(claim.seq)
        return Admission(True, tuple(gaps))

    def _open(self, claim: Claim) -> Sequence:
        """A sequence seen for the first time; the oldest one not in use makes room."""
        sequence = Sequence(claim.epoch)
        if claim.lineage is not None:
            sequence.prev, sequence.base = claim.lineage
            sequence.watermark = sequence.base - 1  # its own numbers start at base
        if len(self.sequences) >= MAX_EPOCHS:
            current = self.sequences.get(self.current)
            keep = {self.current, current.prev if current else ""}
            for epoch in list(self.sequences):
                if epoch not in keep:
                    del self.sequences[epoch]
                    break
        self.sequences[claim.epoch] = sequence
        return sequence

    def _believe(self, sequence: Sequence, claim: Claim, gaps: list[Range]) -> int:
        """Take what the origin's own link says; returns the known high when the origin went back.

        Only a claim sent no earlier than the latest one believed moves the state: an item of an
        older epoch still on its way (sent before the origin moved on) is applied if new, no more.
        """
        current = self.sequences.get(self.current) if self.current else None
        newer = current is None or claim.sent_us >= current.claim_us
        if sequence is current and newer and claim.high < sequence.high:
            return sequence.high
        if sequence is not current:
            if not newer:
                return 0
            if claim.lineage is not None and not sequence.base:
                sequence.prev, sequence.base = claim.lineage
                sequence.raise_watermark(sequence.base - 1)
            self._succeed(sequence, gaps)
        sequence.confirmed = True
        sequence.claim_us = max(sequence.claim_us, claim.sent_us)
        sequence.high = max(sequence.high, claim.high)
        sequence.raise_watermark(claim.floor - 1)
        if sequence.base and not sequence.prev_done:
            prev = self.sequences.get(sequence.prev)
            if claim.floor >= sequence.base:
                sequence.prev_done = True  # everything below base was acknowledged or expired at the origin
                self.sequences.pop(sequence.prev, None)
            elif prev is not None:
                prev.raise_watermark(claim.floor - 1)
        return 0

    def _succeed(self, sequence: Sequence, gaps: list[Range]) -> None:
        """``sequence`` becomes the current one: the one before ends, its unapplied announced numbers named."""
        old = self.sequences.get(self.current) if self.current else None
        self.current = sequence.epoch
        if old is None or old is sequence:
            return
        if sequence.prev == old.epoch and sequence.base:
            # the origin went back to base: what it announced from there and this relay never got is lost;
            # below base it still holds what was not acknowledged, and sends it in the new epoch
            gaps += old.missing(sequence.base, old.high)
            old.high = min(old.high, sequence.base - 1)
            if sequence.prev_done:
                del self.sequences[old.epoch]
        else:
            gaps += old.missing(old.watermark + 1, old.high)
            del self.sequences[old.epoch]

    def to_json(self) -> dict[str, Any]:
        return {"v": 2, "c": self.current, "s": [s.to_json() for s in self.sequences.values()]}

    @classmethod
    def from_json(cls, obj: Any) -> OriginState:
        try:
            if obj.get("v") == 2:
                sequences = [Sequence.from_json(s) for s in obj["s"]]
                return cls({s.epoch: s for s in sequences}, str(obj["c"]))
            # before sequences were kept per epoch: one, confirmed
            one = Sequence(str(obj["e"]), int(obj["w"]), {int(x) for x in obj["a"]}, int(obj["h"]), confirmed=True)
            return cls({one.epoch: one}, one.epoch) if one.epoch else cls()
        except (KeyError, TypeError, ValueError, AttributeError):
            return cls()
