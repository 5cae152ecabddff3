"""The baseline for the POST figure: the relay's web stack answering a publish that does no work.

``python -m bench.httpbare PORT``: uvicorn (httptools, uvloop) serving a Starlette app whose
``POST /v1/events`` reads the body, checks that it is JSON and answers 202 with the same shape of
answer the relay gives. No authentication, validation, routing, commit or flow record: the
difference between the relay's figure and this one is what those cost.
"""

from __future__ import annotations

import sys

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def publish(request: Request) -> Response:
    event = orjson.loads(await request.body())
    return JSONResponse({"accepted": [event.get("id")], "duplicates": []}, status_code=202)


app = Starlette(routes=[Route("/v1/events", publish, methods=["POST"])])


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools", log_level="warning")
