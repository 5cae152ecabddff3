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

Regions stand alone, and three scenarios check it (``REGION_SCENARIOS``):

- ``region-valkey-kill``: one region's Valkey killed with SIGKILL and kept down a
  while (``up`` starts it again after): every other region's publishes go on,
  events bound for it are held and all arrive once it is back;
- ``region-isolation``: one region cut off from every other region, from the
  central services (ClickHouse's collector and the dashboard reach its store
  through a gate ``up`` cuts) and so from the governance authority, for
  ``--isolate`` seconds (60): its own traffic sees no error, cross-region
  events arrive after healing, the flow history is complete after the
  backfill, and the map shows the region stale, then caught up;
- ``governance-isolated``: a governance change made while one region is
  isolated: the others take it, the isolated one keeps enforcing its last
  version and says so (the mismatch is visible), and it converges within 5 s
  of healing.

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
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
import websockets
from redis.exceptions import RedisError

from collector.sqlclient import MESHSCOPE_TOKEN_FILE, SqlFailed, client_token, running_dashboard, via_dashboard

SETTLED_S = 3.0
"""Missing events unchanged for this long: look for their drop records, and stop waiting once each has one."""
DROP_WAIT_S = 15.0
"""How long to look for the drop records of missing events (the collector stores them within seconds)."""
REGION_SCENARIOS = ("region-valkey-kill", "region-isolation", "governance-isolated")
SCENARIOS = ("relay-kill", "valkey-restart", "black-hole", "link-flap", "partition", *REGION_SCENARIOS)
FAULTS_FILE = "faults.json"  # meshscope.up.FAULTS_FILE
CONVERGE_S = 5.0
"""A healed region enforces the newest governance version within this."""


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
    problems: list[str] = field(default_factory=list)  # checks other than counting that failed

    @property
    def ok(self) -> bool:
        return self.duplicated == 0 and self.lost == self.explained and not self.problems


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

    def redis(self, region: str) -> aioredis.Redis:
        """A client of ``region``'s own store (directly, not through the central services' gate)."""
        return aioredis.Redis.from_url(self.state["valkeys"][region]["url"], socket_timeout=5)

    def faults(self, **changes: dict[str, float]) -> None:
        """Ask ``up`` (through faults.json) to cut regions off from the central services, or hold a store down."""
        path = self.data / FAULTS_FILE
        try:
            current = json.loads(path.read_text())
        except (OSError, ValueError):
            current = {}
        current.update(changes)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current))
        tmp.replace(path)

    def kill_store(self, region: str) -> None:
        self.refresh()
        os.kill(int(self.state["valkeys"][region]["pid"]), signal.SIGKILL)

    async def isolate(self, region: str, seconds: float) -> float:
        """Cut ``region`` off from every other region and from the central services; when it heals (monotonic)."""
        request = urllib.request.Request(
            f"{self.http(region)}/v1/faults",
            data=json.dumps({"fault": "isolate", "seconds": seconds}).encode(),
            headers={**self.headers, "content-type": "application/json"},
            method="POST",
        )

        def send() -> None:
            with urllib.request.urlopen(request, timeout=10, context=self.ssl):
                pass

        self.faults(isolated={region: time.time() + seconds})
        await asyncio.to_thread(send)
        return time.monotonic() + seconds

    def dashboard(self, path: str, method: str = "GET", body: Any = None) -> Any:
        """``up``'s dashboard API, as the ops principal."""
        up = running_dashboard(str(self.data))
        if up is None:
            raise ChaosError("the dashboard of meshscope up is not running")
        token = client_token({MESHSCOPE_TOKEN_FILE: str(up.get("token_file") or "")})
        request = urllib.request.Request(
            str(up["url"]).rstrip("/") + path, headers={"authorization": f"Bearer {token}"}, method=method
        )
        context = ssl.create_default_context(cafile=up["ca"]) if up.get("ca") else None
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return json.loads(reply.read())

    def sql(self, query: str) -> list[list[Any]]:
        up = running_dashboard(str(self.data))
        if up is None:
            raise ChaosError("the dashboard of meshscope up is not running")
        token = client_token({MESHSCOPE_TOKEN_FILE: str(up.get("token_file") or "")})
        return via_dashboard(str(up["url"]), query, token, up.get("ca"))[1]

    def put(self, region: str, path: str, body: Any, token_file: str = "ops.token") -> dict[str, Any]:
        token = (Path(self.state["tokens"]) / token_file).read_text().strip()
        request = urllib.request.Request(
            f"{self.http(region)}{path}",
            data=json.dumps(body).encode(),
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=15, context=self.ssl) as reply:
            return dict(json.loads(reply.read()))

    def health(self, region: str) -> dict[str, Any]:
        try:
            return dict(self._get(f"{self.http(region)}/healthz"))
        except urllib.error.HTTPError as exc:  # 503: degraded, with its reasons
            return dict(json.loads(exc.read()))

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
    url = f"{demo.ws(region)}/v1/subscribe?topic={topic}&group={group}&consumer=probe"
    async with websockets.connect(url, additional_headers=demo.headers, ssl=demo.ssl, open_timeout=10):
        pass


