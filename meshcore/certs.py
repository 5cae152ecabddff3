"""A development certificate authority for the mesh: the CA, region and client certificates.

The identity a relay proves is its region, not a host name (see :mod:`meshcore.tls`), so every
certificate carries exactly one SAN URI, ``meshscope://region/<id>`` or ``meshscope://client/<name>``.
A region certificate is both a server and a client certificate (ExtendedKeyUsage serverAuth and
clientAuth), since one relay accepts mesh links and dials them with the same identity; it also names
``localhost``, ``127.0.0.1``, ``::1`` and any extra hosts, so ordinary HTTPS clients that check host
names accept it. A client certificate is clientAuth only: OpenSSL will not accept it as a server's.

Keys are ECDSA P-256 and signatures SHA-256: small, fast handshakes, accepted everywhere TLS 1.2 is.

Validity. The CA lasts 10 years: it is the trust root copied to every host, so replacing it means
redistributing it and re-issuing everything, and this tool is for development meshes, where an
expiring root is only a surprise. Leaf certificates last one year by default: below the 398 days
browsers allow a server certificate and Apple's 825 days for any TLS server certificate (so the
dashboard's certificate works in a browser that trusts the dev CA), and short enough that rotation
gets exercised. Rotating is cheap: running the command again reuses the CA and re-issues the named
certificates. ``not_valid_before`` is set five minutes back, for clocks that disagree a little.

Functions that make certificates are pure (PEM bytes in, PEM bytes out); :func:`write_bundle` is
the thin layer that reads an existing CA and writes files, keys with mode 0600, each file replaced
atomically so a running service never reads half a certificate.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcore.tls import Identity

CA_DAYS = 3650
"""Validity of a new development CA (10 years; see the module docstring)."""
CERT_DAYS = 365
"""Default validity of region and client certificates (1 year; see the module docstring)."""
CLOCK_SKEW = dt.timedelta(minutes=5)
"""How far back ``not_valid_before`` is set."""
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
"""Host names every region certificate carries."""
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
ORGANIZATION = "meshscope"

_DNS_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
_CERT_MODE = 0o644
_KEY_MODE = 0o600


class CaUnusable(Exception):
    """The CA on disk cannot sign: a file is missing, the key does not match, it is no CA, or it expired."""


@dataclass(frozen=True, slots=True)
class PemPair:
    """A certificate and its private key, both PEM (the key unencrypted PKCS#8)."""

    cert: bytes
    key: bytes


@dataclass(frozen=True, slots=True)
class Bundle:
    """What :func:`write_bundle` did."""

    ca_reused: bool
    ca_not_after: dt.datetime
    written: tuple[Path, ...]
    stale: tuple[Path, ...]
    """Certificates left in the directory that a new CA (``force``) no longer vouches for."""


def new_ca(*, days: int = CA_DAYS, now: dt.datetime | None = None) -> PemPair:
    """A self-signed CA that may sign leaf certificates only (path length 0).

    Its name ends in random hex: two dev CAs with one name confuse OpenSSL's issuer lookup, and its
    errors, when a certificate from one meets a trust store holding the other.
    """
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshscope development CA {secrets.token_hex(4)}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=_positive(days)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return PemPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(
    ca: PemPair,
    identity: Identity,
    *,
    hosts: Sequence[str] = (),
    days: int = CERT_DAYS,
    now: dt.datetime | None = None,
) -> PemPair:
    """A certificate for ``identity`` signed by ``ca``; a region's also names LOCAL_HOSTS and ``hosts``.

    Raises ValueError for a bad host or a validity that would outlive the CA, CaUnusable for a bad CA.
    """
    now = now or dt.datetime.now(dt.UTC)
    ca_cert, ca_key = _load_ca(ca, now)
    not_after = now + dt.timedelta(days=_positive(days))
    if not_after > ca_cert.not_valid_after_utc:
        raise ValueError(
            f"{days} days would outlive the CA (valid until {ca_cert.not_valid_after_utc:%Y-%m-%d});"
            " ask for fewer days or make a new CA"
        )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if identity.kind == "region":
        names.extend(host_names([*LOCAL_HOSTS, *hosts]))
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    elif hosts:
        raise ValueError("host names belong on region certificates, which serve; a client certificate only dials")
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.kind),
                    x509.NameAttribute(NameOID.COMMON_NAME, identity.name[:64]),  # only informative: see the URI
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return PemPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """SAN entries for host names and IP addresses, duplicates dropped; ValueError for anything else."""
    out: list[x509.GeneralName] = []
    for raw in hosts:
        host = raw.strip().lower()
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            if not _DNS_NAME.fullmatch(host):
                raise ValueError(f"host {raw!r} is neither an IP address nor a DNS name") from None
            entry = x509.DNSName(host)
        if entry not in out:
            out.append(entry)
    return out


