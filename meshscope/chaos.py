"""``meshscope chaos``: the fault suite's scenarios against a running ``meshscope up``, as a table.

Each scenario publishes its own numbered probe events at one region for a durable
group in another (topic ``chaos.<scenario>.<run>``), injects a real fault into the
running demo, waits for the mesh to recover, and counts what reached the group
once, twice or never; a missing event counts as explained only when a ``drop``
record names it. Faults: kill -9 of relay processes (``up`` starts them again),
a Valkey shutdown (``up`` starts it again with its append-only file), and link
faults through the relays' fault-injection endpoint (``MESHSCOPE_FAULT_INJECTION``,
which ``up`` turns on for admins): a black-holed link, a link cut over and over
during a burst, and a partition between two regions that forces a detour.

Scenarios are data: a row of ``SCENARIOS`` names one, says what it does and gives the
function that injects its fault (``Run`` carries what it needs), so adding one is adding a row.
Each step prints a line as it happens. Probe groups are made as probes (``probe=true``), so
they never page, and deleted afterwards.

What a missing event became is read from every drop record since the scenario began, in the
flow stream (``XRANGE`` from the scenario's start, whatever the collector has read) and in
ClickHouse (through ``up``'s dashboard). When neither can say (the stream was trimmed since
and the collector is behind), the table says the answer is unknown and why, not FAILED.

The collector runs inside ``up``'s own process, so its crash-between-insert-and-ack
scenario is in the test suite (tests/faults) rather than here.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import ssl
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
import websockets
from redis.exceptions import RedisError

from meshscope.chaosrecords import DROP_WAIT_S, Drops, detour, find_drops

SETTLED_S = 3.0
"""Missing events unchanged for this long: look for their drop records, and stop waiting once each has one."""


class ChaosError(Exception):
    """The running demo cannot be found or used; the message says why."""


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

    @property
    def ok(self) -> bool:
        return self.duplicated == 0 and self.lost == self.explained

    @property
    def result(self) -> str:
        """ok, FAILED, or unknown with why (losses without a drop record that could not be looked for)."""
        if self.ok:
            return "ok"
        if self.duplicated == 0 and self.unknown:
            return f"unknown: {self.unknown}"
        return "FAILED"


@dataclass
class Demo:
    """A running ``meshscope up``, from its up.json."""

    data: Path
    state: dict[str, Any]
    token: str
    ssl: ssl.SSLContext | None

    @classmethod
    def find(cls, data_dir: str) -> Demo:
        data = Path(data_dir).resolve()
        try:
            state = json.loads((data / "up.json").read_text())
            token = (Path(state["tokens"]) / "chaos.token").read_text().strip()
        except (OSError, ValueError, KeyError) as exc:
            raise ChaosError(f"no running meshscope up in {data} (up.json or the chaos token: {exc})") from None
        try:
            os.kill(int(state["pid"]), 0)
        except (OSError, ValueError):
            raise ChaosError(f"the meshscope up of {data} is not running") from None
        context = ssl.create_default_context(cafile=state["ca"]) if state.get("ca") else None
        return cls(data, state, token, context)

    def refresh(self) -> None:
        self.state = json.loads((self.data / "up.json").read_text())

    @property
    def regions(self) -> list[str]:
        return list(self.state["relays"])

    def http(self, region: str) -> str:
        return f"{self.state['scheme']}://127.0.0.1:{self.state['relays'][region]['port']}"

    def ws(self, region: str) -> str:
        return self.http(region).replace("http", "ws", 1)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def redis(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.state["valkey"]["url"], socket_timeout=5)

    def kill9(self, region: str) -> None:
        self.refresh()
        os.killpg(int(self.state["relays"][region]["pid"]), signal.SIGKILL)

    async def delete_group(self, region: str, group: str) -> None:
        """Forget a probe's durable group (its entries and interest); a failure is only reported."""
        request = urllib.request.Request(
            f"{self.http(region)}/v1/groups/{group}", headers=self.headers, method="DELETE"
        )

        def send() -> None:
            with urllib.request.urlopen(request, timeout=10, context=self.ssl):
                pass

        try:
            await asyncio.to_thread(send)
        except OSError as exc:  # urllib's errors are OSErrors
            print(f"meshscope chaos: could not delete the probe group {group} at {region}: {exc}", flush=True)

    async def fault(self, region: str, peer: str, fault: str, seconds: float = 0.0) -> None:
        body = json.dumps({"peer": peer, "fault": fault, "seconds": seconds}).encode()
        request = urllib.request.Request(
            f"{self.http(region)}/v1/faults",
            data=body,
            headers={**self.headers, "content-type": "application/json"},
            method="POST",
        )

        def send() -> None:
            with urllib.request.urlopen(request, timeout=10, context=self.ssl):
                pass

        await asyncio.to_thread(send)

    async def healthy(self, region: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                health: dict[str, Any] = await asyncio.to_thread(self._get, f"{self.http(region)}/healthz")
                if health["status"] == "ok" and health["links_up"] == len(self.regions) - 1:
                    return health
            except (OSError, ValueError, KeyError):
                pass
            self.refresh()
            await asyncio.sleep(0.2)
        raise ChaosError(f"relay {region} did not come back healthy within {timeout_s:g} s")

    def _get(self, url: str) -> Any:
        with urllib.request.urlopen(url, timeout=3, context=self.ssl) as reply:
            return json.loads(reply.read())


class Probe:
    """Numbered events from one region, retried until the relay acknowledges each frame."""

    def __init__(self, demo: Demo, origin: str, topic: str, run: str):
        self.demo = demo
        self.origin = origin
        self.topic = topic
        self.run = run
        self.accepted: set[str] = set()
        self.refused: collections.Counter[int] = collections.Counter()

    def events(self, start: int, n: int) -> list[dict[str, Any]]:
        return [
            {"specversion": "1.0", "id": f"{self.run}-{i}", "source": "/meshscope/chaos", "type": self.topic,
             "data": {"n": i, "amount": 1.0}}
            for i in range(start, start + n)
        ]  # fmt: skip

    async def publish(self, total: int, frame: int = 20, pause_s: float = 0.02, deadline_s: float = 120) -> None:
        deadline = time.monotonic() + deadline_s
        sent = 0
        while sent < total:
            if time.monotonic() > deadline:
                raise ChaosError(f"could not publish at {self.origin} for {deadline_s:g} s")
            try:
                async with websockets.connect(
                    f"{self.demo.ws(self.origin)}/v1/stream",
                    additional_headers=self.demo.headers,
                    ssl=self.demo.ssl,
                    open_timeout=5,
                ) as ws:
                    while sent < total:
                        batch = self.events(sent, min(frame, total - sent))
                        await ws.send(orjson.dumps(batch))
                        ack = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                        for err in ack.get("errors", []):
                            self.refused[int(err.get("status", 0))] += 1
                        self.accepted.update(ack["accepted"])
                        self.accepted.update(ack["duplicates"])  # accepted earlier, its ack lost
                        sent += len(batch)
                        await asyncio.sleep(pause_s)
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                self.refused[503] += 1 if "1013" in str(exc) else 0
                await asyncio.sleep(0.3)  # the relay is restarting or asked us to retry: send the frame again


async def _group(demo: Demo, region: str, group: str, topic: str) -> None:
    """A durable probe group: made as a probe, so it never pages, however it is left."""
    url = f"{demo.ws(region)}/v1/subscribe?topic={topic}&group={group}&consumer=probe&probe=true"
    async with websockets.connect(url, additional_headers=demo.headers, ssl=demo.ssl, open_timeout=10):
        pass


@dataclass
class Run:
    """One scenario as it runs: where its probes go, what it found, and its progress lines."""

    demo: Demo
    name: str
    origin: str
    dst: str
    events: int
    probe: Probe
    outcome: Outcome
    group: str
    started: float = field(default_factory=time.monotonic)
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def say(self, text: str) -> None:
        """One progress line, as the step happens."""
        print(f"  {self.name:<14} {time.monotonic() - self.started:6.1f} s  {text}", flush=True)


Fault = Callable[[Run], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    """What the scenario does, in a line."""
    fault: Fault
    """Injects the fault and publishes the probes (while or after it strikes)."""
    regions: int = 2
    """How many regions it needs."""


async def _relay_kill(run: Run) -> None:
    """Hold events at the origin (its link to dst black-holed), then kill -9 the origin with them queued."""
    demo = run.demo
    await demo.fault(run.origin, run.dst, "blackhole", 30)
    run.say(f"link {run.origin} -> {run.dst} black-holed; publishing {run.events} probes at {run.origin}")
    await run.probe.publish(run.events)
    demo.kill9(run.origin)
    run.outcome.notes.append(f"kill -9 {run.origin} with {len(run.probe.accepted)} events held for {run.dst}")
    run.say(f"kill -9 {run.origin} with {len(run.probe.accepted)} events held; waiting for meshscope up to restart it")
    await asyncio.sleep(1.5)
    await demo.healthy(run.origin)
    run.say(f"{run.origin} is back")


async def _valkey_restart(run: Run) -> None:
    publishing = asyncio.create_task(run.probe.publish(run.events, pause_s=0.05))
    await asyncio.sleep(1.0)
    client = run.demo.redis()
    try:
        await client.shutdown()
    except RedisError:
        pass  # the server closes the connection as it shuts down
    finally:
        await client.aclose()
    run.outcome.notes.append("valkey shut down while publishing; meshscope up starts it again")
    run.say("valkey shut down while publishing; meshscope up starts it again")
    await publishing


async def _black_hole(run: Run) -> None:
    publishing = asyncio.create_task(run.probe.publish(run.events, pause_s=0.05))
    await asyncio.sleep(0.5)
    await run.demo.fault(run.origin, run.dst, "blackhole", 8)
    run.say(f"link {run.origin} -> {run.dst} black-holed for 8 s while publishing")
    started = time.monotonic()
    while time.monotonic() - started < 20:
        links = (await asyncio.to_thread(run.demo._get, f"{run.demo.http(run.origin)}/healthz"))["links"]
        if links.get(run.dst) != "up":
            run.outcome.notes.append(f"silent link declared down after {time.monotonic() - started:.1f} s")
            run.say(f"the silent link was declared down after {time.monotonic() - started:.1f} s")
            break
        await asyncio.sleep(0.05)
    await publishing


async def _link_flap(run: Run) -> None:
    publishing = asyncio.create_task(run.probe.publish(run.events, pause_s=0.01))
    for _ in range(6):
        await asyncio.sleep(0.4)
        await run.demo.fault(run.origin, run.dst, "cut")
    run.outcome.notes.append("link cut 6 times during the burst")
    run.say(f"link {run.origin} -> {run.dst} cut 6 times during the burst")
    await publishing


async def _partition(run: Run) -> None:
    await run.demo.fault(run.origin, run.dst, "blackhole", 12)
    await run.demo.fault(run.dst, run.origin, "blackhole", 12)
    run.say(f"{run.origin} and {run.dst} partitioned for 12 s; waiting for the routes to change")
    await asyncio.sleep(4)  # both sides notice, link state floods, routes change
    run.say(f"publishing {run.events} probes at {run.origin}")
    await run.probe.publish(run.events)
    run.outcome.notes.append(await detour(run.demo.redis(), run.probe.origin, run.probe.accepted, run.dst))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("relay-kill", "kill -9 the origin relay with events held for an unreachable region", _relay_kill),
        Scenario("valkey-restart", "shut Valkey down while publishing", _valkey_restart),
        Scenario("black-hole", "black-hole a link while publishing: it must be declared down", _black_hole),
        Scenario("link-flap", "cut a link six times during a burst", _link_flap),
        Scenario("partition", "partition two regions: events take a detour through a third", _partition, 3),
    )
}
"""Every scenario, in the order they run; adding one is adding a row."""


