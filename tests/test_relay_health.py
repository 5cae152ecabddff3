"""A relay's /healthz says whether it can do its work now: writes it cannot make, a clock its peers refuse."""

from __future__ import annotations

import httpx
import orjson
import redis

from tests.conftest import CE_JSON, Mesh, cloud_event, eventually

A = "aws:us-east-1"


async def test_an_idle_relay_whose_valkey_refuses_writes_says_so_and_answers_publishes_503(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    """Valkey out of memory answers reads and refuses writes: an idle relay learns it from its write probe."""
    await mesh.start([A])
    url = mesh[A].url

    async def health() -> dict[str, object]:
        body: dict[str, object] = (await http.get(f"{url}/healthz")).json()
        return body

    await eventually(lambda: health(), 5)
    assert (await health())["status"] == "ok"
    policy = redis_sync.config_get("maxmemory-policy")["maxmemory-policy"]
    try:
        redis_sync.config_set("maxmemory-policy", "noeviction")
        redis_sync.config_set("maxmemory", 1)  # every write refused: OOM
        assert redis_sync.ping()  # reads still answered: a ping alone would say all is well

        async def refusing() -> dict[str, object] | None:
            body = await health()
            reasons = body["reasons"]
            assert isinstance(reasons, list)
            refused = "Valkey refuses this relay's writes: OutOfMemoryError: command not allowed when used memory"
            return body if any(r.startswith(refused) for r in reasons) else None

        body = await eventually(refusing, 10)
        assert body["status"] == "degraded"
        reply = await http.post(
            f"{url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("orders.x", "oom-1"))
        )
        assert reply.status_code == 503 and "retry-after" in reply.headers, reply.text
    finally:
        redis_sync.config_set("maxmemory", 0)
        redis_sync.config_set("maxmemory-policy", policy)

    async def recovered() -> bool:
        return (await health())["status"] == "ok"

    await eventually(recovered, 15)
    reply = await http.post(f"{url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("orders.x", "ok-1")))
    assert reply.status_code == 202
