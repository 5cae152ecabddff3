"""TLS on real sockets with real certificates from ``meshscope certs``: handshakes, mutual TLS, identities."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import ssl
import stat
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from meshcore.certs import CERT_DAYS, CaUnusable, issue, new_ca
from meshcore.server import Server
from meshcore.settings import SettingError
from meshcore.tls import (
    MESHSCOPE_TLS_CA,
    MESHSCOPE_TLS_CERT,
    MESHSCOPE_TLS_KEY,
    Identity,
    TlsFiles,
    client_context,
    https_client_context,
    identity_of,
    peer_identity,
    server_context,
)
from meshscope.cli import main as cli_main
from tests.conftest import scaled

REGION = "aws:us-east-1"
OTHER_REGION = "gcp:europe-west1"


# ---- certificates: made once by the real command, and a second CA by the pure functions ----


@dataclass(frozen=True)
class Pki:
    dir: Path
    stdout: str

    @property
    def ca(self) -> str:
        return str(self.dir / "ca.pem")

    def files(self, stem: str, ca: bool = True) -> TlsFiles:
        return TlsFiles(str(self.dir / f"{stem}.pem"), str(self.dir / f"{stem}.key"), self.ca if ca else None)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshscope",
            "certs",
            "--out",
            str(out),
            "--regions",
            f"{REGION},{OTHER_REGION}",
            "--clients",
            "ops",
            "--hosts",
            "relay.example.com,10.0.0.5",
        ],
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert done.returncode == 0, done.stderr
    return Pki(out, done.stdout)


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA that issued a certificate for the same region: valid, but not ours."""
    out = tmp_path_factory.mktemp("foreign")
    ca = new_ca()
    leaf = issue(ca, Identity("region", REGION))
    (out / "ca.pem").write_bytes(ca.cert)
    (out / "region-aws_us-east-1.pem").write_bytes(leaf.cert)
    (out / "region-aws_us-east-1.key").write_bytes(leaf.key)
    return Pki(out, "")


# ---- a small app that shows what it sees of TLS, and servers on port 0 ---------------------------


def _seen(scope: Any) -> dict[str, Any]:
    identity = peer_identity(scope)
    tls = scope.get("extensions", {}).get("tls")
    return {
        "identity": None if identity is None else [identity.kind, identity.name],
        "has_cert": tls is not None and tls["client_cert_der"] is not None,
        "tls": None if tls is None else {k: v for k, v in tls.items() if k != "client_cert_der"},
        "scheme": scope["scheme"],
    }


@dataclass
class Seen:
    requests: int = 0
    echoed_bytes: list[int] = field(default_factory=list)


