"""Log lines name what they are about: a correlation id (the trace id when the request has one) and latency."""

from __future__ import annotations

import logging
import re

import httpx
import orjson
import pytest

from meshcore import logs
from meshcore.reqlog import correlation_of
from tests.conftest import CE_JSON, Mesh, cloud_event

A = "aws:us-east-1"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("header", "trace_id"),
    [
        (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
        (f" 01-{TRACE}-00f067aa0ba902b7-00-extra", TRACE),
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),  # all-zero trace id: invalid
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper case: invalid
        ("garbage", None),
        (None, None),
    ],
)
def test_correlation_id_is_the_trace_id_when_there_is_one(header: str | None, trace_id: str | None) -> None:
    headers = [(b"host", b"x")] + ([(b"traceparent", header.encode())] if header is not None else [])
    found = correlation_of(headers)
    if trace_id is None:
        assert set(found) == {"correlation_id"} and re.fullmatch(r"[0-9a-f]{16}", found["correlation_id"])
        assert correlation_of(headers)["correlation_id"] != found["correlation_id"]  # new each time
    else:
        assert found == {"correlation_id": trace_id, "trace_id": trace_id}


def test_every_record_made_while_serving_carries_the_correlation() -> None:
    make = logs._with_correlation(logging.LogRecord)
    token = logs.CORRELATION.set({"correlation_id": "c1", "trace_id": TRACE})
    try:
        record = make("router.x", logging.WARNING, __file__, 1, "something broke", (), None)
    finally:
        logs.CORRELATION.reset(token)
    outside = make("router.x", logging.WARNING, __file__, 1, "elsewhere", (), None)
    line = orjson.loads(logs.JsonFormatter(service="relay").format(record))
    assert line["correlation_id"] == "c1" and line["trace_id"] == TRACE and line["service"] == "relay"
    assert "correlation_id" not in orjson.loads(logs.JsonFormatter().format(outside))


async def test_a_refused_request_is_one_json_line_with_its_trace_id_and_latency(
    mesh: Mesh, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    await mesh.start([A])
    url = f"{mesh[A].url}/v1/events"
    traced = {**CE_JSON, "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
    with caplog.at_level(logging.INFO, logger="router.requests"):
        ok = await http.post(url, headers=traced, content=orjson.dumps(cloud_event("a.b", "ok-1")))
        bad = await http.post(url, headers=traced, content=b"{not json")
        async with httpx.AsyncClient() as stranger:
            anonymous = await stranger.post(url, headers=CE_JSON, content=b"{}")
    assert (ok.status_code, bad.status_code, anonymous.status_code) == (202, 400, 401)
    lines = [orjson.loads(logs.JsonFormatter(service="relay").format(r)) for r in caplog.records]
    lines = [line for line in lines if line["logger"] == "router.requests"]
    assert [line["status"] for line in lines] == [400, 401]  # a success is counted, not logged
    first, second = lines
    assert first["trace_id"] == first["correlation_id"] == TRACE and first["path"] == "/v1/events"
    assert first["method"] == "POST" and 0 < first["latency_ms"] < 10_000
    assert "trace_id" not in second and re.fullmatch(r"[0-9a-f]{16}", second["correlation_id"])
