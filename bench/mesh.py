"""What the mesh's guarantees cost, each against the same run without them.

- mutual TLS links and authenticated publishers, against plain links and anonymous publishers;
- durable link stores (a Redis stream per destination, written in each publish's commit), against
  events held in memory only;
- the keys that recognize a producer's retry after a restart, written to Valkey in each publish's
  commit, against keys kept in memory only;
- commits that wait for the disk (``MESHSCOPE_STORE_WAIT=fsync``: WAITAOF) before an answer, against
  Valkey's own ``appendfsync everysec``, at 100 events and at 1 event per frame;
- a schema and a 20-rule policy checked on every publish, against no governance;
- the time from a link going silent (a proxy that black-holes it) to the relay declaring it down;
- regions that stand alone: publishing at relay A (its own region's store local) while region B's
  store sits behind a 40 ms proxy (an ocean away), against the same run with both stores local.

Throughput is events/s from a publisher at relay A (100 events per frame) to a subscriber at
relay B, as in the relay benchmark.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx

from bench.common import BenchMesh, Figure, free_port, govern, processes, spawn_mesh, valkey
from bench.netproxy import TcpProxy
from bench.relay import A, B, relay_stream

POLICY_RULES = 20


def governance() -> dict[str, Any]:
    """20 rules (the bench principal's allow is the most specific for its topic) and a schema for bench.>."""
    rules: list[dict[str, Any]] = [
        {"id": f"team-{i}", "effect": "allow", "principals": [f"group:team{i}"], "actions": ["publish"],
         "topics": [f"team{i}.>"]}
        for i in range(POLICY_RULES - 3)
    ]  # fmt: skip
    rules += [
        {"id": "no-secrets", "effect": "deny", "principals": ["*"], "actions": ["publish"], "topics": ["secret.>"]},
        {"id": "bench-publish", "effect": "allow", "principals": ["group:bench"], "actions": ["publish"],
         "topics": ["bench.>"]},
        {"id": "reads", "effect": "allow", "principals": ["*"], "actions": ["subscribe", "join"], "topics": [">"]},
    ]  # fmt: skip
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0}, "payload": {"type": "string", "maxLength": 1000}},
        "required": ["n", "payload"],
    }
    return {"policies": rules, "subjects": [{"subject": "bench.>", "compatibility": "backward", "versions": [schema]}]}


_SIDE_BY_SIDE = False
"""Set while the quick run measures rows side by side: every mesh then gets a Valkey of its own."""


def _throughput(mesh: BenchMesh, total: int, runs: int) -> list[float]:
    async def measure() -> list[float]:
        return [await relay_stream(mesh, total, 100) for _ in range(runs)]

    return asyncio.run(measure())


def security(total: int, runs: int) -> Figure:
    fig = Figure("stream, mTLS links + token-authenticated publisher", "events/s")
    with valkey(own=_SIDE_BY_SIDE) as redis_url, processes() as spawn:
        fig.baseline = _throughput(spawn_mesh(spawn, redis_url, [A, B], anonymous=True), total, runs)
    with valkey(own=_SIDE_BY_SIDE) as redis_url, processes() as spawn:
        fig.values = _throughput(spawn_mesh(spawn, redis_url, [A, B], tls=True), total, runs)
    fig.note = "100 events/frame; baseline: the same run with plain links and anonymous publishers"
    return fig


def durability(total: int, runs: int) -> Figure:
    fig = Figure("stream, durable link stores", "events/s")
    with valkey(own=_SIDE_BY_SIDE) as redis_url, processes() as spawn:
        fig.baseline = _throughput(
            spawn_mesh(spawn, redis_url, [A, B], extra={"MESHSCOPE_LINK_DURABLE": "false"}), total, runs
        )
    with valkey(own=_SIDE_BY_SIDE) as redis_url, processes() as spawn:
        fig.values = _throughput(spawn_mesh(spawn, redis_url, [A, B]), total, runs)
    fig.note = "events for B kept in a Redis stream until B acknowledges them; baseline: held in memory only"
    return fig


def _alternating(fig: Figure, meshes: tuple[BenchMesh, BenchMesh], total: int, runs: int, per_frame: int) -> None:
    """Runs alternate between the baseline mesh and the measured one, so both see the same machine load."""

    async def measure() -> None:
        for _ in range(runs):
            fig.baseline.append(await relay_stream(meshes[0], total, per_frame))
            fig.values.append(await relay_stream(meshes[1], total, per_frame))

    asyncio.run(measure())


