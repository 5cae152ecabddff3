"""Topics and subscription patterns, matched as NATS subjects are.

A topic is one or more dot-separated tokens (``orders.eu.created``). A pattern may
use ``*`` for exactly one token and ``>`` as its last token for one or more
remaining tokens. Matching is pure string work with no I/O; ``PatternSet``
caches answers per topic because a relay sees the same few topics millions of
times, and the set is rebuilt (not mutated) when interest changes.
"""

from __future__ import annotations

from collections.abc import Iterable


class InvalidTopic(ValueError):
    """A topic or subscription pattern that does not follow the token grammar."""


MAX_TOPIC_LENGTH = 255
_FORBIDDEN = frozenset(" \t\r\n")


def _tokens(text: str, what: str) -> list[str]:
    if not isinstance(text, str) or not text:
        raise InvalidTopic(f"{what} must be a non-empty string")
    if len(text) > MAX_TOPIC_LENGTH:
        raise InvalidTopic(f"{what} is longer than {MAX_TOPIC_LENGTH} characters")
    if any(ch in _FORBIDDEN for ch in text):
        raise InvalidTopic(f"{what} {text!r} contains white space")
    tokens = text.split(".")
    if any(not token for token in tokens):
        raise InvalidTopic(f"{what} {text!r} has an empty token")
    return tokens


_VALID_TOPICS: set[str] = set()


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a publishable topic (no wildcards), else raise InvalidTopic.

    Valid topics are remembered (a relay sees the same few over and over).
    """
    if topic in _VALID_TOPICS:
        return topic
    for token in _tokens(topic, "topic"):
        if "*" in token or ">" in token:
            raise InvalidTopic(f"topic {topic!r} contains a wildcard; wildcards are for subscriptions")
    if len(_VALID_TOPICS) > 100_000:
        _VALID_TOPICS.clear()
    _VALID_TOPICS.add(topic)
    return topic


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid subscription pattern, else raise InvalidTopic."""
    tokens = _tokens(pattern, "pattern")
    for i, token in enumerate(tokens):
        if token == ">":
            if i != len(tokens) - 1:
                raise InvalidTopic(f"pattern {pattern!r}: '>' must be the last token")
        elif token != "*" and ("*" in token or ">" in token):
            raise InvalidTopic(f"pattern {pattern!r}: a wildcard must be a whole token")
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
