"""``meshscope chaos``'s region scenarios: one region's store killed, one region cut off, governance meanwhile.

Each region of ``meshscope up`` has its own Valkey, and the central services reach it
through a gate (``meshscope.up.StoreGates``). The scenarios (see ``meshscope.chaos``)
publish numbered probes across regions and within one, inject the fault, and count: every
probe once in its durable group, none lost; the checks that are not counts (publishes that
must not fail, the map's verdict, a governance version) are the outcome's problems.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from meshscope.chaos import CONVERGE_S, Demo, Outcome, Probe, _count, _group
from meshscope.up import GOVERNANCE

STORE_DOWN_S = 8.0
"""How long a killed region store stays down before ``up`` starts it again."""
MAP_STALE_S = 10.0
"""The map must show a region stale this soon after it is cut off."""


def _roles(demo: Demo) -> tuple[str, str, str | None]:
    """(home, the region the fault hits, a third region or None)."""
    regions = demo.regions
    home = str(demo.state.get("home") or regions[0])
    victim = next(r for r in regions if r != home)
    third = next((r for r in regions if r not in (home, victim)), None)
    return home, victim, third


async def _probe(demo: Demo, run: str, name: str, origin: str, dst: str) -> tuple[Probe, str, str]:
    """A durable group in ``dst`` for a topic of its own, and a probe that publishes it at ``origin``."""
    topic = f"chaos.{name}.{run}"
    group = f"{run}{name}"
    await _group(demo, dst, group, topic)
    return Probe(demo, origin, topic, f"{run}-{name}"), dst, group


async def _map_region(demo: Demo, region: str) -> dict[str, Any] | None:
    try:
        topology = await asyncio.to_thread(demo.dashboard, "/api/topology?window=5m")
    except OSError:
        return None
    return next((r for r in topology["regions"] if r["id"] == region), None)


async def _wait_map(demo: Demo, region: str, stale: bool, timeout_s: float) -> float | None:
    """Seconds until the map shows ``region`` stale (or fresh again); None when it did not within ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        shown = await _map_region(demo, region)
        if shown is not None and shown.get("stale") is stale:
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    return None


async def run_region_scenario(demo: Demo, name: str, events: int, isolate_s: float) -> Outcome:
    home, victim, third = _roles(demo)
    run = f"c{int(time.time())}"
    outcome = Outcome(name)
    if name == "region-valkey-kill":
        await _store_kill(demo, outcome, run, home, victim, third, events)
    elif name == "region-isolation":
        await _isolation(demo, outcome, run, home, victim, events, isolate_s)
    else:
        await _governance(demo, outcome, home, victim, third, min(isolate_s, 30.0))
    return outcome


async def _store_kill(
    demo: Demo, outcome: Outcome, run: str, home: str, victim: str, third: str | None, events: int
) -> None:
    into, dst, group = await _probe(demo, run, "storekill", home, victim)  # held while the victim's store is down
    other = third or home
    control, cdst, cgroup = await _probe(demo, run, "storekillctl", other, home)  # must not notice anything
    await asyncio.sleep(1.0)  # the groups' interest reaches the publishers
    demo.faults(held_down={victim: time.time() + STORE_DOWN_S})
    demo.kill_store(victim)
    outcome.notes.append(f"valkey of {victim} killed (SIGKILL), down {STORE_DOWN_S:g} s")
    await asyncio.gather(into.publish(events), control.publish(events))
    if into.refused or control.refused:
        outcome.problems.append(f"publishes in other regions refused: {dict(into.refused + control.refused)}")
    await demo.healthy(victim, timeout_s=60)
    await _count(demo, outcome, into, dst, group, wait_s=90)
    checked = Outcome("control")
    await _count(demo, checked, control, cdst, cgroup, wait_s=60)
    outcome.notes.append(f"{other} -> {home} meanwhile: {checked.delivered}/{checked.published} delivered")
    if not checked.ok:
        outcome.problems.append(f"{other} -> {home} lost {checked.lost - checked.explained} unexplained, "
                                f"twice {checked.duplicated}")  # fmt: skip
    for region, g in ((dst, group), (cdst, cgroup)):
        await demo.delete_group(region, g)


