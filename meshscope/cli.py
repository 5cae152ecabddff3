"""``meshscope relay|collector|dashboard|up|sql|bench``: composition only."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence

from router import logs
from router.settings import SettingError


def _relay(args: argparse.Namespace) -> int:
    from router.config import RelayConfig
    from router.serve import serve_relay

    overrides: dict[str, object] = {}
    if args.region:
        overrides["region_id"] = args.region
    if args.port is not None:
        overrides["port"] = args.port
    if args.peer:
        overrides["peers"] = tuple(args.peer)
    config = RelayConfig.from_env(os.environ, **overrides)
    logs.setup(os.environ.get("MESHSCOPE_LOG_LEVEL", "INFO"), service="relay", region=config.region.id)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_relay(config))
    return 0


def _collector(args: argparse.Namespace) -> int:
    from collector.config import CollectorConfig
    from collector.serve import serve_collector

    overrides: dict[str, object] = {}
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port
    config = CollectorConfig.from_env(os.environ, **overrides)
    logs.setup(os.environ.get("MESHSCOPE_LOG_LEVEL", "INFO"), service="collector", consumer=config.consumer)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_collector(config))
    return 0


def _sql(args: argparse.Namespace) -> int:
    from collector.config import CollectorConfig
    from collector.output import render
    from collector.sqlclient import SqlFailed, run_sql

    config = CollectorConfig.from_env(os.environ)
    try:
        columns, rows = run_sql(config, args.query, args.via or os.environ.get("MESHSCOPE_DASHBOARD_URL"))
    except SqlFailed as exc:
        print(f"meshscope sql: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render(columns, rows, args.format))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshscope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay", help="run one regional relay")
    relay.add_argument("--region", help="region id such as aws:us-east-1 (or MESHSCOPE_REGION)")
    relay.add_argument("--port", type=int, help="listen port (or MESHSCOPE_PORT)")
    relay.add_argument("--peer", action="append", help="peer relay base URL, repeatable (or MESHSCOPE_PEERS)")
    relay.set_defaults(run=_relay)
    coll = sub.add_parser("collector", help="move flow records from Redis into ClickHouse")
    coll.add_argument(
        "--metrics-port", type=int, help="port of /metrics and /healthz (or MESHSCOPE_COLLECTOR_METRICS_PORT)"
    )
    coll.set_defaults(run=_collector)
    sql = sub.add_parser("sql", help="run a query over the flow history and print the result")
    sql.add_argument("query", help='the SQL, e.g. "SELECT topic, count() FROM flows GROUP BY topic"')
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.add_argument(
        "--via", metavar="URL", help="ask a running dashboard (its /api/sql) instead of ClickHouse directly"
    )
    sql.set_defaults(run=_sql)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except SettingError as exc:
        print(f"meshscope: {exc}", file=sys.stderr)
        return 2
