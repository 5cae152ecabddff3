"""The checks in front of ``POST /api/sql``, with no I/O: raw text and ClickHouse's own dumps in, decisions out.

Why three stages: ClickHouse evaluates constant expressions (``file('/etc/passwd')``,
scalar subqueries) while it *analyses* a query, before any row limit can help,
and its error texts quote the values it failed on. So whatever reaches the
analyser must already be known harmless, and each stage feeds the next:

1. ``check_statement``: a single-pass tokenizer that mirrors ClickHouse's lexer
   (``dashboard.sqllex``), then a small grammar: one statement; SELECT, WITH, EXPLAIN
   (of a SELECT), ``SHOW TABLES [LIKE '...']``, ``SHOW CREATE TABLE name``,
   ``SHOW COLUMNS FROM name``, ``DESCRIBE [TABLE] name``; no SETTINGS, FORMAT or
   INTO OUTFILE.
2. ``check_ast``: ClickHouse's parse (``EXPLAIN AST``, which parses and evaluates
   nothing): every node must be of a kind listed here (``* APPLY(f)`` hides its
   function, so it is not), every function and table function must be on the
   allowlist of ``dashboard.sqlfunctions``, every table must be in the database,
   and so must every function a string names (``dashboard.sqlindirect``).
3. ``check_query_tree``: the analysed query (``EXPLAIN QUERY TREE``, run only
   after stage 2 passed, so constant folding can only run allowlisted pure
   functions): every table it resolved, including ``x IN db.table``, must be in
   the database, or be ``system.one``, which a query without FROM reads, and
   every aggregate in a resolved type must be allowed.

ClickHouse's own errors reach the user through ``sanitize_error``: code name
and first line, without the query echo, stack trace or server version.

Errors (``dashboard.sqlerrors``; each carries the HTTP status it maps to)::

    SqlRefused        403  the statement is not allowed; the message says why
    ├── SqlTooLarge   413  the request body is over the size limit
    └── SqlBusy       429  every SQL worker and wait slot is taken; retry later
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from dashboard import sqlindirect
from dashboard.sqlerrors import SqlRefused
from dashboard.sqlfunctions import ANALYSER_FUNCTIONS, IN_FUNCTIONS, is_allowed_function, is_allowed_table_function
from dashboard.sqllex import DIGITS, Token, tokenize

# ---- stage 1: tokens and grammar ------------------------------------------------------

StatementKind = Literal["select", "explain", "show_tables", "show_create", "show_columns", "describe"]


@dataclass(frozen=True, slots=True)
class Statement:
    """A statement that passed stage 1."""

    kind: StatementKind
    text: str
    """What runs: the statement from its first to its last token (comments around it and ``;`` cut)."""
    analysed: str | None
    """The SELECT that stage 3 analyses (the whole statement, or what an EXPLAIN explains)."""


ALLOWED_FIRST = frozenset(("SELECT", "WITH", "EXPLAIN", "DESCRIBE", "DESC", "SHOW"))
EXPLAIN_KINDS = frozenset(("AST", "SYNTAX", "QUERY", "PLAN", "PIPELINE", "ESTIMATE"))
SHOW_FORMS = "only SHOW TABLES [LIKE '...'], SHOW CREATE TABLE name and SHOW COLUMNS FROM name are allowed"


def check_statement(sql: str, database: str, max_depth: int = 256) -> Statement:
    """Stage 1: the statement, if its text may go to ClickHouse's parser; else SqlRefused."""
    tokens = tokenize(sql)
    while tokens and tokens[-1].text == ";":
        tokens.pop()
    if not tokens:
        raise SqlRefused("the query is empty")
    _check_brackets(tokens, max_depth)
    for k, tok in enumerate(tokens):
        if tok.text == ";":
            raise SqlRefused("only one statement at a time is allowed")
        if tok.kind != "word":
            continue
        word = tok.text.upper()
        if word == "SETTINGS":
            raise SqlRefused("SETTINGS are fixed by the server for this endpoint")
        if word in ("OUTFILE", "INFILE"):
            raise SqlRefused(f"reading or writing files (INTO OUTFILE, FROM INFILE) is not allowed; {word} is refused")
        if word == "FORMAT" and (k + 1 == len(tokens) or tokens[k + 1].text != "("):
            raise SqlRefused("the result format is chosen by the endpoint (use ?format=csv for CSV)")
    first = tokens[0].text.upper() if tokens[0].kind == "word" else tokens[0].text
    if first not in ALLOWED_FIRST:
        raise SqlRefused(
            f"only read statements are allowed (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW); {first} is refused"
        )
    text = sql[tokens[0].start : tokens[-1].end]
    if first in ("SELECT", "WITH"):
        return Statement("select", text, text)
    if first == "EXPLAIN":
        inner = _explained(tokens)
        return Statement("explain", text, sql[inner.start : tokens[-1].end])
    if first == "SHOW":
        return Statement(_show_kind(tokens, database), text, None)
    rest = tokens[2:] if len(tokens) > 2 and tokens[1].text.upper() == "TABLE" else tokens[1:]
    _table_name(rest, database, "DESCRIBE takes a table name: DESCRIBE [TABLE] name")
    return Statement("describe", text, None)


