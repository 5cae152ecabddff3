"""Alert notifications, in two forms, and a sender that retries.

To an Alertmanager (``MESHSCOPE_ALERTMANAGERS``): its API v2, ``POST /api/v2/alerts`` with a
list of alerts (``labels``, ``annotations``, ``startsAt``, ``endsAt``, ``generatorURL``), as
Prometheus sends them. The firing alerts are sent again every ``resend_s`` (keep it under the
Alertmanager's ``resolve_timeout``, 5 m by default), each with ``endsAt`` four resends ahead, so
Alertmanager keeps them active while meshscope says so and resolves them by itself if meshscope
goes silent; a resolved alert is sent once more with ``endsAt`` when it ended. Alertmanager
groups, silences, inhibits and routes them from there.

To other receivers (``MESHSCOPE_ALERT_WEBHOOKS``): the plain webhook, the body Alertmanager
posts to a webhook receiver (``version: "4"``), so PagerDuty/Slack bridges read it: one message
per alert name and status, on each transition into firing or resolved, alerts with their
labels, annotations (summary, description), RFC 3339 ``startsAt``/``endsAt`` (``endsAt`` is the
zero time while firing) and fingerprint.

The sender keeps one FIFO queue and one worker per webhook, so a dead receiver delays only its
own notifications, and a resolved notification never overtakes its firing one. A notification
is retried with exponential backoff and jitter on connection errors, timeouts, 408, 429 and 5xx,
for at most ``retry_s``, then given up; other answers fail it at once. A full queue drops its
oldest notification. Each give-up and drop is logged and counted. Requests go through urllib on
a worker thread (no dependency; proxy variables apply); redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import random
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse, urlunparse

import orjson

from collector.alerts import FIRING, RESOLVED, Alert, Transition
from meshcore.backoff import backoff_s
from meshcore.metrics import Registry

log = logging.getLogger(__name__)

WEBHOOK, ALERTMANAGER = "webhook", "alertmanager"
"""The forms a notification target takes."""
ALERTMANAGER_PATH = "/api/v2/alerts"
RESEND_HORIZON = 4
"""A firing alert sent to Alertmanager ends this many resend intervals ahead unless sent again (as Prometheus does)."""
RECEIVER = "meshscope"
ZERO_TIME = "0001-01-01T00:00:00Z"
MAX_ALERTS = 100
"""Alerts per message at most; the rest are counted in ``truncatedAlerts``."""
BACKOFF_MAX_S = 60.0
BODY_READ_MAX = 1 << 16

Post = Callable[[str, bytes, dict[str, str], float], tuple[int, str]]


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payloads(
    transitions: Sequence[Transition], external_url: str = "", receiver: str = RECEIVER, max_alerts: int = MAX_ALERTS
) -> list[dict[str, Any]]:
    """The webhook messages for one evaluation: transitions into firing or resolved, by status and alert name."""
    groups: dict[tuple[str, str], list[Transition]] = {}
    for t in transitions:
        if t.state in (FIRING, RESOLVED):
            groups.setdefault((t.state, t.alert.alertname), []).append(t)
    return [
        payload(status, name, group, external_url, receiver, max_alerts) for (status, name), group in groups.items()
    ]


def payload(
    status: str,
    alertname: str,
    transitions: Sequence[Transition],
    external_url: str = "",
    receiver: str = RECEIVER,
    max_alerts: int = MAX_ALERTS,
) -> dict[str, Any]:
    """One Alertmanager webhook message (version 4) for alerts of one name and status."""
    alerts = [_alert(t, external_url) for t in transitions]
    kept = alerts[:max_alerts]
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{alertname}"}}',
        "truncatedAlerts": len(alerts) - len(kept),
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": alertname},
        "commonLabels": _common([a["labels"] for a in alerts]),
        "commonAnnotations": _common([a["annotations"] for a in alerts]),
        "externalURL": external_url,
        "alerts": kept,
    }


def _alert(t: Transition, external_url: str) -> dict[str, Any]:
    annotations = {"summary": t.alert.summary}
    if t.alert.description:
        annotations["description"] = t.alert.description
    return {
        "status": RESOLVED if t.state == RESOLVED else FIRING,
        "labels": dict(t.alert.labels),
        "annotations": annotations,
        "startsAt": rfc3339(t.starts_at),
        "endsAt": rfc3339(t.ends_at) if t.state == RESOLVED else ZERO_TIME,
        "generatorURL": f"{external_url}/?alert={t.alert.fingerprint}" if external_url else "",
        "fingerprint": t.alert.fingerprint,
    }


def alertmanager_alerts(
    firing: Sequence[Alert], resolved: Sequence[Transition], now_s: float, resend_s: float, external_url: str = ""
) -> list[dict[str, Any]]:
    """The body of ``POST /api/v2/alerts``: every firing alert (ending ``RESEND_HORIZON`` resends ahead),
    and every alert resolved now (ending when it did)."""
    ends = rfc3339(now_s + RESEND_HORIZON * resend_s)
    out = [_v2(a, a.fired_at or a.active_at, ends, external_url) for a in firing if a.state == FIRING]
    out += [_v2(t.alert, t.starts_at, rfc3339(t.ts), external_url) for t in resolved if t.state == RESOLVED]
    return out


def _v2(alert: Alert, starts_s: float, ends: str, external_url: str) -> dict[str, Any]:
    annotations = {"summary": alert.summary}
    if alert.description:
        annotations["description"] = alert.description
    return {
        "labels": dict(alert.labels),
        "annotations": annotations,
        "startsAt": rfc3339(starts_s),
        "endsAt": ends,
        "generatorURL": f"{external_url}/?alert={alert.fingerprint}" if external_url else "",
    }


def _common(maps: list[dict[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    common = set(maps[0].items())
    for m in maps[1:]:
        common &= set(m.items())
    return dict(sorted(common))


def redact(url: str) -> str:
    """The URL without credentials or query (tokens often ride there), for logs and /healthz."""
    parsed = urlparse(url)
    netloc = parsed.hostname or ""
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=netloc, query="", fragment="", params=""))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def post_json(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> tuple[int, str]:
    """POST ``body``; (HTTP status, "") or (0, why) when no answer came. Runs on a worker thread."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with opener.open(request, timeout=timeout_s) as response:
            response.read(BODY_READ_MAX)
            return int(response.status), ""
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(Exception):
            exc.read(BODY_READ_MAX)
        exc.close()
        return int(exc.code), f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return 0, str(exc.reason)[:300]
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"[:300]


