"""Interest and routes, with no I/O.

Interest: each relay counts its local subscription patterns and advertises
them in its link state (``LinkStateAd``); an event goes only to the regions
whose advertised patterns match its topic (interest-only routing, as NATS
gateways route). The origin sends one copy per interested region.

Routes (link state, as OSPF does it): each relay advertises its up outbound
links with their RTT, with a sequence number; advertisements are flooded to
every peer that dialed in, the newest sequence wins, and one not refreshed for
``max_age_s`` is forgotten. Every relay computes the same graph, so routes are
loop-free; each EVENTS item also carries the path it took and a hop limit, so
a transient disagreement cannot loop an event either. The direct link is used
whenever it is up; only when it is down is the cheapest path (sum of RTTs) of
at most ``hop_limit`` hops taken, through relays that offer transit.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from meshcore.topic import PatternSet
from router.frame import LinkStateAd


@dataclass(frozen=True, slots=True)
class Route:
    """How to reach one destination: the next hop and the whole path (next hop first), or nothing."""

    dst: str
    next_hop: str | None
    path: tuple[str, ...] = ()
    cost_ms: float = math.inf

    @property
    def direct(self) -> bool:
        return self.next_hop == self.dst

    @property
    def reachable(self) -> bool:
        return self.next_hop is not None


@dataclass
class LocalInterest:
    """Local subscription patterns, reference counted: the set a relay advertises."""

    counts: Counter[str] = field(default_factory=Counter)
    patterns: PatternSet = field(default_factory=PatternSet)

    def add(self, patterns: list[str]) -> bool:
        """Count a subscriber's patterns in; True when the advertised set changed."""
        before = self.patterns
        self.counts.update(patterns)
        return self._rebuild(before)

    def remove(self, patterns: list[str]) -> bool:
        """Count a subscriber's patterns out; True when the advertised set changed."""
        before = self.patterns
        self.counts.subtract(patterns)
        for p in [p for p, n in self.counts.items() if n <= 0]:
            del self.counts[p]
        return self._rebuild(before)

    def _rebuild(self, before: PatternSet) -> bool:
        after = PatternSet(self.counts)
        if after == before:
            return False
        self.patterns = after
        return True


@dataclass
class _Known:
    ad: LinkStateAd
    patterns: PatternSet


