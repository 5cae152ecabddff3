"""Where ``meshscope chaos`` looks for what became of its missing probes: every drop record since the
scenario began, in the flow stream of every region's store (a drop is recorded in the region where
it happens; whatever the collectors have read of it) and in ClickHouse (through ``up``'s dashboard);
and which way its probes went, from the forward records.

When the stream no longer holds the scenario's start (trimmed) and the collector is behind,
some records may be in neither place yet: the answer says so, so the table can say "unknown"
and why instead of FAILED.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from collector.position import reports
from collector.sqlclient import MESHSCOPE_TOKEN_FILE, SqlFailed, client_token, running_dashboard, via_dashboard
from meshcore.flowrecord import loose_rows
from meshcore.freshness import FLOWS, age_text

DROP_WAIT_S = 15.0
"""How long to look for the drop records of missing events (the collector stores them within seconds)."""
FLOW_STREAM = "meshscope:flows"
STREAM_PAGE = 2_000


@dataclass
class Drops:
    """The drop status of each event a drop record names, and why the search may have missed some."""

    named: dict[str, str] = field(default_factory=dict)
    unknown: str = ""
    """Why records since the start may be out of reach ('' when every one was read)."""


async def find_drops(
    clients: Sequence[aioredis.Redis], data_dir: Path, topic: str, started_ms: int, missing: set[str], wait_s: float
) -> Drops:
    """The drop records naming ``missing`` events, wherever they are: every entry of the flow stream of each
    store of ``clients`` since the scenario started (not yet collected or not), and ClickHouse through
    ``up``'s dashboard.

    When a stream was trimmed past the scenario's start and its collector is behind, or a store cannot
    be read, some records may be in neither yet: the answer says so. Asks again for up to ``wait_s``.
    """
    found = Drops()
    up = running_dashboard(str(data_dir))
    query = f"SELECT event_id, status FROM flows WHERE kind = 'drop' AND topic = '{topic}'"  # chaos's own topic
    deadline = time.monotonic() + wait_s
    while True:
        found.unknown = ""
        complete = True
        lags: list[float] = []
        unreadable: list[str] = []
        for client in clients:
            try:
                complete = await _read_stream_since(client, started_ms, missing, found.named) and complete
                lags += [r.lag_s for r in await reports(client) if r.source == FLOWS]
            except (RedisError, OSError) as exc:
                complete = False
                unreadable.append(type(exc).__name__)
        if unreadable:
            found.unknown = f"the flow stream of {len(unreadable)} store(s) cannot be read ({', '.join(unreadable)})"
        lag = max(lags, default=None)
        if up is not None:
            token_file = str(up.get("token_file") or "")
            token = client_token({MESHSCOPE_TOKEN_FILE: token_file}) if token_file else None
            try:
                _, rows = await asyncio.to_thread(via_dashboard, str(up["url"]), query, token, up.get("ca"))
                found.named.update({str(r[0]): str(r[1]) for r in rows if r[0] in missing})
            except SqlFailed:
                pass
        if not complete and not found.unknown:
            behind = "behind by an unknown time" if lag is None else f"{age_text(lag)} behind"
            found.unknown = f"collector {behind} and the flow stream trimmed since the scenario began"
        if missing <= set(found.named) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(1.0)


async def _read_stream_since(client: aioredis.Redis, started_ms: int, missing: set[str], named: dict[str, str]) -> bool:
    """Every flow record since ``started_ms``, page by page; whether the stream still held that start."""
    start = f"{started_ms}-0"
    try:
        info: Any = await client.xinfo_stream(FLOW_STREAM)
    except RedisError:  # no stream: nothing was written, nothing trimmed
        info = {}
    deleted = info.get("max-deleted-entry-id") or "0-0"  # the newest entry deleted (XDEL)
    trimmed = int(info.get("entries-added") or 0) > int(info.get("length") or 0)  # some are gone (XTRIM too)
    first = info.get("recorded-first-entry-id") or "0-0"  # everything before it may be gone
    complete = _ms(deleted) < started_ms and (not trimmed or _ms(first) <= started_ms)
    after = start
    while True:
        page: Any = await client.xrange(FLOW_STREAM, min=after, max="+", count=STREAM_PAGE)
        for _, fields in page:
            for row in loose_rows(fields) or []:
                if row[6] == "drop" and row[1] in missing:
                    named[row[1]] = row[12]
        if len(page) < STREAM_PAGE:
            return complete
        after = "(" + (page[-1][0].decode() if isinstance(page[-1][0], bytes) else str(page[-1][0]))


def _ms(entry_id: Any) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(text.split("-", 1)[0])


async def detour(client: aioredis.Redis, origin: str, accepted: set[str], dst: str) -> str:
    """Which way the probes from ``origin`` to ``dst`` went, from the stream's forward records (closes ``client``)."""
    await asyncio.sleep(2)
    vias: collections.Counter[str] = collections.Counter()
    try:
        records: Any = await client.xrevrange(FLOW_STREAM, count=5_000)
        for _, fields in records:
            for row in loose_rows(fields) or []:
                if row[6] == "forward" and row[1] in accepted and row[8] == dst and len(row) > 17:
                    vias[row[17]] += 1
    finally:
        await client.aclose()
    if not vias:
        return "no forward records seen yet"
    hops = ", ".join(f"{n} via {v}" if v != dst else f"{n} direct" for v, n in vias.most_common())
    return f"{origin} -> {dst} partitioned; sends: {hops}"
