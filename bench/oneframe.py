"""``python -m bench.oneframe [EVENTS] [POST_SECONDS]``: one run of the rows a before/after comparison needs.

One event per frame with 8 frames in flight through relay A -> link -> relay B
(``bench.relay.relay_stream``), the same through two bare forwarders, and
single-event POST (wrk when installed) beside the bare web stack
(``bench.httpbare``), on a fresh pair of relays; prints one JSON line. Run it
alternately in a checkout of each version (A B A B) and compare the medians of
the in-run ratios.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from bench import relay
from bench.common import free_port, processes, spawn_mesh, valkey


def main(events: int = 10_000, post_s: float = 5.0) -> dict[str, float]:
    out: dict[str, float] = {}
    with valkey() as redis_url, processes() as spawn:
        mesh = spawn_mesh(spawn, redis_url, [relay.A, relay.B])
        f1, f2 = free_port(), free_port()
        spawn("-m", "bench.forwarder", str(f2))
        relay.wait_port(f2)
        spawn("-m", "bench.forwarder", str(f1), f"ws://127.0.0.1:{f2}")
        relay.wait_port(f1)
        bare_http = free_port()
        spawn("-m", "bench.httpbare", str(bare_http))
        relay.wait_port(bare_http)

        async def measure() -> None:
            await relay.relay_stream(mesh, 1_000, 1)  # warm up
            out["stream1"] = await relay.relay_stream(mesh, events, 1)
            out["bare1"] = await relay.bare_stream(f1, f2, events, 1)
            out["post"] = await asyncio.to_thread(relay.relay_post, mesh, post_s)
            out["bare_post"] = await asyncio.to_thread(relay.bare_post, bare_http, post_s) or 0.0

        asyncio.run(measure())
    out["ratio"] = out["stream1"] / out["bare1"]
    out["post_ratio"] = out["post"] / out["bare_post"] if out["bare_post"] else 0.0
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    print(orjson.dumps(main(int(args[0]) if args else 10_000, float(args[1]) if len(args) > 1 else 5.0)).decode())