async def run_scenario(demo: Demo, name: str, events: int) -> Outcome:
    scenario = SCENARIOS[name]
    regions = demo.regions
    if len(regions) < 2:
        raise ChaosError("chaos needs at least two regions")
    origin, dst = regions[0], regions[1]
    tag = f"c{int(time.time())}{name.replace('-', '')}"
    topic = f"chaos.{name.replace('-', '')}.{tag}"
    run = Run(demo, name, origin, dst, events, Probe(demo, origin, topic, tag), Outcome(name), tag)
    if len(regions) < scenario.regions:
        run.outcome.notes.append(f"skipped: needs {scenario.regions} regions")
        run.say(f"skipped: needs {scenario.regions} regions")
        return run.outcome
    run.say(f"{scenario.what}; probe group {tag} at {dst}")
    await _group(demo, dst, tag, topic)
    await asyncio.sleep(1.0)  # the group's interest reaches the origin
    await scenario.fault(run)
    run.say(f"{len(run.probe.accepted)} probes accepted; counting what reached {dst}")
    try:
        await _count(run, wait_s=90)
    finally:
        await demo.delete_group(dst, tag)  # a probe group left behind would show as a stopped consumer
    o = run.outcome
    run.say(f"{o.delivered} delivered, {o.duplicated} twice, {o.lost} lost ({o.explained} with a drop record)")
    return o