def _check_brackets(tokens: list[Token], max_depth: int) -> None:
    stack: list[str] = []
    for tok in tokens:
        if tok.text in ("(", "["):
            stack.append(")" if tok.text == "(" else "]")
            if len(stack) > max_depth:
                raise SqlRefused(f"the query is nested more than {max_depth} brackets deep")
        elif tok.text in (")", "]") and (not stack or stack.pop() != tok.text):
            raise SqlRefused(f"unbalanced {tok.text!r} at offset {tok.start}")
    if stack:
        raise SqlRefused(f"{len(stack)} bracket(s) not closed")


def _explained(tokens: list[Token]) -> Token:
    """The first token of the SELECT an EXPLAIN explains: EXPLAIN [kind] [option = value, ...] SELECT|WITH ..."""
    k = 1
    if k < len(tokens) and tokens[k].text.upper() in EXPLAIN_KINDS:
        k += (
            2
            if tokens[k].text.upper() == "QUERY" and k + 1 < len(tokens) and tokens[k + 1].text.upper() == "TREE"
            else 1
        )
    while k + 2 < len(tokens) and tokens[k].kind == "word" and tokens[k + 1].text == "=":
        if tokens[k + 2].kind not in ("number", "word", "string"):
            break
        k += 3
        if k < len(tokens) and tokens[k].text == ",":
            k += 1
    if k < len(tokens) and tokens[k].kind == "word" and tokens[k].text.upper() in ("SELECT", "WITH"):
        return tokens[k]
    raise SqlRefused(
        "EXPLAIN is allowed for SELECT queries only: EXPLAIN [AST|SYNTAX|QUERY TREE|PLAN|PIPELINE] SELECT ..."
    )


def _show_kind(tokens: list[Token], database: str) -> StatementKind:
    words = [t.text.upper() if t.kind == "word" else t.text for t in tokens[1:]]
    if words[:1] == ["TABLES"]:
        pattern = tokens[-1].kind == "string"
        if len(words) == 1 or (pattern and words[1:-1] in (["LIKE"], ["ILIKE"], ["NOT", "LIKE"], ["NOT", "ILIKE"])):
            return "show_tables"
    elif words[:2] == ["CREATE", "TABLE"]:  # not SHOW CREATE USER, ROLE, DATABASE, ...
        _table_name(tokens[3:], database, SHOW_FORMS)
        return "show_create"
    elif words[:1] == ["COLUMNS"] and words[1:2] in (["FROM"], ["IN"]):
        _table_name(tokens[3:], database, SHOW_FORMS)
        return "show_columns"
    raise SqlRefused(f"{SHOW_FORMS}, for one table of the {database} database")


def _table_name(tokens: list[Token], database: str, usage: str) -> None:
    """Refuse anything but ``name`` or ``database.name`` (each bare or quoted) with nothing after it."""
    names = [t for t in tokens if t.kind in ("word", "quoted")]
    if len(tokens) == 1 and names:
        return
    if len(tokens) == 3 and tokens[1].text == "." and len(names) == 2:
        db = unquote(tokens[0])
        if db == database:
            return
        raise SqlRefused(f"{db}.{unquote(tokens[2])} is outside the {database} database; only {database} can be read")
    raise SqlRefused(f"{usage}, for one table of the {database} database")


