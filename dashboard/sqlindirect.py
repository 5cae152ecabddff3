"""Functions a query reaches by name inside a string, put through the same allowlist: no I/O.

ClickHouse takes some function names as string values rather than as calls,
so ``EXPLAIN AST`` shows them as literals and the allowlist of
``dashboard.sqlfunctions`` never saw them:

* aggregate functions named in an argument: ``arrayReduce('flameGraph', ...)``,
  ``arrayReduceInRanges``, ``initializeAggregation``, with any combinator
  (``flameGraphState``, ``aggThrowIf``) and parameters (``quantile(0.5)``);
* aggregate functions named in a type: ``AggregateFunction(name, T)`` and
  ``SimpleAggregateFunction(name, T)``, which ``CAST``, ``JSONExtract``,
  ``defaultValueOfTypeName``, ``values('structure', ...)`` and others parse from
  strings; ``finalizeAggregation`` or ``-Merge`` then run that function.

Worse, ClickHouse evaluates the parameters of a named aggregate as constant
expressions: ``arrayReduce('quantile(toFloat64(hostName()))', ...)`` calls
``hostName()``. So a name must be written in a strict grammar of its own: a
plain name, then optionally parameters that are number or string literals and
nothing else; anything else in that place is refused, never guessed at.

Three rules, applied to every line of the parse (``check_literal``,
``check_argument``) and to the analysed query (``check_types``):

1. the argument that names an aggregate, or a type, of a function listed in
   ``AGGREGATE_NAME_ARGUMENTS`` / ``TYPE_ARGUMENTS`` must be a string literal
   (not a name bound by ``WITH``, a ``concat(...)``, a subquery), so what runs
   is what was checked;
2. an aggregate named in such a literal must pass the allowlist, combinators
   included (``sqlfunctions.is_allowed_aggregate``);
3. every ``AggregateFunction(`` in any string literal, and in any type of the
   analysed query, must name an allowed aggregate in that strict grammar (a
   comment, a quoted name or an expression there is refused). The match is
   case-insensitive, so a string that merely contains ``aggregatefunction(``
   followed by something else is refused too: the price of never guessing.
"""

from __future__ import annotations

import re

from dashboard.sqlfunctions import is_allowed_aggregate