def build_app(seen: Seen) -> Starlette:
    async def who(request: Request) -> JSONResponse:
        seen.requests += 1
        return JSONResponse(_seen(request.scope))

    async def ws_who(websocket: WebSocket) -> None:
        seen.requests += 1
        await websocket.accept()
        await websocket.send_json(_seen(websocket.scope))
        await websocket.close()

    async def ws_echo(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes") or b""
            seen.echoed_bytes.append(len(data))
            await websocket.send_bytes(data)

    return Starlette(
        routes=[Route("/who", who), WebSocketRoute("/ws", ws_who), WebSocketRoute("/echo", ws_echo)],
    )


StartServer = Callable[..., Awaitable[tuple[Server, Seen]]]


@pytest.fixture
async def serve() -> AsyncIterator[StartServer]:
    running: list[Server] = []

    async def start(files: TlsFiles | None, **kwargs: Any) -> tuple[Server, Seen]:
        seen = Seen()
        server = Server(build_app(seen), ssl_context=None if files is None else server_context(files), **kwargs)
        await server.start()
        running.append(server)
        return server, seen

    yield start
    for server in running:
        await server.stop()


def with_cert(ctx: ssl.SSLContext, files: TlsFiles) -> ssl.SSLContext:
    ctx.load_cert_chain(files.cert, files.key)
    return ctx


def raw_exchange(port: int, ctx: ssl.SSLContext, server_hostname: str = "localhost") -> tuple[str, bytes]:
    """One HTTPS request over a plain ``ssl`` socket: the negotiated version and all the bytes that came back."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=scaled(5)) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        tls.sendall(b"GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        return tls.version() or "", data


def raw_get(port: int, ctx: ssl.SSLContext, server_hostname: str = "localhost") -> tuple[str, dict[str, Any]]:
    version, data = raw_exchange(port, ctx, server_hostname)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return version, json.loads(body)


async def ws_who(server: Server, ctx: ssl.SSLContext) -> dict[str, Any]:
    async with websockets.connect(f"{server.ws_url}/ws", ssl=ctx, server_hostname="localhost") as ws:
        seen: dict[str, Any] = json.loads(await ws.recv())
        return seen


# ---- handshakes from standard clients --------------------------------------------------------------


async def test_plain_ssl_socket_handshake(pki: Pki, serve: StartServer) -> None:
    server, _ = await serve(pki.files(f"region-{REGION.replace(':', '_')}"))
    assert server.url.startswith("https://") and server.ws_url.startswith("wss://")
    version, seen = await asyncio.to_thread(raw_get, server.port, https_client_context(pki.ca))
    assert version in ("TLSv1.2", "TLSv1.3")
    assert seen["scheme"] == "https"
    assert seen["tls"]["tls_version"] == {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}[version]
    assert seen["tls"]["cipher"] and isinstance(seen["tls"]["cipher_suite"], int)


async def test_httpx_and_websockets_without_a_client_certificate(pki: Pki, serve: StartServer) -> None:
    server, _ = await serve(pki.files("region-aws_us-east-1"))
    async with httpx.AsyncClient(verify=https_client_context(pki.ca), timeout=scaled(5)) as client:
        seen = (await client.get(f"https://localhost:{server.port}/who")).json()
    assert seen["identity"] is None and seen["has_cert"] is False
    assert seen["tls"]["client_cert_chain"] == [] and seen["tls"]["client_cert_name"] is None
    seen = await ws_who(server, https_client_context(pki.ca))
    assert seen["scheme"] == "wss" and seen["identity"] is None and seen["has_cert"] is False


@pytest.mark.parametrize("fast", [True, False], ids=["httptools", "h11"])
async def test_region_certificate_is_the_peer_identity_over_http_and_websocket(
    pki: Pki, serve: StartServer, fast: bool
) -> None:
    server, _ = await serve(pki.files("region-gcp_europe-west1"), fast=fast)
    mine = pki.files("region-aws_us-east-1")
    async with httpx.AsyncClient(verify=client_context(mine), timeout=scaled(5)) as client:
        seen = (await client.get(f"{server.url}/who")).json()
    assert seen["identity"] == ["region", REGION]
    assert seen["tls"]["client_cert_name"] == "CN=aws:us-east-1,OU=region,O=meshscope"
    assert seen["tls"]["client_cert_chain"][0].startswith("-----BEGIN CERTIFICATE-----")
    assert (await ws_who(server, client_context(mine)))["identity"] == ["region", REGION]
    client_files = pki.files("client-ops")
    assert (await ws_who(server, client_context(client_files)))["identity"] == ["client", "ops"]


async def test_a_certificate_from_another_ca_is_refused_at_the_handshake(
    pki: Pki, foreign_pki: Pki, serve: StartServer
) -> None:
    server, seen = await serve(pki.files("region-aws_us-east-1"))
    impostor = with_cert(https_client_context(pki.ca), foreign_pki.files("region-aws_us-east-1"))
    # a TLS 1.3 client finishes its side first, so the refusal shows as a connection closed unanswered
    try:
        _, reply = await asyncio.to_thread(raw_exchange, server.port, impostor)
    except (ssl.SSLError, ConnectionResetError):
        reply = b""
    assert reply == b""
    impostor.maximum_version = ssl.TLSVersion.TLSv1_2  # here the handshake itself fails: no server Finished
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.to_thread(raw_exchange, server.port, impostor)
    with pytest.raises((ssl.SSLError, ConnectionError, websockets.exceptions.InvalidMessage)):
        await ws_who(server, impostor)
    assert seen.requests == 0


async def test_plain_http_to_a_tls_port_fails(pki: Pki, serve: StartServer) -> None:
    server, seen = await serve(pki.files("region-aws_us-east-1"))
    async with httpx.AsyncClient(timeout=scaled(5)) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"http://127.0.0.1:{server.port}/who")
    assert seen.requests == 0


async def test_without_a_ca_no_client_certificate_is_asked_for(pki: Pki, serve: StartServer) -> None:
    server, _ = await serve(pki.files("region-aws_us-east-1", ca=False))
    presenting = with_cert(https_client_context(pki.ca), pki.files("client-ops"))
    _, seen = await asyncio.to_thread(raw_get, server.port, presenting)
    assert seen["identity"] is None and seen["has_cert"] is False


async def test_plain_servers_add_no_tls_extension(serve: StartServer) -> None:
    server, _ = await serve(None)
    assert server.url.startswith("http://") and server.ws_url.startswith("ws://")
    async with httpx.AsyncClient(timeout=scaled(5)) as client:
        seen = (await client.get(f"{server.url}/who")).json()
    assert seen == {"identity": None, "has_cert": False, "tls": None, "scheme": "http"}


def test_the_extension_works_under_uvloop(pki: Pki) -> None:
    import uvloop  # installed with uvicorn[standard], which the relay runs on

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        server = Server(build_app(Seen()), ssl_context=server_context(pki.files("region-gcp_europe-west1")))
        await server.start()
        try:
            mine = client_context(pki.files("region-aws_us-east-1"))
            async with httpx.AsyncClient(verify=mine, timeout=scaled(5)) as client:
                http_seen = (await client.get(f"{server.url}/who")).json()
            return http_seen, await ws_who(server, mine)
        finally:
            await server.stop()

    http_seen, ws_seen = uvloop.run(scenario())
    assert http_seen["identity"] == ws_seen["identity"] == ["region", REGION]


# ---- the two client contexts -----------------------------------------------------------------------


async def test_mesh_clients_ignore_host_names_and_https_clients_check_them(
    pki: Pki, foreign_pki: Pki, serve: StartServer
) -> None:
    server, _ = await serve(pki.files("region-aws_us-east-1"))
    _, seen = await asyncio.to_thread(raw_get, server.port, client_context(None, pki.ca), "elsewhere.example")
    assert seen["scheme"] == "https"
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        await asyncio.to_thread(raw_get, server.port, https_client_context(pki.ca), "elsewhere.example")
    _, seen = await asyncio.to_thread(raw_get, server.port, https_client_context(pki.ca), "relay.example.com")
    assert seen["scheme"] == "https"
    # the server sends its CA along (OpenSSL builds the chain from the CA it trusts): untrusted here
    with pytest.raises(ssl.SSLCertVerificationError, match="self-signed certificate in certificate chain"):
        await asyncio.to_thread(raw_get, server.port, client_context(None, foreign_pki.ca))


async def test_a_client_certificate_cannot_serve(pki: Pki, serve: StartServer) -> None:
    server, _ = await serve(pki.files("client-ops"))
    with pytest.raises(ssl.SSLCertVerificationError, match="unsuitable certificate purpose"):
        await asyncio.to_thread(raw_get, server.port, client_context(None, pki.ca))


def test_a_mesh_client_context_needs_a_ca() -> None:
    with pytest.raises(SettingError, match=MESHSCOPE_TLS_CA):
        client_context(None, None)


# ---- WebSocket frame limit ------------------------------------------------------------------------


def _oversized_frame_exchange(port: int, max_size: int) -> tuple[int, Close | None]:
    """Echo one message under the limit, then announce a frame far over it and send only its first KiB."""
    protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/echo"))
    with socket.create_connection(("127.0.0.1", port), timeout=scaled(5)) as sock:
        protocol.send_request(protocol.connect())
        sock.sendall(b"".join(protocol.data_to_send()))

        def next_event() -> object:
            while not (events := protocol.events_received()):
                data = sock.recv(65536)
                protocol.receive_data(data)
                if not data:
                    return None
            assert len(events) == 1
            return events[0]

        response = next_event()
        assert isinstance(response, Response) and response.status_code == 101
        protocol.send_binary(b"x" * max_size)
        sock.sendall(b"".join(protocol.data_to_send()))
        echo = next_event()
        assert isinstance(echo, Frame) and echo.opcode is Opcode.BINARY
        announced = 10 << 20
        header = struct.pack("!BBQ", 0x82, 0x80 | 127, announced) + os.urandom(4)
        sock.sendall(header + b"\0" * 1024)
        close = next_event()
        return len(echo.data), Close.parse(close.data) if isinstance(close, Frame) else None


async def test_a_frame_over_ws_max_size_is_refused_from_its_header(serve: StartServer) -> None:
    server, seen = await serve(None, ws_max_size=4096)
    echoed, close = await asyncio.to_thread(_oversized_frame_exchange, server.port, 4096)
    assert echoed == 4096
    assert close is not None and close.code == 1009  # message too big, though only 1 KiB of 10 MiB was sent
    assert seen.echoed_bytes == [4096]


def test_urls_bracket_ipv6_hosts(pki: Pki) -> None:
    context = server_context(pki.files("region-aws_us-east-1"))
    try:
        server = Server(build_app(Seen()), host="::1", ssl_context=context)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert server.url == f"https://[::1]:{server.port}" and server.ws_url == f"wss://[::1]:{server.port}"
    finally:
        server.sock.close()


async def test_a_started_server_leaves_the_signals_to_its_program(serve: StartServer) -> None:
    import signal

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    server, _ = await serve(None)
    async with httpx.AsyncClient() as client:
        assert (await client.get(server.url + "/who")).status_code == 200  # serving, handlers unchanged
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_ws_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ws_max_size"):
        Server(build_app(Seen()), ws_max_size=0)


async def test_keep_alive_requests_over_tls_do_not_wait_on_nagle(pki: Pki, serve: StartServer) -> None:
    server, _ = await serve(pki.files("region-aws_us-east-1"))
    async with httpx.AsyncClient(verify=https_client_context(pki.ca), timeout=scaled(5)) as client:
        await client.get(f"https://localhost:{server.port}/who")
        started = time.perf_counter()
        for _ in range(40):
            await client.get(f"https://localhost:{server.port}/who")
        elapsed = time.perf_counter() - started
    # with Nagle on, each response waits ~40 ms for a delayed ACK: 40 requests take over 1.5 s
    assert elapsed < scaled(0.8), f"40 keep-alive requests took {elapsed:.2f} s: Nagle is delaying responses"


# ---- identities --------------------------------------------------------------------------------------


def test_identity_grammar() -> None:
    assert Identity("region", "azure:southeastasia").uri == "meshscope://region/azure:southeastasia"
    assert Identity("client", "ops-2").uri == "meshscope://client/ops-2"
    assert Identity("region", "a" * 32 + ":" + "b" * 64).name.endswith("b")
    for bad in ("aws", "aws:us:east", "AWS:us-east-1", "-aws:x", "aws:-x", "aws:", ":x", "a_b:c", "a:" + "b" * 65):
        with pytest.raises(ValueError):
            Identity("region", bad)
    for bad in ("Ops", "a:b", "", "a b", "a.b", "-a", "x" * 65):
        with pytest.raises(ValueError):
            Identity("client", bad)
    assert Identity.from_uri("meshscope://region/aws:us-east-1") == Identity("region", REGION)
    for uri in ("meshscope://region/AWS:x", "meshscope://admin/x", "https://region/aws:x", "meshscope://client"):
        assert Identity.from_uri(uri) is None


def _self_signed(*names: x509.GeneralName) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def test_identity_of_needs_exactly_one_valid_meshscope_uri() -> None:
    uri = x509.UniformResourceIdentifier
    assert identity_of(_self_signed(uri("meshscope://region/aws:us-east-1"), x509.DNSName("localhost"))) == Identity(
        "region", REGION
    )
    assert identity_of(_self_signed(uri("https://example.com/"), uri("meshscope://client/ops"))) == Identity(
        "client", "ops"
    )
    assert identity_of(_self_signed()) is None
    assert identity_of(_self_signed(x509.DNSName("localhost"))) is None
    assert identity_of(_self_signed(uri("meshscope://region/aws:x"), uri("meshscope://region/gcp:y"))) is None
    assert identity_of(_self_signed(uri("meshscope://region/AWS:x"))) is None
    assert identity_of(b"not a certificate") is None


def test_peer_identity_reads_only_the_tls_extension() -> None:
    der = _self_signed(x509.UniformResourceIdentifier("meshscope://client/ops"))
    assert peer_identity({"type": "http", "extensions": {"tls": {"client_cert_der": der}}}) == Identity("client", "ops")
    assert peer_identity({"type": "http", "extensions": {"tls": {"client_cert_der": None}}}) is None
    assert peer_identity({"type": "http"}) is None
    assert peer_identity({"type": "http", "extensions": None}) is None


# ---- settings ------------------------------------------------------------------------------------------


def test_tls_files_from_env(pki: Pki, tmp_path: Path) -> None:
    cert, key = str(pki.dir / "region-aws_us-east-1.pem"), str(pki.dir / "region-aws_us-east-1.key")
    assert TlsFiles.from_env({}) is None
    env = {MESHSCOPE_TLS_CERT: cert, MESHSCOPE_TLS_KEY: key, MESHSCOPE_TLS_CA: pki.ca}
    assert TlsFiles.from_env(env) == TlsFiles(cert, key, pki.ca)
    assert TlsFiles.from_env({MESHSCOPE_TLS_CERT: "nowhere"}, cert=cert, key=key) == TlsFiles(cert, key)
    with pytest.raises(SettingError, match=f"{MESHSCOPE_TLS_CERT} is set but {MESHSCOPE_TLS_KEY} is not"):
        TlsFiles.from_env({MESHSCOPE_TLS_CERT: cert})
    with pytest.raises(SettingError, match=f"{MESHSCOPE_TLS_KEY} is set but {MESHSCOPE_TLS_CERT} is not"):
        TlsFiles.from_env({MESHSCOPE_TLS_KEY: key})
    with pytest.raises(SettingError, match=f"{MESHSCOPE_TLS_CA} is set without"):
        TlsFiles.from_env({MESHSCOPE_TLS_CA: pki.ca})
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(SettingError, match=f"{MESHSCOPE_TLS_CA}='{missing}' cannot be read"):
        TlsFiles.from_env({**env, MESHSCOPE_TLS_CA: missing})


def test_contexts_report_files_that_do_not_load(pki: Pki) -> None:
    mismatched = TlsFiles(str(pki.dir / "region-aws_us-east-1.pem"), str(pki.dir / "client-ops.key"))
    with pytest.raises(SettingError, match="does not load"):
        server_context(mismatched)
    with pytest.raises(SettingError, match=r"CA .* does not load"):
        client_context(None, str(pki.dir / "client-ops.key"))


# ---- the certs command -----------------------------------------------------------------------------------


def test_certs_command_writes_the_ca_regions_and_clients(pki: Pki) -> None:
    names = sorted(p.name for p in pki.dir.iterdir())
    assert names == [
        "ca.key",
        "ca.pem",
        "client-ops.key",
        "client-ops.pem",
        "region-aws_us-east-1.key",
        "region-aws_us-east-1.pem",
        "region-gcp_europe-west1.key",
        "region-gcp_europe-west1.pem",
    ]
    for name in names:
        assert f"wrote {pki.dir / name}" in pki.stdout
        mode = stat.S_IMODE((pki.dir / name).stat().st_mode)
        assert mode == (0o600 if name.endswith(".key") else 0o644), name
    ca = x509.load_pem_x509_certificate((pki.dir / "ca.pem").read_bytes())
    region = x509.load_pem_x509_certificate((pki.dir / "region-aws_us-east-1.pem").read_bytes())
    client = x509.load_pem_x509_certificate((pki.dir / "client-ops.pem").read_bytes())
    for leaf in (region, client):
        leaf.verify_directly_issued_by(ca)
        assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
        assert leaf.signature_hash_algorithm is not None and leaf.signature_hash_algorithm.name == "sha256"
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert dt.timedelta(days=CERT_DAYS) <= lifetime <= dt.timedelta(days=CERT_DAYS, hours=1)
    san = region.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["meshscope://region/aws:us-east-1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "relay.example.com"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1", "10.0.0.5"]

    def usages(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)

    assert usages(region) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert usages(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert identity_of(client.public_bytes(Encoding.DER)) == Identity("client", "ops")


def _certs(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli_main(["certs", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_certs_command_reuses_the_ca_and_replaces_it_only_when_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pki"
    assert _certs(capsys, "--out", str(out), "--regions", REGION)[0] == 0
    ca = (out / "ca.pem").read_bytes(), (out / "ca.key").read_bytes()
    first_region = (out / "region-aws_us-east-1.pem").read_bytes()

    code, printed, _ = _certs(capsys, "--out", str(out), "--regions", REGION, "--clients", "sim")
    assert code == 0 and "reusing the CA" in printed and f"wrote {out / 'ca.pem'}" not in printed
    assert ((out / "ca.pem").read_bytes(), (out / "ca.key").read_bytes()) == ca
    assert (out / "region-aws_us-east-1.pem").read_bytes() != first_region  # rotated under the same CA
    ca_cert = x509.load_pem_x509_certificate(ca[0])
    for name in ("region-aws_us-east-1.pem", "client-sim.pem"):
        x509.load_pem_x509_certificate((out / name).read_bytes()).verify_directly_issued_by(ca_cert)
    assert stat.S_IMODE((out / "client-sim.key").stat().st_mode) == 0o600

    code, printed, warned = _certs(capsys, "--out", str(out), "--clients", "ops", "--force")
    assert code == 0 and "new development CA" in printed
    assert (out / "ca.pem").read_bytes() != ca[0]
    assert "region-aws_us-east-1.pem was signed by the replaced CA" in warned
    assert stat.S_IMODE((out / "ca.key").stat().st_mode) == 0o600


def test_certs_command_rejects_bad_input_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    for args in (
        ["--regions", "us-east-1"],
        ["--regions", f"{REGION},AWS:eu-west-1"],
        ["--clients", "Bad_Name"],
        ["--regions", REGION, "--hosts", "not a host"],
        ["--regions", REGION, "--days", "0"],
        ["--regions", REGION, "--days", "5000"],
        [],
    ):
        code, _, err = _certs(capsys, "--out", str(out), *args)
        assert code == 2 and err.startswith("meshscope certs: "), (args, err)
        assert not out.exists(), args
    assert "outlive the CA" in _certs(capsys, "--out", str(out), "--regions", REGION, "--days", "5000")[2]


def test_certs_command_refuses_an_incomplete_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    assert _certs(capsys, "--out", str(out), "--regions", REGION)[0] == 0
    (out / "ca.key").unlink()
    code, _, err = _certs(capsys, "--out", str(out), "--regions", OTHER_REGION)
    assert code == 1 and "incomplete CA" in err and not (out / "region-gcp_europe-west1.pem").exists()
    other = new_ca()
    (out / "ca.key").write_bytes(other.key)
    with pytest.raises(CaUnusable, match="does not belong"):
        issue(type(other)((out / "ca.pem").read_bytes(), other.key), Identity("region", OTHER_REGION))


def test_issued_certificates_round_trip_their_identity() -> None:
    ca = new_ca()
    longest = Identity("region", "p" * 32 + ":" + "n" * 64)  # longer than a common name may be
    for identity in (longest, Identity("client", "simulator")):
        pem = issue(ca, identity).cert
        assert identity_of(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)) == identity
    with pytest.raises(ValueError, match="client certificate only dials"):
        issue(ca, Identity("client", "ops"), hosts=["example.com"])
