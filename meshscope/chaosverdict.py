"""What ``meshscope chaos`` concludes of a scenario as it runs (``Run``): its probes counted in their
durable group, every missing one looked for among the drop records, the checks that are not counts,
and the table.

A scenario is ``ok`` when no probe arrived twice, every missing one is named by a drop record, and
every other check held; ``FAILED`` when one of those is established not to hold; ``unknown: why``
when a missing probe could not be looked for (its drop record may be in a stream trimmed since
and not yet in ClickHouse): never FAILED for what nobody could see.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError

from meshcore import storekeys as sk
from meshscope.chaosdemo import Demo, Probe
from meshscope.chaosrecords import DROP_WAIT_S, Drops, find_drops

SETTLED_S = 3.0
"""Missing events unchanged for this long: look for their drop records, and stop waiting once each has one."""
COUNTS = ("published", "delivered", "duplicated", "lost", "explained")


@dataclass
class Outcome:
    scenario: str
    published: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0
    explained: int = 0  # lost events with a drop record naming them
    notes: list[str] = field(default_factory=list)
    unknown: str = ""
    """Why what became of the lost events cannot be established ('' when it can)."""
    problems: list[str] = field(default_factory=list)
    """Checks other than counting that failed (publishes that must not fail, the map's verdict, a version)."""

    @property
    def ok(self) -> bool:
        return self.duplicated == 0 and self.lost == self.explained and not self.problems

    @property
    def result(self) -> str:
        """ok, FAILED, or unknown with why (losses without a drop record that could not be looked for)."""
        if self.ok:
            return "ok"
        if self.duplicated == 0 and not self.problems and self.unknown:
            return f"unknown: {self.unknown}"
        return "FAILED"

    def add(self, part: Outcome) -> None:
        """Count another probe of the same scenario in (its group elsewhere)."""
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(part, name))
        self.notes += part.notes
        self.unknown = self.unknown or part.unknown


@dataclass
class Run:
    """One scenario as it runs: where its probe goes, what it found, and its progress lines."""

    demo: Demo
    name: str
    origin: str
    dst: str
    events: int
    probe: Probe
    outcome: Outcome
    group: str
    isolate_s: float = 60.0
    """How long a region scenario keeps its region cut off."""
    started: float = field(default_factory=time.monotonic)
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def say(self, text: str) -> None:
        """One progress line, as the step happens."""
        print(f"  {self.name:<19} {time.monotonic() - self.started:6.1f} s  {text}", flush=True)

    async def count(self, probe: Probe, where: tuple[str, str], outcome: Outcome, wait_s: float = 90) -> None:
        """Count ``probe`` in the group ``where`` (region, group) into ``outcome``."""
        await count(self.demo, outcome, probe, where, self.started_ms, wait_s, self.say)


async def count(
    demo: Demo,
    outcome: Outcome,
    probe: Probe,
    where: tuple[str, str],
    since_ms: int,
    wait_s: float,
    say: Callable[[str], None] = lambda text: None,
) -> None:
    """Count ``probe``'s events in the durable group ``where`` (region, group); name each missing one from
    the drop records since ``since_ms``, in every region's stream and in ClickHouse."""
    region, group = where
    client = demo.redis(region)
    stores = demo.stores()
    try:
        stream = sk.group_stream(region, group)
        deadline = time.monotonic() + wait_s
        counts: collections.Counter[str] = collections.Counter()
        found = Drops()
        last_missing: set[str] = set()
        still_since = time.monotonic()
        while True:
            counts = collections.Counter()
            try:
                entries: Any = await client.xrange(stream)
                for _, fields in entries:
                    counts[orjson.loads(fields[b"e"])["id"]] += 1
            except RedisError:
                pass
            missing = probe.accepted - set(counts)
            if not missing or time.monotonic() > deadline:
                break
            if missing != last_missing:
                last_missing, still_since = missing, time.monotonic()
            elif time.monotonic() - still_since >= SETTLED_S:
                # nothing arrived for a while: done when a drop record names every event still missing
                found = await find_drops(stores, demo.data, probe.topic, since_ms, missing, wait_s=0)
                if missing <= set(found.named):
                    break
            await asyncio.sleep(0.5)
        outcome.published = len(probe.accepted)
        outcome.delivered = sum(1 for i in probe.accepted if counts[i] >= 1)
        outcome.duplicated = sum(1 for i in probe.accepted if counts[i] > 1)
        missing = probe.accepted - set(counts)
        outcome.lost = len(missing)
        if missing:
            if not missing <= set(found.named):
                say(f"{len(missing)} probes missing in {group}; looking for their drop records")
                found = await find_drops(stores, demo.data, probe.topic, since_ms, missing, DROP_WAIT_S)
            named = {event: status for event, status in found.named.items() if event in missing}
            outcome.explained = len(named)
            if len(named) < len(missing):
                outcome.unknown = found.unknown
            reasons = collections.Counter(named.values())
            if reasons:
                outcome.notes.append("drops: " + ", ".join(f"{n}x {status}" for status, n in reasons.items()))
            if reasons.get("delivery_failed"):
                outcome.notes.append("delivery_failed is the demo's injected failure (meshscope up --failure-rate)")
        if probe.refused:
            outcome.notes.append("publisher told to retry " + ", ".join(f"{n}x {s}" for s, n in probe.refused.items()))
    finally:
        await client.aclose()
        for store in stores:
            await store.aclose()


def table(outcomes: list[Outcome]) -> str:
    head = ("scenario", "published", "delivered", "twice", "lost", "lost with a drop record", "result", "notes")
    rows = [head] + [
        (o.scenario, str(o.published), str(o.delivered), str(o.duplicated), str(o.lost), str(o.explained),
         o.result, "; ".join(o.notes + o.problems))
        for o in outcomes
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"
