"""Fault injection for ``meshscope chaos``: an admin makes a relay's own links fail, on purpose.

Only mounted when ``MESHSCOPE_FAULT_INJECTION`` is true (``meshscope up`` sets it; a
production relay never should), and only for principals with the admin role.

    POST /v1/faults   {"peer": REGION, "fault": "blackhole" | "cut", "seconds": S}
    POST /v1/faults   {"fault": "isolate", "seconds": S}

``cut`` drops the link's connection (it reconnects at once, with backoff); ``blackhole``
makes the link silent for ``seconds``: nothing is sent or read and new dials time out, as on
a network that drops every packet, so the relay must notice by itself (three missed pings).
``isolate`` does that to every link of the relay, both ways (the peers that dialed in hear
nothing either): its region cut off from every other region for ``seconds``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshcore.auth import Principal
from meshcore.body import BodyTimeout, BodyTooLarge, read_limited
from router.relay import Relay

log = logging.getLogger(__name__)

FAULTS = ("blackhole", "cut", "isolate")
MAX_SECONDS = 600.0


def fault_routes(relay: Relay, principal_of: Callable[[Request], Principal | None]) -> list[Route]:
    async def inject(request: Request) -> Response:
        principal = principal_of(request)
        if principal is None or principal.anonymous or not principal.has_role("admin"):
            return JSONResponse({"error": "fault injection needs a principal with the admin role"}, status_code=403)
        try:
            raw = await read_limited(request, 4096, relay.config.body_timeout_s)
        except (BodyTooLarge, BodyTimeout) as exc:
            return JSONResponse({"error": str(exc)}, status_code=413 if isinstance(exc, BodyTooLarge) else 408)
        try:
            body = orjson.loads(raw)
            fault = body["fault"]
            peer = body["peer"] if fault != "isolate" else None
            seconds = float(body.get("seconds", 0))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            usage = 'send {"peer": REGION, "fault": "blackhole"|"cut", "seconds": S} or {"fault": "isolate", ...}'
            return JSONResponse({"error": usage}, 400)
        if fault not in FAULTS or not 0 <= seconds <= MAX_SECONDS:
            return JSONResponse({"error": f"fault is one of {FAULTS}, seconds 0..{MAX_SECONDS:g}"}, status_code=400)
        if fault == "isolate":
            log.warning("fault injected: region isolated", extra={"seconds": seconds, "by": principal.name})
            relay.isolate(seconds)
            return JSONResponse({"fault": fault, "seconds": seconds}, status_code=202)
        link = relay.links_by_region.get(peer) if isinstance(peer, str) else None
        if link is None:
            return JSONResponse({"error": f"no link to {str(peer)[:80]!r} from {relay.region}"}, status_code=404)
        log.warning("fault injected", extra={"peer": peer, "fault": fault, "seconds": seconds, "by": principal.name})
        if fault == "cut":
            link.kill()
        else:
            link.black_hole(seconds)
        return JSONResponse({"peer": peer, "fault": fault, "seconds": seconds}, status_code=202)

    return [Route("/v1/faults", inject, methods=["POST"])]
