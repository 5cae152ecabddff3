"""Stage 1 of ``dashboard.sqlguard``, the lexer: SQL text in, ClickHouse's tokens out, in one pass and no I/O.

It mirrors ClickHouse's own lexer (strings, quoted names, nested-comment rules,
numbers) and refuses what it does not know (unicode outside literals,
``$heredoc$``, ``@var``, ``\\G``, ``{param}``). No regular expression looks at
user text, so the work is linear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dashboard.sqlerrors import SqlRefused

TokenKind = Literal["word", "quoted", "string", "number", "punct"]


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    text: str
    start: int
    end: int


_WORD_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_WORD = _WORD_START | frozenset("0123456789")
DIGITS = frozenset("0123456789")
_HEX = DIGITS | frozenset("abcdefABCDEF")
_SPACE = frozenset(" \t\r\n")
_CONTROL = frozenset(chr(c) for c in (*range(0x20), 0x7F)) - _SPACE
_SINGLE = frozenset("()[],;+*%?")
_AFTER_DOT_IS_NAME = frozenset(("word", "quoted", "number"))
_REFUSED_CHARS = {
    "$": "$ is only allowed inside string literals (no heredoc strings)",
    "@": "@variables are not supported",
    "\\": "a backslash is only allowed inside string literals",
    "{": "query parameters ({name:Type}) are not supported",
    "}": "query parameters ({name:Type}) are not supported",
}


def tokenize(sql: str) -> list[Token]:
    """The significant tokens of ``sql`` (no whitespace or comments), in one left-to-right pass.

    Raises SqlRefused for anything ClickHouse's lexer would read differently or
    not at all: unterminated strings and comments, a ``/*`` inside a comment,
    control characters, non-ASCII text outside literals and comments.
    """
    if not _CONTROL.isdisjoint(sql):
        at = next(k for k, c in enumerate(sql) if c in _CONTROL)
        raise SqlRefused(f"control character {ord(sql[at]):#04x} at offset {at} is not allowed")
    out: list[Token] = []
    n = len(sql)
    i = 0
    while i < n:
        ch = sql[i]
        start = i
        if ch in _SPACE:
            i += 1
            continue
        nxt = sql[i + 1] if i + 1 < n else ""
        if (ch == "-" and nxt == "-") or (ch == "/" and nxt == "/") or (ch == "#" and nxt in (" ", "!")):
            i = _line_comment_end(sql, i)
            continue
        if ch == "/" and nxt == "*":
            i = _block_comment_end(sql, i)
            continue
        if ch == "'":
            i = _quoted_end(sql, i, "'", "string literal")
            out.append(Token("string", sql[start:i], start, i))
        elif ch in '`"':
            i = _quoted_end(sql, i, ch, "quoted name")
            if "\n" in sql[start:i] or "\r" in sql[start:i]:
                raise SqlRefused(f"a quoted name cannot contain a line break (offset {start})")
            out.append(Token("quoted", sql[start:i], start, i))
        elif ch in "xXbB" and nxt == "'":
            i = _hex_or_bin_string_end(sql, i)
            out.append(Token("string", sql[start:i], start, i))
        elif ch in _WORD_START:
            i += 1
            while i < n and sql[i] in _WORD:
                i += 1
            out.append(Token("word", sql[start:i], start, i))
        elif ch in DIGITS or (ch == "." and nxt in DIGITS and not _dot_is_operator(out, sql, i)):
            i = _number_end(sql, i, after_dot=bool(out) and out[-1].text == ".")
            if i < n and sql[i] in _WORD:
                # 1st, 2x: ClickHouse reads digits followed by letters as one name
                while i < n and sql[i] in _WORD:
                    i += 1
                if not all(c in _WORD for c in sql[start:i]):
                    raise SqlRefused(f"malformed number {sql[start:i]!r} at offset {start}")
                out.append(Token("word", sql[start:i], start, i))
            else:
                out.append(Token("number", sql[start:i], start, i))
        else:
            i = _punct_end(sql, i)
            out.append(Token("punct", sql[start:i], start, i))
    return out


def _line_comment_end(sql: str, i: int) -> int:
    end = sql.find("\n", i)
    return len(sql) if end < 0 else end


def _block_comment_end(sql: str, i: int) -> int:
    # ClickHouse nests /* */ comments; refusing a nested opener keeps both readings the same
    end = sql.find("*/", i + 2)
    if end < 0:
        raise SqlRefused(f"the comment at offset {i} is not closed")
    if sql.find("/*", i + 2, end + 1) >= 0:  # end + 1: "/*/" opens before it closes
        raise SqlRefused(f"nested comments are not allowed (offset {i})")
    return end + 2