def unquote(token: Token) -> str:
    """The name a word or quoted-name token stands for (quotes removed, escapes resolved)."""
    if token.kind != "quoted":
        return token.text
    quote, body = token.text[0], token.text[1:-1]
    out: list[str] = []
    k = 0
    while k < len(body):
        ch = body[k]
        if ch == "\\" and k + 1 < len(body):
            out.append(body[k + 1])
            k += 2
        elif ch == quote and k + 1 < len(body) and body[k + 1] == quote:
            out.append(quote)
            k += 2
        else:
            out.append(ch)
            k += 1
    return "".join(out)


# ---- stage 2: ClickHouse's parse (EXPLAIN AST) ------------------------------------------

OUTSIDE_ALLOWED = frozenset(("system.one",))
"""The one table outside the database a query may name: what a SELECT without FROM reads."""

ROOT_NODE: dict[StatementKind, str] = {
    "select": "SelectWithUnionQuery",
    "explain": "Explain",
    "show_tables": "ShowTables",
    "show_create": "ShowCreateTableQuery",
    "show_columns": "ShowColumns",
    "describe": "DescribeQuery",
}
# Every node kind a read query of this endpoint parses to. Not here, so refused:
# ColumnsApplyTransformer (* APPLY(f) calls f without a Function node),
# QueryParameter, and whatever a later ClickHouse adds.
AST_NODES = frozenset(
    (
        *ROOT_NODE.values(),
        "SelectIntersectExceptQuery",
        "SelectQuery",
        "ExpressionList",
        "Function",
        "Identifier",
        "Literal",
        "Asterisk",
        "QualifiedAsterisk",
        "ColumnsRegexpMatcher",
        "ColumnsListMatcher",
        "QualifiedColumnsRegexpMatcher",
        "QualifiedColumnsListMatcher",
        "ColumnsTransformerList",
        "ColumnsExceptTransformer",
        "ColumnsReplaceTransformer",
        "ColumnsReplaceTransformer::Replacement",
        "TablesInSelectQuery",
        "TablesInSelectQueryElement",
        "TableExpression",
        "TableIdentifier",
        "TableJoin",
        "ArrayJoin",
        "Subquery",
        "WithElement",
        "OrderByElement",
        "InterpolateElement",
        "WindowDefinition",
        "WindowListElement",
        "SampleRatio",
        "Set",  # the server's own SETTINGS clause, and EXPLAIN options (user SETTINGS stop at stage 1)
    )
)


@dataclass(frozen=True, slots=True)
class AstLine:
    depth: int
    kind: str
    name: str
    """The first word after the kind (a function's or table's name), or ''."""
    well_formed: bool
    """Nothing follows the name but ``(alias ...)``/``(children N)`` annotations."""


def parse_ast_line(line: str) -> AstLine:
    """One line of ``EXPLAIN AST``: one space of indent per level, ``Kind [name] [(annotations)]``."""
    body = line.lstrip(" ")
    kind, _, rest = body.partition(" ")
    name, _, after = rest.partition(" ")
    if name.startswith("("):
        name, after = "", rest
    return AstLine(len(line) - len(body), kind, name, after == "" or after.startswith("("))


@dataclass(slots=True)
class _Open:
    """A node of the dump whose children are still being read."""

    line: AstLine
    children: int = 0
    ordinal: int = 0
    """Which child of its parent this node is (1 for the first)."""
    declared: int = 0
    """The children the dump says it has (``(children N)``)."""


def _declared_children(raw: str) -> int:
    at = raw.rfind("(children ")
    digits = raw[at + len("(children ") : -1] if at >= 0 and raw.endswith(")") else ""
    return int(digits) if digits.isascii() and digits.isdigit() else 0


