"""The page's files over HTTP: compressed, cached for a year when the page names their hash,
revalidated otherwise, and only the files of static/ (a running dashboard, real HTTP)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.config import CollectorConfig
from dashboard.assets import IMMUTABLE, REVALIDATE, accepts_gzip
from dashboard.config import DashboardConfig
from dashboard.serve import DashboardRuntime
from tests.conftest import write_principals

STATIC = Path(__file__).resolve().parent.parent / "static"


@pytest.fixture
async def dashboard(redis_url: str, clickhouse_url: str, database: str, tmp_path: Path) -> AsyncIterator[str]:
    store = CollectorConfig(redis_url=redis_url, clickhouse_url=clickhouse_url, database=database, metrics_port=-1)
    config = DashboardConfig(store=store, port=0, auth_file=write_principals(tmp_path / "principals.toml", []))
    runtime = await asyncio.to_thread(DashboardRuntime, config, False, False)
    await runtime.start()
    try:
        yield runtime.url
    finally:
        await runtime.stop()


async def test_the_page_names_every_file_by_its_hash_and_gets_it_compressed_and_kept(dashboard: str) -> None:
    async with httpx.AsyncClient(base_url=dashboard, headers={"accept-encoding": "gzip, br"}) as http:
        login = await http.get("/login")
        assert login.status_code == 200
        plain = httpx.AsyncClient(base_url=dashboard, headers={"accept-encoding": "identity"})
        async with plain:
            page = (await http.get("/static/index.html")).text  # the file as shipped
            links = re.findall(r'(?:src|href)="(/static/[^"?]+\.(?:js|css))"', page)
            assert "/static/plotly-geo.min.js" in links and "/static/style.css" in links
            for link in links:
                body = (STATIC / link.removeprefix("/static/")).read_bytes()
                digest = hashlib.sha256(body).hexdigest()[:16]
                kept = await http.get(f"{link}?v={digest}")
                assert kept.status_code == 200 and kept.headers["cache-control"] == IMMUTABLE, link
                assert kept.headers["vary"] == "Accept-Encoding" and kept.headers["etag"] == f'"{digest}"'
                assert kept.content == body  # httpx undid the gzip
                if len(body) > 4096:
                    assert kept.headers["content-encoding"] == "gzip", link
                    raw = await plain.get(f"{link}?v={digest}")
                    assert "content-encoding" not in raw.headers and raw.content == body
                # without its hash, or with another, a file is revalidated, never kept blind
                for query in ("", "?v=0000000000000000"):
                    fresh = await http.get(f"{link}{query}")
                    assert fresh.headers["cache-control"] == REVALIDATE, (link, query)
                again = await http.get(link, headers={"if-none-match": f'"{digest}"'})
                assert again.status_code == 304 and again.content == b""
                assert (await http.get(link, headers={"if-none-match": '"other"'})).status_code == 200
            plotly = (STATIC / "plotly-geo.min.js").read_bytes()
            async with plain.stream("GET", "/static/plotly-geo.min.js", headers={"accept-encoding": "gzip"}) as sent:
                wire = b"".join([chunk async for chunk in sent.aiter_raw()])
                assert sent.headers["content-encoding"] == "gzip"
            assert len(wire) < len(plotly) / 3 and gzip.decompress(wire) == plotly  # what crosses the network


async def test_only_the_files_of_static_are_served(dashboard: str) -> None:
    async with httpx.AsyncClient(base_url=dashboard) as http:
        await http.get("/login")
        # the page itself needs a viewer: what an anonymous visitor gets is the login redirect
        index = await http.get("/", follow_redirects=False)
        assert index.status_code in (302, 303, 307) and "/login" in index.headers["location"]
        for bad in ("/static/../dashboard/app.py", "/static/__init__.py", "/static/plotly.min.js",
                    "/static/topojson/__init__.py", "/static/%2e%2e/pyproject.toml", "/static/nope.js"):  # fmt: skip
            answer = await http.get(bad)  # 404, or 401 where the path left /static/ (a viewer's path)
            assert answer.status_code in (401, 404) and "import" not in answer.text, bad


@given(st.text(max_size=60))
def test_any_accept_encoding_header_is_read_without_error(header: str) -> None:
    assert accepts_gzip(header) in (True, False)


@pytest.mark.parametrize(
    ("header", "gzip_ok"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("gzip;q=0", False),
        ("identity", False),
        ("*", True),
        ("", False),
        ("gzip;q=abc", False),
    ],
)
def test_accept_encoding(header: str, gzip_ok: bool) -> None:
    assert accepts_gzip(header) is gzip_ok
