"""Log lines carry no credential, whatever wrote them and wherever in the line it sits."""

from __future__ import annotations

import base64
import logging

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.auth import new_token
from meshcore.logs import JsonFormatter
from meshcore.redact import REDACTED, redact

TOKEN = "ms_" + base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")
"""A token of new_token()'s shape, fixed so that the test ids are the same in every process that collects them."""


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f'127.0.0.1:5 - "WebSocket /v1/subscribe?topic=o.>&token={TOKEN}" [accepted]', "topic=o.>&token="),
        (f"GET /login?token={TOKEN}&next=/ HTTP/1.1", "&next=/"),
        (f"GET /ws/live?access_token={TOKEN}", "access_token="),
        ("form token=hunter2&x=1", "&x=1"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: "),
        ("{'authorization': 'Basic dXNlcjpwYXNz'}", "'authorization': '"),
        ("headers cookie: meshscope_session=v1.bmFtZQ.1800000000.mac; theme=dark", "cookie: "),
        ("set __Host-meshscope_session=v1.bmFtZQ.1800000000.mac", "__Host-meshscope_session="),
        (f"could not connect with {TOKEN} to wss://h/v1/mesh", "could not connect with ms_"),
        ("password=s3cret secret=x key=y", "password="),
    ],
)
def test_credentials_lose_their_values_and_the_rest_stays(text: str, kept: str) -> None:
    out = redact(text)
    assert REDACTED in out and kept in out
    for secret in (TOKEN, "abc.def-ghi", "dXNlcjpwYXNz", "hunter2", "v1.bmFtZQ", "s3cret"):
        assert secret not in out


@pytest.mark.parametrize(
    "text",
    ["relay started", "ratio 3:4 over 10 s", "sign in with a principal's token", "topic=orders.> batch=100"],
)
def test_lines_without_credentials_are_left_alone(text: str) -> None:
    assert redact(text) == text


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


contexts = st.sampled_from(
    [
        '%s - "WebSocket /v1/stream?token={t}" 403',
        "/login?x=1&token={t}",
        "Authorization: Bearer {t}",
        '{{"authorization": "Bearer {t}"}}',
        "cookie: meshscope_session={t}",
        "token {t} refused",
    ]
)


@settings(max_examples=200, deadline=None, database=None)
@given(contexts, st.text(max_size=30), st.sampled_from(["msg", "arg", "extra"]))
def test_no_formatted_line_holds_a_token(context: str, noise: str, where: str) -> None:
    token = new_token()
    text = noise + " " + context.replace("{t}", token).replace("{{", "{").replace("}}", "}")
    if where == "msg":
        rec = record(text)
    elif where == "arg":
        rec = record("%s", text)
    else:
        rec = record("request", url=text, headers={"authorization": f"Bearer {token}"})
    line = JsonFormatter(service="relay").format(rec)
    assert token not in line and token[3:] not in line
    assert orjson.loads(line)["service"] == "relay"
