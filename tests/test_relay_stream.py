"""WS /v1/stream with frames in flight: read while earlier frames commit, committed together, answered in order."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from router.streamsession import WINDOW_FRAMES
from tests.conftest import AUTH, Mesh, cloud_event, eventually, scaled

A, C = "aws:us-east-1", "azure:westeurope"


async def recv_json(ws: ClientConnection, timeout_s: float = 5) -> Any:
    return orjson.loads(await asyncio.wait_for(ws.recv(), scaled(timeout_s)))


async def subscribe(mesh: Mesh, region: str, pattern: str) -> ClientConnection:
    return await connect(f"{mesh[region].ws_url}/v1/subscribe?topic={pattern}", additional_headers=AUTH)


async def test_frames_in_flight_are_committed_together_and_answered_in_order(mesh: Mesh) -> None:
    await mesh.start([A, C])
    sub = await subscribe(mesh, C, "orders.>")
    await eventually(lambda: C in mesh[A].relay.routes.interested("orders.x"), 2)
    committer = mesh[A].relay.committer
    frames = 4 * WINDOW_FRAMES
    async with connect(f"{mesh[A].ws_url}/v1/stream", additional_headers=AUTH) as ws:
        before = committer.commits
        for i in range(frames):  # one event a frame, none waiting for its answer
            await ws.send(orjson.dumps(cloud_event("orders.x", f"f-{i}")))
        acks = [await recv_json(ws) for _ in range(frames)]
        commits = committer.commits - before
    assert [a["frame"] for a in acks] == list(range(1, frames + 1))
    assert [a["accepted"] for a in acks] == [[f"f-{i}"] for i in range(frames)]
    # a commit per frame (or more) was the rate of one over the round trip; frames that waited joined the
    # next commit (how many did depends on the machine: a loaded one merges more)
    assert commits < frames * 0.8, f"{commits} commits for {frames} frames"
    ids = [(await recv_json(sub))["id"] for _ in range(frames)]
    assert ids == [f"f-{i}" for i in range(frames)]  # once each, in the order sent, and none left for a resend
    await sub.close()


async def test_a_frame_repeating_an_event_still_in_flight_gets_it_as_a_duplicate(mesh: Mesh) -> None:
    """Not a close as in doubt: the frame waits for the frames before it."""
    await mesh.start([A])
    sub = await subscribe(mesh, A, "orders.>")
    async with connect(f"{mesh[A].ws_url}/v1/stream", additional_headers=AUTH) as ws:
        await ws.send(orjson.dumps([cloud_event("orders.x", "d-1"), cloud_event("orders.x", "d-2")]))
        await ws.send(orjson.dumps(cloud_event("orders.x", "d-2")))
        await ws.send(orjson.dumps(cloud_event("orders.x", "d-3")))
        acks = [await recv_json(ws) for _ in range(3)]
    assert [(a["frame"], a["accepted"], a["duplicates"]) for a in acks] == [
        (1, ["d-1", "d-2"], []),
        (2, [], ["d-2"]),
        (3, ["d-3"], []),
    ]
    assert [(await recv_json(sub))["id"] for _ in range(3)] == ["d-1", "d-2", "d-3"]
    await sub.close()


async def test_frames_of_errors_only_and_large_frames_keep_their_place(mesh: Mesh) -> None:
    await mesh.start([A])
    sub = await subscribe(mesh, A, "orders.>")
    big = [cloud_event("orders.x", f"b-{i}") for i in range(2500)]  # three commits of its own
    async with connect(f"{mesh[A].ws_url}/v1/stream", additional_headers=AUTH, max_size=None) as ws:
        await ws.send(orjson.dumps(cloud_event("orders.x", "s-1")))
        await ws.send(orjson.dumps({"specversion": "1.0", "id": "bad", "source": "/p"}))  # no type
        await ws.send(orjson.dumps(big))
        await ws.send(orjson.dumps(cloud_event("orders.x", "s-2")))
        acks = [await recv_json(ws) for _ in range(4)]
    assert [a["frame"] for a in acks] == [1, 2, 3, 4]
    assert acks[1]["accepted"] == [] and [e["index"] for e in acks[1]["errors"]] == [0]
    assert len(acks[2]["accepted"]) == 2500 and acks[3]["accepted"] == ["s-2"]
    ids = [(await recv_json(sub))["id"] for _ in range(2502)]
    assert ids == ["s-1", *(e["id"] for e in big), "s-2"]
    await sub.close()


@pytest.mark.parametrize(("frame", "code"), [(b"not json", 1007), (b"42", 1007)])
async def test_a_bad_frame_closes_only_after_the_frames_before_it_are_answered(
    mesh: Mesh, frame: bytes, code: int
) -> None:
    await mesh.start([A])
    async with connect(f"{mesh[A].ws_url}/v1/stream", additional_headers=AUTH) as ws:
        for i in range(10):
            await ws.send(orjson.dumps(cloud_event("orders.x", f"c-{i}")))
        await ws.send(frame)
        acks = [await recv_json(ws) for _ in range(10)]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), scaled(3))
        assert ws.close_code == code
    assert [a["accepted"] for a in acks] == [[f"c-{i}"] for i in range(10)]


async def test_a_stopping_relay_answers_the_frames_in_flight_and_refuses_the_rest(mesh: Mesh) -> None:
    await mesh.start([A])
    relay = mesh[A].relay
    async with connect(f"{mesh[A].ws_url}/v1/stream", additional_headers=AUTH) as ws:
        for i in range(8):
            await ws.send(orjson.dumps(cloud_event("orders.x", f"r-{i}")))
        first = await recv_json(ws)
        drained = asyncio.create_task(relay.drain(scaled(5)))
        answered = [first]
        with pytest.raises(ConnectionClosed):
            while True:
                answered.append(await recv_json(ws))
                await ws.send(orjson.dumps(cloud_event("orders.x", f"r-{len(answered) + 8}")))
        assert ws.close_code == 1013
        assert await drained
        assert relay.requests_in_flight == 0 and relay.publisher.in_flight == 0
    assert [a["frame"] for a in answered] == list(range(1, len(answered) + 1))
