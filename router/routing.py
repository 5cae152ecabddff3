"""Interest and routing decisions, with no I/O.

Routing is interest-only and one hop, as NATS gateways route: the origin relay
sends an event straight to every peer region that has a matching subscription,
and a relay never forwards an event that arrived over a mesh link. In a full
mesh that gives every interested region exactly one copy and no loops; the
receiver's dedup window absorbs resends after a reconnect.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from meshcore.topic import PatternSet


@dataclass(frozen=True, slots=True)
class Route:
    """Where one event goes: to local subscribers, and to these peer regions."""

    local: bool
    peers: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.local and not self.peers


@dataclass
class InterestTable:
    """Local subscription patterns (reference counted) and each peer's advertised interest."""

    local_counts: Counter[str] = field(default_factory=Counter)
    local: PatternSet = field(default_factory=PatternSet)
    peers: dict[str, PatternSet] = field(default_factory=dict)
    peer_gen: dict[str, int] = field(default_factory=dict)
    generation: int = 0
    _routes: dict[str, Route] = field(default_factory=dict)

    def add_local(self, patterns: list[str]) -> bool:
        """Count a subscriber's patterns in; True when the advertised set changed."""
        before = self.local
        self.local_counts.update(patterns)
        return self._rebuild_local(before)

    def remove_local(self, patterns: list[str]) -> bool:
        """Count a subscriber's patterns out; True when the advertised set changed."""
        before = self.local
        self.local_counts.subtract(patterns)
        for p in [p for p, n in self.local_counts.items() if n <= 0]:
            del self.local_counts[p]
        return self._rebuild_local(before)

    def _rebuild_local(self, before: PatternSet) -> bool:
        after = PatternSet(self.local_counts)
        if after == before:
            return False
        self.local = after
        self.generation += 1
        self._routes.clear()
        return True

    def set_peer(self, region: str, patterns: list[str], gen: int) -> bool:
        """Take a peer's full interest set; older generations are ignored."""
        if gen < self.peer_gen.get(region, -1):
            return False
        self.peer_gen[region] = gen
        new = PatternSet(patterns)
        if self.peers.get(region) == new:
            return False
        self.peers[region] = new
        self._routes.clear()
        return True

    def route(self, topic: str) -> Route:
        hit = self._routes.get(topic)
        if hit is None:
            hit = Route(
                self.local.matches(topic),
                tuple(sorted(r for r, ps in self.peers.items() if ps.matches(topic))),
            )
            if len(self._routes) > 10_000:
                self._routes.clear()
            self._routes[topic] = hit
        return hit


class DedupWindow:
    """The last ``size`` (source, id) keys seen; CloudEvents says the pair identifies an event."""

    __slots__ = ("_seen", "size")

    def __init__(self, size: int):
        self.size = size
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def seen(self, source: str, event_id: str) -> bool:
        """True when the key was already seen; otherwise remember it and return False."""
        key = (source, event_id)
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._seen)


# Link states, and which moves between them are allowed.
CONNECTING, UP, DRAINING, DOWN = "connecting", "up", "draining", "down"
LINK_TRANSITIONS: dict[str, frozenset[str]] = {
    CONNECTING: frozenset((UP, DOWN)),
    UP: frozenset((DRAINING, DOWN)),
    DRAINING: frozenset((DOWN,)),
    DOWN: frozenset((CONNECTING,)),
}
LINK_STATE_VALUE = {DOWN: 0, CONNECTING: 1, UP: 2, DRAINING: 3}
