"""POST /api/sql against hostile users: a running dashboard over real (embedded) ClickHouse, no mocks.

A secret sits in an environment variable of this process (which embedded
ClickHouse shares), in a temporary file, and in tables, a Join table and a
dictionary of another database. Every hostile statement must be refused (403,
or 400 where ClickHouse's parser or limits stop it) and no answer may carry the
secret. File reads point at a FIFO as well: a FIFO blocks whoever opens it for
reading, so a guard that let one through would hang the request instead of
passing silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis

from collector.config import CollectorConfig
from dashboard.config import DashboardConfig
from dashboard.serve import DashboardRuntime
from dashboard.sqlfunctions import (
    AGGREGATE,
    ALIASES,
    ARRAYS,
    CONVERSION,
    DATES,
    GEOMETRY,
    HASHES,
    IDENTIFIERS,
    JSON,
    LOGIC,
    NUMBERS,
    OTHER,
    RANDOM,
    STRINGS,
    TUPLES_MAPS,
    is_allowed_function,
    is_allowed_table_function,
)
from tests.conftest import scaled

module_loop = pytest.mark.asyncio(loop_scope="module")  # the tests share one dashboard, so one event loop

SECRET = "s3cr3t-" + secrets.token_hex(12)
SECRET_ENV = "MESHSCOPE_TEST_SQL_SECRET"
FORBIDDEN = 403
PARSE_OR_FORBIDDEN = (400, 403)
LIMITED = (400,)
_counter = iter(range(1, 1_000_000))


@dataclass
class Target:
    url: str
    http: httpx.AsyncClient
    runtime: DashboardRuntime
    db: str
    secret_db: str
    secret_file: Path
    fifo: Path

    async def sql(self, sql: str, **params: str) -> httpx.Response:
        return await self.http.post(f"{self.url}/api/sql", json={"sql": sql}, params=params)


@contextlib.asynccontextmanager
async def running_dashboard(redis_url: str, clickhouse_url: str, db: str, **sql: Any) -> AsyncIterator[Any]:
    """A dashboard process's parts (no relays; its collector in the process, as ``meshscope up`` runs it) on
    port 0, over database ``db``, on an empty Valkey: healthy, so /healthz says when a statement harms it."""
    redis.Redis.from_url(redis_url).flushdb()
    store = CollectorConfig(redis_url=redis_url, clickhouse_url=clickhouse_url, database=db, metrics_port=-1)
    config = DashboardConfig(store=store, port=0, **sql)
    runtime = await asyncio.to_thread(DashboardRuntime, config, True, False)
    await runtime.start()
    try:
        deadline = time.monotonic() + scaled(20)
        async with httpx.AsyncClient(base_url=str(runtime.server.url), timeout=scaled(5)) as anon:
            while (await anon.get("/healthz")).status_code != 200:
                assert time.monotonic() < deadline, "the dashboard did not become healthy"
                await asyncio.sleep(0.2)
        yield runtime
    finally:
        await runtime.stop()
        await asyncio.to_thread(runtime.store.close)


def _plant_secrets(admin: Any, db: str, secret_db: str) -> None:
    admin.command(f"CREATE DATABASE IF NOT EXISTS `{secret_db}`")
    admin.command(f"CREATE TABLE `{secret_db}`.secrets (s String) ENGINE = MergeTree ORDER BY s")
    admin.command(f"INSERT INTO `{secret_db}`.secrets VALUES ('{SECRET}')")
    admin.command(f"CREATE TABLE `{secret_db}`.kv (k UInt64, v String) ENGINE = MergeTree ORDER BY k")
    admin.command(f"INSERT INTO `{secret_db}`.kv VALUES (1, '{SECRET}')")
    admin.command(f"CREATE TABLE `{secret_db}`.j (k UInt64, v String) ENGINE = Join(ANY, LEFT, k)")
    admin.command(f"INSERT INTO `{secret_db}`.j VALUES (1, '{SECRET}')")
    admin.command(
        f"CREATE DICTIONARY `{secret_db}`.d (k UInt64, v String) PRIMARY KEY k "
        f"SOURCE(CLICKHOUSE(DB '{secret_db}' TABLE 'kv')) LAYOUT(FLAT()) LIFETIME(0)"
    )
    admin.command(
        f"INSERT INTO `{db}`.flows (ts, event_id, trace_id, topic, kind, src_region, dst_region, hop_ms, e2e_ms,"
        " status, bytes) SELECT now64(6) - toIntervalSecond(number), concat('e', toString(number)), 'ab', "
        "'orders.x', ['publish', 'forward', 'deliver'][number % 3 + 1], 'aws:us-east-1', 'gcp:europe-west1', "
        "number, number * 2, if(number = 5, 'backpressure', 'ok'), 100 + number FROM numbers(6)"
    )


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, ch_admin: Any) -> Iterator[tuple[str, str, Path, Path]]:
    db = f"ms_hostile_{os.getpid()}_{next(_counter)}"
    secret_db = f"ms_secret_{os.getpid()}_{next(_counter)}"
    folder = tmp_path_factory.mktemp("hostile")
    secret_file = folder / "secret.txt"
    secret_file.write_text(f"{SECRET}\n")
    fifo = folder / "pipe"
    os.mkfifo(fifo)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SECRET_ENV, SECRET)
        yield db, secret_db, secret_file, fifo
    for name in (db, secret_db):
        ch_admin.command(f"DROP DATABASE IF EXISTS `{name}` SYNC")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def target(
    planted: tuple[str, str, Path, Path], redis_url: str, clickhouse_url: str, ch_admin: Any
) -> AsyncIterator[Target]:
    db, secret_db, secret_file, fifo = planted
    limits = {"sql_max_execution_s": 2.0, "sql_max_memory_bytes": 256 << 20}
    async with (
        running_dashboard(redis_url, clickhouse_url, db, **limits) as runtime,
        httpx.AsyncClient(timeout=scaled(20), headers=_auth(runtime)) as http,
    ):
        await asyncio.to_thread(_plant_secrets, ch_admin, db, secret_db)
        yield Target(str(runtime.server.url), http, runtime, db, secret_db, secret_file, fifo)


def _no_reader(fifo: Path) -> bool:
    """True when nobody has the FIFO open for reading (opening it to write then fails with ENXIO)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return True
    os.close(fd)
    return False


