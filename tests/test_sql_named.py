"""Functions reached by name in a string go through the allowlist: every such entry point of this ClickHouse.

The entry points are read from ``system.functions`` of the embedded ClickHouse
the suite runs on (the documented arguments that take an aggregate function's
name or a data type as a string), so a release that adds one fails here until
the guard knows it. Each is then tried through the real guard (``EXPLAIN AST``
and ``EXPLAIN QUERY TREE`` on that ClickHouse) with every aggregate the
allowlist refuses, spelled in any case, with combinators and parameters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.config import CollectorConfig
from collector.errors import QueryError
from dashboard.config import DashboardConfig
from dashboard.sqlerrors import SqlRefused
from dashboard.sqlfunctions import COMBINATORS, is_allowed_aggregate, is_allowed_function
from dashboard.sqlindirect import AGGREGATE_NAME_ARGUMENTS, TYPE_ARGUMENTS
from dashboard.sqlrun import guard

# How each entry point is called, with {agg} the aggregate named in a string literal: in the argument itself, or
# in a type; {raw} is the name written as SQL text, outside a literal.
ENTRY_POINTS = {
    "arrayreduce": "SELECT arrayReduce('{agg}', [1, 2])",
    "arrayreduceinranges": "SELECT arrayReduceInRanges('{agg}', [(1, 2)], [1, 2])",
    "initializeaggregation": "SELECT initializeAggregation('{agg}', number) FROM numbers(2)",
    "cast": "SELECT finalizeAggregation(CAST(sumState(number), 'AggregateFunction({agg}, UInt64)')) FROM numbers(2)",
    "accuratecast": "SELECT accurateCast(sumState(number), 'AggregateFunction({agg}, UInt64)') FROM numbers(2)",
    "accuratecastornull": "SELECT accurateCastOrNull(1, 'SimpleAggregateFunction({agg}, UInt64)')",
    "accuratecastordefault": "SELECT accurateCastOrDefault(1, 'SimpleAggregateFunction({agg}, UInt64)')",
    "reinterpret": "SELECT reinterpret(sumState(number), 'AggregateFunction({agg}, UInt64)') FROM numbers(2)",
    "defaultvalueoftypename": "SELECT finalizeAggregation(defaultValueOfTypeName('AggregateFunction({agg}, UInt8)'))",
    "dynamicelement": "SELECT dynamicElement(1::Dynamic, 'AggregateFunction({agg}, UInt8)')",
    "variantelement": "SELECT variantElement(1::Variant(UInt8, String), 'AggregateFunction({agg}, UInt8)')",
    "jsonextract": "SELECT JSONExtract('{{}}', 'Tuple(a AggregateFunction({agg}, UInt8))')",
    "jsonextractcaseinsensitive": "SELECT JSONExtractCaseInsensitive('{{}}', 'AggregateFunction({agg}, UInt8)')",
    "jsonextractkeysandvalues": "SELECT JSONExtractKeysAndValues('{{}}', 'AggregateFunction({agg}, UInt8)')",
    "jsonextractkeysandvaluescaseinsensitive": (
        "SELECT JSONExtractKeysAndValuesCaseInsensitive('{{}}', 'AggregateFunction({agg}, UInt8)')"
    ),
}
# Where a type string reaches ClickHouse outside a function call: table structures and CAST's AS form.
OTHER_PLACES = [
    "SELECT * FROM values('s AggregateFunction({agg}, UInt8)', (''))",
    "SELECT CAST(sumState(1) AS AggregateFunction({raw}, UInt8))",
    "SELECT sumState(1)::SimpleAggregateFunction({raw}, UInt8)",
]
# Reviewed: their documentation speaks of data types, but they take a value, never a type's name.
TAKES_A_VALUE = {"tolowcardinality", "tovalidutf8"}
_NAMES_AGGREGATE = re.compile(r"name of (?:an? |the )?aggregat\w* function", re.I)
_NAMES_TYPE = re.compile(r"\b(?:data[ -]?type|type name|variant type)", re.I)
_ARGUMENT = re.compile(r"^- `([^`]+)` — (.*)$", re.M)
_LINK = re.compile(r"\]\([^)]*\)")


def documented_entry_points(ch_admin: Any) -> dict[str, str]:
    """Non-aggregate functions whose documented String argument names an aggregate or a type (lower-case name)."""
    rows = ch_admin.query("SELECT name, arguments FROM system.functions WHERE NOT is_aggregate").result_rows
    found = {}
    for name, arguments in rows:
        for _, description in _ARGUMENT.findall(arguments or ""):
            description = _LINK.sub("", description)  # (/reference/data-types/...) names no type in prose
            if "String" not in description:
                continue
            if _NAMES_AGGREGATE.search(description):
                found[name.lower()] = "aggregate"
            elif _NAMES_TYPE.search(description):
                found.setdefault(name.lower(), "type")
    return found


@pytest.fixture(scope="module")
def config(clickhouse_url: str, ch_admin: Any) -> Iterator[DashboardConfig]:
    ch_admin.command("CREATE DATABASE IF NOT EXISTS ms_named")
    yield DashboardConfig(
        store=CollectorConfig(clickhouse_url=clickhouse_url, database="ms_named", metrics_port=-1), port=0
    )
    ch_admin.command("DROP DATABASE IF EXISTS ms_named SYNC")


@pytest.fixture(scope="module")
def refused_aggregates(ch_admin: Any) -> list[str]:
    rows = ch_admin.query("SELECT name FROM system.functions WHERE is_aggregate").result_rows
    return sorted(name for (name,) in rows if not is_allowed_aggregate(name))


@pytest.fixture(scope="module")
def combinators(ch_admin: Any) -> list[str]:
    return sorted(
        name for (name,) in ch_admin.query("SELECT name FROM system.aggregate_function_combinators").result_rows
    )


def statement(entry: str, name: str) -> str:
    template = ENTRY_POINTS.get(entry, entry)
    return template.format(agg=name.replace("\\", "\\\\").replace("'", "\\'"), raw=name)


def decided(ch_admin: Any, sql: str, config: DashboardConfig) -> str:
    """``refused``, ``passed`` or ``error`` (ClickHouse refused the query itself) for one statement."""
    try:
        guard(ch_admin, sql, config)
    except SqlRefused:
        return "refused"
    except QueryError:
        return "error"
    return "passed"


def test_every_entry_point_of_this_clickhouse_is_known_to_the_guard(ch_admin: Any) -> None:
    documented = documented_entry_points(ch_admin)
    assert {"arrayreduce", "arrayreduceinranges", "initializeaggregation", "cast"} <= set(documented)
    allowed = {name for name in documented if is_allowed_function(name)} - TAKES_A_VALUE
    guarded = set(AGGREGATE_NAME_ARGUMENTS) | set(TYPE_ARGUMENTS)
    assert sorted(allowed - guarded) == []  # an allowed function that names functions in strings, unchecked
    assert {n for n, how in documented.items() if how == "aggregate"} & allowed <= set(AGGREGATE_NAME_ARGUMENTS)
    assert sorted(guarded - set(ENTRY_POINTS)) == []  # and this test tries each one


def test_the_allowlist_refuses_some_aggregates_of_this_clickhouse(refused_aggregates: list[str]) -> None:
    assert {"aggThrow", "flameGraph", "groupFormat"} <= set(refused_aggregates)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS) + OTHER_PLACES)
def test_each_entry_point_refuses_every_refused_aggregate_and_passes_an_allowed_one(
    ch_admin: Any, config: DashboardConfig, refused_aggregates: list[str], entry: str
) -> None:
    let_through = [
        name for name in refused_aggregates if decided(ch_admin, statement(entry, name), config) != "refused"
    ]
    assert let_through == []
    assert decided(ch_admin, statement(entry, "sum"), config) != "refused"


def _spelled(name: str, flips: list[bool]) -> str:
    return "".join(c.swapcase() if flip else c for c, flip in zip(name, flips + [False] * len(name), strict=False))


PROPERTY = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
parameters = st.sampled_from(["", "(0.5)", "(1, 2)", "('x')", "()", "( 3 )"])


@PROPERTY
@given(data=st.data())
def test_any_spelling_of_a_refused_aggregate_is_refused_everywhere(
    ch_admin: Any, config: DashboardConfig, refused_aggregates: list[str], combinators: list[str], data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(refused_aggregates))
    name = _spelled(name, data.draw(st.lists(st.booleans(), max_size=len(name))))
    name += "".join(data.draw(st.lists(st.sampled_from(combinators), max_size=3)))
    name += data.draw(parameters)
    entry = data.draw(st.sampled_from(sorted(ENTRY_POINTS) + OTHER_PLACES))
    sql = statement(entry, name)
    assert decided(ch_admin, sql, config) == "refused", sql


@PROPERTY
@given(data=st.data())
def test_allowed_aggregates_with_combinators_are_not_refused(
    ch_admin: Any, config: DashboardConfig, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(["sum", "max", "uniq", "avg", "count", "quantile", "groupArray", "any"]))
    name += "".join(data.draw(st.lists(st.sampled_from(COMBINATORS), max_size=2)))
    name += data.draw(parameters)
    sql = statement("arrayreduce", name)
    assert decided(ch_admin, sql, config) != "refused", sql  # ClickHouse itself may still refuse it (400)
