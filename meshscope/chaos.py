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

Regions stand alone, and three scenarios check it (``meshscope.regionchaos``):

- ``region-valkey-kill``: one region's Valkey killed with SIGKILL and kept down a
  while (``up`` starts it again after): every other region's publishes go on,
  events bound for it are held and all arrive once it is back;
- ``region-isolation``: one region cut off from every other region, from the
  central services (the collector and the dashboard reach its store through a
  gate ``up`` cuts) and so from the governance authority, for ``--isolate``
  seconds (60): its own traffic sees no error, cross-region events arrive after
  healing, the flow history is complete after the backfill, and the map shows
  the region stale, then caught up;
- ``governance-isolated``: a governance change made while one region is
  isolated: the others take it, the isolated one keeps enforcing its last
  version and says so (the mismatch is visible), and it converges within 5 s
  of healing.

Scenarios are data: a row of ``SCENARIOS`` names one, says what it does and gives the
function that injects its fault (``Run`` carries what it needs), so adding one is adding a row.
Each step prints a line as it happens. Probe groups are made as probes (``probe=true``), so
they never page, and deleted afterwards. What the table concludes, and when it says "unknown"
instead of FAILED, is ``meshscope.chaosverdict``'s.

The collector runs inside ``up``'s own process, so its crash-between-insert-and-ack
scenario is in the test suite (tests/faults) rather than here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from meshscope import regionchaos
from meshscope.chaosdemo import ChaosError, Demo, Probe, probe_group
from meshscope.chaosrecords import detour
from meshscope.chaosverdict import Outcome, Run, table

__all__ = ["SCENARIOS", "ChaosError", "Outcome", "Scenario", "run", "run_scenario", "table"]

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
    own_probes: bool = False
    """It makes and counts probes of its own (several groups, several regions) instead of the one
    from the first region to the second."""


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
    client = run.demo.redis(run.origin)
    try:
        await client.shutdown()
    except RedisError:
        pass  # the server closes the connection as it shuts down
    finally:
        await client.aclose()
    said = f"valkey of {run.origin} shut down while publishing; meshscope up starts it again"
    run.outcome.notes.append(said)
    run.say(said)
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
    run.outcome.notes.append(await detour(run.demo.redis(run.origin), run.probe.origin, run.probe.accepted, run.dst))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("relay-kill", "kill -9 the origin relay with events held for an unreachable region", _relay_kill),
        Scenario("valkey-restart", "shut the origin region's Valkey down while publishing", _valkey_restart),
        Scenario("black-hole", "black-hole a link while publishing: it must be declared down", _black_hole),
        Scenario("link-flap", "cut a link six times during a burst", _link_flap),
        Scenario("partition", "partition two regions: events take a detour through a third", _partition, 3),
        Scenario(
            "region-valkey-kill",
            "kill a region's Valkey: the others go on, what is bound for it arrives once it is back",
            regionchaos.store_kill,
            own_probes=True,
        ),
        Scenario(
            "region-isolation",
            "cut a region off from every other and from the central services, then heal it",
            regionchaos.isolation,
            own_probes=True,
        ),
        Scenario(
            "governance-isolated",
            "change governance while a region is cut off: it keeps its version, then converges",
            regionchaos.governance,
            own_probes=True,
        ),
    )
}
"""Every scenario, in the order they run; adding one is adding a row."""


async def run_scenario(demo: Demo, name: str, events: int, isolate_s: float = 60.0) -> Outcome:
    scenario = SCENARIOS[name]
    regions = demo.regions
    if len(regions) < 2:
        raise ChaosError("chaos needs at least two regions")
    origin, dst = regions[0], regions[1]
    tag = f"c{int(time.time())}{name.replace('-', '')}"
    topic = f"chaos.{name.replace('-', '')}.{tag}"
    probe = Probe(demo, origin, topic, tag)
    run = Run(demo, name, origin, dst, events, probe, Outcome(name), tag, isolate_s)
    if len(regions) < scenario.regions:
        run.outcome.notes.append(f"skipped: needs {scenario.regions} regions")
        run.say(f"skipped: needs {scenario.regions} regions")
        return run.outcome
    if scenario.own_probes:
        run.say(scenario.what)
        await scenario.fault(run)
        run.say(f"{run.outcome.result}")
        return run.outcome
    run.say(f"{scenario.what}; probe group {tag} at {dst}")
    await probe_group(demo, dst, tag, topic)
    await asyncio.sleep(1.0)  # the group's interest reaches the origin
    await scenario.fault(run)
    run.say(f"{len(run.probe.accepted)} probes accepted; counting what reached {dst}")
    try:
        await run.count(run.probe, (dst, tag), run.outcome)
    finally:
        await demo.delete_group(dst, tag)  # a probe group left behind would show as a stopped consumer
    o = run.outcome
    run.say(f"{o.delivered} delivered, {o.duplicated} twice, {o.lost} lost ({o.explained} with a drop record)")
    return o


async def run(data_dir: str, scenarios: list[str], events: int, isolate_s: float = 60.0) -> list[Outcome]:
    demo = Demo.find(data_dir)
    out = []
    for name in scenarios:
        print(f"meshscope chaos: {name}: waiting for every relay to be healthy", flush=True)
        for region in demo.regions:
            await demo.healthy(region)
        out.append(await run_scenario(demo, name, events, isolate_s))
    return out
