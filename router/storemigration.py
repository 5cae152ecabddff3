"""Moving a store written before its keys had hash tags onto the tagged names, once, at a relay's start.

The region's own keys (applied state, dedup keys, link store numbering, the
group registry), each link store and group stream they name, and the
governance keys are renamed with RENAMENX: atomic, a no-op when the old key is
gone (moved already, or never written), and never over a key written since
(two relays of a region starting together move each key once). Consumer groups
and pending entries move with their stream. Commit counters are not moved: a
writer starts a new counter from zero, which only means its first commit
cannot be a repeat of one before the upgrade (none is in flight across a
restart).

On a cluster nothing is moved: a store written before could not have run there
(its commits spanned slots), and RENAME across slots is refused.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from meshcore import storekeys as sk
from meshcore.errors import StreamUnavailable
from meshcore.server import is_cluster

log = logging.getLogger(__name__)


async def _move(client: aioredis.Redis, pairs: list[tuple[str, str]]) -> int:
    """RENAMENX each old key that exists to its new name; the number moved."""
    moved = 0
    for old, new in pairs:
        if old == new or not await client.exists(old):
            continue
        if await client.renamenx(old, new):
            moved += 1
        else:
            log.error("a key written before the tagged names is left where it is: its new name is taken",
                      extra={"key": old, "new": new})  # fmt: skip
    return moved


def _names(raw: Any) -> list[str]:
    return [k.decode() if isinstance(k, bytes) else str(k) for k in raw]


async def migrate(client: aioredis.Redis, region: str, relay: str) -> int:
    """Move this region's keys (and governance) to their tagged names; the number of keys moved."""
    if is_cluster(client):
        return 0
    try:
        moved = await _move(client, [*sk.legacy_region_keys(region, relay).items(), *sk.LEGACY_GOVERNANCE.items()])
        dsts = _names(await client.hkeys(sk.outmeta(region)))
        groups = _names(await client.hkeys(sk.groups(region)))
        moved += await _move(client, [sk.legacy_outbound(region, dst) for dst in dsts])
        moved += await _move(client, [sk.legacy_group_stream(region, group) for group in groups])
    except RedisError as exc:
        raise StreamUnavailable(f"cannot move the store's keys to their tagged names: {exc}") from exc
    if moved:
        log.info("keys moved to their tagged names", extra={"keys": moved, "region": region})
    return moved