def retryable(status: int) -> bool:
    return status == 0 or status in (408, 429) or status >= 500


@dataclass
class Webhook:
    url: str
    token: str = field(repr=False)
    form: str = WEBHOOK
    queue: deque[bytes] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    busy: bool = False
    last_error: str = ""
    failing_since: float = 0.0


class WebhookNotifier:
    """Delivers notifications, each to every target of its form; ``run()`` is the workers, ``submit()`` queues."""

    def __init__(
        self,
        urls: Sequence[str],
        tokens: Sequence[str],
        metrics: Registry,
        timeout_s: float = 10.0,
        retry_s: float = 300.0,
        backoff_s: float = 1.0,
        queue_max: int = 1000,
        post: Post = post_json,
        alertmanagers: Sequence[str] = (),
        alertmanager_tokens: Sequence[str] = (),
    ):
        self.webhooks = [Webhook(url, tokens[i] if i < len(tokens) else "") for i, url in enumerate(urls)]
        self.webhooks += [
            Webhook(url + ALERTMANAGER_PATH, alertmanager_tokens[i] if i < len(alertmanager_tokens) else "",
                    ALERTMANAGER)
            for i, url in enumerate(alertmanagers)
        ]  # fmt: skip
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.backoff_s = backoff_s
        self.queue_max = queue_max
        self._post = post
        m = metrics
        m.describe("alerts_notifications_sent_total", "counter", "Alert notifications a webhook accepted")
        m.describe("alerts_notifications_failed_total", "counter", "Alert notifications given up")
        m.describe("alerts_notifications_retried_total", "counter", "Alert notification attempts retried")
        m.describe("alerts_notifications_dropped_total", "counter", "Alert notifications dropped from a full queue")
        m.describe("alerts_notifications_queued", "gauge", "Alert notifications waiting for their webhooks")
        for counter in ("sent", "failed", "retried", "dropped"):
            m.zero(f"alerts_notifications_{counter}_total")

    def wants(self, form: str) -> bool:
        """Whether any target takes notifications of ``form``."""
        return any(h.form == form for h in self.webhooks)

    def submit(self, message: dict[str, Any] | list[dict[str, Any]], form: str = WEBHOOK) -> None:
        """Queue ``message`` for every target of ``form``; a full queue drops its oldest message."""
        body = orjson.dumps(message)
        for hook in self.webhooks:
            if hook.form != form:
                continue
            if len(hook.queue) >= self.queue_max:
                hook.queue.popleft()
                self.metrics.inc("alerts_notifications_dropped_total")
                log.error(
                    "alert notification queue full; oldest notification dropped", extra={"webhook": redact(hook.url)}
                )
            hook.queue.append(body)
            hook.wake.set()
        self._gauge()

    def _gauge(self) -> None:
        self.metrics.set("alerts_notifications_queued", sum(len(h.queue) + h.busy for h in self.webhooks))

    async def run(self) -> None:
        """The workers, one per webhook, until cancelled."""
        async with asyncio.TaskGroup() as group:
            for hook in self.webhooks:
                group.create_task(self._work(hook))

    async def _work(self, hook: Webhook) -> None:
        while True:
            while not hook.queue:
                hook.wake.clear()
                await hook.wake.wait()
            body = hook.queue.popleft()
            hook.busy = True
            try:
                await self._deliver(hook, body)
            finally:
                hook.busy = False
                self._gauge()

    async def _deliver(self, hook: Webhook, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "meshscope-alerts"}
        if hook.token:
            headers["Authorization"] = f"Bearer {hook.token}"
        deadline = time.monotonic() + self.retry_s
        attempt = 0
        while True:
            status, error = await asyncio.to_thread(self._post, hook.url, body, headers, self.timeout_s)
            if 200 <= status < 300:
                self.metrics.inc("alerts_notifications_sent_total")
                if hook.failing_since:
                    log.info("alert webhook is back", extra={"webhook": redact(hook.url), "attempts": attempt + 1})
                hook.last_error, hook.failing_since = "", 0.0
                return
            hook.last_error = error or f"HTTP {status}"
            hook.failing_since = hook.failing_since or time.time()
            delay = backoff_s(attempt, self.backoff_s, BACKOFF_MAX_S, random.random())
            if not retryable(status) or time.monotonic() + delay > deadline:
                self.metrics.inc("alerts_notifications_failed_total")
                log.error(
                    "alert notification given up",
                    extra={"webhook": redact(hook.url), "error": hook.last_error, "attempts": attempt + 1},
                )
                return
            self.metrics.inc("alerts_notifications_retried_total")
            log.warning(
                "alert notification failed; retrying",
                extra={"webhook": redact(hook.url), "error": hook.last_error, "retry_in_s": round(delay, 3)},
            )
            attempt += 1
            await asyncio.sleep(delay)

    def idle(self) -> bool:
        return all(not h.queue and not h.busy for h in self.webhooks)

    async def drain(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every queued notification to be delivered or given up."""
        deadline = time.monotonic() + timeout_s
        while not self.idle() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.idle()

    def health(self) -> list[dict[str, Any]]:
        return [
            {
                "webhook": redact(h.url),
                "form": h.form,
                "queued": len(h.queue) + h.busy,
                "error": h.last_error,
                "failing_since": h.failing_since or None,
            }
            for h in self.webhooks
        ]
