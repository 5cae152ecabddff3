"""Many viewers of one dashboard: 50 polling the map, 1,000 on the live websocket, with traffic flowing.

Three relays run as processes with the traffic simulator publishing through them; the
collector and dashboard run in this process on embedded ClickHouse, as ``meshscope up``
runs them. The viewers run in a process of their own (``python -m bench.viewers poll|live``),
so their work is not counted as the dashboard's.

- ``/api/topology?window=1h``: 50 viewers each poll once a second (five times as often as the
  browser), for p50 and p99 of the answer time; the baseline is one viewer alone, in the same run.
- ``/ws/live``: 1,000 clients connected; probe messages are published on the live channel one
  a second, and each client notes when each arrived: the p99 delay of a probe over every client
  and probe, and how many clients got every probe. Baseline: one client alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import statistics
import sys
import time
from typing import Any

import httpx
import orjson

from bench.common import Figure, clickhouse_url, processes, spawn_mesh, valkey

A, B, C = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"
TOPOLOGY = "/api/topology?window=1h"


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def _raise_file_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---- the viewers' process ------------------------------------------------------------------------


async def poll(url: str, token: str, viewers: int, seconds: float, interval_s: float) -> list[float]:
    """``viewers`` clients each asking ``url`` every ``interval_s``; the answer times in ms."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=viewers + 10, max_keepalive_connections=viewers + 10)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(headers=headers, timeout=30, limits=limits) as http:

        async def viewer() -> None:
            await asyncio.sleep(random.uniform(0, interval_s))
            while time.monotonic() < deadline:
                started = time.perf_counter()
                reply = await http.get(url)
                reply.raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - started)))

        await asyncio.gather(*(viewer() for _ in range(viewers)))
    return latencies


