"""``meshscope relay|collector|dashboard|up|simulate|bench`` and the parser of every command: composition only.

The operator's commands (sql, chaos, governance, certs, token) are in ``meshscope.clitools``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from meshcore import logs
from meshcore.settings import SettingError
from meshscope import clitools as tools

DESCRIPTION = """\
meshscope: an event mesh you can see. Regional relays route CloudEvents between
regions over mutually authenticated links, every hop leaves a flow record in
ClickHouse, and a dashboard draws the live world map.

Start with `meshscope up` (the whole demo on this machine), then open the URL it
prints. `meshscope COMMAND --help` tells more about each command."""
EPILOG = "Configuration is MESHSCOPE_* environment variables; see README.md and docs/."
BENCH_EXTRA = (
    "meshscope bench needs the bench extra: pip install 'meshscope[bench]'"
    " (in a checkout: pip install -e '.[bench]' -c constraints.txt)"
)


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run a service on uvloop (installed with uvicorn[standard]), plain asyncio where it is missing.

    SIGTERM stops it as Ctrl-C does: the service's task is cancelled and its cleanup runs (a
    uvicorn server serving on its own handles the signal itself while it serves).
    """

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await main

    try:
        import uvloop
    except ImportError:
        asyncio.run(guarded())
    else:
        uvloop.run(guarded())


def _private_files() -> None:
    """A service's files (embedded ClickHouse, caches) are its user's alone: 0700 directories, 0600 files."""
    os.umask(0o077)


def _relay(args: argparse.Namespace) -> int:
    from router.config import MAX_WORKERS, RelayConfig
    from router.serve import serve_relay

    overrides: dict[str, object] = {}
    if args.region:
        overrides["region_id"] = args.region
    if args.port is not None:
        overrides["port"] = args.port
    if args.peer:
        overrides["peers"] = tuple(args.peer)
    if args.workers is not None:
        if not 1 <= args.workers <= MAX_WORKERS:
            print(f"meshscope relay: --workers {args.workers}: give 1 to 64 relay processes", file=sys.stderr)
            return 2
        overrides["workers"] = args.workers
    config = RelayConfig.from_env(os.environ, **overrides)
    _private_files()
    logs.setup(os.environ.get("MESHSCOPE_LOG_LEVEL", "INFO"), service="relay", region=config.region.id)
    if config.workers > 1 and config.worker < 0:
        from router.workers import serve_workers

        with contextlib.suppress(KeyboardInterrupt):
            _run(serve_workers(config))
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        _run(serve_relay(config))
    return 0


