"""TLS for every listener and the certificate identity that mesh links authenticate with.

Why the pieces look the way they do:

* One server context serves everyone on a port. With a CA configured it asks for a client
  certificate but does not demand one (``CERT_OPTIONAL``): producers with bearer tokens still
  connect without a certificate, while the mesh endpoint refuses a peer whose scope carries no
  region identity. A certificate that *is* presented must chain to the CA, or the handshake fails.
* A relay dialing a peer verifies the chain against the mesh CA but does not check the host
  name. Peers are dialed by whatever address reaches them (an IP, a load balancer, a container
  name, port 0 in tests), and a host name only says "this is the machine the URL names". What the
  mesh needs to know is *which region's relay* answered, and that is what the certificate's SAN
  URI ``meshscope://region/<id>`` states, signed by the mesh CA. The caller compares that identity
  with the region the peer claims, which is stronger than a host name: a valid certificate for
  ``aws:us-east-1`` cannot pose as ``gcp:europe-west1`` wherever it is served from. Client
  certificates carry only the clientAuth usage, so OpenSSL refuses them as server certificates.
  Ordinary HTTPS clients use :func:`https_client_context`, which checks host names as usual.
* uvicorn does not hand TLS details to the app, so :mod:`meshcore.server` attaches the ASGI TLS
  extension to every HTTP and WebSocket scope from :func:`scope_extension`; :func:`peer_identity`
  reads it back. Both ends of that dict live in this module.

Keys of ``scope["extensions"]["tls"]`` (the ASGI TLS extension, plus two meshscope keys)::

    server_cert         None (Python's ssl cannot return the certificate it sent)
    client_cert_chain   tuple of PEM strings: the verified peer certificate, or empty
    client_cert_name    RFC 4514 subject of the peer certificate, or None
    client_cert_error   None (a certificate that fails verification fails the handshake)
    tls_version         int, 0x0303 for TLS 1.2, 0x0304 for TLS 1.3 (as the ASGI spec says)
    cipher_suite        int, the IANA cipher suite number, or None
    client_cert_der     bytes | None: the verified peer certificate (meshscope)
    cipher              str: the OpenSSL cipher name, e.g. TLS_AES_256_GCM_SHA384 (meshscope)
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cryptography import x509

from meshcore import names
from meshcore.settings import SettingError

MESHSCOPE_TLS_CERT = "MESHSCOPE_TLS_CERT"
"""PEM certificate this service presents, as a server and, to its peers, as a client."""
MESHSCOPE_TLS_KEY = "MESHSCOPE_TLS_KEY"
"""PEM private key of ``MESHSCOPE_TLS_CERT``."""
MESHSCOPE_TLS_CA = "MESHSCOPE_TLS_CA"
"""PEM CA that client certificates and mesh peers must chain to; unset: no client certificates."""

TLS_EXTENSION = "tls"
"""Name of the ASGI scope extension that carries the TLS details."""

IDENTITY_SCHEME = "meshscope"
REGION_ID = names.REGION_ID
"""``provider:name``: the one region grammar, from :mod:`meshcore.names`."""
CLIENT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
"""1-64 lower-case letters, digits and ``-``, starting with a letter or digit."""
_GRAMMAR: dict[str, re.Pattern[str]] = {"region": REGION_ID, "client": CLIENT_NAME}
_KINDS: tuple[Literal["region", "client"], ...] = ("region", "client")
_TLS_VERSIONS: dict[str, int] = {"TLSv1.2": ssl.TLSVersion.TLSv1_2.value, "TLSv1.3": ssl.TLSVersion.TLSv1_3.value}


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate says its holder is: a region's relay or a named client."""

    kind: Literal["region", "client"]
    name: str

    def __post_init__(self) -> None:
        grammar = _GRAMMAR.get(self.kind)
        if grammar is None:
            raise ValueError(f"identity kind {self.kind!r} is neither 'region' nor 'client'")
        if not grammar.fullmatch(self.name):
            shape = "provider:name of at most 32:64, e.g. aws:us-east-1" if self.kind == "region" else "at most 64"
            raise ValueError(
                f"{self.kind} {self.name[:100]!r} is not valid: lower-case letters, digits and '-',"
                f" starting with a letter or digit ({shape})"
            )

    @property
    def uri(self) -> str:
        """The SAN URI that carries this identity, ``meshscope://region/aws:us-east-1``."""
        return f"{IDENTITY_SCHEME}://{self.kind}/{self.name}"

    @classmethod
    def from_uri(cls, uri: str) -> Identity | None:
        """The identity a SAN URI names, or None when it is not a valid meshscope identity URI."""
        prefix = f"{IDENTITY_SCHEME}://"
        if not uri.startswith(prefix):
            return None
        text, sep, name = uri[len(prefix) :].partition("/")
        kind = next((k for k in _KINDS if k == text), None)
        if not sep or kind is None:
            return None
        try:
            return cls(kind, name)
        except ValueError:
            return None


