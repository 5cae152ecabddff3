"""Faults injected into the running demo: ``faults.json``, which ``meshscope chaos`` writes and ``up`` follows,
and the gates through which the central services reach each region's store.

``meshscope chaos`` cannot reach into ``up``'s process: it writes what it wants in the
data directory (``write_faults``), and ``up``'s supervisor reads it every tick
(``read_faults``): the gates of isolated regions are cut (``StoreGates.follow``), and
a held-down region's store is not started again before its time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from pathlib import Path

from meshcore.netproxy import TcpProxy

FAULTS_FILE = "faults.json"
"""Written by ``meshscope chaos``: ``{"isolated": {region: until}, "held_down": {region: until}}`` (unix times):
the gates of isolated regions are cut, and a held-down region's store is not started again before then."""


def read_faults(path: Path) -> dict[str, dict[str, float]]:
    """What faults.json asks for; anything unreadable asks for nothing."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raw = {}
    out: dict[str, dict[str, float]] = {"isolated": {}, "held_down": {}}
    for kind in out:
        entries = raw.get(kind) if isinstance(raw, dict) else None
        if isinstance(entries, dict):
            out[kind] = {str(k): t for k, v in entries.items() if (t := _time(v)) is not None}
    return out


def _time(value: object) -> float | None:
    """A unix time: a finite number, not a boolean (JSON's true is no time), else None."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return seconds if math.isfinite(seconds) else None


def write_faults(path: Path, **changes: dict[str, float]) -> None:
    """Replace the kinds of fault in ``changes`` in faults.json (atomically: ``up`` may be reading it)."""
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = {}
    if not isinstance(current, dict):
        current = {}
    current.update(changes)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(current))
    tmp.replace(path)


class StoreGates:
    """The central services' way into each region's store: a TCP proxy per store, on a loop of its own.

    ``follow`` cuts the gate of each region isolated until a time still to come (``faults.json``, written
    by ``meshscope chaos``), and opens it again after; the relays never use the gates.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.proxies: dict[str, TcpProxy] = {}
        self._thread = threading.Thread(target=self.loop.run_forever, name="store-gates", daemon=True)
        self._thread.start()

    def open(self, region: str, port: int) -> None:
        proxy = asyncio.run_coroutine_threadsafe(TcpProxy("127.0.0.1", port).start(), self.loop).result(5)
        self.proxies[region] = proxy

    def url(self, region: str) -> str:
        return f"redis://127.0.0.1:{self.proxies[region].port}/0"

    def follow(self, isolated: dict[str, float]) -> None:
        now = time.time()
        for region, proxy in self.proxies.items():
            cut = isolated.get(region, 0.0) > now
            if cut and proxy.mode != "cut":
                print(f"meshscope: {region} cut off from the central services (chaos)", flush=True)
                self.loop.call_soon_threadsafe(proxy.cut)
            elif not cut and proxy.mode == "cut":
                print(f"meshscope: {region} reachable again from the central services", flush=True)
                self.loop.call_soon_threadsafe(proxy.forward)

    def close(self) -> None:
        for proxy in self.proxies.values():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(proxy.stop(), self.loop).result(5)
        self.proxies.clear()
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()
