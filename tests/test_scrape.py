"""/metrics of the dashboard: closed to strangers, open to any principal, the in-process collector's series included."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.conftest import AUTH, CE_JSON, cloud_event, eventually, relay_token

A = "aws:us-east-1"


async def test_dashboard_metrics_take_any_principal_and_carry_the_collectors(stack_factory: Any) -> None:
    stack = await stack_factory([A])
    url = f"{stack.url}/metrics"
    async with httpx.AsyncClient(timeout=10) as anonymous:
        refused = await anonymous.get(url)
        assert refused.status_code == 401
        assert (await anonymous.get(url, headers={"authorization": "Bearer nope"})).status_code == 401
    # a relay's principal has no dashboard role: a scraper needs none
    scraper = {"authorization": f"Bearer {relay_token(A)}"}
    async with httpx.AsyncClient(timeout=10, headers=scraper) as client:
        sub = stack.mesh[A].relay.subscribe(["orders.>"])
        reply = await client.post(
            f"{stack.mesh[A].url}/v1/events",
            headers={**CE_JSON, **AUTH},
            content=orjson.dumps(cloud_event("orders.created", "m-1")),
        )
        assert reply.status_code == 202 and sub.queue.qsize() == 1
        await eventually(lambda: stack.dashboard.collector.metrics.get("collector_rows_inserted_total") >= 2, 10)
        text = (await client.get(url)).text
        assert "meshscope_collector_rows_inserted_total" in text and "meshscope_collector_lag_seconds" in text
        assert "meshscope_dashboard_live_clients 0.0" in text and "process_resident_memory_bytes" in text
        assert "meshscope_collector_redis_errors_total 0.0" in text  # declared at zero
        om = await client.get(url, headers={"accept": "application/openmetrics-text; version=1.0.0"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n") and om.text.count("# EOF") == 1
        assert "# TYPE meshscope_collector_rows_inserted counter" in om.text