async def listen(url: str, token: str, clients: int, probes: int, timeout_s: float) -> dict[str, Any]:
    """``clients`` websockets on ``url``; prints "ready" once all are open, then waits for ``probes`` probes each."""
    import websockets

    delays: list[list[float]] = [[] for _ in range(clients)]
    headers = {"Authorization": f"Bearer {token}"}
    sockets: list[Any] = []
    for start in range(0, clients, 100):  # in batches: a thousand handshakes at once only measure the backlog
        batch = range(start, min(clients, start + 100))
        sockets += await asyncio.gather(
            *(websockets.connect(url, additional_headers=headers, max_size=None, open_timeout=60) for _ in batch)
        )
    print("ready", flush=True)

    async def client(i: int) -> None:
        seen: set[int] = set()
        async for raw in sockets[i]:
            if b'"probe"' not in (raw if isinstance(raw, bytes) else raw.encode()):
                continue
            message = orjson.loads(raw)
            if message["probe"] not in seen:
                seen.add(message["probe"])
                delays[i].append(round((time.time() - message["sent"]) * 1000, 2))
            if len(seen) == probes:
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(clients))), timeout_s)
    for ws in sockets:
        with contextlib.suppress(Exception):
            await ws.close()
    return {
        "delays_ms": [d for per_client in delays for d in per_client],
        "complete": sum(1 for d in delays if len(d) == probes),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.viewers")
    parser.add_argument("role", choices=("poll", "live"))
    parser.add_argument("url")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--probes", type=int, default=10)
    args = parser.parse_args(argv)
    token = os.environ["MESHSCOPE_BENCH_TOKEN"]
    _raise_file_limit()
    if args.role == "poll":
        out: Any = asyncio.run(poll(args.url, token, args.count, args.seconds, args.interval))
    else:
        out = asyncio.run(listen(args.url, token, args.count, args.probes, args.seconds))
    print(orjson.dumps(out).decode(), flush=True)


# ---- the benchmark -------------------------------------------------------------------------------


async def _viewers(*args: str, token: str, ready: Any = None) -> Any:
    """Run ``python -m bench.viewers ARGS``; ``ready`` is awaited once it says so; its JSON answer."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.viewers", *args,
        env={**os.environ, "MESHSCOPE_BENCH_TOKEN": token}, stdout=asyncio.subprocess.PIPE, limit=1 << 26,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if line.strip() == b"ready":
        if ready is not None:
            await ready()
        line = await proc.stdout.readline()
    await proc.wait()
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"bench.viewers {args[0]} failed (exit {proc.returncode})")
    return orjson.loads(line)


async def _probes(redis_url: str, channel: str, n: int, every_s: float) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        await asyncio.sleep(every_s)
        for i in range(n):
            probe = {"v": 1, "ts": int(time.time()), "edges": [], "samples": [], "probe": i, "sent": time.time()}
            await client.publish(channel, orjson.dumps(probe))
            await asyncio.sleep(every_s)
    finally:
        await client.aclose()


def run(quick: bool = False) -> list[Figure]:
    from collector.config import CollectorConfig
    from dashboard.config import DashboardConfig
    from dashboard.serve import DashboardRuntime

    n_viewers, seconds, clients, probes = (10, 1.0, 50, 2) if quick else (50, 20.0, 1000, 15)
    rate = 50 if quick else 200
    p50 = Figure(f"/api/topology 1h, {n_viewers} viewers p50", "ms", higher_is_better=False)
    p99 = Figure(f"/api/topology 1h, {n_viewers} viewers p99", "ms", target="<= 150", higher_is_better=False)
    live99 = Figure(f"/ws/live delivery p99, {clients:,} clients", "ms", target="<= 1,000", higher_is_better=False)
    complete = Figure(f"/ws/live clients with every message (of {clients:,})", "clients", target=f"= {clients:,}")
    regions = [A, B, C]
    _raise_file_limit()
    with valkey() as redis_url, processes() as spawn:
        mesh = spawn_mesh(spawn, redis_url, regions)
        relays = ",".join(f"{r}={mesh.ws(r)}" for r in regions)
        spawn("-m", "meshscope", "simulate", "--relays", relays, "--rate", str(rate),
              env={"MESHSCOPE_TOKEN": mesh.token, "MESHSCOPE_LOG_LEVEL": "WARNING"})  # fmt: skip
        store = CollectorConfig(
            redis_url=redis_url,
            clickhouse_url=clickhouse_url(),
            database=f"bench_viewers_{os.getpid()}",
            metrics_port=-1,
        )
        runtime = DashboardRuntime(DashboardConfig(store=store, port=0), with_collector=True, announce=False)
        token = runtime.token or ""
        stats: dict[str, Any] = {}

        async def go() -> None:
            await runtime.start()
            try:
                url = runtime.server.url
                async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
                    deadline = time.monotonic() + 60
                    while not (await http.get(url + TOPOLOGY)).json()["edges"]:  # traffic is flowing
                        if time.monotonic() > deadline:
                            raise RuntimeError("no traffic reached the dashboard")
                        await asyncio.sleep(0.5)
                one = await _viewers("poll", url + TOPOLOGY, "--count", "1", "--seconds", str(seconds), token=token)
                queries, computed = runtime.store.queries, runtime.cache.computed
                many = await _viewers(
                    "poll", url + TOPOLOGY, "--count", str(n_viewers), "--seconds", str(seconds), token=token
                )
                stats.update(one=one, many=many, queries=runtime.store.queries - queries)
                stats["computed"] = runtime.cache.computed - computed
                ws_url = runtime.server.ws_url + "/ws/live"
                channel = store.live_channel
                wait = 3 * probes + 30

                async def probe() -> None:
                    await _probes(redis_url, channel, probes, 0.5 if quick else 1.0)

                stats["ws1"] = await _viewers(
                    "live", ws_url, "--count", "1", "--probes", str(probes), "--seconds", str(wait),
                    token=token, ready=probe,
                )  # fmt: skip
                stats["wsn"] = await _viewers(
                    "live", ws_url, "--count", str(clients), "--probes", str(probes), "--seconds", str(wait),
                    token=token, ready=probe,
                )  # fmt: skip
            finally:
                await runtime.stop()

        asyncio.run(go())
        runtime.admin.command(f"DROP DATABASE IF EXISTS `{store.database}` SYNC")
    one, many = stats["one"], stats["many"]
    p50.values, p50.baseline = [_pct(many, 0.5)], [_pct(one, 0.5)]
    p99.values, p99.baseline = [_pct(many, 0.99)], [_pct(one, 0.99)]
    live99.values, live99.baseline = [_pct(stats["wsn"]["delays_ms"], 0.99)], [_pct(stats["ws1"]["delays_ms"], 0.99)]
    complete.values = [float(stats["wsn"]["complete"])]
    p50.note = (
        f"{len(many)} answers to {n_viewers} viewers each polling every second for {seconds:g} s, "
        f"{rate} events/s flowing through 3 relays; they took {stats['queries']} ClickHouse statements "
        f"({stats['computed']} computations, one per cache interval); baseline: one viewer alone"
    )
    live99.note = (
        f"{probes} probes, one every {0.5 if quick else 1.0:g} s, through Redis pub/sub to {clients:,} websocket "
        "clients in another process "
        f"(median {statistics.median(stats['wsn']['delays_ms'] or [float('nan')]):.1f} ms); baseline: one client"
    )
    return [p50, p99, live99, complete]


if __name__ == "__main__":
    main()
