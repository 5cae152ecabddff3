"""The governance registry in this region's Valkey, and the watcher that keeps a relay enforcing its newest version.

Every region's store holds its own copy (``router.authority`` orders the
versions and carries them over the mesh). Keys::

    meshscope:{governance}:current    the newest document (JSON, see meshcore.governance)
    meshscope:{governance}:version    its version id alone, for the cheap periodic check
    meshscope:{governance}:versions   hash: version number -> that document, the whole history
    meshscope:{governance}:log        stream: one entry per change (version, author, time, summary)
    meshscope:governance              pub/sub channel: a version id when it changes

The keys share one hash tag, so a change is one transaction on a cluster too.

A change is a compare-and-set under WATCH on the current document: it is
made on the version it names (or the one read in the same transaction), and
when another change lands first it is refused (``GovernanceConflict``, 409),
never applied on top of a version its author did not see. A copy that
arrives from the authority is written only when it is newer than what the
store holds (``store``), with the same log entry as a change.

Relays learn of a change from the channel at once and, in case a message was
lost, from a version check every few seconds. A relay never goes back to an
older version than the one it enforces (a copy it took from the mesh while its
store was away is written back once the store answers), and a relay that
cannot reach the registry keeps enforcing the last version it had and says so
in /healthz; it never falls back to "no policy".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from meshcore import storekeys as sk
from meshcore.backoff import backoff_s
from meshcore.document import InvalidDocument
from meshcore.errors import StreamUnavailable
from meshcore.governance import (
    NEWER,
    Governance,
    GovernanceConflict,
    GovernanceContent,
    GovernanceDocument,
    check_base,
    compare,
    diff,
    from_json,
    next_document,
    to_json,
    version_id_of,
    version_number,
)
from meshcore.server import is_cluster

log = logging.getLogger(__name__)

CURRENT = sk.GOVERNANCE_CURRENT
VERSION = sk.GOVERNANCE_VERSION
VERSIONS = sk.GOVERNANCE_VERSIONS
LOG = sk.GOVERNANCE_LOG
CHANNEL = "meshscope:governance"
CHECK_INTERVAL_S = 3.0


class GovernanceStore:
    def __init__(self, client: aioredis.Redis):
        self.client = client

    async def current(self) -> GovernanceDocument | None:
        try:
            raw: Any = await self.client.get(CURRENT)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot read the governance registry: {exc}") from exc
        return from_json(raw) if raw else None

    async def version_id(self) -> str:
        try:
            raw: Any = await self.client.get(VERSION)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot read the governance registry: {exc}") from exc
        return raw.decode() if raw else "none"

    async def has_version(self) -> bool:
        """Whether the store holds a version id at all, ``none`` included (absent: never heard of one)."""
        try:
            return bool(await self.client.exists(VERSION))
        except RedisError as exc:
            raise StreamUnavailable(f"cannot read the governance registry: {exc}") from exc

    async def confirm_none(self) -> None:
        """Record that the authority holds no document either (unless a version arrived meanwhile)."""
        try:
            await self.client.set(VERSION, "none", nx=True)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot write the governance registry: {exc}") from exc

    async def change(
        self,
        edit: Callable[[GovernanceContent], GovernanceContent],
        author: str,
        base: str | None = None,
        check: Callable[[GovernanceDocument], None] | None = None,
    ) -> tuple[GovernanceDocument, bool]:
        """Apply ``edit`` to the current content as ``author``; returns (document, whether it changed).

        ``base``: the version the change was made on; another current version is a GovernanceConflict,
        and so is a change that lands between this one's read and its write. ``check`` may refuse
        the new document (raising InvalidDocument) before it is written.
        Raises the governance core's InvalidDocument / IncompatibleSchema for a refused change.
        """
        current: GovernanceDocument | None = None
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(CURRENT)
                raw: Any = await pipe.get(CURRENT)
                current = from_json(raw) if raw else None
                check_base(current, base)
                content = edit(current.content if current else GovernanceContent())
                document = next_document(current, content, author, datetime.now(UTC))
                if document is current:
                    await pipe.unwatch()  # type: ignore[no-untyped-call]
                    return document, False
                if check is not None:
                    check(document)
                pipe.multi()  # type: ignore[no-untyped-call]
                self._write(pipe, current, document, author, not is_cluster(self.client))
                await pipe.execute()
            await self._announce(document)
            return document, True
        except WatchError:
            raise GovernanceConflict(base or version_id_of(current), await self.version_id()) from None
        except RedisError as exc:
            raise StreamUnavailable(f"cannot write the governance registry: {exc}") from exc

    async def store(self, document: GovernanceDocument) -> str:
        """Keep a copy from the authority when it is newer than the store's; returns ``compare``'s verdict."""
        for attempt in range(20):
            try:
                async with self.client.pipeline(transaction=True) as pipe:
                    await pipe.watch(CURRENT)
                    raw: Any = await pipe.get(CURRENT)
                    try:
                        current = from_json(raw) if raw else None
                    except InvalidDocument as exc:
                        log.error("the stored governance document is damaged; replacing it", extra={"error": str(exc)})
                        current = None
                    verdict = compare(document, current)
                    if verdict != NEWER:
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return verdict
                    pipe.multi()  # type: ignore[no-untyped-call]
                    self._write(pipe, current, document, document.author, not is_cluster(self.client))
                    await pipe.execute()
                await self._announce(document)
                return verdict
            except WatchError:
                await asyncio.sleep(0.01 * (attempt + 1))
            except RedisError as exc:
                raise StreamUnavailable(f"cannot write the governance registry: {exc}") from exc
        raise StreamUnavailable("the governance registry kept changing under us; try again")

    @staticmethod
    def _write(
        pipe: Any, current: GovernanceDocument | None, document: GovernanceDocument, author: str, announce: bool
    ) -> None:
        """The change's writes; with ``announce`` its notice on the channel too (a cluster's: ``_announce``)."""
        data = to_json(document)
        summary = diff(current.content if current else None, document.content).summary()
        pipe.set(CURRENT, data)
        pipe.set(VERSION, document.version_id)
        pipe.hset(VERSIONS, str(document.version), data)
        pipe.xadd(
            LOG,
            {
                b"version": document.version_id.encode(),
                b"author": author.encode(),
                b"at": document.changed_at.isoformat().encode(),
                b"summary": orjson.dumps(summary),
            },
            maxlen=10_000,
            approximate=True,
        )
        if announce:
            pipe.publish(CHANNEL, document.version_id)

    async def _announce(self, document: GovernanceDocument) -> None:
        """On a cluster, the change's notice once its transaction ran (a lost one: relays check every few s)."""
        if is_cluster(self.client):
            with contextlib.suppress(RedisError):
                await self.client.publish(CHANNEL, document.version_id)

    async def history(self, limit: int = 100) -> list[dict[str, Any]]:
        try:
            entries: Any = await self.client.xrevrange(LOG, count=limit)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot read the governance log: {exc}") from exc
        out = []
        for _, fields in entries:
            out.append(
                {
                    "version": fields[b"version"].decode(),
                    "author": fields[b"author"].decode(),
                    "changed_at": fields[b"at"].decode(),
                    "summary": orjson.loads(fields[b"summary"]),
                }
            )
        return out


