"""Topics and subscription patterns, matched as NATS subjects are.

Grammar (the whole of it; a topic is the CloudEvents ``type`` attribute)::

    topic    = token *( "." token )               ; at most 255 characters
    pattern  = ">" / segment *( "." segment ) [ ".>" ]
    segment  = token / "*"
    token    = 1*tchar
    tchar    = %x21-29 / %x2B-2D / %x2F-3D / %x3F-7E
             ; printable ASCII except "." (the separator), "*" and ">"

``*`` matches exactly one token and ``>`` (only as the last token) one or more
remaining tokens; both are whole tokens or nothing, and never appear in a
topic. Only printable ASCII is allowed, with no space: a topic travels in
metric labels, log lines, Redis keys and WebSocket close reasons, where white
space, control characters and look-alike Unicode would split, corrupt or
disguise it. Both grammars are one regex each, compiled once, so checking is a
single C-level match; the slow path only runs to say what is wrong.

Matching is pure string work with no I/O; ``PatternSet`` caches answers per
topic because a relay sees the same few topics millions of times, and the set
is rebuilt (not mutated) when interest changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


class InvalidTopic(ValueError):
    """A topic or subscription pattern that does not follow the token grammar."""


MAX_TOPIC_LENGTH = 255
_TCHAR = r"[\x21-\x29\x2b-\x2d\x2f-\x3d\x3f-\x7e]"
_TOPIC = re.compile(rf"{_TCHAR}+(?:\.{_TCHAR}+)*")
_SEGMENT = rf"(?:{_TCHAR}+|\*)"
_PATTERN = re.compile(rf">|{_SEGMENT}(?:\.{_SEGMENT})*(?:\.>)?")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]*")


def _refuse(text: object, what: str) -> InvalidTopic:
    """The error for ``text`` that failed its grammar, saying which rule it broke."""
    if not isinstance(text, str) or not text:
        return InvalidTopic(f"{what} must be a non-empty string")
    if len(text) > MAX_TOPIC_LENGTH:
        return InvalidTopic(f"{what} is longer than {MAX_TOPIC_LENGTH} characters")
    if not _PRINTABLE_ASCII.fullmatch(text):
        return InvalidTopic(f"{what} {text!r} may hold only printable ASCII without spaces (0x21-0x7E)")
    tokens = text.split(".")
    if any(not token for token in tokens):
        return InvalidTopic(f"{what} {text!r} has an empty token")
    if what == "topic":
        return InvalidTopic(f"topic {text!r} contains a wildcard; wildcards are for subscriptions")
    if ">" in tokens[:-1]:
        return InvalidTopic(f"pattern {text!r}: '>' must be the last token")
    return InvalidTopic(f"pattern {text!r}: a wildcard must be a whole token")


_VALID_TOPICS: set[str] = set()


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a publishable topic (no wildcards), else raise InvalidTopic.

    Valid topics are remembered (a relay sees the same few over and over).
    """
    if not isinstance(topic, str):
        raise _refuse(topic, "topic")
    if topic in _VALID_TOPICS:
        return topic
    if len(topic) > MAX_TOPIC_LENGTH or not _TOPIC.fullmatch(topic):
        raise _refuse(topic, "topic")
    if len(_VALID_TOPICS) > 100_000:
        _VALID_TOPICS.clear()
    _VALID_TOPICS.add(topic)
    return topic


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid subscription pattern, else raise InvalidTopic."""
    if not isinstance(pattern, str) or len(pattern) > MAX_TOPIC_LENGTH or not _PATTERN.fullmatch(pattern):
        raise _refuse(pattern, "pattern")
    return pattern


def matches(pattern: str, topic: str) -> bool:
    """True when ``topic`` matches subscription ``pattern``."""
    p = pattern.split(".")
    t = topic.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(t) > i
        if i >= len(t):
            return False
        if token != "*" and token != t[i]:
            return False
    return len(p) == len(t)


class PatternSet:
    """An immutable set of patterns with a per-topic answer cache."""

    __slots__ = ("_cache", "patterns")

    def __init__(self, patterns: Iterable[str] = ()):
        self.patterns: frozenset[str] = frozenset(patterns)
        self._cache: dict[str, bool] = {}

    def matches(self, topic: str) -> bool:
        hit = self._cache.get(topic)
        if hit is None:
            hit = any(matches(p, topic) for p in self.patterns)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[topic] = hit
        return hit

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PatternSet) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    def __repr__(self) -> str:
        return f"PatternSet({sorted(self.patterns)!r})"
