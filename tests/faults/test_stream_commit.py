"""Frames in flight on WS /v1/stream: an answer never comes before the frame's events are durable.

A producer keeps eight one-event frames in flight, as a producer publishing
things as they happen does, while Valkey (append-only file, fsync always) is
killed with SIGKILL. With frames committed together, a frame answered before
its commit landed would be an event the producer forgets and the store never
gets: the relay is then killed too, before Valkey comes back, so that nothing
still waiting in the relay can land later and hide it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import orjson
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.conftest import AUTH, cloud_event, eventually, scaled
from tests.faults.conftest import FaultMesh, RelayProcess, ValkeyProcess, create_group, group_ids

A = "aws:us-east-1"

pytestmark = pytest.mark.faults


class PipelinedProducer:
    """Keeps ``window`` frames of one event in flight; after a close, sends again every frame not answered."""

    def __init__(self, relay: RelayProcess, prefix: str, window: int = 8):
        self.relay = relay
        self.prefix = prefix
        self.window = window
        self.accepted: list[str] = []
        self.duplicates: list[str] = []
        self.closes: list[int] = []

    @property
    def answered(self) -> set[str]:
        return set(self.accepted) | set(self.duplicates)

    async def publish(self, count: int, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + scaled(timeout_s)
        done = 0  # frames answered; every later one is sent (again) on the next connection
        while done < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"producer gave up at {done}: closes {self.closes}")
            try:
                async with connect(f"{self.relay.ws_url}/v1/stream", additional_headers=AUTH) as ws:
                    sent = done
                    while done < count:
                        while sent < count and sent - done < self.window:
                            await ws.send(orjson.dumps(cloud_event("orders.created", f"{self.prefix}-{sent}")))
                            sent += 1
                        reply = orjson.loads(await ws.recv())
                        assert not reply["errors"], reply
                        assert reply["accepted"] + reply["duplicates"] == [f"{self.prefix}-{done}"], reply
                        self.accepted += reply["accepted"]
                        self.duplicates += reply["duplicates"]
                        done += 1
            except ConnectionClosed as exc:
                self.closes.append(exc.rcvd.code if exc.rcvd else 1006)
                await asyncio.sleep(0.05)
            except (OSError, InvalidHandshake):  # the relay is down or starting: try again
                await asyncio.sleep(0.05)


async def test_no_answered_frame_is_lost_when_valkey_and_then_the_relay_die_with_frames_in_flight(
    fault_mesh: FaultMesh, valkey: ValkeyProcess
) -> None:
    client = redis.Redis.from_url(valkey.url)
    await fault_mesh.start([A], MESHSCOPE_PUBLISH_TIMEOUT_S="1")
    relay = fault_mesh[A]
    await create_group(relay, "audit", "orders.>")  # each event is appended to it in its commit
    producers = [PipelinedProducer(relay, f"p{n}") for n in range(2)]
    publishing = [asyncio.create_task(p.publish(1500)) for p in producers]
    await eventually(lambda: all(len(p.answered) >= 300 for p in producers), 30, 0.01)
    valkey.kill9()  # frames are in flight: being committed, and queued behind that commit
    await asyncio.sleep(scaled(0.5))
    relay.kill9()  # whatever it held and had not landed is gone with it
    answered = set().union(*(p.answered for p in producers))
    valkey.start()
    stored = set(group_ids(client, A, "audit"))
    missing = sorted(answered - stored)
    assert not missing, f"{len(missing)} answered events are not in the store, e.g. {missing[:5]}"
    relay.start()
    await asyncio.gather(*publishing)
    accepted = [i for p in producers for i in p.accepted]
    duplicates = [i for p in producers for i in p.duplicates]
    assert len(accepted) == len(set(accepted)) and not set(accepted) & set(duplicates)
    assert set(accepted) | set(duplicates) == {f"p{n}-{i}" for n in range(2) for i in range(1500)}
    assert any(p.closes for p in producers)  # the outage reached them
    ids = group_ids(client, A, "audit")
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    assert not twice, f"{len(twice)} events twice in the group, e.g. {twice[:5]}"
    assert set(ids) == set(accepted) | set(duplicates)