def check_ast(lines: Iterable[str], statement: Statement, database: str) -> None:
    """Stage 2: refuse a parse with a node, function, table function or table outside the allowlists."""
    path: list[_Open] = []  # the open node at each depth above the current line
    roots = 0
    for raw in lines:
        line = parse_ast_line(raw)
        if line.depth == 0:
            roots += 1
            if roots > 1 or line.kind != ROOT_NODE[statement.kind]:
                raise SqlRefused(f"ClickHouse parsed this as {line.kind}, which is not a {statement.kind} statement")
        if line.kind not in AST_NODES:
            raise SqlRefused(f"the construct {line.kind} is not allowed here")
        del path[line.depth :]
        parent = path[-1] if 0 < line.depth == len(path) else None
        if parent is not None:
            parent.children += 1
        if line.kind == "Function":
            _check_function(line, parent.line.kind if parent else "")
        elif line.kind == "TableIdentifier":
            _check_table(line, database)
        elif line.kind == "Identifier" and parent is not None and parent.children == 2 and len(path) >= 2:
            _check_in_operand(line, parent.line, path[-2].line, database)
        _check_named_in_strings(raw, line, parent, path[-2] if parent is not None and len(path) >= 2 else None)
        path.extend(_Open(AstLine(len(path), "", "", True)) for _ in range(line.depth - len(path)))
        path.append(_Open(line, 0, parent.children if parent is not None else 0, _declared_children(raw)))


def _check_named_in_strings(raw: str, line: AstLine, parent: _Open | None, grandparent: _Open | None) -> None:
    """Functions reached by name in a string (``dashboard.sqlindirect``): arguments that name them, and literals."""
    try:
        if line.kind == "Literal":
            sqlindirect.check_literal(raw.lstrip(" ")[len("Literal ") :])
        if parent is None or grandparent is None or grandparent.line.kind != "Function":
            return
        function = grandparent.line.name
        if not sqlindirect.takes_names(function):
            return
        if parent.ordinal != 1:
            raise SqlRefused(f"{function}() takes no parameters")
        rule = sqlindirect.argument_rule(function, parent.children - 1, parent.declared)
        if rule is not None:
            sqlindirect.check_argument(function, rule, line.kind, raw.lstrip(" ")[len(line.kind) + 1 :])
    except sqlindirect.IndirectRefused as exc:
        raise SqlRefused(str(exc)) from None


def _check_in_operand(line: AstLine, parent: AstLine, grandparent: AstLine, database: str) -> None:
    """``x IN db.table``: refused before analysis, which would compare the table's columns and say how many."""
    if parent.kind != "ExpressionList" or grandparent.kind != "Function":
        return
    if grandparent.name.lower() not in IN_FUNCTIONS:
        return
    if not line.well_formed:
        raise SqlRefused(f"the name {line.name!r}... after IN is not allowed (use plain names)")
    db, dot, _ = line.name.partition(".")
    if dot and db != database and line.name not in OUTSIDE_ALLOWED:
        raise SqlRefused(
            f"{line.name} is outside the {database} database; only {database} can be read"
            " (for an array column, write has(array, x))"
        )


def _check_function(line: AstLine, parent: str) -> None:
    if not line.well_formed or not line.name:
        raise SqlRefused(f"the function name {line.name!r}... is not allowed (use plain names)")
    if parent == "TableExpression":
        if not is_allowed_table_function(line.name):
            raise SqlRefused(
                f"the table function {line.name}() is not allowed; only numbers, zeros, generate_series and values"
            )
    elif not is_allowed_function(line.name):
        raise SqlRefused(f"the function {line.name}() is not allowed on this endpoint")


def _check_table(line: AstLine, database: str) -> None:
    if not line.well_formed or not line.name:
        raise SqlRefused(f"the table name {line.name!r}... is not allowed (use plain names)")
    db, dot, _ = line.name.partition(".")
    if dot and db != database and line.name not in OUTSIDE_ALLOWED:
        raise SqlRefused(f"{line.name} is outside the {database} database; only {database} can be read")


# ---- stage 3: the analysed query (EXPLAIN QUERY TREE) -----------------------------------


def _values(line: str, key: str) -> list[str]:
    """Every value of ``key: value`` in one query-tree line (an alias may repeat a key; all count)."""
    out = []
    at = line.find(key)
    while at >= 0:
        start = at + len(key)
        end = line.find(",", start)
        out.append(line[start : end if end >= 0 else len(line)].strip())
        at = line.find(key, start)
    return out


