"""The CSV download of /api/sql, made safe to open in a spreadsheet, with no I/O.

Spreadsheets run a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula
(``=HYPERLINK(...)`` leaks data on click, ``=cmd|...`` once ran commands through DDE), and
some also after a leading tab or carriage return. Topics, event ids and region names come from
producers, so the dashboard's CSV prefixes such text cells with a single quote, as OWASP advises,
which spreadsheets show as text. Full-width forms of the four signs are escaped too, since some
locales read them as the ASCII ones. Only strings are touched: numbers stay numbers, so ``-5``
still sums. Header cells are escaped alike (a column alias is text from the query).

A cell must also stay one cell. The download ends rows with CRLF (RFC 4180, what spreadsheets
write), so the csv module quotes every value holding a CR or LF; with the bare-LF line ending of
``meshscope sql --format csv`` a lone CR is left unquoted, and ``a\r=HYPERLINK(...)`` would start
a new row with a live formula. Values are formatted as that CSV formats them.

``meshscope sql --format csv`` keeps :func:`collector.output.render` unchanged: its output goes
to a terminal or a pipe, where a quote would corrupt the data.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from collector.output import _cell as cell_text  # the CLI's CSV cell format, so both read alike

FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
"""First characters that make a spreadsheet treat a cell as a formula."""


def neutralize(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would run; anything else as it is."""
    if isinstance(value, str) and value.startswith(FORMULA_LEADS):
        return "'" + value
    return value


def spreadsheet_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV (CRLF rows) with every formula-like text cell neutralized; NULL is an empty cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([neutralize(str(c)) for c in columns])
    for row in rows:
        writer.writerow(["" if v is None else cell_text(neutralize(v), exact=True) for v in row])
    return buf.getvalue()