async def _count(run: Run, wait_s: float) -> None:
    """Count the probes in the destination's group; name each missing one from the drop records since the start."""
    demo, outcome, probe = run.demo, run.outcome, run.probe
    client = demo.redis()
    try:
        stream = f"meshscope:group:{run.dst}:{run.group}"
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
                found = await find_drops(client, run.demo.data, run.probe.topic, run.started_ms, missing, wait_s=0)
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
                run.say(f"{len(missing)} probes missing; looking for their drop records")
                found = await find_drops(client, run.demo.data, run.probe.topic, run.started_ms, missing, DROP_WAIT_S)
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


def table(outcomes: list[Outcome]) -> str:
    head = ("scenario", "published", "delivered", "twice", "lost", "lost with a drop record", "result", "notes")
    rows = [head] + [
        (o.scenario, str(o.published), str(o.delivered), str(o.duplicated), str(o.lost), str(o.explained),
         o.result, "; ".join(o.notes))
        for o in outcomes
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


async def run(data_dir: str, scenarios: list[str], events: int) -> list[Outcome]:
    demo = Demo.find(data_dir)
    out = []
    for name in scenarios:
        print(f"meshscope chaos: {name}: waiting for every relay to be healthy", flush=True)
        for region in demo.regions:
            await demo.healthy(region)
        out.append(await run_scenario(demo, name, events))
    return out
