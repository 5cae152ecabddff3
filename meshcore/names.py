"""Grammars of the names that cross trust boundaries: regions, principals, groups, consumers.

Every one of these ends up in Redis keys, Prometheus labels, ClickHouse rows
and the dashboard, so each is an allowlist checked once where it enters:

- region id: ``provider:name``; lower-case letters, digits and ``-``, each
  part starting with a letter or digit, at most 32 + 64 characters
  (``aws:us-east-1``, ``gcp:europe-west1``, ``onprem:dc1``);
- principal: 1-128 characters of letters, digits and ``._:@-`` (``billing-svc``,
  ``relay:aws:us-east-1``, ``ci@example.org``);
- durable group and consumer names: 1-64 characters of letters, digits, ``_`` and ``-``.
"""

from __future__ import annotations

import re

REGION_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}:[a-z0-9][a-z0-9-]{0,63}")
PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
GROUP = re.compile(r"[A-Za-z0-9_-]{1,64}")
SPAN_ID = re.compile(r"[0-9a-f]{16}")


class InvalidName(ValueError):
    """A name that does not follow its grammar; the message says which grammar."""


def is_region_id(text: object) -> bool:
    return isinstance(text, str) and REGION_ID.fullmatch(text) is not None


def region_id(text: object) -> str:
    if not is_region_id(text):
        raise InvalidName(
            f"region id {str(text)[:80]!r} must be provider:name in lower-case letters, digits and '-' "
            "(e.g. aws:us-east-1)"
        )
    return str(text)


def principal_name(text: object) -> str:
    if not isinstance(text, str) or PRINCIPAL.fullmatch(text) is None:
        raise InvalidName(f"principal name {str(text)[:80]!r} must be 1-128 letters, digits or ._:@-")
    return text


def group_name(text: object, what: str = "group") -> str:
    if not isinstance(text, str) or GROUP.fullmatch(text) is None:
        raise InvalidName(f"{what} name {str(text)[:80]!r} must be 1-64 letters, digits, '_' or '-'")
    return text
