"""The statement check in front of ``POST /api/sql``, with no I/O.

Defence in depth: ClickHouse runs every query with ``readonly = 1`` and hard
limits; this check refuses, before anything runs, what is not a single read
statement, and after ClickHouse has parsed the query (``EXPLAIN QUERY TREE``)
``check_tables`` refuses any table outside the meshscope database and any table
function but a few harmless generators.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

ALLOWED_FIRST = frozenset(("SELECT", "WITH", "EXPLAIN", "DESCRIBE", "DESC", "SHOW"))
# Never allowed anywhere in the statement (outside string literals).
FORBIDDEN_WORDS = {
    "OUTFILE": "writing files (INTO OUTFILE) is not allowed",
    "SETTINGS": "SETTINGS are fixed by the server for this endpoint",
    "FORMAT": "the result format is chosen by the endpoint (use ?format=csv for CSV)",
}
SAFE_TABLE_FUNCTIONS = frozenset(("numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "values"))
SHOW_ALLOWED = re.compile(r"^SHOW\s+(TABLES|CREATE(\s+TABLE)?|COLUMNS|INDEX|INDEXES|DICTIONARIES)\b", re.I)

_STRING = re.compile(r"'(?:[^'\\]|\\.)*'")
_QUOTED_IDENT = re.compile(r'`(?:[^`\\]|\\.)*`|"(?:[^"\\]|\\.)*"')
_LINE_COMMENT = re.compile(r"--[^\n]*|#[^\n]*")
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_TABLE_FUNCTION_CALL = re.compile(r"\b(?:FROM|JOIN|TABLE)\s+(\w+)\s*\(", re.I)
_NAME = r"(?:`[^`]*`|\"[^\"]*\"|\w+)"
_QUALIFIED = re.compile(rf"({_NAME})\s*\.\s*{_NAME}")
_FROM_IN = re.compile(rf"\b(?:FROM|IN)\s+({_NAME})(?!\w)(?!\s*\.)", re.I)


class SqlRefused(ValueError):
    """The statement is refused; the message says why, for the user."""


def _strip(sql: str, keep_names: bool = False) -> str:
    """The statement with comments removed and literals blanked (so words in them do not count).

    Quoted identifiers are blanked too unless ``keep_names``.
    """
    out = _BLOCK_COMMENT.sub(" ", sql)
    out = _STRING.sub("''", out)
    if not keep_names:
        out = _QUOTED_IDENT.sub(lambda m: m.group(0)[0] + "x" + m.group(0)[0], out)
    return _LINE_COMMENT.sub(" ", out)


def check_statement(sql: str, database: str) -> str:
    """Return the statement (without a trailing semicolon) if it may run, else raise SqlRefused."""
    if not isinstance(sql, str) or not sql.strip():
        raise SqlRefused("the query is empty")
    bare = _strip(sql).strip()
    if ";" in bare.rstrip(";").rstrip():
        raise SqlRefused("only one statement at a time is allowed")
    bare = bare.rstrip(";").strip()
    if not bare:
        raise SqlRefused("the query is empty")
    first = bare.split(None, 1)[0].upper()
    if first not in ALLOWED_FIRST:
        raise SqlRefused(
            f"only read statements are allowed (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW); {first} is refused"
        )
    words = set(re.findall(r"[A-Za-z_]+", bare.upper()))
    for word, why in FORBIDDEN_WORDS.items():
        if word in words:
            raise SqlRefused(why)
    for fn in _TABLE_FUNCTION_CALL.findall(bare):
        if fn.lower() not in SAFE_TABLE_FUNCTIONS:
            raise SqlRefused(f"the table function {fn}() is not allowed")
    if first == "SHOW":
        _check_show(_strip(sql, keep_names=True).strip().rstrip(";"), database)
    text = sql.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text


def _check_show(bare: str, database: str) -> None:
    m = SHOW_ALLOWED.match(bare)
    if not m:
        raise SqlRefused("only SHOW TABLES, SHOW CREATE TABLE and SHOW COLUMNS are allowed")
    outside = [db.strip('`"') for db in _QUALIFIED.findall(bare)]
    names = [n.strip('`"') for n in _FROM_IN.findall(bare)]
    what = m.group(1).upper()
    # SHOW TABLES FROM db: every name is a database; SHOW COLUMNS FROM t [FROM db]: all but the first
    outside += names if what in ("TABLES", "DICTIONARIES") else names[1:]
    for db in outside:
        if db != database:
            raise SqlRefused(f"only the {database} database can be read")


_TREE_TABLE = re.compile(r"\btable_name:\s*([^\s,]+)")
_TREE_FUNCTION = re.compile(r"\btable_function_name:\s*([^\s,]+)")


def check_tables(tree_lines: Iterable[str], database: str) -> None:
    """Refuse a parsed query (ClickHouse's EXPLAIN QUERY TREE) that reads outside ``database``."""
    text = "\n".join(tree_lines)
    for name in _TREE_TABLE.findall(text):
        db = name.split(".", 1)[0] if "." in name else database
        if db != database:
            raise SqlRefused(f"{name} is outside the {database} database; only {database} can be read")
    for fn in _TREE_FUNCTION.findall(text):
        if fn.lower() not in SAFE_TABLE_FUNCTIONS:
            raise SqlRefused(f"the table function {fn}() is not allowed")


def describe_target(sql: str) -> str | None:
    """The table a DESCRIBE statement names (``db.table`` or ``table``), for the database check."""
    m = re.match(r"^\s*DESC(?:RIBE)?\s+(?:TABLE\s+)?([`\"\w.]+)\s*$", _strip(sql).rstrip(";"), re.I)
    return m.group(1).replace("`", "").replace('"', "") if m else None