def dedup_store(total: int, runs: int) -> Figure:
    fig = Figure("stream, duplicate keys kept in Valkey", "events/s")
    with valkey(own=True) as base_url, valkey(own=True) as url, processes() as spawn:
        memory_only = spawn_mesh(spawn, base_url, [A, B], extra={"MESHSCOPE_DEDUP_RESTART_S": "0"})
        _alternating(fig, (memory_only, spawn_mesh(spawn, url, [A, B])), total, runs, 100)
    fig.note = (
        "(principal, source, id) digests in each publish's commit, read back at start; baseline: memory only, "
        "alternating runs"
    )
    return fig


def store_wait(total: int, runs: int, per_frame: int) -> Figure:
    frames = f"{per_frame} event{'s' if per_frame > 1 else ''}/frame"
    fig = Figure(f"stream, {frames}, commits wait for the disk", "events/s")
    aof = {"appendonly": "yes", "appendfsync": "everysec"}
    with valkey(own=True, **aof) as base_url, valkey(own=True, **aof) as url, processes() as spawn:
        everysec = spawn_mesh(spawn, base_url, [A, B])
        fsync = spawn_mesh(spawn, url, [A, B], extra={"MESHSCOPE_STORE_WAIT": "fsync"})
        _alternating(fig, (everysec, fsync), total, runs, per_frame)
    fig.note = (
        "MESHSCOPE_STORE_WAIT=fsync (WAITAOF after every commit); baseline: appendfsync everysec, no wait, "
        "alternating runs"
    )
    return fig


def governed(total: int, runs: int) -> Figure:
    """Runs alternate between no governance and the document, on one mesh, so neither gets a warmer relay."""
    fig = Figure(f"stream, schema + {POLICY_RULES}-rule policy", "events/s")
    with valkey(own=_SIDE_BY_SIDE) as redis_url, processes() as spawn:
        mesh = spawn_mesh(spawn, redis_url, [A, B])
        for _ in range(runs):
            govern(mesh, {"policies": None, "subjects": []})
            fig.baseline += _throughput(mesh, total, 1)
            govern(mesh, governance())
            fig.values += _throughput(mesh, total, 1)
    fig.note = "every event checked against the policy and its schema at A; baseline: the same mesh, alternating runs"
    return fig


def black_hole(runs: int) -> Figure:
    fig = Figure("black-holed link declared down after", "s", target="<= 3 (3 x ping interval)", higher_is_better=False)

    async def measure() -> None:
        with valkey(own=_SIDE_BY_SIDE) as redis_url, processes() as spawn:
            ports = {A: free_port(), B: free_port()}
            proxy = await TcpProxy("127.0.0.1", ports[B]).start()  # A's link to B goes through it
            try:
                mesh = await asyncio.to_thread(
                    spawn_mesh, spawn, redis_url, [A, B], ports=ports, via={(A, B): proxy.port}
                )
                async with httpx.AsyncClient() as http:
                    for _ in range(runs):
                        await _wait_link(http, mesh, "up")
                        proxy.blackhole()
                        started = time.perf_counter()
                        await _wait_link(http, mesh, "down")
                        fig.values.append(time.perf_counter() - started)
                        proxy.forward()
            finally:
                await proxy.stop()

    asyncio.run(measure())
    fig.note = "TCP open, no byte moving (a proxy stops forwarding); MESHSCOPE_PING_INTERVAL_S = 1"
    return fig


async def _wait_link(http: httpx.AsyncClient, mesh: BenchMesh, want: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        links = (await http.get(f"{mesh.http(A)}/healthz")).json()["links"]
        state = links.get(B, "down")
        if (want == "up") == (state == "up"):
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"link to {B} did not go {want}")


FAR_STORE_MS = 40.0
"""One way, between region B's relay and its store: a store across an ocean."""