class GovernanceWatcher:
    """Holds what this relay enforces and follows the registry; ``on_change`` runs after each new version.

    ``on_ahead`` runs with the document this relay enforces when the store holds an older one (a copy
    taken from the mesh while the store was away): the owner writes it back.
    """

    def __init__(
        self,
        store: GovernanceStore,
        on_change: Callable[[Governance], None],
        on_ahead: Callable[[GovernanceDocument], None] | None = None,
    ):
        self.store = store
        self.on_change = on_change
        self.on_ahead = on_ahead
        self.governance = Governance()
        self.loaded = False  # whether a version (or the absence of any) was read from the registry once
        self.last_ok = 0.0  # when the registry last answered
        self.last_error = ""

    @property
    def version_id(self) -> str:
        return self.governance.version_id

    def stale_s(self) -> float | None:
        """Seconds since the registry last answered, when it is failing now."""
        return time.time() - self.last_ok if self.last_error else None

    def adopt(self, document: GovernanceDocument) -> str:
        """Enforce ``document`` now when it is newer than ours (it came over the mesh); ``compare``'s verdict."""
        verdict = compare(document, self.governance.document)
        if verdict == NEWER:
            self._enforce(Governance(document, previous=self.governance))
        return verdict

    def _enforce(self, governance: Governance) -> None:
        self.governance = governance
        self.loaded = True
        log.info("governance version enforced", extra={"version": governance.version_id})
        self.on_change(governance)

    async def refresh(self) -> bool:
        """Load the newest version if it differs from ours; True when it changed."""
        version = await self.store.version_id()
        self.last_ok = time.time()
        self.last_error = ""
        if self.loaded and version == self.version_id:
            return False
        held = self.governance.document
        if self.loaded and held is not None and version_number(version) <= held.version:
            if version_number(version) < held.version and self.on_ahead is not None:
                self.on_ahead(held)  # never back to an older version: ours goes back into the store
            return False
        document = await self.store.current() if version != "none" else None
        if not self.loaded or (document is not None and compare(document, held) == NEWER):
            self._enforce(Governance(document, previous=self.governance))
            return True
        return False

    async def run(self) -> None:
        """Follow the channel, and check the version every few seconds in case a message was lost."""
        failures = 0
        while True:
            pubsub = self.store.client.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                await self.refresh()
                failures = 0
                next_check = time.monotonic() + CHECK_INTERVAL_S
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None or time.monotonic() >= next_check:
                        await self.refresh()
                        next_check = time.monotonic() + CHECK_INTERVAL_S
            except (RedisError, OSError, StreamUnavailable) as exc:
                self.last_error = str(exc)[:300]
                delay = backoff_s(failures, 0.2, 5.0, random.random())
                failures += 1
                if failures == 1:
                    log.warning(
                        "governance registry unreachable; enforcing the last version",
                        extra={"version": self.version_id, "error": self.last_error},
                    )
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
