"""Governance documents come from users, so every field is read strictly, once, here.

Policies and schemas arrive as TOML files from a Git checkout, as JSON from the
registry in Valkey, or from an admin request; whoever wrote them, a relay must
refuse a typo rather than guess. ``Fields`` reads one object: a key it does not
know is refused first, naming its path (``rule[3].actoins``) and the keys that
were expected, then each key is read with its type and bounds.
The bounds on sizes and counts live in one ``Limits`` record.

The governance error tree (one root, drawn once)::

    GovernanceError
     ├── InvalidDocument       a policy or schema document breaks the grammar or a limit (path, reason)
     │    └── IncompatibleSchema   a new schema version breaks its subject's compatibility mode (reasons)
     └── SchemaViolation       an event's data fails its subject's schema (pointer, reason, schema_version)

``InvalidDocument`` is the admin's 400 and ``SchemaViolation`` the publisher's 422;
neither is ever a bug of ours, so neither carries a traceback worth logging.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


class GovernanceError(Exception):
    """Root of every error the governance core raises."""


class InvalidDocument(GovernanceError):
    """A governance document (policy rules, schemas, the index) that cannot be accepted."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


class IncompatibleSchema(InvalidDocument):
    """A new schema version that its subject's compatibility mode refuses; ``reasons`` says where and why."""

    def __init__(self, path: str, reasons: list[str]) -> None:
        super().__init__(path, "incompatible schema change: " + "; ".join(reasons))
        self.reasons = tuple(reasons)


class SchemaViolation(GovernanceError):
    """Event data that its schema refuses: where (a JSON pointer into the data), why, and which schema version."""

    def __init__(self, pointer: str, reason: str, schema_version: str) -> None:
        super().__init__(f"{pointer or '/'}: {reason}" + (f" (schema {schema_version})" if schema_version else ""))
        self.pointer = pointer
        self.reason = reason
        self.schema_version = schema_version


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one governance document may hold; each refusal names the limit."""

    max_rules: int = 1_000
    max_items_per_field: int = 64
    """principals, actions, topics or regions named by one rule"""
    max_subjects: int = 500
    max_versions: int = 100
    """versions kept per subject"""
    max_schema_bytes: int = 64 * 1024
    """one schema, as compact JSON"""
    max_schema_depth: int = 32
    """nesting of objects and arrays inside one schema"""
    max_document_bytes: int = 16 * 1024 * 1024
    """the whole serialized document, or one file of a directory"""
    max_text: int = 256
    """an id, a name, a description"""


DEFAULT_LIMITS = Limits()

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Rule ids: short, no white space, no wildcards."""


def child(path: str, key: str | int) -> str:
    """The path of ``key`` (a key or a list index) under ``path`` (a file's path ends with ':')."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path and not path.endswith(":") else f"{path}{key}"


def kind(value: object) -> str:
    """The JSON/TOML name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


class Fields:
    """One object of a user document, read strictly: only the ``keys`` it may hold, each read once."""

    __slots__ = ("_obj", "path")

    def __init__(self, obj: object, path: str, keys: tuple[str, ...]) -> None:
        if not isinstance(obj, dict):
            raise InvalidDocument(path, f"must be a table (object), not {kind(obj)}")
        for key in obj:
            if not isinstance(key, str):
                raise InvalidDocument(path, f"keys must be strings, not {kind(key)}")
            if key not in keys:
                raise InvalidDocument(child(path, key), f"unknown key {key!r} (expected: {', '.join(keys)})")
        self._obj: dict[str, object] = obj
        self.path = path

    def has(self, key: str) -> bool:
        return key in self._obj

    def raw(self, key: str, *, required: bool = True) -> object:
        """The value of ``key`` as it is (None when absent and not required)."""
        if key not in self._obj:
            if required:
                raise InvalidDocument(child(self.path, key), "is required")
            return None
        return self._obj[key]

    def text(
        self,
        key: str,
        *,
        required: bool = True,
        default: str = "",
        max_length: int = DEFAULT_LIMITS.max_text,
        pattern: re.Pattern[str] | None = None,
        choices: tuple[str, ...] = (),
    ) -> str:
        value = self.raw(key, required=required)
        if value is None:
            return default
        return check_text(value, child(self.path, key), max_length=max_length, pattern=pattern, choices=choices)

    def integer(self, key: str, *, minimum: int = 0, maximum: int = 2**53) -> int:
        value = self.raw(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidDocument(child(self.path, key), f"must be an integer, not {kind(value)}")
        if not minimum <= value <= maximum:
            raise InvalidDocument(child(self.path, key), f"must be between {minimum} and {maximum}")
        return value

    def texts(
        self,
        key: str,
        *,
        required: bool = True,
        max_items: int = DEFAULT_LIMITS.max_items_per_field,
        max_length: int = DEFAULT_LIMITS.max_text,
        pattern: re.Pattern[str] | None = None,
        choices: tuple[str, ...] = (),
    ) -> tuple[str, ...]:
        """A non-empty list of distinct strings (empty tuple when absent and not required)."""
        path = child(self.path, key)
        values = list(self.elements(key, required=required, max_items=max_items))
        if required and not values:
            raise InvalidDocument(path, "must name at least one value")
        out = tuple(check_text(v, p, max_length=max_length, pattern=pattern, choices=choices) for p, v in values)
        if len(set(out)) != len(out):
            raise InvalidDocument(path, "names a value twice")
        return out

    def elements(self, key: str, *, required: bool = True, max_items: int) -> Iterator[tuple[str, object]]:
        """(path, value) of each element of the list at ``key``."""
        path = child(self.path, key)
        value = self.raw(key, required=required)
        if value is None:
            return
        if not isinstance(value, list):
            raise InvalidDocument(path, f"must be a list, not {kind(value)}")
        if len(value) > max_items:
            raise InvalidDocument(path, f"holds {len(value)} entries; the limit is {max_items}")
        for i, item in enumerate(value):
            yield child(path, i), item


def check_text(
    value: object,
    path: str,
    *,
    max_length: int = DEFAULT_LIMITS.max_text,
    pattern: re.Pattern[str] | None = None,
    choices: tuple[str, ...] = (),
) -> str:
    """``value`` if it is a string within the bounds, else InvalidDocument naming ``path``."""
    if not isinstance(value, str):
        raise InvalidDocument(path, f"must be a string, not {kind(value)}")
    if choices and value not in choices:
        raise InvalidDocument(path, f"must be one of {', '.join(choices)}, not {value!r}")
    if len(value) > max_length:
        raise InvalidDocument(path, f"is longer than {max_length} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise InvalidDocument(path, f"{value!r} does not match {pattern.pattern}")
    return value
