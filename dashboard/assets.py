"""The browser files of ``static/``, served compressed and cached, read once at start.

Every file the page loads is read at start, hashed (SHA-256) and gzipped once (level 9), so a
request costs no disk read and no compression. The page (``index.html``) names each script and
stylesheet with its hash (``/static/map.js?v=3f2a…``): a request whose ``v`` is the file's hash
may be kept for a year (``immutable``), since another file would have another hash; a request
without it (plotly's fetch of the world topojson, an old page) is ``no-cache`` and revalidates
with its ETag, answered ``304 Not Modified`` when it has not changed. The page itself is
``no-cache``, so a new release is seen at the next load.

A browser that accepts gzip gets the gzipped bytes with ``Content-Encoding: gzip``; every answer
says ``Vary: Accept-Encoding``. Only these files are compressed, never an API answer that could
hold a secret next to text an attacker chose (BREACH). Paths are an allowlist: what was not read
at start is 404, whatever its spelling.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from starlette.requests import Request
from starlette.responses import Response

TYPES = {
    ".js": "application/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}
"""What is served, by extension (no .py, no licence text: those ship, but are not the page's)."""
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
GZIP_MIN_BYTES = 512
"""Smaller files are sent as they are: gzip would save less than its own headers."""
_REFERENCE = re.compile(r'(?P<attr>(?:src|href)=")/static/(?P<name>[A-Za-z0-9_.-]+\.(?:js|css))"')


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    media_type: str
    digest: str
    """The first 16 hex digits of the SHA-256 of ``body``: the version in the page's links and the ETag."""

    @property
    def etag(self) -> str:
        return f'"{self.digest}"'


def _asset(body: bytes, media_type: str) -> Asset:
    packed = gzip.compress(body, compresslevel=9, mtime=0) if len(body) >= GZIP_MIN_BYTES else None
    if packed is not None and len(packed) >= len(body):
        packed = None
    return Asset(body, packed, media_type, hashlib.sha256(body).hexdigest()[:16])


def _walk(root: Traversable, prefix: str = "") -> dict[str, Asset]:
    found: dict[str, Asset] = {}
    for entry in root.iterdir():
        name = f"{prefix}{entry.name}"
        if entry.is_dir():
            found.update(_walk(entry, f"{name}/"))
            continue
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if suffix in TYPES:
            found[name] = _asset(entry.read_bytes(), TYPES[suffix])
    return found


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header takes gzip (a ``q=0`` refuses it)."""
    for part in header.lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            try:
                return params.strip() == "" or float(q) > 0
            except ValueError:
                return False
    return False


class Assets:
    """The files of the ``static`` package, and the page with its links versioned."""

    def __init__(self, root: Traversable | None = None) -> None:
        self.files = _walk(root if root is not None else resources.files("static"))
        page = self.files["index.html"]
        html = _REFERENCE.sub(self._versioned, page.body.decode())
        self.page = _asset(html.encode(), page.media_type)

    def _versioned(self, m: re.Match[str]) -> str:
        found = self.files.get(m["name"])
        if found is None:
            raise ValueError(f"index.html names /static/{m['name']}, which is not in static/")
        return f'{m["attr"]}/static/{m["name"]}?v={found.digest}"'

    def url(self, name: str) -> str:
        return f"/static/{name}?v={self.files[name].digest}"

    def index(self, request: Request) -> Response:
        return self.answer(request, self.page, REVALIDATE)

    def static(self, request: Request) -> Response:
        name = str(request.path_params["path"])
        found = self.files.get(name)
        if found is None:
            return Response(b"not found\n", status_code=404, media_type="text/plain")
        cache = IMMUTABLE if request.query_params.get("v") == found.digest else REVALIDATE
        return self.answer(request, found, cache)

    def answer(self, request: Request, asset: Asset, cache: str) -> Response:
        headers = {"cache-control": cache, "etag": asset.etag, "vary": "Accept-Encoding"}
        if asset.etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        if asset.gzipped is not None and accepts_gzip(request.headers.get("accept-encoding", "")):
            headers["content-encoding"] = "gzip"
            return Response(asset.gzipped, media_type=asset.media_type, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)
