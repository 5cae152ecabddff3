"""Who gets an event: live subscribers matched per event, through the index against a scan of every subscriber.

A relay with N live subscribers, each with one or two patterns out of a mix of
exact topics, ``*`` and ``>`` (most of them for topics other than the event's),
matches a stream of events over 50 topics. Value: ``meshcore.sublist.SubList``
(a token trie with a cache of answers per topic, as the relay uses); baseline:
asking every subscriber's cached ``PatternSet``, as the relay did before.
"""

from __future__ import annotations

import random
import time

from bench.common import Figure, repeat
from meshcore.sublist import SubList
from meshcore.topic import PatternSet

TOPICS = [f"orders.{region}.{kind}" for region in ("eu", "us", "ap", "sa", "af") for kind in range(10)]


class _Sub:
    def __init__(self, patterns: list[str]):
        self.patterns = PatternSet(patterns)


def _subscribers(n: int, rng: random.Random) -> list[_Sub]:
    subs = []
    for i in range(n):
        team = f"team{i % 500}"
        own = [f"{team}.events.{i % 7}", f"{team}.>"]
        if i % 100 == 0:  # a few watch the orders
            own = [rng.choice(["orders.>", "orders.*.1", f"orders.{rng.choice(['eu', 'us'])}.*"])]
        subs.append(_Sub(own[: 1 + i % 2]))
    return subs


def _per_event(n_subs: int, events: int, fresh: bool = False) -> tuple[float, float]:
    rng = random.Random(n_subs)
    subs = _subscribers(n_subs, rng)
    index: SubList[_Sub] = SubList()
    for s in subs:
        for p in s.patterns.patterns:
            index.insert(p, s)
    if fresh:  # every event a topic not seen before: no cached answer anywhere
        stream = [f"orders.{rng.choice(['eu', 'us'])}.{i}.{rng.getrandbits(32)}" for i in range(events)]
    else:
        stream = [rng.choice(TOPICS) for _ in range(events)]

    def indexed() -> float:
        started = time.perf_counter()
        for topic in stream:
            index.match(topic)
        return (time.perf_counter() - started) / events * 1e6

    def scanned() -> float:
        started = time.perf_counter()
        for topic in stream:
            [s for s in subs if s.patterns.matches(topic)]
        return (time.perf_counter() - started) / events * 1e6

    return indexed(), scanned()


def run(quick: bool) -> list[Figure]:
    figures = []
    rows = [(10, False), (1_000, False), (10_000, False), (10_000, True)]
    for n, fresh in rows:
        events = max(20, (20_000 if n < 10_000 else 100 if fresh else 200) // (10 if quick else 1))
        fig = Figure(
            f"match one event, {n:,} live subscribers" + (", a new topic each" if fresh else ""),
            "µs/event",
            target="< 5" if n == 10_000 and not fresh else "",
            higher_is_better=False,
        )
        for value, base in repeat(
            1 if quick else 5, 1, lambda n=n, events=events, fresh=fresh: _per_event(n, events, fresh)
        ):
            fig.values.append(value)
            fig.baseline.append(base)
        figures.append(fig)
    figures[0].note = (
        "a token trie with a cache of answers per topic (meshcore.sublist); baseline: every subscriber's "
        "cached pattern set asked in turn; 50 topics, 1 in 100 subscribers watching them"
    )
    figures[-1].note = "no answer cached: the trie walks the topic's branches; the scan asks every pattern"
    return figures
