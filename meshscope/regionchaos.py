"""``meshscope chaos``'s region scenarios: one region's store killed, one region cut off, governance meanwhile.

Each region of ``meshscope up`` has its own Valkey, and the central services reach it
through a gate (``meshscope.demofaults.StoreGates``). The scenarios (rows of ``meshscope.chaos.SCENARIOS``)
publish numbered probes across regions and within one, inject the fault, and count: every
probe once in its durable group, none lost; the checks that are not counts (publishes that
must not fail, the map's verdict, a governance version) are the outcome's problems.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from meshscope.chaosdemo import Demo, Probe, probe_group
from meshscope.chaosverdict import Outcome, Run
from meshscope.up import GOVERNANCE

STORE_DOWN_S = 8.0
"""How long a killed region store stays down before ``up`` starts it again."""
MAP_STALE_S = 10.0
"""The map must show a region stale this soon after it is cut off."""
CONVERGE_S = 5.0
"""A healed region enforces the newest governance version within this."""


def _roles(demo: Demo) -> tuple[str, str, str | None]:
    """(home, the region the fault hits, a third region or None)."""
    regions = demo.regions
    home = str(demo.state.get("home") or regions[0])
    victim = next(r for r in regions if r != home)
    third = next((r for r in regions if r not in (home, victim)), None)
    return home, victim, third


async def _probe(run: Run, name: str, origin: str, dst: str) -> tuple[Probe, tuple[str, str]]:
    """A durable probe group in ``dst`` for a topic of its own, and a probe that publishes it at ``origin``."""
    tag = f"c{int(run.started_ms / 1000)}"
    topic = f"chaos.{name}.{tag}"
    group = f"{tag}{name}"
    await probe_group(run.demo, dst, group, topic)
    return Probe(run.demo, origin, topic, f"{tag}-{name}"), (dst, group)


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


async def store_kill(run: Run) -> None:
    """One region's Valkey killed: what is bound for it is held and arrives once it is back; others go on."""
    demo, outcome = run.demo, run.outcome
    home, victim, third = _roles(demo)
    into, where = await _probe(run, "storekill", home, victim)  # held while the victim's store is down
    other = third or home
    control, cwhere = await _probe(run, "storekillctl", other, home)  # must not notice anything
    await asyncio.sleep(1.0)  # the groups' interest reaches the publishers
    demo.faults(held_down={victim: time.time() + STORE_DOWN_S})
    demo.kill_store(victim)
    outcome.notes.append(f"valkey of {victim} killed (SIGKILL), down {STORE_DOWN_S:g} s")
    run.say(f"valkey of {victim} killed (SIGKILL), down {STORE_DOWN_S:g} s; publishing {home} -> {victim}"
            f" and {other} -> {home}")  # fmt: skip
    await asyncio.gather(into.publish(run.events), control.publish(run.events))
    if into.refused or control.refused:
        outcome.problems.append(f"publishes in other regions refused: {dict(into.refused + control.refused)}")
    await demo.healthy(victim, timeout_s=60)
    run.say(f"{victim} is back; counting")
    await run.count(into, where, outcome)
    checked = Outcome("control")
    await run.count(control, cwhere, checked, wait_s=60)
    outcome.notes.append(f"{other} -> {home} meanwhile: {checked.delivered}/{checked.published} delivered")
    if not checked.ok:
        outcome.problems.append(f"{other} -> {home} lost {checked.lost - checked.explained} unexplained, "
                                f"twice {checked.duplicated}")  # fmt: skip
    for region, group in (where, cwhere):
        await demo.delete_group(region, group)


async def isolation(run: Run) -> None:
    """One region cut off from every other and from the central services for ``run.isolate_s``, then healed."""
    demo, outcome, isolate_s = run.demo, run.outcome, run.isolate_s
    home, victim, _ = _roles(demo)
    into, where = await _probe(run, "isoin", home, victim)
    out, owhere = await _probe(run, "isoout", victim, home)
    local, lwhere = await _probe(run, "isolocal", victim, victim)
    await asyncio.sleep(1.0)
    healed_at = await demo.isolate(victim, isolate_s)
    outcome.notes.append(f"{victim} cut off for {isolate_s:g} s")
    run.say(f"{victim} cut off for {isolate_s:g} s; publishing into it, out of it and within it")
    stale_after = asyncio.create_task(_wait_map(demo, victim, True, MAP_STALE_S + 5))
    await asyncio.gather(into.publish(run.events), out.publish(run.events), local.publish(run.events))
    if local.refused or out.refused:
        outcome.problems.append(f"{victim}'s own publishers saw errors: {dict(local.refused + out.refused)}")
    inside = Outcome("local")
    await run.count(local, lwhere, inside, wait_s=min(20.0, isolate_s / 2))
    outcome.notes.append(f"local {inside.delivered}/{inside.published} delivered while cut off")
    if not inside.ok:
        outcome.problems.append(f"{victim}'s local traffic lost {inside.lost - inside.explained} unexplained")
    seen = await stale_after
    if seen is None or seen > MAP_STALE_S:
        outcome.problems.append(f"the map did not show {victim} stale within {MAP_STALE_S:g} s")
    else:
        outcome.notes.append(f"map: stale after {seen:.1f} s")
        run.say(f"the map shows {victim} stale after {seen:.1f} s")
    await asyncio.sleep(max(0.0, healed_at - time.monotonic()))
    run.say(f"{victim} healed; counting what crossed, waiting for the map and the backfill")
    for probe, region_group in ((into, where), (out, owhere)):
        part = Outcome(probe.topic)
        await run.count(probe, region_group, part)
        outcome.add(part)
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
    for region, group in (where, owhere, lwhere):
        await demo.delete_group(region, group)


async def governance(run: Run) -> None:
    """A governance change while a region is cut off: the others take it, it keeps its own, then converges."""
    demo, outcome = run.demo, run.outcome
    home, victim, third = _roles(demo)
    where = third or home
    healed_at = await demo.isolate(victim, min(run.isolate_s, 30.0))
    run.say(f"{victim} cut off; changing governance at {where}")
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
    while not view["mismatch"] and time.monotonic() < healed_at - 1.0:  # the others' next reports on their way
        await asyncio.sleep(1.0)
        view = await asyncio.to_thread(demo.dashboard, "/api/governance")
    outcome.notes.append(f"mismatch shown: {view['mismatch']}")
    if not view["mismatch"]:
        outcome.problems.append("the dashboard shows no governance mismatch while a region is cut off")
    run.say(f"waiting for {victim} to heal and converge")
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
