"""The relay's exception tree.

RelayError
├── InvalidInput            the producer or a peer sent something we refuse (remote)
│   ├── MalformedEvent      not JSON, or a CloudEvents attribute missing/invalid/over a limit (400)
│   ├── EventTooLarge       over the configured size limit (413)
│   └── UnsupportedMediaType  a content type that is no CloudEvents mode we read (415)
├── FrameError              a mesh or stream frame we cannot decode (protocol abuse)
├── Backpressure            our queues are full; the caller should retry later (429)
InvalidTopic                a topic or pattern that breaks the grammar (meshcore.topic)
StreamUnavailable           Redis refused or dropped us (meshcore.errors; translated at the call site)
"""

from __future__ import annotations

from meshcore.errors import StreamUnavailable
from meshcore.topic import InvalidTopic


class RelayError(Exception):
    """Root of every error the relay raises on purpose."""


class InvalidInput(RelayError):
    """Input from outside the relay that it refuses; nothing of it is routed."""


class MalformedEvent(InvalidInput):
    """An event that is not valid CloudEvents 1.0 structured JSON."""

    def __init__(self, message: str, attribute: str | None = None, index: int | None = None, event: object = None):
        super().__init__(message)
        self.attribute = attribute
        self.index = index
        self.event = event  # the refused event as decoded, when there was one

    def at(self, index: int) -> MalformedEvent:
        """The same error, placed at position ``index`` of a batch."""
        return MalformedEvent(str(self), self.attribute, index, self.event)


class EventTooLarge(InvalidInput):
    """A body, frame or event over the configured byte limit."""

    def __init__(self, size: int, limit: int, index: int | None = None):
        super().__init__(f"{size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit
        self.index = index


class UnsupportedMediaType(InvalidInput):
    """A request whose content type is neither a CloudEvents JSON format nor binary mode we can read."""


class FrameError(RelayError):
    """A mesh or stream frame that cannot be decoded."""


class Backpressure(RelayError):
    """The relay's queues are full; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


__all__ = [
    "Backpressure",
    "EventTooLarge",
    "FrameError",
    "InvalidInput",
    "InvalidTopic",
    "MalformedEvent",
    "RelayError",
    "StreamUnavailable",
    "UnsupportedMediaType",
]
