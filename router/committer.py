"""Group commit of a relay's durable steps to Redis, each commit applied exactly once.

Everything that must be durable before an event is acknowledged (group
appends, the outbound stream of each destination, the receiver's applied
state, the keys that recognize a producer's retry, and the flow records that
say so) is a list of operations. Publishes
and mesh batches hand their operations to one ``Committer``, which merges what
is waiting into one commit and runs it as one Lua script: atomic, one round
trip, and guarded by a per-writer commit counter (``meshscope:commit:<writer>``).
A commit whose reply was lost is retried with the same number, and the script
skips it if it had already run: a retried write never lands twice. A counter
found further behind than the commit before means the store lost commits it
had confirmed (it restarted without its last writes): ``lost`` counts them.

With ``wait`` set (``MESHSCOPE_STORE_WAIT``), a commit also waits, on the same
connection, until WAITAOF says it is in the store's append-only file on disk
(``fsync``) or in a replica's (``replica``): a store that crashes then loses
nothing that was answered, at the price of an fsync per commit. A WAITAOF
that times out fails the commit, which is retried (the script skips what had
landed, and waits again).

While Redis fails the committer retries the commit at its head with backoff,
behind a circuit breaker; callers waiting on a commit give up after their own
timeout (a publisher gets 503 with Retry-After), but the commit itself goes on
until it lands, and its ``then`` callbacks run when it does. Every operation
is one that cannot fail on a healthy server (XADD with ``*``, HSET, XTRIM), so
a script never stops half way.

On a cluster (``cluster=True``) a script may only touch keys of one slot, and a
commit spans several (``meshcore.storekeys``). It is split by hash tag into
parts, each one script with its own counter (``meshscope:commit:{<tag>}:<writer>``),
each retried on its own until it lands, and the commit is answered only once
every part landed. The parts outside the writer's region tag land first, all at
once, and the region's part (the dedup keys, the applied state, the link stores'
numbering) last: a relay that dies between the two has marked nothing accepted
or applied whose data is missing, so the producer's retry or the peer's resend
writes it again. That costs a second round trip per commit on a cluster, and an
event written twice (never lost) when a relay dies between the two; a single
server runs one script, as before. WAITAOF (``wait``) is not offered on a
cluster: it confirms one connection's writes, and the parts go to several nodes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from meshcore import storekeys as sk
from meshcore.backoff import backoff_s
from meshcore.breaker import CircuitBreaker

log = logging.getLogger(__name__)

SCRIPT = """
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = tonumber(ARGV[1])
if n <= last then return 0 end
local i = 2
local argc = #ARGV
while i <= argc do
  local op = ARGV[i]
  if op == 'X' then
    local key, maxlen, nf = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
    local args = {key}
    if string.sub(maxlen, 1, 1) == 'm' then
      args[#args + 1] = 'MINID'; args[#args + 1] = '~'; args[#args + 1] = string.sub(maxlen, 2)
    elseif maxlen ~= '0' then
      args[#args + 1] = 'MAXLEN'; args[#args + 1] = '~'; args[#args + 1] = maxlen
    end
    args[#args + 1] = '*'
    for j = 1, nf * 2 do args[#args + 1] = ARGV[i + 3 + j] end
    redis.call('XADD', unpack(args))
    i = i + 4 + nf * 2
  elseif op == 'H' then
    redis.call('HSET', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'D' then
    redis.call('HDEL', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'T' then
    redis.call('XTRIM', ARGV[i + 1], 'MAXLEN', ARGV[i + 2])
    i = i + 3
  else
    return redis.error_reply('unknown op ' .. tostring(op))
  end
end
redis.call('SET', KEYS[1], n)
return n - last
"""


def split_by_tag(args: list[bytes | str | int]) -> dict[str, list[bytes | str | int]]:
    """A commit's operations grouped by the hash tag of the key each writes, in order within each group."""
    parts: dict[str, list[bytes | str | int]] = {}
    i, n = 0, len(args)
    while i < n:
        op = args[i]
        if op == "X":
            nf = args[i + 3]
            assert isinstance(nf, int)
            width = 4 + 2 * nf
        elif op == "H":
            width = 4
        elif op in ("D", "T"):
            width = 3
        else:
            raise ValueError(f"unknown commit operation {op!r}")
        key = args[i + 1]
        tag = sk.hash_tag(key.decode() if isinstance(key, bytes) else str(key))
        parts.setdefault(tag, []).extend(args[i : i + width])
        i += width
    return parts


WAITS = {"fsync": (1, 0), "replica": (0, 1)}  # MESHSCOPE_STORE_WAIT -> WAITAOF numlocal, numreplicas
WAIT_TIMEOUT_MS = 2000
GATHER_TURNS = 32
"""Loop turns a commit waits, at most, for work that is ready to join it (see ``Committer._gather``)."""


class NotDurable(RedisError):
    """WAITAOF did not confirm the commit in time (a store error for the breaker, and a retry)."""


class Unavailable(Exception):
    """Redis is failing: the circuit is open, or the commit did not land in time."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class Ops:
    """Operations of one commit, in order; ``then`` runs once they are durable."""

    args: list[bytes | str | int] = field(default_factory=list)
    then: list[Callable[[], None]] = field(default_factory=list)

    def xadd(self, stream: str, fields: dict[bytes, bytes], maxlen: int = 0, min_id_ms: int | None = None) -> None:
        """Append an entry; trim the stream near ``maxlen`` entries, or of entries older than ``min_id_ms``."""
        self.args += ["X", stream, maxlen if min_id_ms is None else f"m{min_id_ms}", len(fields)]
        for k, v in fields.items():
            self.args += [k, v]

    def hset(self, key: str, name: str, value: bytes | str) -> None:
        self.args += ["H", key, name, value]

    def hdel(self, key: str, name: str) -> None:
        self.args += ["D", key, name]

    def trim(self, stream: str, maxlen: int) -> None:
        self.args += ["T", stream, maxlen]

    def __bool__(self) -> bool:
        return bool(self.args)


@dataclass
class _Commit:
    ops: list[Ops]
    done: asyncio.Future[None]


class Committer:
    def __init__(
        self,
        client: aioredis.Redis,
        writer: str,
        breaker: CircuitBreaker,
        on_error: Callable[[str], None] | None = None,
        max_args: int = 200_000,
        wait: str = "none",
        home: str = "",
        cluster: bool = False,
    ):
        """``home``: the hash tag of the writer's own keys (its region's), whose part lands last on a cluster."""
        self.client = client
        self.wait = WAITS.get(wait)
        if cluster and self.wait is not None:
            raise ValueError("waiting for the disk (MESHSCOPE_STORE_WAIT) is not offered on a cluster store")
        self.writer = writer
        self.home = home or writer
        self.cluster = cluster
        self.key = sk.commit_counter(self.home, writer)
        self._numbers: dict[str, int] = {}  # counter key -> the last number the store confirmed
        self.breaker = breaker
        self.on_error = on_error
        self.max_args = max_args
        self._script = client.register_script(SCRIPT)
        self._queue: list[_Commit] = []
        self._wake = asyncio.Event()
        self._landing = False
        self.commits = 0
        self.skipped = 0
        self.lost = 0  # commits the store confirmed and then lost

    def available(self) -> None:
        """Raise Unavailable when the circuit is open (callers answer 503 at once)."""
        now = time.monotonic()
        if not self.breaker.allow(now):
            raise Unavailable(
                f"Redis is unavailable ({self.breaker.last_error or 'circuit open'})",
                max(1.0, self.breaker.retry_after_s(now)),
            )

    def submit(self, ops: Ops) -> asyncio.Future[None]:
        """Queue ``ops``; the future resolves once they are durable (their ``then`` has run)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Commit([ops], done))
        self._wake.set()
        return done

    async def commit(self, ops: Ops, timeout_s: float) -> None:
        """Submit and wait; raise Unavailable when the circuit is open or the commit is late."""
        self.available()
        done = self.submit(ops)
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            raise Unavailable(
                f"Redis did not confirm within {timeout_s} s ({self.breaker.last_error or 'slow'})", 1.0
            ) from None

    async def write(self, ops: Ops) -> None:
        """Land ``ops`` now, retrying until it does (for a writer that does not run the commit loop)."""
        await self._land(list(ops.args))
        for callback in ops.then:
            callback()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    @property
    def confirmed(self) -> int:
        """The number of the last commit the store confirmed (its counter must be at least this)."""
        return self._numbers.get(self.key, 0)

    @property
    def busy(self) -> bool:
        """Commits wait, or one is being landed."""
        return bool(self._queue) or self._landing

    async def run(self) -> None:
        """The commit loop: merge what waits, run it once, retry the same commit until it lands."""
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather()
            batch: list[_Commit] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].ops[0].args) <= self.max_args):
                c = self._queue.pop(0)
                size += sum(len(o.args) for o in c.ops)
                batch.append(c)
            args: list[bytes | str | int] = []
            for c in batch:
                for o in c.ops:
                    args.extend(o.args)
            self._landing = True
            try:
                await self._land(args)
                for c in batch:
                    for o in c.ops:
                        for callback in o.then:
                            try:
                                callback()
                            except Exception:
                                log.exception("a post-commit step failed")
                    if not c.done.done():
                        c.done.set_result(None)
            finally:
                self._landing = False

    async def _gather(self) -> None:
        """Let the work that is ready now join this commit before it starts.

        Frames already received (of any connection) and requests already parsed take a loop turn or
        two each to reach ``submit``; without waiting for them a commit would start with the first
        and the rest would wait for its round trip. The wait ends as soon as two turns pass with
        nothing new, so an idle relay's commit starts within microseconds.
        """
        quiet = 0
        for _ in range(GATHER_TURNS):
            queued = len(self._queue)
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self._queue) == queued else 0
            if quiet == 2:
                return

    async def _run(self, key: str, number: int, args: list[bytes | str | int]) -> int:
        """Run the commit script; with ``wait``, and WAITAOF after it on the same connection."""
        if self.wait is None:
            return int(await self._script(keys=[key], args=[number, *args]))
        local, replicas = self.wait
        pipe = self.client.pipeline(transaction=False)
        await self._script(keys=[key], args=[number, *args], client=pipe)
        pipe.execute_command("WAITAOF", local, replicas, WAIT_TIMEOUT_MS)
        applied, synced = await pipe.execute()
        if int(synced[0]) < local or int(synced[1]) < replicas:
            raise NotDurable(f"WAITAOF confirmed {synced} of ({local}, {replicas}) within {WAIT_TIMEOUT_MS} ms")
        return int(applied)

    async def _land(self, args: list[bytes | str | int]) -> None:
        """Land a commit: whole on one server; on a cluster its parts elsewhere first, then the home part."""
        if not self.cluster or not args:
            await self._land_part(self.key, args)
            self.commits += 1
            return
        parts = split_by_tag(args)
        home = parts.pop(self.home, None)
        if parts:
            await asyncio.gather(*(self._land_part(sk.commit_counter(t, self.writer), a) for t, a in parts.items()))
        if home is not None:
            await self._land_part(self.key, home)
        self.commits += 1

    async def _land_part(self, key: str, args: list[bytes | str | int]) -> None:
        """Run one script under counter ``key`` until it lands; a retry of a landed one is skipped by the script."""
        attempt = 0
        while True:
            try:
                if key not in self._numbers:
                    self._numbers[key] = int(await self.client.get(key) or 0)
                number = self._numbers[key] + 1
                if args:
                    applied = await self._run(key, number, args)
                    if not applied and attempt == 0:
                        # a first attempt is never a repeat: the counter is ahead of us, so another
                        # writer has our name or Redis kept a counter we lost; take it and run again
                        self._numbers[key] = int(await self.client.get(key) or 0)
                        log.error("commit counter was ahead; is another relay using this name?", extra={"key": key})
                        continue
                    if not applied:
                        self.skipped += 1
                    elif applied > 1:
                        self.lost += applied - 1
                        log.error(
                            "the store lost commits it had confirmed (it restarted without its last writes)",
                            extra={"key": key, "commits": applied - 1},
                        )
                    self._numbers[key] = number
                self.breaker.success()
                return
            except RedisError as exc:
                self.breaker.failure(time.monotonic(), str(exc))
                if self.on_error is not None:
                    self.on_error(type(exc).__name__)
                delay = backoff_s(attempt, 0.05, 2.0, random.random())
                attempt += 1
                if attempt == 1 or attempt % 20 == 0:
                    log.warning(
                        "cannot commit to Redis; retrying the same commit",
                        extra={"error": str(exc)[:300], "attempt": attempt, "retry_in_s": round(delay, 3)},
                    )
                await asyncio.sleep(delay)