def check_query_tree(lines: Iterable[str], database: str) -> None:
    """Stage 3: refuse an analysed query that resolved a table, table function or function outside the lists."""
    for raw in lines:
        line = raw.lstrip(" ")
        if line.startswith("TABLE id:"):
            for name in _values(line, "table_name: "):
                db, dot, _ = name.partition(".")
                if name not in OUTSIDE_ALLOWED and (not dot or db != database):
                    raise SqlRefused(f"{name} is outside the {database} database; only {database} can be read")
        elif line.startswith("TABLE_FUNCTION id:"):
            for name in _values(line, "table_function_name: "):
                if not is_allowed_table_function(name):
                    raise SqlRefused(f"the table function {name}() is not allowed")
        elif line.startswith("FUNCTION id:"):
            for name in _values(line, "function_name: "):
                if not is_allowed_function(name) and name.lower() not in ANALYSER_FUNCTIONS:
                    raise SqlRefused(f"the function {name}() is not allowed on this endpoint")
        try:  # the types the analyser resolved, wherever they came from
            sqlindirect.check_types(line, "in the analysed query")
        except sqlindirect.IndirectRefused as exc:
            raise SqlRefused(str(exc)) from None


# ---- ClickHouse's error texts ----------------------------------------------------------

# Where ClickHouse starts quoting the query, a stack trace, its version or other names.
_ECHO_MARKERS = (
    " In scope ",
    ": In scope",
    ": while executing",
    " while executing",
    ": While executing",
    ". Stack trace",
    "Stack trace:",
    " (version ",
    ". Maybe you meant",
    " Maybe you meant",
)


def sanitize_error(text: str, max_chars: int = 300) -> str:
    """ClickHouse's error as ``NAME (code N): first line``, cut before any query echo, trace or version.

    The text a driver wraps around it (an HTTP URL, a chdb prefix) is dropped too.
    """
    text = text[:20_000]
    at = text.find("Code: ")
    if at < 0:
        return "ClickHouse could not run the query"
    text = text[at + len("Code: ") :]
    digits = 0
    while digits < len(text) and text[digits] in DIGITS:
        digits += 1
    code = text[:digits] or "?"
    message = _without_prefix(text[digits:])
    while message.startswith("Code: "):  # chdb wraps an error in its own "Code: N. DB::Exception:"
        nested = len("Code: ")
        while nested < len(message) and message[nested] in DIGITS:
            nested += 1
        message = _without_prefix(message[nested:])
    trace = message.find("Stack trace")
    name = _error_name(message[:trace] if trace >= 0 else message)
    if message.startswith("Syntax error"):
        message = _syntax_error(message)
    message = message.split("\n", 1)[0]
    for marker in _ECHO_MARKERS:
        cut = message.find(marker)
        if cut >= 0:
            message = message[:cut]
    if name and message.endswith(f"({name})"):
        message = message[: -len(name) - 2]
    message = message.strip().rstrip(".:,")
    if len(message) > max_chars:
        message = message[: max_chars - 1] + "…"
    return f"{name or 'ClickHouse error'} (code {code}): {message}"


def _without_prefix(message: str) -> str:
    message = message.lstrip(". ")
    return message[len("DB::Exception: ") :] if message.startswith("DB::Exception: ") else message


def _error_name(message: str) -> str:
    """The trailing ``(UPPER_CASE_NAME)`` ClickHouse ends its messages with."""
    end = message.rfind(")")
    while end >= 0:
        start = message.rfind("(", 0, end)
        if start < 0:
            return ""
        candidate = message[start + 1 : end]
        if (
            candidate
            and all(c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789" for c in candidate)
            and candidate[0].isalpha()
        ):
            return candidate
        end = message.rfind(")", 0, start)
    return ""


def _syntax_error(message: str) -> str:
    """``Syntax error: failed at position N (TOKEN) (line L, col C): <query echo>. Expected one of: ...``

    becomes ``Syntax error near TOKEN. Expected one of: ...``: the position counts
    the checker's own prefix, and the echo is the query again.
    """
    near = ""
    open_ = message.find(" (")
    close = message.find(") (line", open_)
    if open_ >= 0 and close > open_:
        near = " near " + message[open_ + 2 : close]
    expected = message.find("Expected one of")
    if expected < 0:
        expected = message.find("Expected ")
    tail = (". " + message[expected:]) if expected >= 0 else ""
    return "Syntax error" + near + tail
