"""Governance across regions: one authority orders the versions, the mesh carries them, each region keeps its copy.

Every region enforces the governance document from its own store, so a
region cut off from everything keeps enforcing the last version it had, and a
relay that restarts meanwhile loads that version again. Changes are ordered
by one authority, the relays of a designated home region
(``MESHSCOPE_GOVERNANCE_HOME``), as JetStream's meta leader orders every
stream and consumer change in a NATS cluster:

- a change made at a relay of the home region is a compare-and-set in the
  home region's store (``GovernanceStore.change``);
- a change made anywhere else is computed there on the version that region
  enforces and forwarded to the home region over the direct mesh link
  (GOVPROP); the authority takes it only if that version is still the newest,
  so two changes made at once in two regions never both win: the later one
  is refused with 409 and names the newest version. Without a link to the
  authority a change is refused with 503, as JetStream refuses meta changes
  without a leader, and enforcement goes on unchanged;
- every relay that learns a newer version (from its store, or from a peer)
  enforces it at once, writes it into its region's store if the store holds
  an older one, and sends it to every peer (GOV); a peer whose HELLO names an
  older version gets the document when the link comes up. A copy is checked as
  a whole (format, digest, every rule and schema) before it is taken.

Two documents under one version number (two relays that both order changes:
the home region configured differently, or a home region whose store lost its
data and took a change before it heard the mesh's copy) are a fork: neither is
taken, both sides say so in /healthz.

Without a home region every relay orders changes in its own store: right when
all regions share one store, as in a test on one machine.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from meshcore.backoff import backoff_s
from meshcore.document import IncompatibleSchema, InvalidDocument
from meshcore.errors import StreamUnavailable
from meshcore.governance import (
    FORK,
    NEWER,
    NONE,
    OLDER,
    GovernanceConflict,
    GovernanceContent,
    GovernanceDocument,
    content_from_json,
    from_json,
    next_document,
    to_json,
    version_id_of,
    version_number,
)
from meshcore.schemas import canonical
from router import frame as fr
from router.errors import FrameError
from router.routing import UP

if TYPE_CHECKING:
    from router.relay import Relay

log = logging.getLogger(__name__)

PROPOSAL_TIMEOUT_S = 10.0
"""How long a change forwarded to the authority waits for its answer before 503 (in doubt)."""
CONTACT_CHECK_S = 0.5


class AuthorityUnavailable(Exception):
    """The governance authority cannot take a change now (503): unreachable, or its answer did not come."""


class ChangeRefused(Exception):
    """The authority refused a forwarded change: its status (400, 409, 421) and what it said."""

    def __init__(self, status: int, message: str, path: str = "", reasons: tuple[str, ...] = (), current: str = ""):
        super().__init__(message)
        self.status = status
        self.path = path
        self.reasons = reasons
        self.current = current
        """The authority's newest version, when it refused a change made on an older one."""


Edit = Callable[[GovernanceContent], GovernanceContent]


def document_frame(document: GovernanceDocument) -> bytes:
    return fr.encode(fr.GOV, version=document.version, digest=document.digest, doc=to_json(document).decode())


