"""Turning stream entries into insert batches, with no I/O.

A batch is a list of stream entry ids and their records, kept column by column
(the form the insert takes). Its insert carries a
deduplication token derived only from those ids, so the same entries always
give the same token: a batch retried after a crash (by this collector or by one
that took the entries over) is dropped by ClickHouse as a duplicate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from meshcore.flowrecord import FIELDS, RecordDecodeError, unpack_columns


@dataclass
class Batch:
    ids: list[str] = field(default_factory=list)
    columns: list[list[Any]] = field(default_factory=lambda: [[] for _ in FIELDS])
    started: float = 0.0
    sizes: list[int] = field(default_factory=list)  # rows of each entry, in ``ids`` order

    def __len__(self) -> int:
        return len(self.columns[0])

    @property
    def token(self) -> str:
        return batch_token(self.ids)

    def add(self, entry_id: str, columns: list[list[Any]]) -> None:
        self.ids.append(entry_id)
        self.sizes.append(len(columns[0]))
        for mine, more in zip(self.columns, columns, strict=True):
            mine.extend(more)

    def keep(self, ids: set[str]) -> Batch:
        """The same batch with only the entries in ``ids`` (those another collector took over are left out)."""
        out = Batch(started=self.started)
        row = 0
        for entry_id, size in zip(self.ids, self.sizes, strict=True):
            if entry_id in ids:
                out.add(entry_id, [column[row : row + size] for column in self.columns])
            row += size
        return out


def batch_token(ids: list[str]) -> str:
    return hashlib.sha256(",".join(ids).encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Poison:
    entry_id: str
    reason: str
    fields: dict[Any, Any]


def split_entries(entries: list[tuple[str, dict[Any, Any]]]) -> tuple[list[tuple[str, list[list[Any]]]], list[Poison]]:
    """Decode entries; returns ((id, columns) for good ones, poison entries with their reason)."""
    good: list[tuple[str, list[list[Any]]]] = []
    bad: list[Poison] = []
    for entry_id, fields in entries:
        try:
            good.append((entry_id, unpack_columns(fields)))
        except RecordDecodeError as exc:
            bad.append(Poison(entry_id, str(exc), fields))
    return good, bad


def should_flush(batch: Batch, now: float, max_rows: int, flush_interval_s: float) -> bool:
    if not batch.ids:
        return False
    return len(batch) >= max_rows or now - batch.started >= flush_interval_s