def identity_of(der_cert: bytes) -> Identity | None:
    """The identity in a certificate: its only ``meshscope:`` SAN URI, or None (none, several, bad)."""
    try:
        cert = x509.load_der_x509_certificate(der_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    ours = [
        uri
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.lower().startswith(f"{IDENTITY_SCHEME}:")
    ]
    return Identity.from_uri(ours[0]) if len(ours) == 1 else None


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a service's certificate, key and (optionally) the trusted CA live, all PEM."""

    cert: str
    key: str
    ca: str | None = None

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        cert: str | None = None,
        key: str | None = None,
        ca: str | None = None,
    ) -> TlsFiles | None:
        """Arguments, then ``MESHSCOPE_TLS_*``; None when no certificate is configured (plain TCP)."""
        cert = cert or env.get(MESHSCOPE_TLS_CERT) or None
        key = key or env.get(MESHSCOPE_TLS_KEY) or None
        ca = ca or env.get(MESHSCOPE_TLS_CA) or None
        if cert is None and key is None:
            if ca is not None:
                raise SettingError(
                    f"{MESHSCOPE_TLS_CA} is set without {MESHSCOPE_TLS_CERT} and {MESHSCOPE_TLS_KEY}:"
                    " a CA alone turns on no TLS; set the certificate and key too"
                )
            return None
        if key is None:
            raise SettingError(f"{MESHSCOPE_TLS_CERT} is set but {MESHSCOPE_TLS_KEY} is not: TLS needs the key too")
        if cert is None:
            raise SettingError(
                f"{MESHSCOPE_TLS_KEY} is set but {MESHSCOPE_TLS_CERT} is not: TLS needs the certificate too"
            )
        for name, path in ((MESHSCOPE_TLS_CERT, cert), (MESHSCOPE_TLS_KEY, key), (MESHSCOPE_TLS_CA, ca)):
            if path is not None:
                _check_readable(name, path)
        return cls(cert, key, ca)


def _check_readable(name: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise SettingError(f"{name}={path!r} cannot be read: {exc.strerror or exc}") from None


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.2+ for a listener; with ``files.ca`` a client certificate is asked for, verified, not required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    _load_chain(ctx, files)
    if files.ca is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        _load_ca(ctx, files.ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(files: TlsFiles | None, ca: str | None = None) -> ssl.SSLContext:
    """TLS 1.2+ for a relay dialing a peer: the peer must chain to the mesh CA; host names are not checked.

    ``ca`` wins over ``files.ca``. With ``files`` the relay presents its own certificate (mutual TLS).
    The caller must compare :func:`identity_of` of the peer's certificate with the region it expects.
    """
    cafile = ca or (files.ca if files is not None else None)
    if cafile is None:
        raise SettingError(
            f"dialing a mesh peer over TLS needs the mesh CA ({MESHSCOPE_TLS_CA}): host names are not checked,"
            " so the CA is what decides who may answer"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca(ctx, cafile)
    if files is not None:
        _load_chain(ctx, files)
    return ctx


def https_client_context(ca: str | None = None) -> ssl.SSLContext:
    """TLS 1.2+ with the usual host name check, trusting only ``ca`` or, without it, the system's CAs."""
    try:
        ctx = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise SettingError(f"TLS CA {ca!r} does not load: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _load_chain(ctx: ssl.SSLContext, files: TlsFiles) -> None:
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise SettingError(f"TLS certificate {files.cert!r} with key {files.key!r} does not load: {exc}") from None


def _load_ca(ctx: ssl.SSLContext, cafile: str) -> None:
    try:
        ctx.load_verify_locations(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise SettingError(f"TLS CA {cafile!r} does not load: {exc}") from None


def scope_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """The ASGI TLS extension for one established connection (see the module docstring for the keys)."""
    der = ssl_object.getpeercert(binary_form=True)
    name: str | None = None
    if der is not None:
        try:
            name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        except ValueError:
            name = None
    cipher = ssl_object.cipher()
    cipher_name = cipher[0] if cipher else ""
    suite = next((c["id"] & 0xFFFF for c in ssl_object.context.get_ciphers() if c["name"] == cipher_name), None)
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": () if der is None else (ssl.DER_cert_to_PEM_cert(der),),
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version or ""),
        "cipher_suite": suite,
        "client_cert_der": der,
        "cipher": cipher_name,
    }


def peer_identity(scope: Mapping[str, Any]) -> Identity | None:
    """The identity in the client certificate of this request's connection; None without TLS or certificate."""
    extension = (scope.get("extensions") or {}).get(TLS_EXTENSION)
    der = extension.get("client_cert_der") if isinstance(extension, Mapping) else None
    return identity_of(der) if isinstance(der, bytes) else None
