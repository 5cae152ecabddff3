"""This relay's place in the mesh: its links coming up and down, its link state, and the peers that dialed in.

Each relay advertises its up outbound links (with their measured RTT) and its
local interest as one link state advertisement, pushed to every peer that
dialed in whenever either changes and refreshed every few seconds;
advertisements of other regions that arrive over our links are merged into
the route table and flooded on. Acknowledgements arriving over a link free
held events (``Outbox.acked``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from router import frame as fr
from router.committer import Ops
from router.envelope import now_us
from router.link import MeshLink
from router.routing import LINK_STATE_VALUE, SECURITY_VALUE, UP

if TYPE_CHECKING:
    from router.relay import Relay

log = logging.getLogger(__name__)

LSA_KEY = "meshscope:lsa"
LSA_REFRESH_S = 5.0


@dataclass
class Inbound:
    """A peer relay that dialed us: where to push link state and acknowledgements."""

    region: str
    send: Callable[[bytes], None]
    security: str
    principal: str
    gov: str = ""
    replicates: bool = False  # takes GOV frames


class MeshState:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.inbound: dict[int, Inbound] = {}
        self._lsa_seq = now_us()

    # ---- peers that dialed in -------------------------------------------------------------------

    def register_inbound(self, conn: Inbound) -> int:
        r = self.relay
        key = id(conn)
        self.inbound[key] = conn
        conn.send(fr.encode(fr.HELLO, **r.hello, ts=now_us()))
        conn.send(fr.encode(fr.INTEREST, lsa=self.own_lsa().to_json()))
        conn.send(fr.encode(fr.ROUTES, lsas=[ad.to_json() for ad in r.routes.fresh()]))
        r.authority.peer_version(conn.gov, conn.replicates, conn.send)
        return key

    def unregister_inbound(self, key: int) -> None:
        self.inbound.pop(key, None)

    def broadcast(self, data: bytes) -> None:
        """One frame to every peer that dialed in."""
        for conn in list(self.inbound.values()):
            conn.send(data)

    # ---- our link state -------------------------------------------------------------------------

    def up_links(self) -> dict[str, float]:
        """Our up outbound links and their cost: the last RTT measured (1 ms until the first pong)."""
        return {
            link.peer_region: round(link.rtt_ms or 1.0, 3)
            for link in self.relay.links
            if link.state == UP and link.peer_region is not None
        }

    def own_lsa(self) -> fr.LinkStateAd:
        r = self.relay
        # a region of several workers carries no detours: only worker 0 has outbound links
        transit = r.config.transit and not r.siblings.on
        ad = fr.LinkStateAd(r.region, self._lsa_seq, self.up_links(), tuple(sorted(r.local.patterns.patterns)), transit)
        return r.siblings.own_lsa(ad)

    def advertise(self) -> None:
        """Our link state changed (links or interest): a new advertisement to everyone who dialed in.

        Of a region's several workers only worker 0 advertises; the others tell it their interest
        (``router.siblings``) and give peers its advertisement."""
        r = self.relay
        if not r.ready.is_set():
            # the groups' interest is not loaded yet: an advertisement now would tell peers this region
            # wants less than it does, and they would drop its events as no_route until the next one
            # (``Relay._load`` advertises once it is ready)
            return
        r.siblings.interest_changed()
        if not r.siblings.owner:
            self.broadcast(fr.encode(fr.INTEREST, lsa=self.own_lsa().to_json()))
            return
        self._lsa_seq = max(now_us(), self._lsa_seq + 1)
        ad = self.own_lsa()
        r.siblings.advertised(ad)
        self.broadcast(fr.encode(fr.INTEREST, lsa=ad.to_json()))
        ops = Ops()
        ops.hset(LSA_KEY, r.region, orjson.dumps(ad.to_json()))
        if r.breaker.healthy:
            r.committer.submit(ops)

    async def flap_links(self) -> None:
        """Drop a random up link now and then, so a demo shows reconnects and resends."""
        r = self.relay
        while True:
            await asyncio.sleep(random.expovariate(1 / r.config.chaos_flap_interval_s))
            up = [link for link in r.links if link.state == UP]
            if up:
                link = random.choice(up)
                log.info("dropping a mesh link on purpose", extra={"peer": link.peer_region})
                link.kill()

    async def advertise_loop(self) -> None:
        r = self.relay
        while True:
            await asyncio.sleep(LSA_REFRESH_S * (0.8 + random.random() * 0.4))
            r.routes.set_own_links(self.up_links())  # RTTs measured since: our own routes' costs too
            self.advertise()
            if r.routes.refresh(now_us()):
                r.wake()

    def _own_links_changed(self) -> None:
        r = self.relay
        if r.routes.set_own_links(self.up_links()):
            self.advertise()
        r.wake()

    # ---- link callbacks -------------------------------------------------------------------------

    def link_up(self, link: MeshLink) -> None:
        r = self.relay
        assert link.peer_region is not None
        r.links_by_region[link.peer_region] = link
        r.metrics.set("link_security", SECURITY_VALUE[link.security], peer=link.peer_region)
        self._own_links_changed()
        r.authority.peer_version(link.peer_gov, link.peer_replicates, link.control)

    def link_governance(self, link: MeshLink, msg: dict[str, Any]) -> None:
        """A HELLO after the handshake, a governance document or the authority's answer, from a peer we dialed."""
        authority = self.relay.authority
        peer = link.peer_region or link.url
        if msg["t"] == fr.HELLO:
            authority.peer_version(link.peer_gov, link.peer_replicates, link.control)
        elif msg["t"] == fr.GOV:
            authority.on_document(peer, msg, link.control)
        else:
            authority.on_result(msg)

    def link_down(self, link: MeshLink) -> None:
        if link.peer_region is not None:
            resent = self.relay.outbox.link_down(link.peer_region)
            if resent:
                log.info("events will be sent again", extra={"peer": link.peer_region, "events": resent})
        self._own_links_changed()

    def link_acks(self, link: MeshLink, ranges: list[tuple[str, str, int, int]]) -> None:
        if self.relay.outbox.acked(ranges):
            self.relay.wake()

    def link_behind(self, link: MeshLink, notices: list[tuple[str, str, int]]) -> None:
        """The peer applied more of our sequence for it than we claim: the store went back; move on."""
        if link.peer_region and self.relay.outbox.behind(notices, link.peer_region):
            self.relay.metrics.inc("sequence_rollbacks_total", found_by="destination")
            self.relay.wake()

    def link_lsas(self, link: MeshLink, ads: list[fr.LinkStateAd]) -> None:
        r = self.relay
        now = now_us()
        newer = [ad for ad in ads if r.routes.merge(ad, now)]
        if newer:
            self.broadcast(fr.encode(fr.ROUTES, lsas=[ad.to_json() for ad in newer]))
            r.wake()

    def link_clock(self, link: MeshLink, reason: str) -> None:
        """A link's clock check changed: refuse publishes for its peer (or stop), and say so in HELLO."""
        r = self.relay
        peer = link.peer_region or link.name
        if reason and r.clock_refused.get(peer) != reason:
            log.warning("peer refuses this relay's clock; events for it are held", extra={"peer": peer, "why": reason})
            r.clock_refused[peer] = reason
        elif not reason and r.clock_refused.pop(peer, None) is not None:
            log.info("peer accepts this relay's clock again", extra={"peer": peer})
        measured = [x for x in r.links if x.clock_offset_ms is not None]
        ok = not measured or 2 * sum(1 for x in measured if x.clock_refusal) <= len(measured)
        if ok != r.hello["clock_ok"]:
            r.hello["clock_ok"] = ok
            r.send_hello()
        if not reason:
            r.wake()  # held events may go now

    def link_state(self, link: MeshLink, state: str) -> None:
        m = self.relay.metrics
        peer = link.name
        m.set("link_state", LINK_STATE_VALUE[state], peer=peer)
        if state != UP:
            m.remove("link_rtt_ms", peer=peer)
        if state == "connecting" and link.connects:
            m.inc("link_reconnects_total", peer=peer)
        log.info("link state", extra={"peer": peer, "state": state})
