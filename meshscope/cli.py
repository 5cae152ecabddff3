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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshscope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay", help="run one regional relay")
    relay.add_argument("--region", help="region id such as aws:us-east-1 (or MESHSCOPE_REGION)")
    relay.add_argument("--port", type=int, help="listen port (or MESHSCOPE_PORT)")
    relay.add_argument("--peer", action="append", help="peer relay base URL, repeatable (or MESHSCOPE_PEERS)")
    relay.set_defaults(run=_relay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except SettingError as exc:
        print(f"meshscope: {exc}", file=sys.stderr)
        return 2
