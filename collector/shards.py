"""The flow stream as the collector sees it: every shard of it, behind the one-stream interface.

Relays write the flow stream sharded over keys (``meshcore.storekeys.flow_shards``),
each relay one shard. Every collector reads every shard, in the same consumer
group per shard: a shard is never left unread while any collector lives, a
collector that dies leaves its pending entries and in-flight manifests to the
others per shard (``claim_idle``, ``manifests``), and nothing has to hand out
shards. It costs each collector one blocking read per shard.

With one shard this is that shard's ``FlowStream`` and ids are the stream's own.
With several, a read keeps one XREADGROUP in flight per shard (each on its own
connection, on a cluster on the shard's node) and returns what the first of
them brought; an entry id is qualified with its shard, ``<index>/<id>``, so a
batch may hold entries of several shards, and acknowledging, claiming and
manifests are done per shard. The plain stream of before the shards is the
last shard, read until it is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

import redis.asyncio as aioredis

from collector.stream import Entry, FlowStream
from meshcore import storekeys as sk


class ShardedFlowStream:
    def __init__(
        self, client: aioredis.Redis, base: str, shards: int, group: str, consumer: str, dead_letter: str
    ) -> None:
        self.base = base
        self.shards = [
            FlowStream(client, key, group, consumer, dead_letter) for key in sk.flow_streams_read(base, shards)
        ]
        for shard in self.shards:
            shard.legacy_manifests = shard.stream == base  # manifests of before lived in one hash for it
        self._reads: dict[int, asyncio.Task[list[Entry]]] = {}

    @property
    def streams(self) -> list[str]:
        return [s.stream for s in self.shards]

    # ---- ids ----------------------------------------------------------------------------

    def _qualify(self, i: int, entries: list[Entry]) -> list[Entry]:
        if len(self.shards) == 1:
            return entries
        return [(f"{i}/{eid}", fields) for eid, fields in entries]

    def _ids(self, i: int, ids: list[str]) -> list[str]:
        return ids if len(self.shards) == 1 else [f"{i}/{eid}" for eid in ids]

    def _split(self, ids: list[str]) -> dict[int, list[str]]:
        """Qualified ids by shard (an id of no known shard is left out: it names nothing we read)."""
        if len(self.shards) == 1:
            return {0: list(ids)} if ids else {}
        out: dict[int, list[str]] = defaultdict(list)
        for qualified in ids:
            index, sep, eid = qualified.partition("/")
            if sep and index.isdigit() and int(index) < len(self.shards):
                out[int(index)].append(eid)
        return out

    # ---- the one-stream interface -----------------------------------------------------

    async def ensure_group(self) -> None:
        for shard in self.shards:
            await shard.ensure_group()

    async def read(self, count: int, block_ms: int, pending: bool = False) -> list[Entry]:
        """New entries of whichever shards have some first, or (``pending``) every shard's unacked ones."""
        if len(self.shards) == 1:
            return await self.shards[0].read(count, block_ms, pending)
        if pending:
            out: list[Entry] = []
            for i, shard in enumerate(self.shards):
                out += self._qualify(i, await shard.read(count, block_ms, pending=True))
            return out
        for i, shard in enumerate(self.shards):
            if i not in self._reads:
                self._reads[i] = asyncio.create_task(shard.read(count, block_ms))
        await asyncio.wait(self._reads.values(), return_when=asyncio.FIRST_COMPLETED)
        out = []
        for i, task in list(self._reads.items()):
            if task.done():
                del self._reads[i]
                out += self._qualify(i, task.result())  # a failed read raises StreamUnavailable here
        return out

    async def cancel_reads(self) -> None:
        """Give up the reads in flight (the collector lost Redis or stops): what they were given stays
        pending in the group, and is read again at the next start (``read(pending=True)``)."""
        reads, self._reads = list(self._reads.values()), {}
        for task in reads:
            task.cancel()
        for task in reads:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def claim_idle(self, min_idle_ms: int, count: int) -> list[Entry]:
        out: list[Entry] = []
        for i, shard in enumerate(self.shards):
            out += self._qualify(i, await shard.claim_idle(min_idle_ms, count))
        return out

    async def claim(self, ids: list[str], min_idle_ms: int) -> list[Entry]:
        out: list[Entry] = []
        for i, part in self._split(ids).items():
            out += self._qualify(i, await self.shards[i].claim(part, min_idle_ms))
        return out

    async def ack(self, ids: list[str]) -> None:
        for i, part in self._split(ids).items():
            await self.shards[i].ack(part)

    async def dead_letter(self, entry_id: str, reason: str, fields: dict[Any, Any]) -> None:
        for i, part in self._split([entry_id]).items():
            await self.shards[i].dead_letter(part[0], reason, fields)

    async def entry(self, entry_id: str) -> dict[Any, Any]:
        for i, part in self._split([entry_id]).items():
            return await self.shards[i].entry(part[0])
        return {}

    async def save_manifest(self, token: str, ids: list[str]) -> set[str]:
        """Each shard's part of the batch in that shard's manifests, under the one token."""
        owned: set[str] = set()
        for i, part in self._split(ids).items():
            owned.update(self._ids(i, sorted(await self.shards[i].save_manifest(token, part))))
        return owned

    async def drop_manifest(self, token: str) -> None:
        for shard in self.shards:
            await shard.drop_manifest(token)

    async def manifests(self) -> dict[str, dict[str, Any]]:
        """Every shard's manifests, one per token with the ids of all its parts."""
        out: dict[str, dict[str, Any]] = {}
        for i, shard in enumerate(self.shards):
            for token, manifest in (await shard.manifests()).items():
                ids = self._ids(i, [str(eid) for eid in manifest.get("ids") or []])
                if token in out:
                    out[token]["ids"] += ids
                    out[token]["ts"] = min(float(out[token].get("ts", 0)), float(manifest.get("ts", 0)))
                else:
                    out[token] = {**manifest, "ids": ids}
        return out

    async def publish(self, channel: str, message: bytes) -> None:
        await self.shards[0].publish(channel, message)