# (id, statement, statuses): {file} is the secret file, {fifo} the FIFO, {db} the database holding secrets
HOSTILE: list[tuple[str, str, int | tuple[int, ...]]] = [
    # files, the network, the host
    ("file-scalar", "SELECT file('{file}')", FORBIDDEN),
    ("file-scalar-fifo", "SELECT file('{fifo}')", FORBIDDEN),
    ("file-table", "SELECT * FROM file('{file}', 'LineAsString')", FORBIDDEN),
    ("file-table-fifo", "SELECT * FROM file('{fifo}', 'LineAsString', 'l String')", FORBIDDEN),
    ("file-mixed-case", "SeLeCt FiLe('{file}')", FORBIDDEN),
    ("file-quoted-name", "SELECT `file`('{file}')", FORBIDDEN),
    ("file-environ", "SELECT * FROM file('/proc/self/environ', 'RawBLOB')", FORBIDDEN),
    ("file-in-lambda", "SELECT arrayMap(x -> file(x), ['{file}'])", FORBIDDEN),
    ("file-via-apply", "SELECT * APPLY(file) FROM (SELECT '{file}' AS p)", FORBIDDEN),
    ("file-in-cte", "WITH file('{fifo}') AS f SELECT f", FORBIDDEN),
    ("file-in-explain", "EXPLAIN QUERY TREE SELECT file('{fifo}')", FORBIDDEN),
    ("file-in-describe", "DESCRIBE file('{file}')", FORBIDDEN),
    ("file-in-subquery-describe", "DESCRIBE (SELECT file('{file}'))", FORBIDDEN),
    ("file-cluster", "SELECT * FROM fileCluster('default', '{file}')", FORBIDDEN),
    ("url", "SELECT * FROM url('http://127.0.0.1:1/x', 'CSV', 'a String')", FORBIDDEN),
    ("s3", "SELECT * FROM s3('http://127.0.0.1:1/b/k.csv', 'CSV', 'a String')", FORBIDDEN),
    ("input", "SELECT * FROM input('a String')", FORBIDDEN),
    ("infile", "INSERT INTO flows FROM INFILE '{file}' FORMAT CSV", FORBIDDEN),
    ("outfile", "SELECT * FROM flows INTO OUTFILE '{file}.out'", FORBIDDEN),
    ("executable", "SELECT * FROM executable('cat {file}', 'LineAsString', 'l String')", FORBIDDEN),
    ("python", "SELECT * FROM python(os)", FORBIDDEN),
    ("host", "SELECT hostName(), FQDN(), version(), uptime(), buildId()", FORBIDDEN),
    ("session", "SELECT currentUser(), user(), currentDatabase(), queryID()", FORBIDDEN),
    ("kernel", "SELECT getOSKernelVersion(), filesystemCapacity(), serverUUID(), timezone()", FORBIDDEN),
    ("mysql-variable", "SELECT @@version", FORBIDDEN),
    ("global-variable", "SELECT globalVariable('version')", FORBIDDEN),
    ("sleep", "SELECT sleep(3)", FORBIDDEN),
    ("sleep-each-row", "SELECT sleepEachRow(1) FROM numbers(10)", FORBIDDEN),
    # other databases and system tables, every way in
    ("system-table", "SELECT name FROM system.tables", FORBIDDEN),
    ("secret-table", "SELECT * FROM {db}.secrets", FORBIDDEN),
    ("secret-quoted", "SELECT * FROM `{db}`.`secrets`", FORBIDDEN),
    ("secret-double-quoted", 'SELECT * FROM "{db}"."secrets"', FORBIDDEN),
    ("secret-spaced", "SELECT * FROM {db} . secrets", FORBIDDEN),
    ("system-subquery", "SELECT * FROM (SELECT name, storage FROM system.users)", FORBIDDEN),
    ("secret-cte", "WITH x AS (SELECT s FROM {db}.secrets) SELECT * FROM x", FORBIDDEN),
    ("secret-join", "SELECT f.kind, t.s FROM flows AS f JOIN {db}.secrets AS t ON 1 = 1", FORBIDDEN),
    ("secret-in-table", "SELECT '{secret_guess}' IN {db}.secrets", FORBIDDEN),
    ("in-table-column-count", "SELECT (1, 2) GLOBAL NOT IN `{db}`.`secrets`", FORBIDDEN),
    ("secret-in-subquery", "SELECT count() FROM flows WHERE topic IN (SELECT s FROM {db}.secrets)", FORBIDDEN),
    ("secret-array-join", "SELECT x FROM flows ARRAY JOIN (SELECT groupArray(s) FROM {db}.secrets) AS x", FORBIDDEN),
    ("secret-scalar", "SELECT (SELECT s FROM {db}.secrets LIMIT 1)", FORBIDDEN),
    ("secret-exists", "SELECT EXISTS (SELECT 1 FROM {db}.secrets WHERE s LIKE 's3cr3t-%')", FORBIDDEN),
    ("secret-union", "SELECT kind FROM flows UNION ALL SELECT s FROM {db}.secrets", FORBIDDEN),
    ("secret-explain", "EXPLAIN SELECT * FROM {db}.secrets", FORBIDDEN),
    ("secret-describe", "DESCRIBE {db}.secrets", FORBIDDEN),
    ("secret-show-create", "SHOW CREATE TABLE {db}.secrets", FORBIDDEN),
    ("secret-show-columns", "SHOW COLUMNS FROM secrets FROM {db}", FORBIDDEN),
    ("secret-show-tables", "SHOW TABLES FROM {db}", FORBIDDEN),
    ("information-schema", "SELECT * FROM INFORMATION_SCHEMA.TABLES", FORBIDDEN),
    ("information-schema-lower", "SELECT * FROM information_schema.columns", FORBIDDEN),
    ("view-explain", "SELECT * FROM (EXPLAIN SELECT * FROM {db}.secrets)", FORBIDDEN),
    # error texts that would quote a value
    ("error-cast", "SELECT CAST((SELECT s FROM {db}.secrets LIMIT 1) AS Int64)", FORBIDDEN),
    ("error-toint", "SELECT toInt32((SELECT s FROM {db}.secrets LIMIT 1))", FORBIDDEN),
    ("error-arithmetic", "SELECT 1 / (SELECT s FROM {db}.secrets LIMIT 1)", FORBIDDEN),
    ("error-throwif", "SELECT throwIf(1, 'boom')", FORBIDDEN),
    ("error-agg-throw", "SELECT aggThrow(1)(number) FROM numbers(1)", FORBIDDEN),
    # functions named in strings: aggregates in arguments and in types
    ("named-aggregate", "SELECT arrayReduce('flameGraph', [1])", FORBIDDEN),
    ("named-aggregate-combinator", "SELECT arrayReduce('aggThrowIf', [1], [1])", FORBIDDEN),
    ("named-aggregate-case", "SELECT arrayReduceInRanges('FLAMEGRAPH', [(1, 1)], [1])", FORBIDDEN),
    ("named-aggregate-state", "SELECT finalizeAggregation(initializeAggregation('flameGraphState', 1))", FORBIDDEN),
    ("named-parameter-expression", "SELECT arrayReduce('quantile(length(file(\\'{file}\\')))', [1])", FORBIDDEN),
    ("named-by-alias", "WITH 'flameGraph' AS f SELECT arrayReduce(f, [1])", FORBIDDEN),
    ("named-by-concat", "SELECT arrayReduce(concat('flame', 'Graph'), [1])", FORBIDDEN),
    ("type-cast", "SELECT finalizeAggregation(CAST(sumState(1), 'AggregateFunction(aggThrow, UInt8)'))", FORBIDDEN),
    ("type-cast-as", "SELECT CAST(sumState(1) AS AggregateFunction(flameGraph, UInt8))", FORBIDDEN),
    ("type-comment", "SELECT CAST(sumState(1), 'AggregateFunction/**/(flameGraph, UInt8)')", FORBIDDEN),
    ("type-quoted-name", "SELECT CAST(sumState(1), 'AggregateFunction(`flameGraph`, UInt8)')", FORBIDDEN),
    ("type-concat", "SELECT CAST(sumState(1), concat('Aggregate', 'Function(flameGraph, UInt8)'))", FORBIDDEN),
    ("type-default-value", "SELECT defaultValueOfTypeName('SimpleAggregateFunction(flameGraph, UInt8)')", FORBIDDEN),
    ("type-values", "SELECT * FROM values('s AggregateFunction(flameGraph, UInt8)', (''))", FORBIDDEN),
    ("type-json", "SELECT JSONExtract('{{}}', 'Tuple(a AggregateFunction(aggThrow, UInt8))')", FORBIDDEN),
    # table functions other than the generators
    ("merge-system", "SELECT * FROM merge('system', '^users$')", FORBIDDEN),
    ("merge-secret", "SELECT * FROM merge('{db}', '.*')", FORBIDDEN),
    ("remote", "SELECT * FROM remote('127.0.0.1', system.one)", FORBIDDEN),
    ("cluster", "SELECT * FROM cluster('default', system.one)", FORBIDDEN),
    ("view", "SELECT * FROM view(SELECT s FROM {db}.secrets)", FORBIDDEN),
    ("dictionary-table", "SELECT * FROM dictionary('{db}.d')", FORBIDDEN),
    ("numbers-as-in-set", "SELECT 1 IN numbers(2)", FORBIDDEN),
    # dictionaries and joins
    ("dict-get", "SELECT dictGet('{db}.d', 'v', toUInt64(1))", FORBIDDEN),
    ("dict-get-or-null", "SELECT dictGetOrNull('{db}.d', 'v', toUInt64(1))", FORBIDDEN),
    ("dict-get-string-case", "SELECT DICTGETSTRING('{db}.d', 'v', toUInt64(1))", FORBIDDEN),
    ("join-get", "SELECT joinGet('{db}.j', 'v', toUInt64(1))", FORBIDDEN),
    ("has-column", "SELECT hasColumnInTable('{db}', 'secrets', 's')", FORBIDDEN),
    # settings
    ("settings-clause", "SELECT 1 SETTINGS readonly = 0", FORBIDDEN),
    ("settings-lower", "select 1 settings max_execution_time = 1000", FORBIDDEN),
    ("set", "SET readonly = 0", FORBIDDEN),
    ("get-setting", "SELECT getSetting('max_memory_usage')", FORBIDDEN),
    ("format-clause", "SELECT 1 FORMAT JSON", FORBIDDEN),
    # hiding keywords in comments, strings and odd lexing
    ("comment-splits-name", "SELECT fi/**/le('{file}')", PARSE_OR_FORBIDDEN),
    ("comment-before-call", "SELECT/**/file/**/('{file}')", FORBIDDEN),
    ("nested-comment", "SELECT /* /* */ file('{file}') */ 1", FORBIDDEN),
    ("heredoc-hides-settings", "SELECT $$ ' $$ SETTINGS readonly = 0 -- '", FORBIDDEN),
    ("hash-comment", "SELECT 1 # '\n SETTINGS readonly = 0 -- '", FORBIDDEN),
    ("string-hides-statement", "SELECT ';' ; SELECT file('{file}')", FORBIDDEN),
    ("comment-hides-statement", "SELECT 1 -- x\n; SELECT file('{file}')", FORBIDDEN),
    ("unicode-fullwidth", "SELECT \uff46\uff49\uff4c\uff45('{file}')", FORBIDDEN),
    ("unicode-space", "SELECT\u00a0file('{file}')", FORBIDDEN),
    ("unicode-zero-width", "SELECT file\u200b('{file}')", FORBIDDEN),
    ("unicode-line-separator", "SELECT file\u2028('{file}')", FORBIDDEN),
    ("nul", "SELECT 1\x00; SELECT file('{file}')", FORBIDDEN),
    ("vertical", "SELECT file('{file}') \\G", FORBIDDEN),
    ("query-parameter", "SELECT {{p:String}}", FORBIDDEN),
    ("newline-in-alias", "SELECT 1 AS `x\n    Function plus`", FORBIDDEN),
    # more than one statement, writes
    ("two-statements", "SELECT 1; SELECT 2", FORBIDDEN),
    ("drop", "SELECT 1; DROP TABLE flows", FORBIDDEN),
    ("insert", "INSERT INTO flows (event_id) VALUES ('x')", FORBIDDEN),
    ("create", "CREATE TABLE t (a UInt8) ENGINE = Memory", FORBIDDEN),
    ("system-command", "SYSTEM FLUSH LOGS", FORBIDDEN),
    ("use", "USE system", FORBIDDEN),
    ("show-grants", "SHOW GRANTS", FORBIDDEN),
    ("show-processlist", "SHOW PROCESSLIST", FORBIDDEN),
    ("show-create-user", "SHOW CREATE USER", FORBIDDEN),
    # resource exhaustion: refused, or cut by the limits within the time limit
    ("cross-join", "SELECT count() FROM numbers(100000000000) AS a, numbers(100000000000) AS b", LIMITED),
    (
        "slow-scalar-in-check",
        "SELECT (SELECT count() FROM numbers(1000000000000) WHERE sipHash64(number) = 1)",
        LIMITED,
    ),
    ("huge-constant", "SELECT length(repeat('x', 10000000000))", LIMITED),
    ("huge-array", "SELECT length(range(1000000000))", LIMITED),
    ("group-array", "SELECT length(groupArray(toString(number))) FROM numbers(100000000)", LIMITED),
    ("deep-nesting", "SELECT " + "(" * 5000 + "1" + ")" * 5000, FORBIDDEN),
    ("deep-functions", "SELECT " + "abs(" * 300 + "1" + ")" * 300, FORBIDDEN),
    ("wide-ast", "SELECT " + "+".join(["1"] * 12_000), LIMITED),
]


