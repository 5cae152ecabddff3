"""Liveness under bulk publishing: /healthz latency and mesh link reconnects while 10,000-event batches arrive.

Two relay processes over one mesh link, a durable group at the far end, links
pinging every 0.2 s (dead after 0.6 s of silence). Baseline: /healthz asked 20
times a second with nothing else going on. Measured: the same while batches of
10,000 small events (about 650 KB) arrive over POST and over /v1/stream at
once, with the batch throughput and the reconnects of both relays' links.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import orjson
import websockets

from bench.common import BenchMesh, Figure, processes, spawn_mesh, valkey

A, B = "aws:us-east-1", "gcp:europe-west1"
_runs = iter(range(1, 1_000_000))


def _batch(tag: str, n: int) -> bytes:
    return orjson.dumps(
        [{"specversion": "1.0", "id": f"{tag}-{i}", "source": "/bench", "type": "bulk.load", "data": {"i": i}}
         for i in range(n)]
    )  # fmt: skip


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)] if ordered else float("nan")


async def _reconnects(http: httpx.AsyncClient, mesh: BenchMesh) -> float:
    total = 0.0
    for region in (A, B):
        text = (await http.get(f"{mesh.http(region)}/metrics")).text
        total += sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("meshscope_link_reconn"))
    return total


async def _round(mesh: BenchMesh, batches: int, size: int, load: bool) -> tuple[float, float, float]:
    """(/healthz p99 ms, events/s, reconnects) over one round, with bulk load or idle."""
    run = next(_runs)
    latencies: list[float] = []
    done = asyncio.Event()
    async with httpx.AsyncClient(timeout=120, headers=mesh.headers) as http:
        before = await _reconnects(http, mesh)

        async def probe() -> None:
            # a client of its own, which never reuses a connection the server may be closing as idle
            async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(keepalive_expiry=1.0)) as prober:
                while not done.is_set():
                    started = time.monotonic()
                    await prober.get(f"{mesh.http(A)}/healthz")
                    latencies.append(time.monotonic() - started)
                    await asyncio.sleep(0.05)

        async def post() -> None:
            for n in range(batches):
                content = _batch(f"p{run}-{n}", size)
                reply = await http.post(
                    f"{mesh.http(A)}/v1/events",
                    content=content,
                    headers={"content-type": "application/cloudevents-batch+json"},
                )
                reply.raise_for_status()

        async def stream() -> None:
            async with websockets.connect(f"{mesh.ws(A)}/v1/stream", max_size=None, **mesh.ws_kwargs()) as ws:
                for n in range(batches):
                    await ws.send(_batch(f"s{run}-{n}", size))
                    await ws.recv()

        prober = asyncio.create_task(probe())
        started = time.monotonic()
        if load:
            await asyncio.gather(post(), stream())
        else:
            await asyncio.sleep(3.0)
        took = time.monotonic() - started
        await asyncio.sleep(1.0)
        done.set()
        await prober
        after = await _reconnects(http, mesh)
    rate = 2 * batches * size / took if load else 0.0
    return _p99(latencies) * 1000, rate, after - before


def run(quick: bool) -> list[Figure]:
    rounds, batches, size = (1, 1, 1000) if quick else (3, 5, 10_000)
    health = Figure("/healthz p99 while 10k-event batches arrive (POST + stream)", "ms", target="< 500",
                    higher_is_better=False)  # fmt: skip
    rate = Figure("bulk events accepted", "events/s")
    links = Figure("mesh link reconnects during the load", "count", target="0", higher_is_better=False)
    with valkey() as redis_url, processes() as spawn:
        mesh = spawn_mesh(spawn, redis_url, [A, B], extra={"MESHSCOPE_PING_INTERVAL_S": "0.2"})

        async def main() -> None:
            async with websockets.connect(f"{mesh.ws(B)}/v1/subscribe?topic=bulk.>&group=bulk", **mesh.ws_kwargs()):
                pass
            for _ in range(rounds):
                idle_p99, _, _ = await _round(mesh, batches, size, load=False)
                health.baseline.append(idle_p99)
                busy_p99, per_s, reconnects = await _round(mesh, batches, size, load=True)
                health.values.append(busy_p99)
                rate.values.append(per_s)
                links.values.append(reconnects)

        asyncio.run(main())
    health.note = f"baseline: the same probe with no load (median {statistics.median(health.baseline):.1f} ms)"
    return [health, rate, links]
