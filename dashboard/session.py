"""Signed session cookies for the dashboard, with no I/O.

Why a signed cookie and no session table: a browser signs in once with a bearer token
(``/login``) and from then on carries a cookie that says "principal NAME until EXPIRY", with an
HMAC-SHA256 over both under a server secret. The dashboard keeps no state per session, several
dashboards with the same secret accept each other's cookies, and a dashboard whose secret is
random per process (no ``MESHSCOPE_DASHBOARD_SECRET``) ends every session when it restarts.

Only the name travels. Roles are looked up in the principals file on every request, so a
principal whose roles change or who is removed has that applied at the dashboard's next start,
without waiting for its cookies to expire. Nothing else identifies a session, so a cookie cannot
be revoked one by one: changing the secret revokes all of them.

The value is ``v1.<name, base64url>.<expiry, unix seconds>.<mac, base64url>``. Verification
checks the length and shape first, compares MACs in constant time (:func:`hmac.compare_digest`),
then the expiry: expired cookies and cookies that claim to outlive the configured lifetime are
refused alike.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

SESSION_TTL_S = 12 * 3600
"""How long a sign-in lasts (12 h)."""
COOKIE_NAME = "meshscope_session"
"""The cookie's name over plain HTTP."""
SECURE_COOKIE_NAME = "__Host-meshscope_session"
"""The cookie's name over HTTPS: browsers keep a ``__Host-`` cookie only with Secure, Path=/ and no Domain."""
MAX_COOKIE_CHARS = 1024
"""Longest cookie value looked at; anything longer is refused unread."""
MIN_SECRET_BYTES = 32
"""Shortest signing secret accepted."""

_VERSION = "v1"
_SHAPE = re.compile(r"v1\.([A-Za-z0-9_-]{1,512})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})")
_CONTEXT = b"meshscope-dashboard-session\x00"  # domain separation: this key signs nothing else
_CLOCK_SKEW_S = 60


def cookie_name(secure: bool) -> str:
    """The cookie's name: ``__Host-`` prefixed over HTTPS, where browsers enforce what the prefix promises."""
    return SECURE_COOKIE_NAME if secure else COOKIE_NAME


def set_cookie(value: str, max_age_s: int, secure: bool) -> str:
    """The ``Set-Cookie`` value: HttpOnly, SameSite=Strict, Path=/, Secure over HTTPS; an empty value expires it."""
    attributes = [f"{cookie_name(secure)}={value}", f"Max-Age={max(0, max_age_s)}", "Path=/", "HttpOnly"]
    attributes.append("SameSite=Strict")
    if secure:
        attributes.append("Secure")
    return "; ".join(attributes)


class SessionCodec:
    """Issues and verifies session cookie values under one secret."""

    def __init__(self, secret: bytes, ttl_s: float = SESSION_TTL_S):
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"a session secret needs at least {MIN_SECRET_BYTES} bytes, not {len(secret)}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s={ttl_s}: a session must last a positive time")
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, name: str, now_s: float) -> str:
        """A cookie value for principal ``name``, valid for ``ttl_s`` from ``now_s``."""
        expiry = int(now_s + self.ttl_s)
        encoded = _b64(name.encode())
        return f"{_VERSION}.{encoded}.{expiry}.{_b64(self._mac(encoded, expiry))}"

    def verify(self, value: str, now_s: float) -> str | None:
        """The principal name in ``value`` when it is ours, untampered and unexpired; else None."""
        if not value or len(value) > MAX_COOKIE_CHARS:
            return None
        shape = _SHAPE.fullmatch(value)
        if shape is None:
            return None
        encoded, expiry_text, mac_text = shape.groups()
        expiry = int(expiry_text)
        presented = _unb64(mac_text)
        if presented is None or not hmac.compare_digest(presented, self._mac(encoded, expiry)):
            return None
        if expiry <= now_s or expiry > now_s + self.ttl_s + _CLOCK_SKEW_S:
            return None
        raw = _unb64(encoded)
        if raw is None:
            return None
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return None

    def _mac(self, encoded_name: str, expiry: int) -> bytes:
        message = _CONTEXT + f"{_VERSION}.{encoded_name}.{expiry}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