def _collector(args: argparse.Namespace) -> int:
    from collector.config import CollectorConfig
    from collector.serve import serve_collector

    overrides: dict[str, object] = {}
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port
    config = CollectorConfig.from_env(os.environ, **overrides)
    _private_files()
    logs.setup(os.environ.get("MESHSCOPE_LOG_LEVEL", "INFO"), service="collector", consumer=config.consumer)
    with contextlib.suppress(KeyboardInterrupt):
        _run(serve_collector(config))
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from dashboard.config import DashboardConfig
    from dashboard.serve import DashboardRuntime

    overrides: dict[str, object] = {}
    if args.port is not None:
        overrides["port"] = args.port
    if args.host is not None:
        overrides["host"] = args.host
    config = DashboardConfig.from_env(os.environ, **overrides)
    _private_files()
    logs.setup(os.environ.get("MESHSCOPE_LOG_LEVEL", "INFO"), service="dashboard")
    runtime = DashboardRuntime(config, with_collector=args.with_collector)
    print(f"meshscope dashboard on {runtime.server.url}", flush=True)
    if runtime.sign_in_url:
        print(f"  sign in: {runtime.sign_in_url}", flush=True)
    else:
        print(f"  sign in at {runtime.server.url}/login with a principal's token (MESHSCOPE_AUTH_FILE)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        _run(runtime.serve())
    return 0


def _up(args: argparse.Namespace) -> int:
    from meshscope.up import UpOptions, run

    opts = UpOptions(
        regions=tuple(r.strip() for r in args.regions.split(",") if r.strip()) if args.regions else UpOptions.regions,
        rate_per_s=args.rate,
        port=args.port,
        host=args.host,
        data_dir=args.data_dir,
        failure_rate=args.failure_rate,
        flap_interval_s=args.flap_interval,
        insecure=args.insecure,
        redis_port=args.redis_port,
        base_port=args.base_port,
    )
    return run(opts)


def _simulate(args: argparse.Namespace) -> int:
    from router.simulator import Simulator, SimulatorConfig

    relays = dict(item.split("=", 1) for item in args.relays.split(",") if "=" in item)
    if not relays:
        print("meshscope simulate: --relays takes region=ws://host:port,...", file=sys.stderr)
        return 2
    _private_files()
    logs.setup(os.environ.get("MESHSCOPE_LOG_LEVEL", "INFO"), service="simulator")
    import ssl

    ca = args.ca or os.environ.get("MESHSCOPE_TLS_CA")
    ctx = ssl.create_default_context(cafile=ca) if ca else None
    cert, key = os.environ.get("MESHSCOPE_TLS_CERT"), os.environ.get("MESHSCOPE_TLS_KEY")
    if ctx is not None and cert and key:
        ctx.load_cert_chain(cert, key)  # the simulator's client certificate, for mutual TLS
    config = SimulatorConfig(
        relays,
        args.rate,
        token=tools.client_token(args.token_file),
        ssl_context=ctx,
        bad_token=tools.client_token(args.bad_token_file) if args.bad_token_file else None,
    )
    with contextlib.suppress(KeyboardInterrupt):
        _run(Simulator(config).run())
    return 0


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("meshscope")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshscope",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"meshscope {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay", help="run one regional relay")
    relay.add_argument("--region", help="region id such as aws:us-east-1 (or MESHSCOPE_REGION)")
    relay.add_argument("--port", type=int, help="listen port (or MESHSCOPE_PORT)")
    relay.add_argument("--peer", action="append", help="peer relay base URL, repeatable (or MESHSCOPE_PEERS)")
    relay.add_argument(
        "--workers",
        type=int,
        help="relay processes serving this region behind the one port (or MESHSCOPE_RELAY_WORKERS; default 1)",
    )
    relay.set_defaults(run=_relay)
    coll = sub.add_parser("collector", help="move flow records from Redis into ClickHouse")
    coll.add_argument(
        "--metrics-port", type=int, help="port of /metrics and /healthz (or MESHSCOPE_COLLECTOR_METRICS_PORT)"
    )
    coll.set_defaults(run=_collector)
    dash = sub.add_parser("dashboard", help="serve the live map, its API and SQL")
    dash.add_argument("--port", type=int, help="listen port (or MESHSCOPE_DASHBOARD_PORT, default 8080)")
    dash.add_argument("--host", help="listen interface (or MESHSCOPE_DASHBOARD_HOST, default 127.0.0.1)")
    dash.add_argument(
        "--with-collector",
        action="store_true",
        help="run the collector in this process (needed with embedded ClickHouse)",
    )
    dash.set_defaults(run=_dashboard)
    up = sub.add_parser("up", help="run the whole demo: Valkey, six relays, traffic, collector, dashboard")
    up.add_argument("--regions", help="comma-separated region ids (default: six regions over AWS, GCP and Azure)")
    up.add_argument("--rate", type=float, default=200.0, help="simulated events per second in total (default 200)")
    up.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("MESHSCOPE_DASHBOARD_PORT", "8080")),
        help="dashboard port (default 8080)",
    )
    up.add_argument("--host", default="127.0.0.1", help="dashboard interface (default 127.0.0.1)")
    up.add_argument(
        "--data-dir",
        default=os.environ.get("MESHSCOPE_DATA_DIR", ".meshscope"),
        help="where Valkey, ClickHouse and logs live (default ./.meshscope)",
    )
    up.add_argument("--failure-rate", type=float, default=0.002, help="share of deliveries failed on purpose")
    up.add_argument(
        "--flap-interval",
        type=float,
        default=90.0,
        help="mean seconds between deliberate link drops on two relays (0: none)",
    )
    up.add_argument("--insecure", action="store_true", help="no TLS: plain HTTP and WebSockets (tokens still needed)")
    up.add_argument(
        "--redis-port",
        type=int,
        help="port of the first region's embedded Valkey (default 16379, or a free one; the others take free ports)",
    )
    up.add_argument(
        "--base-port",
        type=int,
        help="relays listen on BASE, BASE+1, ... in region order (default 7400, or free ports when taken; 0: free)",
    )
    up.set_defaults(run=_up)
    sim = sub.add_parser("simulate", help="drive demo traffic through running relays")
    sim.add_argument("--relays", required=True, help="region=ws(s)://host:port,... of the relays")
    sim.add_argument("--rate", type=float, default=200.0, help="events per second in total")
    sim.add_argument("--token-file", help="file holding the producers' bearer token (or MESHSCOPE_TOKEN[_FILE])")
    sim.add_argument("--bad-token-file", help="token of a second producer whose events governance refuses")
    sim.add_argument("--ca", help="CA bundle the relays' certificates chain to (or MESHSCOPE_TLS_CA)")
    sim.set_defaults(run=_simulate)
    certs = sub.add_parser(
        "certs",
        help="make a development CA and region/client certificates for TLS and mutual TLS",
        description="Writes ca.pem/ca.key (reused when present), region-<id>.pem/.key (server and client,"
        " SAN URI meshscope://region/<id>) and client-<name>.pem/.key (client only). Run it again to add"
        " or rotate certificates under the same CA.",
    )
    certs.add_argument("--out", required=True, metavar="DIR", help="directory to write to (made when missing)")
    certs.add_argument(
        "--regions", metavar="IDS", help="comma-separated region ids, e.g. aws:us-east-1,gcp:europe-west1"
    )
    certs.add_argument("--clients", metavar="NAMES", help="comma-separated client names, e.g. ops,simulator")
    certs.add_argument(
        "--hosts",
        metavar="HOSTS",
        help="extra DNS names or IPs for region certificates (localhost, 127.0.0.1, ::1 always)",
    )
    certs.add_argument("--days", type=int, help="validity of the new certificates in days (default 365)")
    certs.add_argument("--force", action="store_true", help="replace an existing CA (its certificates stop working)")
    certs.set_defaults(run=tools.certs)
    tok = sub.add_parser(
        "token",
        help="make a bearer token and the principals-file entry that holds its hash",
        description="Prints a new random token (32 bytes) and the TOML entry for the principals file. Replacing"
        " an entry's token_sha256 and restarting the relays and dashboard that read the file rotates the token.",
    )
    tok.add_argument("name", help="the principal's name, e.g. billing-svc (relay:<region> for a relay)")
    tok.add_argument("--groups", metavar="NAMES", help="comma-separated groups, for policy rules")
    tok.add_argument("--roles", metavar="NAMES", help="comma-separated roles: viewer, sql, admin")
    tok.add_argument("--token-file", metavar="FILE", help="write the token to FILE (mode 0600) instead of printing it")
    tok.set_defaults(run=tools.token_command)
    chaos = sub.add_parser(
        "chaos",
        help="kill relays and region stores, break links, cut regions off in a running meshscope up; count the losses",
    )
    chaos.add_argument(
        "--data-dir",
        default=os.environ.get("MESHSCOPE_DATA_DIR", ".meshscope"),
        help="the data directory of the running meshscope up (default ./.meshscope)",
    )
    chaos.add_argument(
        "--scenarios",
        help="comma-separated, default all: relay-kill,valkey-restart,black-hole,link-flap,partition,"
        "region-valkey-kill,region-isolation,governance-isolated",
    )
    chaos.add_argument("--events", type=int, default=500, help="probe events per scenario (default 500)")
    chaos.add_argument(
        "--isolate", type=float, default=60.0, metavar="S", help="seconds a region stays cut off (default 60)"
    )
    chaos.set_defaults(run=tools.chaos)
    gov = sub.add_parser(
        "governance", help="apply policies and schemas from a directory, show what is enforced, or export it"
    )
    reach = argparse.ArgumentParser(add_help=False)
    reach.add_argument("--relay", help="a relay's base URL (default: the first relay of meshscope up)")
    reach.add_argument("--token-file", help="an admin's token (or MESHSCOPE_TOKEN[_FILE]; default: meshscope up's ops)")
    reach.add_argument("--ca", help="CA bundle of the relay's certificate (or MESHSCOPE_TLS_CA)")
    reach.add_argument(
        "--data-dir",
        default=os.environ.get("MESHSCOPE_DATA_DIR", ".meshscope"),
        help="the data directory of a running meshscope up, for its defaults",
    )
    actions = gov.add_subparsers(dest="gov_action", required=True, metavar="{apply,show,export}")
    gov_apply = actions.add_parser(
        "apply", parents=[reach], help="apply DIR (policies.toml and schemas/, see README, Governance)"
    )
    gov_apply.add_argument("directory", help="the governance directory: policies.toml and schemas/")
    gov_apply.add_argument("--dry-run", action="store_true", help="print the change and what the relay would refuse")
    gov_apply.add_argument(
        "--allow-empty",
        action="store_true",
        help="allow a change that removes every policy rule or every schema (refused without it)",
    )
    actions.add_parser("show", parents=[reach], help="print the enforced rules and schemas and the change log")
    gov_export = actions.add_parser(
        "export", parents=[reach], help="write the enforced document to DIR, in the layout apply reads"
    )
    gov_export.add_argument("directory", help="a new or empty directory")
    gov.set_defaults(run=tools.governance)
    sub.add_parser("bench", help="run the benchmarks: meshscope bench --help (same as python -m bench)")
    sql = sub.add_parser("sql", help="run a query over the flow history and print the result")
    sql.add_argument("query", help='the SQL, e.g. "SELECT topic, count() FROM flows GROUP BY topic"')
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.add_argument(
        "--via", metavar="URL", help="ask a running dashboard (its /api/sql) instead of ClickHouse directly"
    )
    sql.add_argument(
        "--ca", metavar="FILE", help="CA certificate that signed the dashboard's (default: MESHSCOPE_TLS_CA)"
    )
    sql.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the data directory of meshscope up: its running dashboard, or its store when it is stopped"
        " (default MESHSCOPE_DATA_DIR, else ./.meshscope)",
    )
    sql.set_defaults(run=tools.sql)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["bench"]:  # its own options, passed through whole
        try:
            from bench.__main__ import main as bench_main
        except ModuleNotFoundError as exc:
            print(f"{BENCH_EXTRA} ({exc.name} is missing)", file=sys.stderr)
            return 2
        return bench_main(words[1:])
    args = build_parser().parse_args(words)
    try:
        return int(args.run(args))
    except SettingError as exc:
        print(f"meshscope: {exc}", file=sys.stderr)
        return 2
