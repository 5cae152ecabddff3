"""The map's JSON API: it moves data from ClickHouse and Redis to the browser, and decides nothing.

GET /api/topology               regions, edges and links over a window (time travel with ``end``)
GET /api/topology/diff          two snapshots of the map and what changed on each edge
GET /api/timeline               events/s, error % and losses per minute, for the scrubber
GET /api/edges/{src}/{dst}      one edge: series, topics, samples, refusals, why it flows, alerts
GET /api/edges?src=&dst=        the same, for region ids that hold a "/"
GET /api/traces/{trace_id}      every hop of a trace in path order
GET /api/routes                 each relay's routes and links, as it reports them (``end``: its link samples then)
GET /api/groups                 durable groups: lag status, rates, backlog series
GET /api/search?q=              a trace id, a topic pattern or an event id
GET /api/governance             versions enforced, mismatched links, refusals, the document (``end``: as then)
GET /api/alerts                 alerts firing and pending (collector.alerting)
GET /api/alerts/history         transitions of an edge, a region or a group

Parameters are checked by :mod:`dashboard.params`, SQL is built by :mod:`dashboard.queries`,
answers are shaped by :mod:`dashboard.views`, :mod:`dashboard.diff` and
:mod:`dashboard.relaystate`. Every answer is computed once per question per cache interval
and encoded once (:mod:`dashboard.cache`), whoever asks.

Every answer says how old its data is: ``freshness`` (``meshcore.freshness.Assessment``)
judges each source of each region when the answer was computed (for a window in the
past, as at its end), with a ``banner`` of the causes that apply everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from collector import alerting
from collector.alerts import badges
from collector.errors import StreamUnavailable
from dashboard import groupview, relayhistory, views
from dashboard import params as p
from dashboard import queries as q
from dashboard import relaystate as rs
from dashboard.cache import ResponseCache
from dashboard.config import DashboardConfig
from dashboard.diff import changes
from dashboard.regionstores import RegionStores
from dashboard.store import FlowStore
from dashboard.timerange import Span, rollup_span, span
from dashboard.watch import FeedState, FreshnessWatch
from meshcore.freshness import GROUPS, Assessment, Reading
from meshcore.names import GROUP

log = logging.getLogger(__name__)

ALERT_HISTORY_MAX = 1000
JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def encode(content: Any) -> bytes:
    return orjson.dumps(content, default=str, option=JSON_OPTIONS)


def json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


class NotFound(LookupError):
    """Nothing matches what was asked (404); the message says what was looked for."""


class MapApi:
    """The map endpoints over ClickHouse, every region's store (``regions``), the dashboard's own store and one cache.

    ``redis`` is the store of ``MESHSCOPE_REDIS_URL``: the alert evaluator's state and the governance
    document as the authority holds it (the home region's store); what the relays report, and how
    fresh each region's data is, come from each region's own store.
    """

    def __init__(
        self,
        config: DashboardConfig,
        store: FlowStore,
        redis: aioredis.Redis,
        cache: ResponseCache[bytes],
        clock: Callable[[], float] = time.time,
        watch: FreshnessWatch | None = None,
        live_links: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    ):
        self.config = config
        self.db = config.store.database
        self.t = config.thresholds
        self.store = store
        self.redis = redis
        self.cache = cache
        self.clock = clock
        self.watch = watch or FreshnessWatch(RegionStores(config.store, redis), FeedState(), clock=clock)
        self.regions = self.watch.stores
        """Every region's store: what its relays report, and (through ``watch``) how fresh its data is."""
        self.live_links = live_links if live_links is not None else {}
        """The newest sample of every link from the live feed (``LiveHub.links_now``)."""

    def routes(self) -> list[Route]:
        return [
            Route("/api/topology", self.topology),
            Route("/api/topology/diff", self.diff),
            Route("/api/timeline", self.timeline),
            Route("/api/edges/{src}/{dst}", self.edge),
            Route("/api/edges", self.edge),
            Route("/api/traces/{trace_id}", self.trace),
            Route("/api/routes", self.relay_routes),
            Route("/api/groups", self.groups),
            Route("/api/search", self.search),
            Route("/api/governance", self.governance),
            Route("/api/alerts", self.alerts),
            Route("/api/alerts/history", self.alert_history),
        ]

    # ---- plumbing ------------------------------------------------------------------------------

    def _query(self, request: Request, **kw: Any) -> p.MapQuery:
        return p.parse_map_query(request.query_params, self.clock(), self.config.cache_s, **kw)

    async def _cached(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> bytes:
        async def run() -> bytes:
            return encode(await compute())

        return await self.cache.get(key, run)

    async def _rows(self, sql: q.Sql | str) -> list[list[Any]]:
        if isinstance(sql, str):
            return await self.store.rows(sql)
        return await self.store.rows(sql[0], sql[1] or None)

    async def _answers(self, *parts: q.Sql | str) -> list[list[Any]]:
        """The rows of several queries, asked as one statement (``queries.combine``)."""
        (row,) = await self._rows(q.combine(parts))
        return [list(rows) for rows in row]

    async def _states(self) -> dict[str, dict[str, Any]]:
        """Each region's relay report, from its own store (read every second; a store that stopped answering
        keeps its last reports, which age into ``stale``)."""
        await self.regions.ensure_polled()  # before the first poll of the background reader
        if not any(s.answered_at for s in self.regions.stores):
            errors = "; ".join(dict.fromkeys(s.error for s in self.regions.stores if s.error))
            raise StreamUnavailable(errors or "no region store answers")
        return self.regions.states(self.clock())

    async def _firing(self) -> list[dict[str, Any]] | None:
        """The alerts firing and pending now, or None when alerting is off."""
        if not self.config.store.alerts.enabled:
            return None
        return await alerting.firing(self.redis, self.config.store.alerts.state_key)

    async def _badges(self) -> dict[str, Any] | None:
        try:
            current = await self._firing()
        except StreamUnavailable as exc:  # the map is still worth showing without its alert badges
            log.warning("alert badges unavailable", extra={"error": str(exc)[:300]})
            return None
        return None if current is None else badges(current)

    # ---- the map -------------------------------------------------------------------------------

    async def _fresh(
        self, sp: Span | None = None, regions: Any = (), links: Mapping[str, float] | None = None, extra: Any = ()
    ) -> Assessment:
        """How fresh every source is now, or, for a window in the past, as at its end."""
        at = None if sp is None or sp.live else float(sp.end)
        return await self.watch.assess(regions, links, at, extra)

    async def _topology(self, mq: p.MapQuery) -> dict[str, Any]:
        now = self.clock()
        sp = span(mq.window_s, mq.end_s, mq.live, now, per_topic=mq.filters.topic is not None)
        (edges, regions, links, groups), alert_badges = await asyncio.gather(
            self._answers(
                q.topology_sql(self.db, sp, mq.filters),
                q.regions_sql(self.db),
                q.links_sql(self.db, mq.end_s, mq.live),
                q.group_latest_sql(self.db, mq.end_s, mq.live, q.GROUP_LOOKBACK_S, mq.filters),
            ),
            self._badges() if mq.live else _none(),
        )
        newest: dict[str, float] = {}
        for row in links:
            newest[row[0]] = max(newest.get(row[0], 0.0), float(row[6]))
        names = {r[0] for r in regions} | {e[0] for e in edges} | {e[1] for e in edges}
        fresh = await self._fresh(sp, names, newest)
        rows = views.MapRows(edges, regions, links, groups, dict(self.live_links))
        return views.shape_topology(rows, sp, mq.filters, self.t, fresh, alert_badges)

    async def _topology_cached(self, mq: p.MapQuery) -> bytes:
        return await self._cached(("topology", mq), lambda: self._topology(mq))

    async def topology(self, request: Request) -> Response:
        return json_response(await self._topology_cached(self._query(request)))

    async def diff(self, request: Request) -> Response:
        mq = self._query(request)
        compare = p.MapQuery(mq.window_s, p.parse_compare_end(request.query_params.get("compare_end"), mq), False,
                             mq.filters)  # fmt: skip
        threshold = p.parse_threshold_pct(request.query_params.get("threshold_pct"))

        async def compute() -> dict[str, Any]:
            now_raw, before_raw = await asyncio.gather(self._topology_cached(mq), self._topology_cached(compare))
            now, before = orjson.loads(now_raw), orjson.loads(before_raw)
            return {
                "now": now,
                "before": before,
                "threshold_pct": threshold,
                "changes": changes(before["edges"], now["edges"], threshold, self.t),
            }

        return json_response(await self._cached(("diff", mq, compare, threshold), compute))

    async def timeline(self, request: Request) -> Response:
        mq = self._query(request, windows=p.TIMELINE_WINDOWS, default_window="24h")

        async def compute() -> dict[str, Any]:
            sp, step = rollup_span(mq.window_s, mq.end_s, mq.live, mq.filters.topic is not None)
            out = views.shape_timeline(await self._rows(q.timeline_sql(self.db, sp, step, mq.filters)), sp, step)
            return {**out, "freshness": (await self._fresh(sp)).to_json()}

        return json_response(await self._cached(("timeline", mq), compute))

    # ---- one edge, one trace -------------------------------------------------------------------

    async def edge(self, request: Request) -> Response:
        mq = self._query(request)
        src = request.path_params.get("src", request.query_params.get("src"))
        dst = request.path_params.get("dst", request.query_params.get("dst"))
        if not src or not dst:
            raise p.BadRequest("name the edge: /api/edges/{src}/{dst} or /api/edges?src=…&dst=…")
        src, dst = p.require_region(src, "src"), p.require_region(dst, "dst")
        return json_response(await self._cached(("edge", src, dst, mq), lambda: self._edge(src, dst, mq)))

    async def _edge(self, src: str, dst: str, mq: p.MapQuery) -> dict[str, Any]:
        now = self.clock()
        f = mq.filters
        sp = span(mq.window_s, mq.end_s, mq.live, now, per_topic=f.topic is not None, max_bucket_s=60)
        tsp = span(mq.window_s, mq.end_s, mq.live, now, per_topic=True, max_bucket_s=60)
        step = q.series_step(sp)
        edge = {"src": src, "dst": dst}

        def bind(sql: q.Sql) -> q.Sql:
            return sql[0], {**sql[1], **edge}

        (series, topics, samples, refusals), states, history, fresh = await asyncio.gather(
            self._answers(
                bind(q.edge_series_sql(self.db, sp, f)),
                bind(q.edge_topics_sql(self.db, tsp, f)),
                bind(q.edge_samples_sql(self.db, tsp, f)),
                bind(q.edge_refusals_sql(self.db, tsp, f)),
            ),
            self._states_or_none(),
            self._history(src=src, dst=dst, limit=50),
            self._fresh(sp, (src, dst)),
        )
        out = views.shape_edge(src, dst, series, topics, samples, refusals, sp, step, self.t)
        out["why"] = rs.why(states or {}, src, dst, [t["topic"] for t in out["topics"]])
        if states is None:
            out["why"]["unavailable"] = "the relays' reports cannot be read now"
        out["alerts"] = history
        out["freshness"] = fresh.to_json()
        return out

    async def _states_or_none(self) -> dict[str, dict[str, Any]] | None:
        """The relays' reports, or None when their store does not answer (the rest of an answer still holds)."""
        try:
            return await self._states()
        except StreamUnavailable as exc:
            log.warning("relay reports unavailable", extra={"error": str(exc)[:300]})
            return None

    async def trace(self, request: Request) -> Response:
        trace_id = request.path_params["trace_id"].lower()
        if not p.TRACE_ID.fullmatch(trace_id):
            raise p.BadRequest("a trace id is 32 lower-case hex digits")
        try:
            body = await self._cached(("trace", trace_id), lambda: self._trace(trace_id))
        except NotFound as exc:
            return json_response(encode({"error": str(exc), "freshness": (await self._fresh()).to_json()}), 404)
        return json_response(body)

    async def _trace(self, trace_id: str) -> dict[str, Any]:
        bound = {"trace_id": trace_id}
        first, last, edges, found = (await self.store.rows(q.trace_range_sql(self.db), bound))[0]
        # no index entry (records older than the index): fall back to the bloom filter alone
        sql, _ = q.trace_sql(self.db, (first, last, edges) if found and edges else None)
        rows = await self.store.rows(sql, bound)
        if not rows:
            raise NotFound(f"no flow records for trace {trace_id}")
        regions = {r[6] for r in rows} | {r[7] for r in rows}
        return {**views.shape_trace(trace_id, rows), "freshness": (await self._fresh(None, regions)).to_json()}

    # ---- what the relays say -------------------------------------------------------------------

    async def relay_routes(self, request: Request) -> Response:
        mq = self._query(request)
        if not mq.live:  # a past moment: from the link samples kept in ClickHouse

            async def past() -> dict[str, Any]:
                sp = span(mq.window_s, mq.end_s, False, self.clock())
                rows, fresh = await asyncio.gather(self._rows(q.links_sql(self.db, mq.end_s, False)), self._fresh(sp))
                return {**relayhistory.routes_at(rows, mq.end_s), "freshness": fresh.to_json()}

            return json_response(await self._cached(("routes", mq.end_s), past))
        key = ("routes", p.live_end(self.clock(), self.config.cache_s))

        async def compute() -> dict[str, Any]:
            states, fresh = await asyncio.gather(self._states(), self._fresh())
            return {**rs.routes_view(states), "freshness": fresh.to_json()}

        return json_response(await self._cached(key, compute))

    async def groups(self, request: Request) -> Response:
        mq = self._query(request, default_window="15m")

        async def compute() -> dict[str, Any]:
            stop = mq.end_s
            sp = Span("group_lag", 1, stop - mq.window_s, stop, mq.live)
            step = q.series_step(sp)
            latest, series, since = await self._answers(
                q.group_latest_sql(self.db, mq.end_s, mq.live, mq.window_s, mq.filters),
                q.group_series_sql(self.db, sp, step, mq.filters),
                q.group_since_sql(self.db, mq.end_s, mq.live, mq.filters),
            )
            newest: dict[str, float] = {}
            for row in latest:
                newest[row[0]] = max(newest.get(row[0], 0.0), int(row[2]) / 1000)
            extra = [Reading(GROUPS, region, ts) for region, ts in newest.items()]
            fresh = await self._fresh(sp, newest, None, extra)
            window = {"window": views.window_name(sp), "from": sp.start, "to": sp.end, "step_s": step}
            shaped = groupview.shape_groups(latest, series, since, window, fresh)
            return {**shaped, "freshness": fresh.to_json()}

        return json_response(await self._cached(("groups", mq), compute))

    async def governance(self, request: Request) -> Response:
        mq = self._query(request, default_window="1h")

        async def compute() -> dict[str, Any]:
            sp = span(mq.window_s, mq.end_s, mq.live, self.clock(), per_topic=True, max_bucket_s=60)
            try:
                document: Any = await self.redis.get(rs.GOVERNANCE_KEY)
            except (RedisError, OSError) as exc:
                raise StreamUnavailable(f"cannot read the governance registry: {exc}") from exc
            rows = await self._rows(q.refusals_sql(self.db, sp, mq.filters))
            refusals = [
                {"topic": topic, "principal": who, "region": region, "status": st, "ref": ref, "events": int(n)}
                for region, topic, who, st, ref, n in rows
            ]
            if mq.live:
                out = rs.governance_view(await self._states(), rs.document_view(document), refusals)
            else:  # a past moment: the versions the link samples name, the document in force then
                try:
                    versions: Any = await self.redis.hgetall(rs.GOVERNANCE_VERSIONS_KEY)
                except (RedisError, OSError) as exc:
                    raise StreamUnavailable(f"cannot read the governance history: {exc}") from exc
                links = await self._rows(q.links_sql(self.db, mq.end_s, False))
                out = relayhistory.governance_at(links, versions, mq.end_s, refusals)
            fresh = (await self._fresh(sp)).to_json()
            return {"window": views.window_name(sp), "from": sp.start, "to": sp.end, **out, "freshness": fresh}

        return json_response(await self._cached(("governance", mq), compute))

    # ---- search --------------------------------------------------------------------------------

    async def search(self, request: Request) -> Response:
        text = p.parse_search(request.query_params.get("q"))
        key = ("search", text, p.live_end(self.clock(), self.config.cache_s))
        try:
            return json_response(await self._cached(key, lambda: self._search(text)))
        except NotFound as exc:
            fresh = (await self._fresh()).to_json()
            return json_response(encode({"error": str(exc), "q": text, "freshness": fresh}), 404)

    async def _search(self, text: str) -> dict[str, Any]:
        return {**await self._find(text), "freshness": (await self._fresh()).to_json()}

    async def _find(self, text: str) -> dict[str, Any]:
        now = self.clock()
        bound = {"q": text}
        if p.TRACE_ID.fullmatch(text.lower()):
            trace_id = text.lower()
            found = (await self.store.rows(q.trace_range_sql(self.db), {"trace_id": trace_id}))[0][3]
            if found:
                return {"kind": "trace", "trace_id": trace_id, "found": True}
        if _is_pattern(text):
            if "*" in text.split(".") or ">" in text.split("."):
                return {"kind": "topic", "pattern": text}
            if (await self.store.rows(q.known_topic_sql(self.db, now), bound))[0][0]:
                return {"kind": "topic", "pattern": text}
        rows = await self.store.rows(q.event_traces_sql(self.db, now), bound)
        if rows:
            traces = [
                {"trace_id": trace_id, "first_ts": first_us, "topic": topic, "src": src}
                for trace_id, first_us, topic, src in rows
            ]
            return {"kind": "event", "event_id": text, "traces": traces}
        raise NotFound(f"nothing found for {text[:80]!r}: no trace, known topic or event id in the last 7 days")

    # ---- alerts --------------------------------------------------------------------------------

    async def alerts(self, request: Request) -> Response:
        key = ("alerts", p.live_end(self.clock(), self.config.cache_s))

        async def compute() -> dict[str, Any]:
            current, fresh = await asyncio.gather(self._firing(), self._fresh())
            if current is None:
                return {"alerts": [], "available": False, "freshness": fresh.to_json()}
            return {"alerts": current, "available": True, "badges": badges(current), "freshness": fresh.to_json()}

        return json_response(await self._cached(key, compute))

    async def _history(self, **where: Any) -> list[dict[str, Any]] | None:
        if not self.config.store.alerts.enabled:
            return None
        sql, bound = alerting.history_sql(self.db, **where)
        return alerting.shape_history(await self.store.rows(sql, bound or None))

    async def alert_history(self, request: Request) -> Response:
        qp = request.query_params
        where = {
            "src": p.parse_stored_region(qp.get("src"), "src"),
            "dst": p.parse_stored_region(qp.get("dst"), "dst"),
            "region": p.parse_stored_region(qp.get("region"), "region"),
            "group": p.parse_name(qp.get("group"), "group", GROUP, "1-64 letters, digits, '_' or '-'"),
            "limit": p.parse_limit(qp.get("limit"), 200, ALERT_HISTORY_MAX),
        }
        key = ("alert-history", tuple(sorted(where.items())), p.live_end(self.clock(), self.config.cache_s))

        async def compute() -> dict[str, Any]:
            history = await self._history(**{k: v for k, v in where.items() if v is not None})
            fresh = (await self._fresh()).to_json()
            return {"history": history or [], "available": history is not None, "freshness": fresh}

        return json_response(await self._cached(key, compute))


async def _none() -> None:
    return None


def _is_pattern(text: str) -> bool:
    try:
        p.parse_topic(text)
    except p.BadRequest:
        return False
    return True