def file_stem(identity: Identity) -> str:
    """``region-aws_us-east-1`` for ``aws:us-east-1``: ``_`` is outside the name grammar, so it cannot clash."""
    return f"{identity.kind}-{identity.name.replace(':', '_')}"


def write_bundle(
    out: Path,
    identities: Sequence[Identity],
    *,
    hosts: Sequence[str] = (),
    days: int = CERT_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Bundle:
    """Write a certificate and key per identity into ``out``, signed by the CA there (made when absent).

    An existing CA is reused unless ``force``, which replaces it. Everything is issued in memory before
    the first file is written, so a bad name or host leaves the directory as it was.
    """
    now = now or dt.datetime.now(dt.UTC)
    host_names(hosts)  # refuse a bad host even when no region is named
    ca_cert_path, ca_key_path = out / CA_CERT_FILE, out / CA_KEY_FILE
    ca_exists = ca_cert_path.exists() or ca_key_path.exists()
    if ca_exists and not force:
        try:
            ca = PemPair(ca_cert_path.read_bytes(), ca_key_path.read_bytes())
        except OSError as exc:
            raise CaUnusable(
                f"{out} holds an incomplete CA ({exc.filename}: {exc.strerror}); restore it, or --force a new one"
            ) from None
        _load_ca(ca, now)
    else:
        ca = new_ca(now=now)
    issued = {
        file_stem(i): issue(ca, i, hosts=hosts if i.kind == "region" else (), days=days, now=now) for i in identities
    }

    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    written: list[Path] = []
    if not ca_exists or force:
        written += [_write(ca_cert_path, ca.cert, _CERT_MODE), _write(ca_key_path, ca.key, _KEY_MODE)]
    for stem, pair in issued.items():
        written += [
            _write(out / f"{stem}.pem", pair.cert, _CERT_MODE),
            _write(out / f"{stem}.key", pair.key, _KEY_MODE),
        ]
    stale: tuple[Path, ...] = ()
    if ca_exists and force:
        leaves = [*out.glob("region-*.pem"), *out.glob("client-*.pem")]
        stale = tuple(sorted(p for p in leaves if p not in written))
    ca_not_after = x509.load_pem_x509_certificate(ca.cert).not_valid_after_utc
    return Bundle(ca_reused=ca_exists and not force, ca_not_after=ca_not_after, written=tuple(written), stale=stale)


def _load_ca(ca: PemPair, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca.cert)
        key = serialization.load_pem_private_key(ca.key, password=None)
    except (ValueError, TypeError) as exc:
        raise CaUnusable(f"the CA certificate or key does not parse: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaUnusable("the CA key is not an ECDSA key")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise CaUnusable("the CA key does not belong to the CA certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        raise CaUnusable("the CA certificate lacks basicConstraints or subjectKeyIdentifier") from None
    if not constraints.ca:
        raise CaUnusable("the CA certificate is not a CA (basicConstraints ca=false)")
    if cert.not_valid_after_utc <= now:
        raise CaUnusable(f"the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}; make a new one")
    return cert, key


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _positive(days: int) -> int:
    if days < 1:
        raise ValueError(f"validity of {days} days: it must be at least 1")
    return days


def _write(path: Path, data: bytes, mode: int) -> Path:
    """Replace ``path`` atomically; the mode is set before any byte lands, so a key is never readable by others."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
