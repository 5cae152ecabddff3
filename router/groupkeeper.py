"""Durable groups at this relay: joining and leaving them under policy, and keeping their streams bounded.

Joining needs the policy's ``join`` on the group and ``subscribe`` on each
pattern; a group's patterns count as this region's interest as long as the
group exists, member or not. Every second each group's stream is trimmed to
what its members still owe; entries given up past the group's bound leave a
``drop``/``expired`` record each.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from meshcore import flowrecord as fk
from meshcore.auth import Principal
from meshcore.errors import StreamUnavailable
from meshcore.policy import Action
from router.envelope import now_us
from router.hop import Subject
from router.subscription import GroupConflict, GroupInfo

if TYPE_CHECKING:
    from router.relay import Relay

log = logging.getLogger(__name__)


class GroupKeeper:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def join(
        self, group: str, patterns: list[str], principal: Principal, update: bool, probe: bool = False
    ) -> tuple[GroupInfo | None, GroupInfo]:
        r = self.relay
        decision = r.gate.authorize(principal, Action.JOIN, group)
        if not decision.allowed:
            raise GroupConflict(decision.reason, 403, decision.rule)
        for pattern in patterns:
            decision = r.gate.may_subscribe(principal, pattern)
            if not decision.allowed:
                raise GroupConflict(decision.reason, 403, decision.rule)
        # what this relay counted in its interest: a group another relay of the region made is in the
        # store (``old``) before this relay knows it, and its patterns must be counted in here all the same
        known = r.groups.groups.get(group)
        old, new = await r.groups.join(group, patterns, principal, update, principal.has_role("admin"), now_us(), probe)
        r.gate.group_changed(group)
        if old is None or old.patterns != new.patterns:
            r.siblings.groups_changed()
        if known is None or known.patterns != new.patterns:
            changed = r.local.add(sorted(new.patterns.patterns))
            if known is not None:
                changed = r.local.remove(sorted(known.patterns.patterns)) or changed
            if changed:
                r.mesh.advertise()
        return old, new

    async def remove(self, group: str, principal: Principal) -> GroupInfo | None:
        r = self.relay
        info = r.groups.groups.get(group)
        if info is not None and info.owner and info.owner != principal.name and not principal.has_role("admin"):
            raise GroupConflict(f"only the owner of group {group!r} ({info.owner}) or an admin may delete it", 403)
        old = await r.groups.remove(group)
        if old is not None:
            r.siblings.groups_changed()
            if r.local.remove(sorted(old.patterns.patterns)):
                r.mesh.advertise()
        return old

    async def reload(self) -> None:
        """Another worker of the region joined, changed or deleted a group: take the registry as stored."""
        r = self.relay
        stored = await r.groups.stored()
        changed = False
        for group in set(r.groups.groups) | set(stored):
            old, new = r.groups.groups.get(group), stored.get(group)
            if old is not None and new is not None and old.patterns == new.patterns:
                continue
            if old is not None:
                changed = r.local.remove(sorted(old.patterns.patterns)) or changed
                del r.groups.groups[group]
            if new is not None:
                changed = r.local.add(sorted(new.patterns.patterns)) or changed
                r.groups.groups[group] = new
            r.gate.group_changed(group)
        if changed:
            r.mesh.advertise()

    async def trim_loop(self) -> None:
        """Keep each durable group's stream to what its members still owe; a drop record for each entry given up."""
        r = self.relay
        await r.ready.wait()
        while True:
            await asyncio.sleep(1.0)
            if not r.breaker.healthy:
                continue
            for group in list(r.groups.groups):
                try:
                    _, given = await r.groups.trim(group)
                except StreamUnavailable as exc:
                    log.warning("cannot trim a durable group", extra={"group": group, "error": str(exc)[:200]})
                    break
                if given:
                    log.error(
                        "durable group full: oldest unacknowledged entries given up",
                        extra={"group": group, "events": len(given), "max_entries": r.groups.max_entries},
                    )
                for ev in given:
                    r.record.refused(Subject.of_body(ev), fk.EXPIRED, "")
