"""Who wants a topic: subscriptions indexed by pattern in a token trie, with a cache of answers.

A relay matched every event against every live subscriber's patterns, so an
event's cost grew with the number of subscribers (10,000 subscribers: 10,000
cache lookups an event, even for a topic nobody wants). ``SubList`` is
NATS's sublist in small: patterns are stored token by token (``*`` and ``>``
as children of their own), a topic walks only the branches that can match
it, and the answer for a topic is cached until the subscriptions change.
Matching follows ``meshcore.topic.matches`` exactly (a property test holds it
to that). No I/O.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")

CACHE_MAX = 4096
"""Topics whose answers are kept; the cache starts over when it is full or a subscription changes."""


class _Node(Generic[T]):
    __slots__ = ("children", "ends", "rest", "star")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.star: _Node[T] | None = None
        self.ends: dict[T, None] = {}  # patterns that end here
        self.rest: dict[T, None] = {}  # patterns with ">" here: one or more tokens more

    def empty(self) -> bool:
        return not (self.children or self.star or self.ends or self.rest)


class SubList(Generic[T]):
    """Items subscribed under patterns; ``match(topic)`` gives each item whose pattern matches, once."""

    def __init__(self, cache_max: int = CACHE_MAX) -> None:
        self._root: _Node[T] = _Node()
        self._cache: dict[str, tuple[T, ...]] = {}
        self._cache_max = cache_max
        self.size = 0

    def insert(self, pattern: str, item: T) -> None:
        """Subscribe ``item`` under a valid pattern (``meshcore.topic.validate_pattern``)."""
        node = self._root
        tokens = pattern.split(".")
        for token in tokens[:-1]:
            node = self._child(node, token)
        last = tokens[-1]
        if last == ">":
            added = item not in node.rest
            node.rest[item] = None
        else:
            node = self._child(node, last)
            added = item not in node.ends
            node.ends[item] = None
        self.size += added
        self._cache.clear()

    def remove(self, pattern: str, item: T) -> None:
        """Take ``item``'s subscription under ``pattern`` away (nothing happens when it has none)."""
        path: list[tuple[_Node[T], str]] = []
        node: _Node[T] | None = self._root
        tokens = pattern.split(".")
        for token in tokens[:-1] if tokens[-1] == ">" else tokens:
            assert node is not None
            path.append((node, token))
            node = node.star if token == "*" else node.children.get(token)
            if node is None:
                return
        assert node is not None
        held = node.rest if tokens[-1] == ">" else node.ends
        if item not in held:
            return
        del held[item]
        self.size -= 1
        self._cache.clear()
        for parent, token in reversed(path):  # prune the branch it leaves empty
            if not node.empty():
                break
            if token == "*":
                parent.star = None
            else:
                del parent.children[token]
            node = parent

    def match(self, topic: str) -> tuple[T, ...]:
        """Every item with a pattern that matches ``topic`` (a valid topic), each once."""
        hit = self._cache.get(topic)
        if hit is not None:
            return hit
        found: dict[T, None] = {}
        _collect(self._root, topic.split("."), 0, found)
        result = tuple(found)
        if len(self._cache) >= self._cache_max:
            self._cache.clear()
        self._cache[topic] = result
        return result

    @staticmethod
    def _child(node: _Node[T], token: str) -> _Node[T]:
        if token == "*":
            if node.star is None:
                node.star = _Node()
            return node.star
        child = node.children.get(token)
        if child is None:
            child = node.children[token] = _Node()
        return child


def _collect(node: _Node[T], tokens: list[str], i: int, found: dict[T, None]) -> None:
    if i == len(tokens):
        found.update(node.ends)
        return
    if node.rest:
        found.update(node.rest)
    child = node.children.get(tokens[i])
    if child is not None:
        _collect(child, tokens, i + 1, found)
    if node.star is not None:
        _collect(node.star, tokens, i + 1, found)
