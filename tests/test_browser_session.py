"""Signing in and out of the dashboard in a real headless Chromium, against pages of other origins.

A victim signs in with their own link, then visits an attacker's pages: one on another site
(``localhost`` against the dashboard's ``127.0.0.1``) and one on another port of the same host
(the same site). Each navigates to ``/login?token=<the attacker's token>``, posts that token to
``/login``, and posts to ``/logout``. None of it may change the victim's session: the link shows
a page that asks first, the posts are refused. The victim's own buttons, posted by Chromium from
pages served with ``Referrer-Policy: no-referrer`` (so with ``Origin: null``), must work: the
confirmation signs in, and "Sign out" ends the session, the cookie's value included.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from collector.config import CollectorConfig
from dashboard.config import DashboardConfig
from dashboard.serve import DashboardRuntime
from meshcore.server import Server
from tests.conftest import OTHER_TOKEN, TEST_TOKEN, scaled, write_principals
from tests.test_browser import CHROMIUM, FLAGS, require_chromium


def attacker_app(dashboard: str) -> Starlette:
    """Pages that act on the dashboard at ``dashboard`` with the attacker's token (the tester's)."""

    def page(body: str) -> HTMLResponse:
        return HTMLResponse(f"<!doctype html><html><body>{body}</body></html>")

    async def navigate(request: Request) -> HTMLResponse:
        return page(f"<script>location.href = '{dashboard}/login?token={TEST_TOKEN}';</script>")

    async def post_login(request: Request) -> HTMLResponse:
        return page(
            f'<form id="f" method="post" action="{dashboard}/login"><input name="token" value="{TEST_TOKEN}"></form>'
            "<script>document.getElementById('f').submit();</script>"
        )

    async def post_login_no_referrer(request: Request) -> HTMLResponse:  # Origin: null from another site
        return page(
            '<meta name="referrer" content="no-referrer">'
            f'<form id="f" method="post" action="{dashboard}/login"><input name="token" value="{TEST_TOKEN}"></form>'
            "<script>document.getElementById('f').submit();</script>"
        )

    async def post_logout(request: Request) -> HTMLResponse:
        return page(
            '<meta name="referrer" content="no-referrer">'
            f'<form id="f" method="post" action="{dashboard}/logout"></form>'
            "<script>document.getElementById('f').submit();</script>"
        )

    return Starlette(
        routes=[
            Route("/navigate", navigate),
            Route("/post-login", post_login),
            Route("/post-login-no-referrer", post_login_no_referrer),
            Route("/post-logout", post_logout),
        ]
    )


@contextlib.asynccontextmanager
async def served(app: Starlette) -> AsyncIterator[Server]:
    server = Server(app, fast=False)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


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


def drive(dashboard: str, attackers: dict[str, str]) -> dict[str, Any]:
    """What the browser saw; runs in a worker thread (Playwright's sync API)."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {"attacks": {}}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context()
        page = context.new_page()

        def who() -> str:
            reply = context.request.get(f"{dashboard}/api/session")
            return str(reply.json().get("principal")) if reply.status == 200 else f"status {reply.status}"

        page.goto(f"{dashboard}/login?token={OTHER_TOKEN}")  # the victim's own link
        seen["signed_in_as"] = who()
        for name, base in attackers.items():
            page.goto(f"{base}/navigate")
            page.wait_for_url(lambda url: url.startswith(dashboard))
            page.wait_for_load_state()
            seen["attacks"][f"{name} link"] = (who(), page.locator("#confirm").count())
            for attack in ("post-login", "post-login-no-referrer", "post-logout"):
                page.goto(f"{base}/{attack}")
                page.wait_for_url(lambda url: url.startswith(dashboard))
                page.wait_for_load_state()
                seen["attacks"][f"{name} {attack}"] = who()
        # the victim's own buttons, from pages with Referrer-Policy: no-referrer (Origin: null)
        page.goto(f"{dashboard}/")
        page.wait_for_selector("#sign-out", state="visible", timeout=15_000)
        seen["cookie"] = next(c["value"] for c in context.cookies() if c["name"] == "meshscope_session")
        with page.expect_navigation():
            page.click("#sign-out")
        seen["after_sign_out_url"] = page.url
        seen["after_sign_out"] = who()
        seen["cookies_after_sign_out"] = [c["name"] for c in context.cookies()]
        # a link that came from elsewhere, confirmed by the user, signs in
        page.goto(f"{attackers['cross-site']}/navigate")
        page.wait_for_url(lambda url: url.startswith(dashboard))
        page.wait_for_load_state()
        if page.locator("#confirm").count():
            with page.expect_navigation():
                page.click("#confirm")
        seen["confirmed_url"] = page.url
        seen["confirmed_as"] = who()
        browser.close()
    return seen


@pytest.mark.browser
async def test_sign_in_by_link_and_sign_out_in_a_real_browser(dashboard: str) -> None:
    require_chromium()
    assert dashboard.startswith("http://127.0.0.1:")
    async with served(attacker_app(dashboard)) as evil:
        attackers = {
            "cross-site": f"http://localhost:{evil.port}",  # localhost and 127.0.0.1 are two sites
            "same-site": f"http://127.0.0.1:{evil.port}",  # another port of the same host
        }
        seen = await asyncio.wait_for(asyncio.to_thread(drive, dashboard, attackers), scaled(120))
    assert seen["signed_in_as"] == "other"
    for name in attackers:
        assert seen["attacks"][f"{name} link"] == ("other", 1), seen["attacks"]
        for attack in ("post-login", "post-login-no-referrer", "post-logout"):
            assert seen["attacks"][f"{name} {attack}"] == "other", (name, attack, seen["attacks"])
    assert seen["after_sign_out_url"] == f"{dashboard}/login"
    assert seen["after_sign_out"] == "status 401" and "meshscope_session" not in seen["cookies_after_sign_out"]
    async with httpx.AsyncClient(base_url=dashboard, cookies={"meshscope_session": seen["cookie"]}) as copy:
        assert (await copy.get("/api/session")).status_code == 401  # the session ended, not only the cookie
    assert seen["confirmed_url"] == f"{dashboard}/" and seen["confirmed_as"] == "tester"