class Authority:
    """This relay's part in ordering and replicating the governance document."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.home = relay.config.governance_home
        self.waiting: dict[str, asyncio.Future[fr.Result]] = {}
        self.fork = ""
        """Why a peer's document was not taken (same version, other content), when that happened."""
        self.lost_at: float | None = None
        """When contact with the authority was lost (None: in contact, or this relay is the authority)."""
        self._ahead: GovernanceDocument | None = None  # taken from the mesh, not yet in the region's store
        self._confirm = False  # the authority said it holds no document: record that in the region's store
        self._wake = asyncio.Event()
        self.heard = False
        """Whether the region's store (or the authority itself) has told which version to enforce, ``none`` included."""

    @property
    def orders(self) -> bool:
        """Whether this relay orders changes itself (it is in the home region, or no home is configured)."""
        return self.home is None or self.home == self.relay.region

    # ---- contact ------------------------------------------------------------------------------

    def in_contact(self) -> bool:
        """Whether versions from the authority can reach us now: a link either way, or a route, to its region."""
        if self.orders:
            return True
        r = self.relay
        home = self.home
        link = r.links_by_region.get(home or "")
        if link is not None and link.state == UP:
            return True
        if any(conn.region == home for conn in r.inbound.values()):
            return True
        if not r.siblings.owner:  # the region's links are worker 0's: it says whether it reaches the authority
            return r.siblings.owner_says("authority")
        route = r.routes.route(home or "")
        return route is not None and route.reachable

    def known(self) -> bool:
        """Whether this relay knows which governance version to enforce.

        A relay that orders changes, or holds a document, does. One whose region's store holds none
        (a new region, or a store that lost its data) knows only once the authority has told it that
        it has none either (its HELLO); until then it must not act as if no policy applied.
        """
        r = self.relay
        if self.orders or self.heard or r.watcher.governance.document is not None:
            return True
        link = r.links_by_region.get(self.home or "")
        told = link is not None and link.state == UP and link.peer_gov == NONE
        told = told or (not r.siblings.owner and r.siblings.owner_says("known"))  # worker 0 heard it
        if told or any(conn.region == self.home and conn.gov == NONE for conn in r.inbound.values()):
            self.heard = self._confirm = True
            self._wake.set()
            return True
        return False

    def cut_off_s(self, now: float | None = None) -> float | None:
        """Seconds since contact with the authority was lost, or None while in contact."""
        if self.lost_at is None:
            return None
        return (time.time() if now is None else now) - self.lost_at

    async def watch_contact(self) -> None:
        """Follow contact with the authority; a change is logged and told to peers in a new HELLO."""
        r = self.relay
        await r.ready.wait()
        self.lost_at = None if self.in_contact() else time.time()
        r.hello["gov_cut_off"] = self.lost_at is not None
        while True:
            await asyncio.sleep(CONTACT_CHECK_S)
            self.known()  # the authority's "none" is recorded as soon as it is heard
            contact = self.in_contact()
            if contact == (self.lost_at is None):
                continue
            if contact:
                log.info(
                    "governance authority reachable again",
                    extra={"home": self.home, "after_s": round(self.cut_off_s() or 0.0, 1)},
                )
                self.lost_at = None
            else:
                self.lost_at = time.time()
                log.warning(
                    "cut off from the governance authority; enforcing the last version",
                    extra={"home": self.home, "version": r.gov_version},
                )
            r.hello["gov_cut_off"] = self.lost_at is not None
            r.send_hello()

    # ---- changes ------------------------------------------------------------------------------

    async def change(self, edit: Edit, author: str, if_match: str | None = None) -> tuple[GovernanceDocument, bool]:
        """Make a change as ``author``: here when this relay orders changes, else at the authority.

        Raises GovernanceConflict (409), InvalidDocument (400), IncompatibleSchema (409),
        ChangeRefused (the authority's answer), AuthorityUnavailable or StreamUnavailable (503).
        """
        r = self.relay
        if self.orders:
            document, changed = await r.registry.change(edit, author, base=if_match, check=self.check_size)
            await r.watcher.refresh()
            return document, changed
        current = r.watcher.governance.document
        base = version_id_of(current)
        if if_match is not None and if_match != base:
            raise GovernanceConflict(if_match, base)
        content = edit(current.content if current else GovernanceContent())
        proposed = next_document(current, content, author, datetime.now(UTC))  # refused here: no round trip
        if proposed is current:
            assert current is not None
            return current, False
        self.check_size(proposed)
        result = await self._propose(fr.Proposal(secrets.token_hex(8), base, author, canonical(content.to_json())))
        if result.status != 200:
            raise ChangeRefused(result.status, result.error, result.path, result.reasons, result.version)
        ordered = self._read(result.doc, self.home or "")
        if ordered is None:
            raise AuthorityUnavailable("the authority answered with a document that does not check; try again")
        self.take(ordered)
        return ordered, True

    def check_size(self, document: GovernanceDocument) -> None:
        """Refuse a version the mesh could not carry to every region (its GOV frame over a link's limit)."""
        limit = self.relay.config.max_body_bytes
        size = len(document_frame(document))
        if size > limit:
            raise InvalidDocument(
                "", f"the document would take {size} bytes on a mesh link, over MESHSCOPE_MAX_BODY_BYTES ({limit})"
            )

    async def _propose(self, proposal: fr.Proposal) -> fr.Result:
        r = self.relay
        link = r.links_by_region.get(self.home or "")
        if not r.siblings.owner:
            raise AuthorityUnavailable(
                f"this relay process ({r.name}) has no link to the governance authority ({self.home}): only worker 0 "
                f"of {r.region} holds the region's links; make the change at the authority's region, or send it "
                "again (another connection may reach worker 0)"
            )
        if link is None or link.state != UP or not link.peer_replicates:
            raise AuthorityUnavailable(
                f"the governance authority ({self.home}) is unreachable from {r.region}: no change can be made "
                "now; the last version is still enforced"
            )
        future: asyncio.Future[fr.Result] = asyncio.get_running_loop().create_future()
        self.waiting[proposal.id] = future
        try:
            link.control(
                fr.encode(
                    fr.GOVPROP,
                    id=proposal.id,
                    base=proposal.base,
                    author=proposal.author,
                    content=proposal.content,
                )
            )
            return await asyncio.wait_for(future, PROPOSAL_TIMEOUT_S)
        except TimeoutError:
            raise AuthorityUnavailable(
                f"the governance authority ({self.home}) did not answer within {PROPOSAL_TIMEOUT_S:g} s; the change "
                "may or may not have been made: read GET /v1/governance before trying again"
            ) from None
        finally:
            self.waiting.pop(proposal.id, None)

    async def on_proposal(self, peer: str, frame: dict[str, object], reply: Callable[[bytes], None]) -> None:
        """A change forwarded by ``peer`` (authenticated): ordered here, answered with GOVRES."""
        proposal = fr.proposal_of(frame)
        r = self.relay

        def answer(status: int, **fields: object) -> None:
            reply(fr.encode(fr.GOVRES, id=proposal.id, status=status, **fields))

        if not self.orders:
            answer(421, error=f"{r.region} does not order governance changes; {self.home} does")
            return
        try:
            content = content_from_json(proposal.content)
            document, changed = await r.registry.change(
                lambda _c: content, proposal.author, base=proposal.base, check=self.check_size
            )
        except GovernanceConflict as exc:
            answer(409, error=str(exc), version=exc.current if version_number(exc.current) else "")
            return
        except IncompatibleSchema as exc:
            answer(409, error="the new schema is incompatible", path=exc.path, reasons=list(exc.reasons)[:100])
            return
        except InvalidDocument as exc:
            answer(400, error=str(exc)[:1000], path=exc.path[:1000])
            return
        except StreamUnavailable as exc:
            answer(503, error=str(exc)[:1000])
            return
        log.info(
            "governance change ordered for another region",
            extra={"from": peer, "author": proposal.author, "version": document.version_id, "changed": changed},
        )
        if changed:
            await r.watcher.refresh()
        answer(200, version=document.version_id, doc=to_json(document).decode())

    def on_result(self, frame: dict[str, object]) -> None:
        result = fr.result_of(frame)
        future = self.waiting.get(result.id)
        if future is not None and not future.done():
            future.set_result(result)

    # ---- copies of the document -----------------------------------------------------------------

    def _read(self, text: str, peer: str) -> GovernanceDocument | None:
        try:
            return from_json(text)
        except InvalidDocument as exc:
            log.warning("a peer's governance document does not check", extra={"peer": peer, "error": str(exc)})
            self.relay.metrics.inc("mesh_refused_items_total", peer=peer)
            return None

    def on_document(self, peer: str, frame: dict[str, object], reply: Callable[[bytes], None]) -> None:
        """A copy of the document from ``peer``: taken when newer; a peer that is behind gets ours."""
        version_id, text = fr.document_of(frame)
        held = self.relay.watcher.governance.document
        if held is not None and version_id == held.version_id:
            return  # the one we hold: nothing to read
        document = self._read(text, peer)
        if document is None:
            return
        if document.version_id != version_id:
            raise FrameError("GOV version and digest do not match its document")
        verdict = self.take(document, peer)
        if verdict == OLDER and held is not None:
            reply(document_frame(held))

    def take(self, document: GovernanceDocument, peer: str = "") -> str:
        """Enforce ``document`` when newer than ours, and keep it in the region's store; the verdict."""
        r = self.relay
        verdict = r.watcher.adopt(document)
        if verdict == NEWER:
            self.fork = ""
            self.ahead(document)
        elif verdict == FORK:
            held = r.watcher.version_id
            self.fork = (
                f"{peer or 'a peer'} holds governance version {document.version_id} where this relay holds {held}: "
                "two relays order changes (check MESHSCOPE_GOVERNANCE_HOME on every relay)"
            )
            log.error("governance fork", extra={"peer": peer, "theirs": document.version_id, "ours": held})
        return verdict

    def peer_version(self, version_id: str, replicates: bool, send: Callable[[bytes], None]) -> None:
        """A peer's HELLO named ``version_id``: a peer that is behind gets our document."""
        held = self.relay.watcher.governance.document
        if replicates and held is not None and version_number(version_id) < held.version:
            send(document_frame(held))

    def flood(self, document: GovernanceDocument) -> None:
        """The document to every peer that takes it, over every connection (they drop what they hold)."""
        r = self.relay
        data = document_frame(document)
        for conn in list(r.inbound.values()):
            if conn.replicates:
                conn.send(data)
        for link in r.links:
            if link.state == UP and link.peer_replicates:
                link.control(data)

    # ---- the region's copy --------------------------------------------------------------------

    def ahead(self, document: GovernanceDocument) -> None:
        """We enforce ``document`` and the region's store may hold an older one: write it there."""
        if self._ahead is None or document.version > self._ahead.version:
            self._ahead = document
        self._wake.set()

    async def persist_loop(self) -> None:
        """Write what we enforce into the region's store, retrying while the store is away."""
        attempt = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            document = self._ahead
            if document is None and not self._confirm:
                continue
            try:
                if document is None:
                    await self.relay.registry.confirm_none()
                    self._confirm = False
                    continue
                await self.relay.registry.store(document)
            except StreamUnavailable as exc:
                if attempt == 0:
                    log.warning("cannot keep the governance version in the store yet", extra={"error": str(exc)})
                await asyncio.sleep(backoff_s(attempt, 0.2, 5.0, random.random()))
                attempt += 1
                self._wake.set()
                continue
            attempt = 0
            if self._ahead is document:
                self._ahead = None

    def health(self) -> dict[str, object]:
        cut = self.cut_off_s()
        return {
            "home": self.home or "",
            "orders_changes": self.orders,
            "authority_reachable": cut is None,
            "cut_off_s": None if cut is None else round(cut, 1),
            "fork": self.fork,
        }