def _quoted_end(sql: str, i: int, quote: str, what: str) -> int:
    """End of a quoted token starting at ``i``: a backslash escapes the next character, a doubled quote is a quote.

    Each ``find`` starts where the last one stopped, so the scan stays linear.
    """
    n = len(sql)
    j = i + 1
    q = sql.find(quote, j)
    while q >= 0:
        b = sql.find("\\", j, q)
        if b >= 0:
            if b + 1 >= n:
                break
            j = b + 2
            if j > q:
                q = sql.find(quote, j)
            continue
        if q + 1 < n and sql[q + 1] == quote:
            j = q + 2
            q = sql.find(quote, j)
            continue
        return q + 1
    raise SqlRefused(f"the {what} at offset {i} is not closed")


def _hex_or_bin_string_end(sql: str, i: int) -> int:
    digits = _HEX if sql[i] in "xX" else frozenset("01")
    j = i + 2
    while j < len(sql) and sql[j] in digits:
        j += 1
    if j >= len(sql) or sql[j] != "'":
        raise SqlRefused(f"the string literal at offset {i} is not closed")
    return j + 1


def _dot_is_operator(out: list[Token], sql: str, i: int) -> bool:
    # as ClickHouse: after a name, a number or a closing bracket, ".1" is tuple access, not a number
    if i == 0 or not out:
        return False
    last = out[-1]
    return last.kind in _AFTER_DOT_IS_NAME or last.text in (")", "]")


def _number_end(sql: str, i: int, after_dot: bool) -> int:
    """End of a number, read exactly as ClickHouse's lexer reads it (so ``1e--x`` splits the same way)."""
    n = len(sql)
    if after_dot:  # x.1.1: only an integer after a tuple-access dot
        j = i + 1
        while j < n and (sql[j] in DIGITS or _separator(sql, j, False, False)):
            j += 1
        return j
    j = i
    hex_ = False
    start_of_block = False
    if sql[j] == "0" and j + 2 < n and sql[j + 1] in "xXbB":
        if sql[j + 1] in "xX" and sql[j + 2] in _HEX:
            hex_, start_of_block, j = True, True, j + 2
        elif sql[j + 1] in "bB" and sql[j + 2] in "01":
            start_of_block, j = True, j + 2
        else:
            j += 1
    elif sql[j] != ".":
        j += 1
    digits = _HEX if hex_ else DIGITS
    while j < n and (sql[j] in digits or _separator(sql, j, start_of_block, hex_)):
        j += 1
        start_of_block = False
    if j < n and sql[j] == ".":
        j += 1
        start_of_block = True
        while j < n and (sql[j] in digits or _separator(sql, j, start_of_block, hex_)):
            j += 1
            start_of_block = False
    if j + 1 < n and sql[j] in ("pP" if hex_ else "eE"):
        j += 1
        start_of_block = True
        if j + 1 < n and sql[j] in "+-":
            j += 1
        while j < n and (sql[j] in DIGITS or _separator(sql, j, start_of_block, False)):
            j += 1
            start_of_block = False
    return j


def _separator(sql: str, j: int, start_of_block: bool, hex_: bool) -> bool:
    # 1_000_000: an underscore between digits
    return sql[j] == "_" and not start_of_block and j + 1 < len(sql) and sql[j + 1] in (_HEX if hex_ else DIGITS)


def _punct_end(sql: str, i: int) -> int:
    ch = sql[i]
    nxt = sql[i + 1] if i + 1 < len(sql) else ""
    if ch in _SINGLE or ch == ".":
        return i + 1
    if ch == "-":
        return i + 2 if nxt == ">" else i + 1
    if ch == "/":
        return i + 1
    if ch == "=":
        return i + 2 if nxt == "=" else i + 1
    if ch == "<":
        return i + 2 if nxt in ("=", ">") else i + 1
    if ch == ">":
        return i + 2 if nxt == "=" else i + 1
    if ch == ":":
        return i + 2 if nxt == ":" else i + 1
    if ch == "!" and nxt == "=":
        return i + 2
    if ch == "|" and nxt == "|":
        return i + 2
    if ch in _REFUSED_CHARS:
        raise SqlRefused(f"{_REFUSED_CHARS[ch]} (offset {i})")
    if ord(ch) > 0x7F:
        raise SqlRefused(f"use ASCII outside string literals, quoted names and comments ({ch!r} at offset {i})")
    raise SqlRefused(f"unexpected character {ch!r} at offset {i}")