def regional(total: int, runs: int) -> list[Figure]:
    """Publishing at A, one client, one event per request, events flowing on to a subscriber at B.

    Each region has its own store; in the measured runs B's store is 40 ms away (a proxy), in the
    baseline both are local. A's publish path touches only A's store, so the ratio stays near 1.
    """
    p50 = Figure("publish at A, B's store 40 ms away: p50", "ms", target="ratio <= 1.1", higher_is_better=False)
    p95 = Figure("publish at A, B's store 40 ms away: p95", "ms", target="ratio <= 1.1", higher_is_better=False)
    rate = Figure("publish at A, B's store 40 ms away: one client", "events/s", target="ratio >= 0.9")

    async def measure(far: bool) -> tuple[float, float, float]:
        with valkey(own=_SIDE_BY_SIDE) as url_a, valkey(own=_SIDE_BY_SIDE) as url_b:
            port_b = int(url_b.rsplit(":", 1)[1].split("/")[0])
            proxy = await TcpProxy("127.0.0.1", port_b, delay_ms=FAR_STORE_MS if far else 0.0).start()
            relays = contextlib.ExitStack()
            try:
                spawn = relays.enter_context(processes())
                stores = {A: url_a, B: f"redis://127.0.0.1:{proxy.port}/0"}
                mesh = await asyncio.to_thread(spawn_mesh, spawn, url_a, [A, B], redis_urls=stores)
                return await _sequential_publish(mesh, total)
            finally:
                # stopped from a thread: the proxy, on this loop, must keep forwarding while B drains its
                # commits (stopping them on the loop stalled B's store for its whole drain timeout)
                await asyncio.to_thread(relays.close)
                await proxy.stop()

    async def measure_all() -> None:
        for _ in range(runs):  # alternating, so neither gets the warmer machine
            base = await measure(False)
            far = await measure(True)
            for figure, b, f in ((p50, base[0], far[0]), (p95, base[1], far[1]), (rate, base[2], far[2])):
                figure.baseline.append(b)
                figure.values.append(f)

    asyncio.run(measure_all())
    p50.note = (
        f"one client POSTs one event at a time at A, a subscriber at B; each region its own Valkey, B's behind a "
        f"{FAR_STORE_MS:g} ms one-way proxy; baseline: both local. A's publish path touches A's store only; on "
        "shared cores the far run can be faster (B, waiting on its store, batches its commits and takes less CPU)"
    )
    return [p50, p95, rate]


async def _sequential_publish(mesh: BenchMesh, total: int) -> tuple[float, float, float]:
    """(p50 ms, p95 ms, events/s) of ``total`` publishes at A, one after another, flowing on to B."""
    import websockets

    ready = asyncio.Event()

    async def subscribe() -> None:
        url = f"{mesh.ws(B)}/v1/subscribe?topic=bench.>&batch=100"
        async with websockets.connect(url, max_size=None, **mesh.ws_kwargs()) as ws:
            ready.set()
            async for _ in ws:
                pass

    sub = asyncio.create_task(subscribe())
    await ready.wait()
    await asyncio.sleep(0.5)  # B's interest reaches A
    latencies = []
    headers = {**mesh.headers, "content-type": "application/cloudevents+json"}
    async with httpx.AsyncClient(headers=headers, verify=mesh.ssl or True, timeout=10) as http:
        started = time.perf_counter()
        for i in range(total + 20):
            # valid under governance(): an earlier run may have left it in a shared store
            data = {"n": i, "payload": "x" * 100}
            event = {"specversion": "1.0", "id": f"r-{i}", "source": "/bench", "type": "bench.orders", "data": data}
            body = json.dumps(event)
            if i == 20:  # after a warm-up
                started = time.perf_counter()
            t0 = time.perf_counter()
            reply = await http.post(f"{mesh.http(A)}/v1/events", content=body)
            if reply.status_code != 202:
                raise RuntimeError(f"publish at {A}: {reply.status_code} {reply.text[:200]}")
            if i >= 20:
                latencies.append((time.perf_counter() - t0) * 1000)
        elapsed = time.perf_counter() - started
    sub.cancel()  # and closed before the relays stop: they wait for a subscriber's close handshake
    with contextlib.suppress(asyncio.CancelledError):
        await sub
    latencies.sort()
    return statistics.median(latencies), latencies[int(0.95 * (len(latencies) - 1))], total / elapsed


def run(quick: bool = False) -> list[Figure]:
    global _SIDE_BY_SIDE
    total, runs = (2_000, 1) if quick else (100_000, 3)
    rows: list[Callable[[], Figure | list[Figure]]] = [
        lambda: security(total, runs),
        lambda: durability(total, runs),
        lambda: dedup_store(total, runs),
        lambda: store_wait(total, runs, 100),
        lambda: store_wait(total // (100 if quick else 50), runs, 1),
        lambda: governed(total, runs),
        lambda: black_hole(1 if quick else 3),
        lambda: regional(100 if quick else 2_000, 1 if quick else 3),
    ]
    if quick:  # only checks that every row runs: three at a time, each mesh with a Valkey of its own
        _SIDE_BY_SIDE = True
        try:
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                done = [f.result() for f in [pool.submit(row) for row in rows]]
        finally:
            _SIDE_BY_SIDE = False
    else:
        done = [row() for row in rows]
    figures = [f for d in done for f in (d if isinstance(d, list) else [d])]
    for f in figures[:6]:
        f.values = [statistics.median(f.values)] if quick else f.values
    return figures