async def _count(demo: Demo, outcome: Outcome, probe: Probe, region: str, group: str, wait_s: float) -> None:
    client = demo.redis(region)
    try:
        stream = f"meshscope:group:{region}:{group}"
        deadline = time.monotonic() + wait_s
        counts: collections.Counter[str] = collections.Counter()
        named: dict[str, str] = {}
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
                named = await _drops(demo, client, probe.topic, missing, wait_s=0)
                if missing <= set(named):
                    break
            await asyncio.sleep(0.5)
        outcome.published = len(probe.accepted)
        outcome.delivered = sum(1 for i in probe.accepted if counts[i] >= 1)
        outcome.duplicated = sum(1 for i in probe.accepted if counts[i] > 1)
        missing = probe.accepted - set(counts)
        outcome.lost = len(missing)
        if missing:
            if not missing <= set(named):
                named = await _drops(demo, client, probe.topic, missing, DROP_WAIT_S)
            named = {event: status for event, status in named.items() if event in missing}
            outcome.explained = len(named)
            reasons = collections.Counter(named.values())
            if reasons:
                outcome.notes.append("drops: " + ", ".join(f"{n}x {status}" for status, n in reasons.items()))
            if reasons.get("delivery_failed"):
                outcome.notes.append("delivery_failed is the demo's injected failure (meshscope up --failure-rate)")
        if probe.refused:
            outcome.notes.append("publisher told to retry " + ", ".join(f"{n}x {s}" for s, n in probe.refused.items()))
    finally:
        await client.aclose()


async def _drops(demo: Demo, client: aioredis.Redis, topic: str, missing: set[str], wait_s: float) -> dict[str, str]:
    """The drop status of each missing event that a drop record names.

    Records are looked for where they are: stored in ClickHouse (asked through ``up``'s
    dashboard, which holds the embedded engine) and in the flow stream, not yet collected.
    The collector stores records within seconds, so this asks again for up to ``wait_s``.
    """
    named: dict[str, str] = {}
    clients = [client] + [demo.redis(r) for r in demo.regions]
    up = running_dashboard(str(demo.data))
    query = f"SELECT event_id, status FROM flows WHERE kind = 'drop' AND topic = '{topic}'"  # chaos's own topic
    token_file = str(up.get("token_file") or "") if up is not None else ""
    token = client_token({MESHSCOPE_TOKEN_FILE: token_file}) if token_file else None
    deadline = time.monotonic() + wait_s
    while True:
        for each in clients:  # a drop is recorded in the region where it happened
            try:
                records: Any = await each.xrevrange("meshscope:flows", count=2_000)
                for _, fields in records:
                    for row in orjson.loads(fields[b"r"]):
                        if row[6] == "drop" and row[1] in missing:
                            named[row[1]] = row[12]
            except RedisError:
                pass
        if up is not None:
            token = (
                client_token({MESHSCOPE_TOKEN_FILE: str(up.get("token_file") or "")}) if up.get("token_file") else None
            )
            try:
                _, rows = await asyncio.to_thread(via_dashboard, str(up["url"]), query, token, up.get("ca"))
                named.update({str(r[0]): str(r[1]) for r in rows if r[0] in missing})
            except SqlFailed:
                pass
        if missing <= set(named) or time.monotonic() > deadline:
            for each in clients[1:]:
                await each.aclose()
            return named
        await asyncio.sleep(1.0)


