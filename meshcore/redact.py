"""Credentials taken out of text before it is written to a log: no I/O.

Browsers cannot set headers on a WebSocket, so ``?token=`` in the URL is the
documented way for them to authenticate, and uvicorn logs every WebSocket's
path with its query string; a traceback or an error can quote a header. So
every log line passes through ``redact`` on its way out (``meshcore.logs``),
whatever wrote it, and these lose their values:

- query and form parameters that carry credentials (``token``,
  ``access_token``, ``password``, ``secret``, ``key``, ...);
- ``Authorization`` (and ``Proxy-Authorization``, ``Cookie``,
  ``Set-Cookie``, ``X-Api-Key``) header values, and ``Bearer``/``Basic``
  credentials wherever they appear;
- the dashboard's session cookie, by name;
- anything shaped like a meshscope token (``ms_`` and 32 random bytes in
  base64url), wherever it appears.

A redacted value becomes ``[redacted]``, which holds no quote or backslash,
so a JSON line stays valid JSON.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"

_SECRET_PARAMS = (
    "token|access_token|id_token|refresh_token|api_key|apikey|key|secret|client_secret|password|passwd|pwd"
    "|auth|authorization|session|sessionid|signature|sig|credential|credentials"
)
_VALUE_STOP = "&\\s\"'\\\\#<>"
_PARAM = re.compile(rf"(?i)(^|[?&;\s\"'(/])((?:{_SECRET_PARAMS})=)[^{_VALUE_STOP}]+")
_HEADER = re.compile(
    r"(?i)\b(authorization|proxy-authorization|cookie|set-cookie|x-api-key)(\\?[\"']?\s*[:=]\s*\\?[\"']?)"
    r"[^\"'\\\r\n,}]+"
)
_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+")
_SESSION = re.compile(r"((?:__Host-)?meshscope_session=)[^;\s\"'\\,]+")
_TOKEN = re.compile(r"\bms_[A-Za-z0-9_-]{16,}")
_TRIGGERS = ("=", ":", "ms_", "earer", "asic")


def redact(text: str) -> str:
    """``text`` with every credential it holds replaced by ``[redacted]``."""
    if not any(t in text for t in _TRIGGERS):
        return text
    text = _HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _SESSION.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _TOKEN.sub(f"ms_{REDACTED}", text)
