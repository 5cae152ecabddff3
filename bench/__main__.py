"""``python -m bench [relay|collector|queries|live|scale|all] [--quick] [--write]``

Each benchmark starts what it needs (Valkey, embedded ClickHouse, relays on
loopback), warms up, measures, and prints medians with min and max beside the
same run's baseline and the ratio. ``--write`` puts the tables into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import collector, live, queries, relay, scale
from bench.common import Figure, machine, table

SUITES: dict[str, tuple[str, Callable[[bool], list[Figure]]]] = {
    "relay": ("Relay throughput and hop overhead", lambda q: relay.run(q)),
    "collector": ("Collector ingest", lambda q: collector.run(q)),
    "queries": ("Dashboard queries", lambda q: queries.run(q)),
    "live": ("Live path", lambda q: live.run(q)),
    "scale": ("Scale curve", lambda q: scale.relay_scale(q) + scale.collector_scale(q)),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suite", nargs="*", help=f"which benchmarks: all (default) or any of {', '.join(SUITES)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every benchmark runs")
    parser.add_argument("--write", action="store_true", help="write the results into BENCHMARKS.md")
    args = parser.parse_args(argv)
    names = list(SUITES) if not args.suite or "all" in args.suite else args.suite
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from all, {', '.join(SUITES)}")
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    out = [
        f"Machine: {machine()}",
        f"Command: `{command.strip()}`",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
    ]
    print("\n".join(out), flush=True)
    for name in names:
        title, fn = SUITES[name]
        started = time.perf_counter()
        text = table(title, fn(args.quick)) + f"\n({time.perf_counter() - started:.0f} s)\n"
        print(text, flush=True)
        out.append(text)
    if args.write:
        path = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
        path.write_text(HEADER + "\n".join(out) + "\n" + FOOTER)
        print(f"wrote {path}")
    return 0


HEADER = """# Benchmarks

Reproduce with `python -m bench --write` (about 15 minutes on 2 cores; `--quick`
runs every benchmark at a tiny size in seconds). Each table gives medians with
min and max, the same run's baseline for the underlying part, and the ratio
(figure / baseline), since ratios drift less between machines than figures.
Targets are for 2-core machines. The benchmark processes (publishers,
subscribers, Valkey, relays, collectors) all share the same two cores.

"""
FOOTER = ""

if __name__ == "__main__":
    raise SystemExit(main())