async def run_scenario(demo: Demo, name: str, events: int, isolate_s: float = 60.0) -> Outcome:
    regions = demo.regions
    if len(regions) < 2:
        raise ChaosError("chaos needs at least two regions")
    if name in REGION_SCENARIOS:
        from meshscope.regionchaos import run_region_scenario

        return await run_region_scenario(demo, name, events, isolate_s)
    origin, dst = regions[0], regions[1]
    run = f"c{int(time.time())}{name.replace('-', '')}"
    topic = f"chaos.{name.replace('-', '')}.{run}"
    group = run
    outcome = Outcome(name)
    await _group(demo, dst, group, topic)
    await asyncio.sleep(1.0)  # the group's interest reaches the origin
    probe = Probe(demo, origin, topic, run)
    if name == "relay-kill":
        # hold events at the origin (its link to dst black-holed), then kill -9 the origin with them queued
        await demo.fault(origin, dst, "blackhole", 30)
        await probe.publish(events)
        demo.kill9(origin)
        outcome.notes.append(f"kill -9 {origin} with {len(probe.accepted)} events held for {dst}")
        await asyncio.sleep(1.5)
        await demo.healthy(origin)
    elif name == "valkey-restart":
        publishing = asyncio.create_task(probe.publish(events, pause_s=0.05))
        await asyncio.sleep(1.0)
        client = demo.redis(origin)
        try:
            await client.shutdown()
        except RedisError:
            pass  # the server closes the connection as it shuts down
        finally:
            await client.aclose()
        outcome.notes.append(f"valkey of {origin} shut down while publishing; meshscope up starts it again")
        await publishing
    elif name == "black-hole":
        publishing = asyncio.create_task(probe.publish(events, pause_s=0.05))
        await asyncio.sleep(0.5)
        await demo.fault(origin, dst, "blackhole", 8)
        started = time.monotonic()
        while time.monotonic() - started < 20:
            links = (await asyncio.to_thread(demo._get, f"{demo.http(origin)}/healthz"))["links"]
            if links.get(dst) != "up":
                outcome.notes.append(f"silent link declared down after {time.monotonic() - started:.1f} s")
                break
            await asyncio.sleep(0.05)
        await publishing
    elif name == "link-flap":
        publishing = asyncio.create_task(probe.publish(events, pause_s=0.01))
        for _ in range(6):
            await asyncio.sleep(0.4)
            await demo.fault(origin, dst, "cut")
        outcome.notes.append("link cut 6 times during the burst")
        await publishing
    elif name == "partition":
        if len(regions) < 3:
            outcome.notes.append("skipped: needs three regions")
            return outcome
        await demo.fault(origin, dst, "blackhole", 12)
        await demo.fault(dst, origin, "blackhole", 12)
        await asyncio.sleep(4)  # both sides notice, link state floods, routes change
        await probe.publish(events)
        outcome.notes.append(await _detour(demo, probe, dst))
    try:
        await _count(demo, outcome, probe, dst, group, wait_s=90)
    finally:
        await demo.delete_group(dst, group)  # a probe group left behind would read as a stopped consumer
    return outcome


async def _detour(demo: Demo, probe: Probe, dst: str) -> str:
    await asyncio.sleep(2)
    client = demo.redis(probe.origin)
    vias: collections.Counter[str] = collections.Counter()
    try:
        records: Any = await client.xrevrange("meshscope:flows", count=5_000)
        for _, fields in records:
            for row in orjson.loads(fields[b"r"]):
                if row[6] == "forward" and row[1] in probe.accepted and row[8] == dst and len(row) > 17:
                    vias[row[17]] += 1
    finally:
        await client.aclose()
    if not vias:
        return "no forward records seen yet"
    hops = ", ".join(f"{n} via {v}" if v != dst else f"{n} direct" for v, n in vias.most_common())
    return f"{probe.origin} -> {dst} partitioned; sends: {hops}"


def table(outcomes: list[Outcome]) -> str:
    head = ("scenario", "published", "delivered", "twice", "lost", "lost with a drop record", "result", "notes")
    rows = [head] + [
        (o.scenario, str(o.published), str(o.delivered), str(o.duplicated), str(o.lost), str(o.explained),
         "ok" if o.ok else "FAILED", "; ".join(o.notes))
        for o in outcomes
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


async def run(data_dir: str, scenarios: list[str], events: int, isolate_s: float = 60.0) -> list[Outcome]:
    demo = Demo.find(data_dir)
    out = []
    for name in scenarios:
        for region in demo.regions:
            await demo.healthy(region)
        out.append(await run_scenario(demo, name, events, isolate_s))
    return out