class LinkStateTable:
    """Every region's newest link state, the routes computed from it, and who wants which topic.

    An advertisement's ``seq`` is its originator's clock (µs) when it was made; relays refresh
    theirs every few seconds. Links of an advertisement older than ``route_age_s`` are no longer
    used for routes (its region is presumed unreachable); its subscription patterns are kept for
    ``interest_age_s``, so events for a region that is away are held for it, not dropped.
    """

    def __init__(
        self,
        me: str,
        hop_limit: int = 3,
        route_age_s: float = 30.0,
        interest_age_s: float = 3600.0,
    ):
        self.me = me
        self.hop_limit = hop_limit
        self.route_age_us = int(route_age_s * 1_000_000)
        self.interest_age_us = int(interest_age_s * 1_000_000)
        self.known: dict[str, _Known] = {}
        self.own_links: dict[str, float] = {}
        self._fresh: frozenset[str] = frozenset()  # regions whose links count for routes
        self._wanted: frozenset[str] = frozenset()  # regions whose interest counts
        self._routes: dict[str, Route] = {}
        self._interest: dict[str, tuple[str, ...]] = {}

    # ---- input ------------------------------------------------------------------------------

    def set_own_links(self, links: dict[str, float]) -> bool:
        """This relay's up outbound links with RTT; True when the set of links changed (a new cost alone: False)."""
        changed = set(links) != set(self.own_links)
        if links != self.own_links:
            self._routes.clear()  # routes through our own links cost what they cost now
        self.own_links = dict(links)
        return changed

    def merge(self, ad: LinkStateAd, now_us: int) -> bool:
        """Take an advertisement; True when it was newer than what we had (so it should be flooded on)."""
        if ad.region == self.me:
            return False
        known = self.known.get(ad.region)
        if known is not None and ad.seq <= known.ad.seq:
            return False
        old = known.ad if known else None
        self.known[ad.region] = _Known(ad, PatternSet(ad.patterns))
        if old is None or old.links != ad.links or old.patterns != ad.patterns:
            self._routes.clear()
            self._interest.clear()
        self.refresh(now_us)
        return True

    def refresh(self, now_us: int) -> bool:
        """Re-decide which advertisements are fresh enough; True when routes or interest changed."""
        fresh = frozenset(r for r, k in self.known.items() if now_us - k.ad.seq <= self.route_age_us)
        wanted = frozenset(r for r, k in self.known.items() if now_us - k.ad.seq <= self.interest_age_us)
        changed = fresh != self._fresh or wanted != self._wanted
        if changed:
            self._fresh, self._wanted = fresh, wanted
            self._routes.clear()
            self._interest.clear()
        for region in [r for r in self.known if r not in wanted]:
            del self.known[region]
        return changed

    def fresh(self) -> list[LinkStateAd]:
        """Advertisements still in use for routes, to flood to peers that dialed in."""
        return [self.known[r].ad for r in sorted(self._fresh) if r in self.known]

    # ---- output -----------------------------------------------------------------------------

    def interested(self, topic: str) -> tuple[str, ...]:
        """Regions other than this one whose advertised patterns match ``topic``."""
        hit = self._interest.get(topic)
        if hit is None:
            hit = tuple(sorted(r for r, k in self.known.items() if r in self._wanted and k.patterns.matches(topic)))
            if len(self._interest) > 10_000:
                self._interest.clear()
            self._interest[topic] = hit
        return hit

    def patterns_of(self, region: str) -> PatternSet:
        known = self.known.get(region)
        return known.patterns if known else PatternSet()

    def route(self, dst: str) -> Route:
        hit = self._routes.get(dst)
        if hit is None:
            hit = self._compute(dst)
            self._routes[dst] = hit
        return hit

    def table(self) -> list[Route]:
        """The route to every known region, for the dashboard's route view."""
        return [self.route(r) for r in sorted(set(self._wanted) | set(self.own_links))]

    def _compute(self, dst: str) -> Route:
        if dst in self.own_links:
            return Route(dst, dst, (dst,), self.own_links[dst])
        # Bellman-Ford bounded by the hop limit: the cheapest path of at most hop_limit hops
        best: dict[str, tuple[float, tuple[str, ...]]] = {peer: (rtt, (peer,)) for peer, rtt in self.own_links.items()}
        for _ in range(self.hop_limit - 1):
            changed = False
            for region, (cost, path) in list(best.items()):
                if region == dst or region not in self._fresh:
                    continue
                known = self.known.get(region)
                if known is None or not known.ad.transit:
                    continue
                for nxt, rtt in known.ad.links.items():
                    if nxt == self.me or nxt in path:
                        continue
                    candidate = cost + max(rtt, 0.001)
                    if nxt not in best or candidate < best[nxt][0]:
                        best[nxt] = (candidate, (*path, nxt))
                        changed = True
            if not changed:
                break
        if dst not in best:
            return Route(dst, None)
        cost, path = best[dst]
        return Route(dst, path[0], path, cost)


# Link states, and which moves between them are allowed.
CONNECTING, UP, DRAINING, DOWN = "connecting", "up", "draining", "down"
LINK_TRANSITIONS: dict[str, frozenset[str]] = {
    CONNECTING: frozenset((UP, DOWN)),
    UP: frozenset((DRAINING, DOWN)),
    DRAINING: frozenset((DOWN,)),
    DOWN: frozenset((CONNECTING,)),
}
LINK_STATE_VALUE = {DOWN: 0, CONNECTING: 1, UP: 2, DRAINING: 3}

# How a link is secured: mutual TLS (both sides by certificate), TLS with a token, or neither.
MTLS, TLS, PLAIN = "mtls", "tls", "plain"
SECURITY_VALUE = {PLAIN: 0, TLS: 1, MTLS: 2}