@module_loop
@pytest.mark.parametrize(("name", "statement", "statuses"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_statement_is_refused_and_leaks_nothing(
    target: Target, name: str, statement: str, statuses: int | tuple[int, ...]
) -> None:
    sql = statement.format(file=target.secret_file, fifo=target.fifo, db=target.secret_db, secret_guess=SECRET)
    started = time.monotonic()
    reply = await target.sql(sql)
    took = time.monotonic() - started
    allowed = statuses if isinstance(statuses, tuple) else (statuses,)
    assert reply.status_code in allowed, (name, reply.status_code, reply.text)
    body = reply.json()
    assert body["error"] and (reply.status_code != 403 or body["refused"] is True)
    assert SECRET not in reply.text and SECRET_ENV not in reply.text, (name, reply.text)
    assert "Stack trace" not in reply.text and "DB::Exception" not in reply.text
    assert took < scaled(2 * 2.0 + 3), f"{name} took {took:.1f} s"  # two statements at most, each under 2 s
    assert _no_reader(target.fifo), f"{name} left a reader on the FIFO"
    health = await target.http.get(f"{target.url}/healthz")
    assert health.status_code == 200, health.text


def test_the_hostile_table_is_large_enough() -> None:
    assert len(HOSTILE) >= 50
    assert len({h[0] for h in HOSTILE}) == len(HOSTILE)


# (statement, rows or None when only the shape matters)
MUST_WORK: list[tuple[str, Any]] = [
    ("SELECT 1", [[1]]),
    ("SELECT 1 + 1", [[2]]),
    ("SELECT 'a%s' LIKE '%s', '{x} %d'", [[1, "{x} %d"]]),
    ("SELECT now() > toDateTime('2020-01-01')", [[1]]),
    ("select count() from flows;", [[6]]),
    (
        "SELECT kind, count() AS n FROM flows GROUP BY kind ORDER BY kind",
        [["deliver", 2], ["forward", 2], ["publish", 2]],
    ),
    (
        "SELECT countIf(status != 'ok'), sumIf(bytes, kind = 'deliver'), uniqExact(kind), avgOrNull(hop_ms), "
        "sumArray([bytes]), groupArrayDistinct(kind) != [], argMax(event_id, hop_ms), minMerge(m) FROM flows, "
        "(SELECT minState(toUInt32(7)) AS m) AS state",
        [[1, 102 + 105, 3, 2.5, 615, 1, "e5", 7]],
    ),
    ("SELECT quantiles(0.5, 0.9)(hop_ms), quantileExactIf(0.5)(e2e_ms, kind = 'deliver') FROM flows", None),
    ("SELECT sumMap([kind], [bytes]), countDistinct(topic), count(DISTINCT kind) FROM flows", None),
    (
        "SELECT JSONExtractString('{\"a\": \"b\"}', 'a'), JSONExtract('{\"n\": [1, 2]}', 'n', 'Array(UInt8)'), "
        "JSON_VALUE('{\"x\": 3}', '$.x'), isValidJSON('{}')",
        [["b", [1, 2], "3", 1]],
    ),
    (
        "SELECT arrayMap(x -> x * 2, [1, 2, 3]), arrayFilter((x, i) -> i > 1, ['a', 'b'], [1, 2]), "
        "arrayFold((acc, x) -> acc + x, [1, 2, 3], toUInt64(0)), arraySort(x -> -x, [3, 1, 2])",
        [[[2, 4, 6], ["b"], 6, [3, 2, 1]]],
    ),
    (
        "SELECT kind, hop_ms, row_number() OVER w, sum(hop_ms) OVER (PARTITION BY kind), lagInFrame(hop_ms) OVER w "
        "FROM flows WINDOW w AS (PARTITION BY kind ORDER BY hop_ms) ORDER BY kind, hop_ms LIMIT 2",
        [["deliver", 2.0, 1, 7.0, 0.0], ["deliver", 5.0, 2, 7.0, 2.0]],
    ),
    (
        "WITH recent AS (SELECT * FROM flows WHERE ts > now() - INTERVAL 1 HOUR), 2 AS k "
        "SELECT kind FROM recent GROUP BY kind ORDER BY kind LIMIT k",
        [["deliver"], ["forward"]],
    ),
    ("SELECT (SELECT count() FROM flows), 'file(''/etc/passwd'')' AS just_text", [[6, "file('/etc/passwd')"]]),
    ("SELECT toStartOfMinute(ts), formatDateTime(ts, '%F'), dateDiff('second', ts, now()) FROM flows LIMIT 1", None),
    ("SELECT lower(topic), splitByChar('.', topic), topic LIKE 'orders%', cityHash64(topic) FROM flows LIMIT 1", None),
    ("SELECT CASE kind WHEN 'publish' THEN 1 ELSE 0 END AS p, if(bytes > 102, 'b', 's') FROM flows LIMIT 1", None),
    (
        "SELECT arrayReduce('sum', [1, 2]), arrayReduce('quantileExact(0.5)', [1, 2, 3]), "
        "finalizeAggregation(initializeAggregation('maxState', 7)), "
        "finalizeAggregation(CAST(sumState(toUInt64(2)), 'AggregateFunction(sum, UInt64)'))",
        [[3, 2, 7, 2]],
    ),
    ("SELECT * FROM numbers(3)", [[0], [1], [2]]),
    ("SELECT * FROM generate_series(1, 2)", [[1], [2]]),
    ("SELECT * FROM values('a UInt8, b String', (1, 'x'))", [[1, "x"]]),
    ("SELECT 0 IN system.one", [[1]]),  # what a query without FROM reads
    ("SELECT dummy FROM system.one", [[0]]),
    (
        "SELECT 'a\\' SETTINGS readonly = 0 --' AS s",
        [["a' SETTINGS readonly = 0 --"]],
    ),  # one string, as ClickHouse reads it
    ("EXPLAIN SELECT count() FROM flows WHERE kind = 'deliver'", None),
    ("EXPLAIN PLAN actions = 1 SELECT kind FROM flows", None),
    ("EXPLAIN AST SELECT 1", None),
    ("SHOW TABLES", None),
    ("SHOW TABLES LIKE 'flow%'", [["flows"]]),
    ("DESCRIBE flows", None),
    ("DESC TABLE flows", None),
    ("SHOW CREATE TABLE flows", None),
    ("SHOW COLUMNS FROM flows", None),
]


@module_loop
@pytest.mark.parametrize(("statement", "rows"), MUST_WORK, ids=[m[0][:40] for m in MUST_WORK])
async def test_read_queries_work(target: Target, statement: str, rows: Any) -> None:
    reply = await target.sql(statement)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["columns"] and body["rows"]
    if rows is not None:
        assert body["rows"] == rows


@module_loop
async def test_a_huge_result_is_cut_inside_clickhouse(target: Target) -> None:
    started = time.monotonic()
    reply = await target.sql("SELECT number, toString(number) FROM numbers(1000000000000)")
    body = reply.json()
    assert reply.status_code == 200 and body["truncated"] is True and len(body["rows"]) == body["row_limit"]
    assert body["rows_read"] <= body["row_limit"] + 1 and time.monotonic() - started < scaled(2)


@module_loop
async def test_show_tables_lists_the_meshscope_tables_only(target: Target) -> None:
    tables = [r[0] for r in (await target.sql("SHOW TABLES")).json()["rows"]]
    assert "flows" in tables and "secrets" not in tables
    create = (await target.sql("SHOW CREATE TABLE flows")).json()["rows"][0][0]
    assert create.startswith(f"CREATE TABLE {target.db}.flows")


@module_loop
async def test_errors_are_sanitized(target: Target) -> None:
    reply = await target.sql("SELECT toInt32(event_id) FROM flows")
    assert reply.status_code == 400 and reply.json()["clickhouse"] is True
    error = reply.json()["error"]
    assert error.startswith("CANNOT_PARSE_TEXT (code 6): Cannot parse string 'e")  # meshscope data may show
    assert "In scope" not in error and "while executing" not in error and "SETTINGS" not in error
    unknown = (await target.sql("SELECT * FROM flow")).json()["error"]
    assert unknown.startswith("UNKNOWN_TABLE (code 60)") and "Maybe you meant" not in unknown


@module_loop
async def test_nothing_was_changed_or_read(target: Target, ch_admin: Any) -> None:
    assert (await target.sql("SELECT count() FROM flows")).json()["rows"] == [[6]]
    rows = await asyncio.to_thread(lambda: ch_admin.query(f"SELECT s FROM `{target.secret_db}`.secrets").result_rows)
    assert rows == [(SECRET,)]
    assert not Path(f"{target.secret_file}.out").exists()
    assert stat.S_ISFIFO(target.fifo.stat().st_mode) and _no_reader(target.fifo)


# ---- ClickHouse's own parse: the claim the guard rests on --------------------------------


def test_explain_ast_parses_without_evaluating(ch_admin: Any, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target in (secret_file, fifo):
        for sql in (
            f"EXPLAIN AST SELECT file('{target}')",
            f"EXPLAIN AST SELECT * FROM file('{target}', 'LineAsString', 'l String')",
            f"EXPLAIN AST SELECT (SELECT file('{target}'))",
        ):
            done: list[str] = []
            worker = threading.Thread(
                target=lambda sql=sql, done=done: done.extend(str(r[0]) for r in ch_admin.query(sql).result_rows),
                daemon=True,
            )
            worker.start()
            worker.join(scaled(10))
            assert not worker.is_alive(), f"{sql} opened the FIFO (it blocks until a writer comes)"
            assert _no_reader(fifo)
            assert any(line.strip().startswith("Function file") for line in done), done
            assert SECRET not in "\n".join(done)
    # the contrast that orders the checks: analysis constant-folds, so the file is read
    tree = ch_admin.query(f"EXPLAIN QUERY TREE SELECT file('{secret_file}')").result_rows
    assert SECRET in "\n".join(str(r[0]) for r in tree)


# ---- the allowlist against this ClickHouse -----------------------------------------------


def test_every_allowlisted_name_is_a_function_of_this_clickhouse(ch_admin: Any) -> None:
    known = {r[0].lower() for r in ch_admin.query("SELECT name FROM system.functions").result_rows}
    groups = (AGGREGATE, NUMBERS, LOGIC, STRINGS, DATES, JSON, ARRAYS, TUPLES_MAPS, CONVERSION, HASHES)
    groups += (IDENTIFIERS, RANDOM, GEOMETRY, OTHER, ALIASES)
    missing = sorted(name for group in groups for name in group if name.lower() not in known)
    assert missing == []


def test_case_spellings_of_one_name_are_decided_alike(ch_admin: Any) -> None:
    by_lower: dict[str, set[bool]] = {}
    for (name,) in ch_admin.query("SELECT name FROM system.functions").result_rows:
        by_lower.setdefault(name.lower(), set()).add(is_allowed_function(name))
    assert [name for name, decisions in by_lower.items() if len(decisions) > 1] == []


def test_table_functions_pass_only_where_harmless(ch_admin: Any) -> None:
    names = [r[0] for r in ch_admin.query("SELECT name FROM system.table_functions").result_rows]
    assert sorted(n for n in names if is_allowed_table_function(n)) == sorted(
        ("generateSeries", "generate_series", "numbers", "numbers_mt", "values", "zeros", "zeros_mt")
    )
    # a table function that is also an allowed ordinary function is refused in FROM by the parse check
    assert sorted(n for n in names if is_allowed_function(n)) == ["format"]


# ---- the lane: limits on size, concurrency and waiting -----------------------------------

SLOW = "SELECT count() FROM numbers(1000000000000) WHERE sipHash64(number) = 1"


async def test_healthz_answers_while_slow_queries_run(redis_url: str, clickhouse_url: str, database: str) -> None:
    async with (
        running_dashboard(redis_url, clickhouse_url, database, sql_max_execution_s=3.0) as runtime,
        httpx.AsyncClient(base_url=str(runtime.server.url), timeout=scaled(30), headers=_auth(runtime)) as http,
    ):
        slow = [asyncio.create_task(http.post("/api/sql", json={"sql": SLOW})) for _ in range(4)]
        await asyncio.sleep(0.3)
        worst = 0.0
        while not all(task.done() for task in slow):
            started = time.monotonic()
            assert (await http.get("/healthz")).status_code == 200
            worst = max(worst, time.monotonic() - started)
            await asyncio.sleep(0.05)
        topology = await http.get("/api/topology?window=5m")
        replies = [task.result() for task in slow]
    assert worst < scaled(1.0), f"/healthz took {worst:.2f} s while slow queries ran"
    assert topology.status_code == 200
    assert [r.status_code for r in replies] == [400] * 4
    assert all(r.json()["error"].startswith("TIMEOUT_EXCEEDED") for r in replies)


async def test_a_full_lane_answers_429_with_retry_after(redis_url: str, clickhouse_url: str, database: str) -> None:
    async with (
        running_dashboard(
            redis_url, clickhouse_url, database, sql_max_execution_s=2.0, sql_concurrency=1, sql_queue=1
        ) as runtime,
        httpx.AsyncClient(base_url=str(runtime.server.url), timeout=scaled(30), headers=_auth(runtime)) as http,
    ):
        replies = await asyncio.gather(*(http.post("/api/sql", json={"sql": SLOW}) for _ in range(4)))
        after = await http.post("/api/sql", json={"sql": "SELECT 1"})
    busy = [r for r in replies if r.status_code == 429]
    assert sorted(r.status_code for r in replies) == [400, 400, 429, 429]
    assert all(r.headers["retry-after"] == "2" and r.json()["refused"] is True for r in busy)
    assert after.status_code == 200  # the slots came back


async def test_request_bodies_are_size_limited(redis_url: str, clickhouse_url: str, database: str) -> None:
    async with (
        running_dashboard(redis_url, clickhouse_url, database, sql_max_query_bytes=1024) as runtime,
        httpx.AsyncClient(base_url=str(runtime.server.url), timeout=scaled(30), headers=_auth(runtime)) as http,
    ):
        fits = "SELECT 1 -- " + "x" * 900
        too_big = "SELECT 1 -- " + "x" * 1100

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b"SELECT 1 -- " + b"x" * 100

        small = await http.post("/api/sql", content=fits, headers={"content-type": "text/plain"})
        declared = await http.post("/api/sql", content=too_big, headers={"content-type": "text/plain"})
        streamed = await http.post("/api/sql", content=chunks(), headers={"content-type": "text/plain"})
        as_json = await http.post("/api/sql", json={"sql": too_big})
    assert small.status_code == 200
    for reply in (declared, streamed, as_json):
        assert reply.status_code == 413 and "over 1024 bytes" in reply.json()["error"]


def _auth(runtime: Any) -> dict[str, str]:
    """The dashboard made a token at start (no principals file in these tests)."""
    return {"Authorization": f"Bearer {runtime.token}"}