AGGREGATE_NAME_ARGUMENTS = {"arrayreduce": 0, "arrayreduceinranges": 0, "initializeaggregation": 0}
"""Functions (lower case) whose argument at this position names an aggregate function."""
TYPE_ARGUMENTS = {
    "cast": 1,
    "accuratecast": 1,
    "accuratecastornull": 1,
    "accuratecastordefault": 1,
    "reinterpret": 1,
    "defaultvalueoftypename": 0,
    "dynamicelement": 1,
    "variantelement": 1,
    "jsonextract": -1,
    "jsonextractcaseinsensitive": -1,
    "jsonextractkeysandvalues": -1,
    "jsonextractkeysandvaluescaseinsensitive": -1,
}
"""Functions (lower case) whose argument at this position (-1: the last) is a data type, as a string."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_STRING = re.compile(r"'(?:[^'\\]|\\.|'')*'", re.S)
_VERSION = re.compile(r"[0-9]+[ \t\r\n]*,[ \t\r\n]*")
_KEYWORD = "aggregatefunction"
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "0": "\0", "a": "\a", "v": "\v", "e": "\x1b"}


class IndirectRefused(ValueError):
    """A function named in a string is not allowed, or not written so that it can be checked."""


def string_literal(text: str) -> str | None:
    """The value of the string literal that starts ``text`` (an ``EXPLAIN AST`` literal), or None.

    ``text`` is what follows ``Literal ``: ``'value'``, then optionally `` (alias ...)``.
    """
    if not text.startswith("'"):
        return None
    out: list[str] = []
    k = 1
    while k < len(text):
        ch = text[k]
        if ch == "'":
            rest = text[k + 1 :]
            return "".join(out) if rest == "" or rest.startswith(" (") else None
        if ch == "\\":
            if k + 1 >= len(text):
                return None
            nxt = text[k + 1]
            if nxt == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", text[k + 2 : k + 4]):
                out.append(chr(int(text[k + 2 : k + 4], 16)))
                k += 4
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            k += 2
            continue
        out.append(ch)
        k += 1
    return None


def check_aggregate_name(value: str, function: str) -> None:
    """``value`` names an allowed aggregate, as ``name`` or ``name(literal, ...)``; else IndirectRefused."""
    m = _NAME.match(value)
    if m is None:
        raise IndirectRefused(
            f"{function}() takes the name of an aggregate function, written plainly (like 'sum' or 'quantile(0.9)')"
        )
    at = m.end()
    if at < len(value) and (value[at] != "(" or _parameters_end(value, at) != len(value)):
        raise IndirectRefused(
            f"the aggregate function named in {function}() takes only number or string literals as parameters"
        )
    if not is_allowed_aggregate(m.group()):
        raise IndirectRefused(f"the aggregate function {m.group()} (named in {function}()) is not allowed here")


def check_types(text: str, where: str) -> None:
    """Every ``AggregateFunction(`` in ``text`` names an allowed aggregate; else IndirectRefused."""
    low = text.lower()
    at = low.find(_KEYWORD)
    while at >= 0:
        k = _skip(text, at + len(_KEYWORD))
        if text.startswith(("/*", "--", "#"), k):
            raise IndirectRefused(f"a comment inside an AggregateFunction type is not allowed ({where})")
        if k < len(text) and text[k] == "(":
            _check_type_arguments(text, k + 1, where)
        at = low.find(_KEYWORD, at + len(_KEYWORD))


def _check_type_arguments(text: str, k: int, where: str) -> None:
    """At ``k``, just after ``AggregateFunction(``: ``[version,] name[(parameters)]`` then ``,`` or ``)``."""
    k = _skip(text, k)
    version = _VERSION.match(text, k)
    if version is not None:
        k = version.end()
    m = _NAME.match(text, k)
    if m is None:
        raise IndirectRefused(f"an AggregateFunction type must name its function plainly ({where})")
    k = m.end()
    if k < len(text) and text[k] == "(":
        end = _parameters_end(text, k)
        if end < 0:
            raise IndirectRefused(
                f"an AggregateFunction type takes only number or string literals as parameters ({where})"
            )
        k = end
    k = _skip(text, k)
    if k >= len(text) or text[k] not in ",)":
        raise IndirectRefused(f"an AggregateFunction type must name its function plainly ({where})")
    if not is_allowed_aggregate(m.group()):
        raise IndirectRefused(f"the aggregate function {m.group()} (in a type, {where}) is not allowed here")


def _skip(text: str, k: int) -> int:
    """Past the spaces, tabs and line breaks at ``k``."""
    while k < len(text) and text[k] in " \t\r\n":
        k += 1
    return k


def _parameters_end(text: str, k: int) -> int:
    """Where ``(literal, literal, ...)`` starting at ``text[k] == '('`` ends (after ``)``), or -1."""
    k = _skip(text, k + 1)
    if k < len(text) and text[k] == ")":
        return k + 1
    while k < len(text):
        m = _NUMBER.match(text, k) or _STRING.match(text, k)
        if m is None:
            return -1
        k = _skip(text, m.end())
        if k < len(text) and text[k] == ")":
            return k + 1
        if k >= len(text) or text[k] != ",":
            return -1
        k = _skip(text, k + 1)
    return -1


def argument_rule(function: str, position: int, count: int) -> str | None:
    """``"aggregate"`` or ``"type"`` when argument ``position`` of ``count`` of ``function`` names one; else None."""
    low = function.lower()
    wanted = AGGREGATE_NAME_ARGUMENTS.get(low)
    if wanted is not None and position == wanted:
        return "aggregate"
    wanted = TYPE_ARGUMENTS.get(low)
    if wanted is not None and position == (wanted if wanted >= 0 else count + wanted):
        return "type"
    return None


def takes_names(function: str) -> bool:
    """Whether ``function`` takes an aggregate or a type by name (such a function takes no parameters)."""
    low = function.lower()
    return low in AGGREGATE_NAME_ARGUMENTS or low in TYPE_ARGUMENTS


def check_argument(function: str, rule: str, kind: str, literal_text: str) -> None:
    """One argument that names an aggregate or a type: a string literal (kind ``Literal``), and allowed."""
    value = string_literal(literal_text) if kind == "Literal" else None
    if value is None:
        what = "an aggregate function" if rule == "aggregate" else "a type"
        raise IndirectRefused(f"{function}() must be given {what} as a string literal here, not a name or expression")
    if rule == "aggregate":
        check_aggregate_name(value, function)
    else:
        check_types(value, f"{function}()")


def check_literal(literal_text: str) -> None:
    """Any literal of the parse: the strings in it (one, or inside an array, tuple or map) name no refused type."""
    if _KEYWORD in literal_text.lower():
        check_types(_unescaped(literal_text), "a string literal")


def _unescaped(text: str) -> str:
    """``text`` with the backslash escapes of ``EXPLAIN AST`` resolved (quotes kept)."""
    return re.sub(r"\\(x[0-9A-Fa-f]{2}|.)", lambda m: _unescape_one(m.group(1)), text, flags=re.S)


def _unescape_one(code: str) -> str:
    if code.startswith("x") and len(code) == 3:
        return chr(int(code[1:], 16))
    return _ESCAPES.get(code, code)
