"""The grammars CloudEvents attributes are written in, checked whole: no I/O.

CloudEvents 1.0 types its attributes: ``time`` is an RFC 3339 timestamp,
``source`` a URI-reference and ``dataschema`` a URI (RFC 3986),
``datacontenttype`` a media type (RFC 2045/2046), ``data_base64`` base64 (RFC
4648, canonical: the bits a final ``=`` or ``==`` pads are zero, so one value
has one spelling). A check of the shape alone
lets through what no consumer can read: ``2024-13-45T99:99:99Z`` has the shape
of a timestamp, and Python's ``\\d`` also matches Arabic-Indic or fullwidth
digits. So every grammar here is written over ASCII only (no ``\\d``, no
``\\w``), and what a grammar cannot say (days in the month, hour ranges, leap
seconds, IPv6 addresses) is checked on the parsed parts.

RFC 3339, as its ABNF (section 5.6) says: ``T`` and ``Z`` in either case, a
fraction of any length, ``Z`` or a ``+hh:mm``/``-hh:mm`` offset; no space
between date and time (a note of the RFC allows one "for readability", the
grammar does not). Second 60 only where a leap second can be: 23:59:60 UTC on
the last day of June or December.
"""

from __future__ import annotations

import ipaddress
import re

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# RFC 3986, appendix A, over ASCII
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
_SEGMENT = rf"{_PCHAR}*"
_SEGMENT_NZ = rf"{_PCHAR}+"
_SEGMENT_NZ_NC = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}@]|{_PCT})+"
_QUERY = rf"(?:{_PCHAR}|[/?])*"
_USERINFO = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT})*"
_REG_NAME = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})*"
_IP_LITERAL = rf"\[(?:[0-9A-Fa-f:.]+|[vV][0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+)\]"
_AUTHORITY = rf"(?:{_USERINFO}@)?(?P<host>{_IP_LITERAL}|{_REG_NAME})(?::[0-9]*)?"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
_ABEMPTY = rf"(?:/{_SEGMENT})*"
_ABSOLUTE = rf"/(?:{_SEGMENT_NZ}(?:/{_SEGMENT})*)?"
_ROOTLESS = rf"{_SEGMENT_NZ}(?:/{_SEGMENT})*"
_NOSCHEME = rf"{_SEGMENT_NZ_NC}(?:/{_SEGMENT})*"
_TAIL = rf"(?:\?{_QUERY})?(?:#{_QUERY})?"
_URI = re.compile(rf"{_SCHEME}:(?://{_AUTHORITY}{_ABEMPTY}|{_ABSOLUTE}|{_ROOTLESS}|){_TAIL}")
_RELATIVE_REF = re.compile(rf"(?://{_AUTHORITY}{_ABEMPTY}|{_ABSOLUTE}|{_NOSCHEME}|){_TAIL}")

# RFC 9110 5.6.2 tokens and 5.6.4 quoted strings; RFC 2045 media types with parameters
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED_STRING = r'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e]|\\[\t\x20-\x7e])*"'
MEDIA_TYPE = re.compile(rf"({_TOKEN})/({_TOKEN})(.*)", re.S)
"""``type/subtype`` and the rest (its parameters), for a reader that tells the two faults apart."""
MEDIA_PARAM = re.compile(rf"[ \t]*;[ \t]*(?:({_TOKEN})=({_TOKEN}|{_QUOTED_STRING}))?")
"""One ``; name=value`` parameter (an empty one, ``;;``, is allowed as RFC 9110 allows it)."""


_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def is_base64(text: str) -> bool:
    """Whether ``text`` is canonical RFC 4648 base64: the alphabet, padding, and zero pad bits."""
    if _BASE64.fullmatch(text) is None:
        return False
    if text.endswith("=="):
        return _B64_ALPHABET.index(text[-3]) % 16 == 0
    if text.endswith("="):
        return _B64_ALPHABET.index(text[-2]) % 4 == 0
    return True


def is_timestamp(text: str) -> bool:
    """Whether ``text`` is an RFC 3339 ``date-time`` whose every field is in range."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(m.group(k)) for k in range(1, 7))
    if not 1 <= month <= 12 or not 1 <= day <= _days_in(year, month) or hour > 23 or minute > 59 or second > 60:
        return False
    offset_minutes = 0
    if m.group(7):
        off_hour, off_minute = int(m.group(8)), int(m.group(9))
        if off_hour > 23 or off_minute > 59:
            return False
        offset_minutes = (off_hour * 60 + off_minute) * (1 if m.group(7) == "+" else -1)
    if second == 60:
        return _leap_second_possible(year, month, day, hour * 60 + minute - offset_minutes)
    return True


def _days_in(year: int, month: int) -> int:
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _DAYS[month - 1]


def _leap_second_possible(year: int, month: int, day: int, utc_minute: int) -> bool:
    """Whether hh:mm:60 at this offset is 23:59:60 UTC on the last day of June or December."""
    if utc_minute < 0:  # the UTC time is on the previous day
        utc_minute += 24 * 60
        month, day = (month, day - 1) if day > 1 else ((month - 2) % 12 + 1, _days_in(year, (month - 2) % 12 + 1))
    elif utc_minute >= 24 * 60:  # on the next day
        utc_minute -= 24 * 60
        month, day = (month, day + 1) if day < _days_in(year, month) else (month % 12 + 1, 1)
    return utc_minute == 23 * 60 + 59 and (month, day) in ((6, 30), (12, 31))


def is_uri_reference(text: str) -> bool:
    """Whether ``text`` is an RFC 3986 URI-reference (a URI, or a relative reference)."""
    m = _URI.fullmatch(text) or _RELATIVE_REF.fullmatch(text)
    return m is not None and _host_ok(m.group("host"))


def is_uri(text: str) -> bool:
    """Whether ``text`` is an RFC 3986 URI: a scheme, then the rest (absolute, a fragment allowed)."""
    m = _URI.fullmatch(text)
    return m is not None and _host_ok(m.group("host"))


def _host_ok(host: str | None) -> bool:
    """An IP-literal must hold a real IPv6 address (or an IPvFuture); other hosts the grammar decided."""
    if host is None or not host.startswith("[") or host[1:2] in ("v", "V"):
        return True
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        return False
    return True


def media_type(text: str) -> tuple[str, dict[str, str]]:
    """(lower-case ``type/subtype``, parameters) of an RFC 2045 media type; ValueError saying what is wrong."""
    m = MEDIA_TYPE.fullmatch(text)
    if m is None:
        raise ValueError("is not a media type (type/subtype)")
    params: dict[str, str] = {}
    rest, at = m.group(3), 0
    while at < len(rest):
        p = MEDIA_PARAM.match(rest, at)
        if p is None or p.end() == at:
            raise ValueError("has malformed parameters")
        if p.group(1):
            params[p.group(1).lower()] = p.group(2).strip('"')
        at = p.end()
    return f"{m.group(1)}/{m.group(2)}".lower(), params


def is_media_type(text: str) -> bool:
    """Whether ``text`` is an RFC 2045 media type with well-formed parameters."""
    try:
        media_type(text)
    except ValueError:
        return False
    return True
