"""Principals: who is calling, from a bearer token or a client certificate.

Tokens are stored as SHA-256 hashes, never in clear. A token is 32 random
bytes (``meshscope token`` makes one), so a fast hash is enough: nobody can
guess a preimage, and a leaked principals file gives no usable token. Lookup is
by the hash of what was presented; comparing hashes of secrets leaks nothing an
attacker can use, as with the tokens of most hosted APIs.

The principals file (``MESHSCOPE_AUTH_FILE``, TOML)::

    [principals.billing-svc]
    token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    groups = ["producers", "payments"]
    roles = ["viewer", "sql"]          # dashboard roles; "admin" may change governance

    [principals."relay:aws:us-east-1"]
    token_sha256 = "..."
    region = "aws:us-east-1"           # may open /v1/mesh as this region (links without mTLS)

A client certificate whose SAN names ``meshscope://client/NAME`` is the
principal NAME (with the groups and roles of its entry, when there is one); a
region certificate ``meshscope://region/ID`` is the relay principal
``relay:ID`` speaking for that region.
"""

from __future__ import annotations

import hashlib
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshcore.names import InvalidName, principal_name, region_id
from meshcore.settings import SettingError

TOKEN_PREFIX = "ms_"
ROLES = frozenset(("viewer", "sql", "admin"))
_ENTRY_KEYS = frozenset(("token_sha256", "groups", "roles", "region"))
VIA_TOKEN, VIA_CERT, VIA_ANONYMOUS = "token", "cert", "anonymous"


class AuthConfigError(SettingError):
    """A principals file that cannot be used; the message names the place."""


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    groups: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    region: str | None = None  # set for relays: the region this principal speaks for
    via: str = VIA_TOKEN

    @property
    def anonymous(self) -> bool:
        return self.via == VIA_ANONYMOUS

    def has_role(self, role: str) -> bool:
        return role in self.roles


ANONYMOUS = Principal("anonymous", frozenset(), frozenset(ROLES), None, VIA_ANONYMOUS)


def new_token() -> str:
    """A fresh bearer token: 32 random bytes, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_of(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or len(value) > 512:
        return None
    return value


@dataclass(frozen=True)
class Authenticator:
    """Answers who a token or certificate identity is; knows nothing of HTTP."""

    by_hash: Mapping[str, Principal] = field(default_factory=dict)
    by_name: Mapping[str, Principal] = field(default_factory=dict)
    allow_anonymous: bool = False

    @property
    def configured(self) -> bool:
        return bool(self.by_name)

    def from_token(self, token: str | None) -> Principal | None:
        if not token:
            return None
        return self.by_hash.get(token_hash(token))

    def from_certificate(self, kind: str, name: str) -> Principal | None:
        """The principal of a verified client certificate (``kind`` region or client)."""
        if kind == "region":
            try:
                rid = region_id(name)
            except InvalidName:
                return None
            known = self.by_name.get(f"relay:{rid}")
            groups = known.groups if known else frozenset()
            return Principal(f"relay:{rid}", groups, frozenset(), rid, VIA_CERT)
        if kind == "client":
            try:
                principal_name(name)
            except InvalidName:
                return None
            known = self.by_name.get(name)
            if known is None:
                return Principal(name, frozenset(), frozenset(), None, VIA_CERT)
            return Principal(name, known.groups, known.roles, known.region, VIA_CERT)
        return None

    def with_principal(self, principal: Principal, token: str) -> Authenticator:
        """A copy that also knows ``principal`` by ``token`` (for tokens made at start-up)."""
        by_hash = {**self.by_hash, token_hash(token): principal}
        return Authenticator(by_hash, {**self.by_name, principal.name: principal}, self.allow_anonymous)


def parse_principals(data: Mapping[str, Any], allow_anonymous: bool = False) -> Authenticator:
    """Build an Authenticator from the decoded principals document; raise AuthConfigError naming the place."""
    unknown = set(data) - {"principals"}
    if unknown:
        raise AuthConfigError(f"unknown top-level key(s) {sorted(unknown)}; expected [principals.NAME] tables")
    entries = data.get("principals", {})
    if not isinstance(entries, dict):
        raise AuthConfigError("principals must be a table of [principals.NAME] entries")
    by_hash: dict[str, Principal] = {}
    by_name: dict[str, Principal] = {}
    for name, entry in entries.items():
        where = f"principals.{name}"
        try:
            principal_name(name)
        except InvalidName as exc:
            raise AuthConfigError(f"{where}: {exc}") from None
        if not isinstance(entry, dict):
            raise AuthConfigError(f"{where} must be a table")
        extra = set(entry) - _ENTRY_KEYS
        if extra:
            raise AuthConfigError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(_ENTRY_KEYS)}")
        groups = _strings(entry.get("groups", []), f"{where}.groups")
        roles = _strings(entry.get("roles", []), f"{where}.roles")
        if not roles <= ROLES:
            raise AuthConfigError(f"{where}.roles: unknown role(s) {sorted(roles - ROLES)}; roles are {sorted(ROLES)}")
        region = entry.get("region")
        if region is not None:
            try:
                region = region_id(region)
            except InvalidName as exc:
                raise AuthConfigError(f"{where}.region: {exc}") from None
        principal = Principal(name, groups, roles, region, VIA_TOKEN)
        by_name[name] = principal
        digest = entry.get("token_sha256")
        if digest is not None:
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise AuthConfigError(f"{where}.token_sha256 must be 64 lower-case hex digits (sha256 of the token)")
            if digest in by_hash:
                raise AuthConfigError(f"{where}.token_sha256 is also the token of {by_hash[digest].name}")
            by_hash[digest] = principal
    return Authenticator(by_hash, by_name, allow_anonymous)


def load_principals(path: str | None, allow_anonymous: bool = False) -> Authenticator:
    if not path:
        return Authenticator(allow_anonymous=allow_anonymous)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise AuthConfigError(f"cannot read the principals file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AuthConfigError(f"the principals file {path} is not valid TOML: {exc}") from None
    return parse_principals(data, allow_anonymous)


def principal_entry(
    name: str,
    token: str,
    groups: list[str] | None = None,
    roles: list[str] | None = None,
    region: str | None = None,
) -> str:
    """The TOML entry for a principal with this token (what ``meshscope token`` prints).

    A relay's principal (``relay:<region>``) is bound to its region unless ``region`` says otherwise.
    """
    principal_name(name)
    for group in groups or ():
        principal_name(group)  # the same grammar, so the entry is valid TOML
    unknown = set(roles or ()) - ROLES
    if unknown:
        raise AuthConfigError(f"unknown role(s) {sorted(unknown)}; roles are {sorted(ROLES)}")
    if region is None and name.startswith("relay:"):
        region = name.removeprefix("relay:")
    lines = [f'[principals."{name}"]', f'token_sha256 = "{token_hash(token)}"']
    if region is not None:
        lines.append(f'region = "{region_id(region)}"')
    if groups:
        lines.append("groups = [" + ", ".join(f'"{g}"' for g in groups) + "]")
    if roles:
        lines.append("roles = [" + ", ".join(f'"{r}"' for r in roles) + "]")
    return "\n".join(lines) + "\n"


def _strings(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 128 for v in value):
        raise AuthConfigError(f"{where} must be a list of names")
    return frozenset(value)