async def _isolation(
    demo: Demo, outcome: Outcome, run: str, home: str, victim: str, events: int, isolate_s: float
) -> None:
    into, dst, group = await _probe(demo, run, "isoin", home, victim)
    out, odst, ogroup = await _probe(demo, run, "isoout", victim, home)
    local, ldst, lgroup = await _probe(demo, run, "isolocal", victim, victim)
    await asyncio.sleep(1.0)
    healed_at = await demo.isolate(victim, isolate_s)
    outcome.notes.append(f"{victim} cut off for {isolate_s:g} s")
    stale_after = asyncio.create_task(_wait_map(demo, victim, True, MAP_STALE_S + 5))
    await asyncio.gather(into.publish(events), out.publish(events), local.publish(events))
    if local.refused or out.refused:
        outcome.problems.append(f"{victim}'s own publishers saw errors: {dict(local.refused + out.refused)}")
    inside = Outcome("local")
    await _count(demo, inside, local, ldst, lgroup, wait_s=min(20.0, isolate_s / 2))
    outcome.notes.append(f"local {inside.delivered}/{inside.published} delivered while cut off")
    if not inside.ok:
        outcome.problems.append(f"{victim}'s local traffic lost {inside.lost - inside.explained} unexplained")
    seen = await stale_after
    if seen is None or seen > MAP_STALE_S:
        outcome.problems.append(f"the map did not show {victim} stale within {MAP_STALE_S:g} s")
    else:
        outcome.notes.append(f"map: stale after {seen:.1f} s")
    await asyncio.sleep(max(0.0, healed_at - time.monotonic()))
    for probe, region, g in ((into, dst, group), (out, odst, ogroup)):
        part = Outcome(probe.topic)
        await _count(demo, part, probe, region, g, wait_s=90)
        for attr in ("published", "delivered", "duplicated", "lost", "explained"):
            setattr(outcome, attr, getattr(outcome, attr) + getattr(part, attr))
    fresh = await _wait_map(demo, victim, False, 60)
    outcome.notes.append("map: caught up" if fresh is not None else "map: still stale")
    if fresh is None:
        outcome.problems.append(f"the map still shows {victim} stale after healing")
    topics = "', '".join(p.topic for p in (into, out, local))
    published = len(into.accepted) + len(out.accepted) + len(local.accepted)
    delivered = outcome.delivered + inside.delivered
    history: dict[str, int] = {}
    for _ in range(60):  # the backfill: every record once in ClickHouse
        rows = await asyncio.to_thread(
            demo.sql,
            f"SELECT kind, count(), uniqExact(span_id) FROM flows WHERE topic IN ('{topics}') GROUP BY kind",
        )
        history = {str(k): int(n) for k, n, unique in rows if int(n) == int(unique)}
        if history.get("publish") == published and history.get("deliver") == delivered:
            break
        await asyncio.sleep(1.0)
    outcome.notes.append(f"history: {history.get('publish', 0)} publish, {history.get('deliver', 0)} deliver records")
    if history.get("publish") != published or history.get("deliver") != delivered:
        outcome.problems.append(
            f"flow history after the backfill: {history}, expected {published} publish, {delivered} deliver"
        )
    for region, g in ((dst, group), (odst, ogroup), (ldst, lgroup)):
        await demo.delete_group(region, g)


async def _governance(
    demo: Demo, outcome: Outcome, home: str, victim: str, third: str | None, isolate_s: float
) -> None:
    where = third or home
    healed_at = await demo.isolate(victim, isolate_s)
    await asyncio.sleep(3.0)  # the victim notices it is cut off
    before = demo.health(victim)["governance"]["version"]
    marker = {"id": f"chaos-{int(time.time())}", "effect": "deny", "principals": ["*"], "actions": ["publish"],
              "topics": ["chaos.never.>"]}  # fmt: skip
    policies = [*cast(list[Any], GOVERNANCE["policies"]), marker]
    changed = await asyncio.to_thread(demo.put, where, "/v1/governance", {**GOVERNANCE, "policies": policies})
    newer = changed["version"]
    outcome.notes.append(f"change made at {where} while {victim} is cut off: {before} -> {newer}")
    await asyncio.sleep(2.0)
    victim_health = demo.health(victim)
    if victim_health["governance"]["version"] != before or victim_health["governance"]["authority_reachable"]:
        outcome.problems.append(f"{victim} while cut off: {victim_health['governance']}")
    elif not any("cut off from the governance authority" in r for r in victim_health["reasons"]):
        outcome.problems.append(f"{victim}'s /healthz does not say it is cut off: {victim_health['reasons']}")
    others = [r for r in demo.regions if r != victim]
    behind = [r for r in others if demo.health(r)["governance"]["version"] != newer]
    if behind:
        outcome.problems.append(f"not enforcing {newer}: {behind}")
    view = await asyncio.to_thread(demo.dashboard, "/api/governance")
    outcome.notes.append(f"mismatch shown: {view['mismatch']}")
    if not view["mismatch"]:
        outcome.problems.append("the dashboard shows no governance mismatch while a region is cut off")
    await asyncio.sleep(max(0.0, healed_at - time.monotonic()))
    started = time.monotonic()
    while time.monotonic() - started < 30:
        if demo.health(victim)["governance"]["version"] == newer:
            break
        await asyncio.sleep(0.1)
    took = time.monotonic() - started
    outcome.notes.append(f"{victim} converged {took:.1f} s after healing")
    if took > CONVERGE_S:
        outcome.problems.append(f"{victim} took {took:.1f} s to converge (at most {CONVERGE_S:g})")
    await asyncio.to_thread(demo.put, where, "/v1/governance", GOVERNANCE)  # the demo's own document again
