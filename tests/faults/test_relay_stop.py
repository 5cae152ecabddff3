"""A relay stopped with SIGTERM while it commits: it drains, and producers' retries are not accepted twice.

Producers publish at relay A for three durable groups in B, over HTTP and over
the WebSocket stream, and retry whatever was not acknowledged, across A's
restarts, as a producer should. Every event is counted in every group.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import orjson
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.conftest import AUTH, cloud_event, eventually, scaled
from tests.faults.conftest import FaultMesh, Producer, RelayProcess, ValkeyProcess, create_group, group_ids

A, B = "aws:us-east-1", "gcp:europe-west1"
GROUPS = ("audit", "billing", "search")

pytestmark = pytest.mark.faults


class StreamProducer:
    """Publishes frames of numbered events over WS /v1/stream; a frame without an ack is sent again."""

    def __init__(self, relay: RelayProcess, prefix: str):
        self.relay = relay
        self.prefix = prefix
        self.accepted: list[str] = []
        self.duplicates: list[str] = []
        self.closes: list[int] = []

    async def publish(self, count: int, per_frame: int = 20, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + scaled(timeout_s)
        start = 0
        while start < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"stream producer gave up at {start}: closes {self.closes}")
            try:
                async with connect(f"{self.relay.ws_url}/v1/stream", additional_headers=AUTH) as ws:
                    while start < count:
                        ids = [f"{self.prefix}-{i}" for i in range(start, min(count, start + per_frame))]
                        await ws.send(orjson.dumps([cloud_event("orders.created", i) for i in ids]))
                        reply = orjson.loads(await ws.recv())
                        assert not reply["errors"], reply
                        self.accepted += reply["accepted"]
                        self.duplicates += reply["duplicates"]
                        start += per_frame
            except ConnectionClosed as exc:
                self.closes.append(exc.rcvd.code if exc.rcvd else 1006)
                await asyncio.sleep(0.1)
            except (OSError, InvalidHandshake):  # refused, or closed or 503 before the handshake: try again
                await asyncio.sleep(0.1)


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
async def test_a_relay_stopped_during_commits_answers_what_it_can_and_accepts_no_retry_twice(
    fault_mesh: FaultMesh, valkey: ValkeyProcess, stop: str
) -> None:
    """SIGTERM: every publish in flight is answered (202 or 503, never 500). SIGKILL: some answers are lost;
    the producers' retries after the restart are recognized by the keys committed with the events."""
    client = redis.Redis.from_url(valkey.url)
    await fault_mesh.start([A, B])
    for group in GROUPS:
        await create_group(fault_mesh[B], group, "orders.>")
    relay = fault_mesh[A]
    producers = [Producer(relay, "orders.created", f"p{n}") for n in range(4)]
    streamer = StreamProducer(relay, "s")
    publishing = [asyncio.create_task(p.publish(1500, batch=20, timeout_s=120)) for p in producers]
    publishing.append(asyncio.create_task(streamer.publish(1500, timeout_s=120)))
    for round_ in range(2):
        await eventually(lambda n=round_: sum(len(p.accepted) for p in producers) >= 1500 * (n + 1), 60, 0.01)
        if stop == "SIGTERM":  # while commits are in flight; the producers go on meanwhile
            assert relay.proc is not None
            os.killpg(relay.proc.pid, signal.SIGTERM)
            await eventually(lambda: relay.proc is not None and relay.proc.poll() is not None, 20, 0.01)
            assert relay.proc.returncode == 0, "the relay did not stop by itself"
        else:
            relay.kill9()
        relay.start()
    await asyncio.gather(*publishing)
    accepted = [i for p in producers for i in p.accepted] + streamer.accepted
    # a retry of what had landed before its answer was lost (SIGKILL) is answered as a duplicate
    duplicates = [i for p in producers for i in p.duplicates] + streamer.duplicates
    for p in producers:
        assert 500 not in p.refusals, f"a publish was answered 500: {p.refusals}"
    assert len(accepted) == len(set(accepted)) and not set(accepted) & set(duplicates)
    assert len(set(accepted) | set(duplicates)) == 4 * 1500 + 1500
    if stop == "SIGTERM":
        assert not duplicates  # every publish was answered: nothing was sent twice
    accepted += duplicates
    for group in GROUPS:
        await eventually(lambda g=group: set(group_ids(client, B, g)) >= set(accepted), 30, 0.2)
    await asyncio.sleep(0.5)  # nothing more arrives afterwards
    for group in GROUPS:
        ids = group_ids(client, B, group)
        twice = sorted(i for i in set(ids) if ids.count(i) > 1)
        assert not twice, f"{len(twice)} events twice in {group}, e.g. {twice[:5]}"


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
async def test_a_retry_after_a_restart_is_answered_as_a_duplicate(
    fault_mesh: FaultMesh, valkey: ValkeyProcess, stop: str
) -> None:
    """The producer's answer was lost; it sends the same events again, to the restarted relay."""
    client = redis.Redis.from_url(valkey.url)
    await fault_mesh.start([A, B])
    await create_group(fault_mesh[B], "audit", "orders.>")
    relay = fault_mesh[A]
    first = Producer(relay, "orders.created", "again")
    await first.publish(300, batch=100)
    assert len(first.accepted) == 300
    if stop == "SIGTERM":
        relay.stop()
    else:
        relay.kill9()
    relay.start()
    retry = Producer(relay, "orders.created", "again")  # the same ids, from the same principal
    await retry.publish(300, batch=100)
    assert retry.accepted == [] and sorted(retry.duplicates) == sorted(first.accepted)
    await eventually(lambda: len(group_ids(client, B, "audit")) >= 300, 20, 0.1)
    await asyncio.sleep(0.5)
    assert sorted(group_ids(client, B, "audit")) == sorted(first.accepted)
