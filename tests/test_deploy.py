"""The deployment files against the code they deploy: compose.yaml, the Dockerfile, deploy/certs.sh.

No container runs here (CI has no Docker engine). Instead: compose.yaml names only services,
volumes, variables and subcommands that exist; the certificate step (the script the `certs` service
runs, with the arguments compose gives it) makes every file the services are pointed at; and the
relays, configured with exactly their compose environment, form a mesh over mutual TLS and accept
the simulator's token. The Dockerfile's install step itself is run from a read-only tree by
.ci/check-deploy.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import ssl
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from meshcore.auth import load_principals, token_hash
from meshcore.server import bind
from meshcore.tls import Identity, TlsFiles, client_context, https_client_context, identity_of, server_context
from meshscope.cli import build_parser
from tests.conftest import Mesh, eventually, scaled

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("meshcore", "router", "collector", "dashboard", "meshscope", "bench")
IMAGE = "meshscope:local"


def compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "compose.yaml has no services mapping"
    return doc


SERVICES: dict[str, Any] = compose()["services"]
OURS = sorted(name for name, svc in SERVICES.items() if svc.get("image") == IMAGE)
RELAYS = sorted(name for name in OURS if SERVICES[name].get("command") == ["relay"])


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def words(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(w) for w in value]


def mounts(service: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each mount, short or long syntax."""
    out = []
    for item in service.get("volumes") or []:
        if isinstance(item, str):
            parts = item.split(":")
            out.append((parts[0], parts[1] if len(parts) > 1 else parts[0], "ro" in parts[2:]))
        else:
            out.append((str(item.get("source", "")), str(item["target"]), bool(item.get("read_only"))))
    return out


def named_volumes(service: Mapping[str, Any]) -> dict[str, str]:
    """target -> volume name, for named volumes (not bind mounts)."""
    return {target: src for src, target, _ in mounts(service) if src and not src.startswith((".", "/", "~", "$"))}


def known_variables() -> set[str]:
    """Variables the code defines as constants (NAME = "NAME") or reads by their literal name."""
    names: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            text = path.read_text()
            names.update(m.group(1) for m in re.finditer(r'^([A-Z][A-Z0-9_]*) = "\1"', text, re.M))
            names.update(re.findall(r'environ(?:\.get)?[(\[]\s*"([A-Z][A-Z0-9_]*)"', text))
    return names


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


# --- compose.yaml names only what exists ----------------------------------------------------------


def test_every_dependency_is_a_service() -> None:
    wrong = {}
    for name, svc in SERVICES.items():
        deps = svc.get("depends_on") or []
        missing = sorted(set(deps) - set(SERVICES))
        if missing:
            wrong[name] = missing
    assert wrong == {}, f"depends_on names services that compose.yaml does not define: {wrong}"


def test_every_named_volume_and_network_is_declared() -> None:
    doc = compose()
    volumes, networks = set(doc.get("volumes") or {}), set(doc.get("networks") or {}) | {"default"}
    wrong = []
    for name, svc in SERVICES.items():
        wrong += [f"{name}: volume {v!r}" for v in named_volumes(svc).values() if v not in volumes]
        wrong += [f"{name}: network {n!r}" for n in svc.get("networks") or [] if n not in networks]
    assert wrong == [], f"used but not declared at the top level of compose.yaml: {wrong}"


def test_every_variable_is_one_the_code_reads() -> None:
    known = known_variables()
    wrong = {name: sorted(set(environment(SERVICES[name])) - known) for name in OURS}
    wrong = {k: v for k, v in wrong.items() if v}
    assert wrong == {}, f"variables set in compose.yaml that no code defines or reads (a typo?): {wrong}"


def test_every_command_is_a_meshscope_subcommand_with_valid_options() -> None:
    commands = sorted(subcommands())
    assert OURS, f"no service runs the image {IMAGE}"
    for name in OURS:
        svc = SERVICES[name]
        if "entrypoint" in svc:
            continue  # the certs step: checked by running it below
        argv = words(svc.get("command"))
        first = argv[0] if argv else None
        assert first in commands, f"{name}: command {argv!r} does not start with a meshscope subcommand {commands}"
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{name}: `meshscope {shlex.join(argv)}` is refused by meshscope's own parser")


def test_services_mount_the_certificates_read_only_and_wait_for_them() -> None:
    certs = SERVICES["certs"]
    assert certs.get("restart") in ("no", None), "the certs step runs once; it must not restart"
    assert {"certs", "ca"} <= set(named_volumes(certs).values())
    for name in OURS:
        if name == "certs":
            continue
        svc = SERVICES[name]
        assert ("certs", "/certs", True) in mounts(svc), f"{name} must mount the certs volume read-only at /certs"
        assert "ca" not in named_volumes(svc).values(), f"{name} must not see the CA keys (the ca volume)"
        condition = (svc.get("depends_on") or {}).get("certs", {}).get("condition")
        assert condition == "service_completed_successfully", f"{name} must wait for the certs step to succeed"
        assert "pip install" not in json.dumps(svc), f"{name} installs at start; the image has everything"


def test_relays_peer_with_every_other_relay_by_region_over_tls() -> None:
    assert len(RELAYS) >= 2, "compose.yaml should run a mesh of relays"
    region_of = {name: environment(SERVICES[name])["MESHSCOPE_REGION"] for name in RELAYS}
    port_of = {name: environment(SERVICES[name])["MESHSCOPE_PORT"] for name in RELAYS}
    for name in RELAYS:
        env = environment(SERVICES[name])
        peers = {}
        for item in env["MESHSCOPE_PEERS"].split(","):
            region, _, url = item.partition("=")
            m = re.fullmatch(r"wss://([a-z0-9-]+):(\d+)", url)
            assert m, f"{name}: peer {item!r} is not region=wss://service:port"
            assert m.group(1) in RELAYS, f"{name}: peer host {m.group(1)!r} is not a relay service"
            assert region == region_of[m.group(1)], f"{name}: {m.group(1)} serves {region_of[m.group(1)]}, not {region}"
            assert m.group(2) == port_of[m.group(1)], f"{name}: {m.group(1)} listens on {port_of[m.group(1)]}"
            peers[m.group(1)] = region
        assert set(peers) == set(RELAYS) - {name}, f"{name} must peer with every other relay (a full mesh)"
    relays_arg = next(w for w in words(SERVICES["traffic"]["command"]) if w.startswith("--relays="))
    expected = {f"{region_of[n]}=wss://{n}:{port_of[n]}" for n in RELAYS}
    assert set(relays_arg.removeprefix("--relays=").split(",")) == expected, "the simulator must drive every relay"


# --- the Dockerfile and its build context ---------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def copy_sources() -> list[tuple[str, str]]:
    """(source, destination) of every COPY from the build context."""
    pairs = []
    for keyword, rest in dockerfile():
        if keyword in ("COPY", "ADD"):
            args = [w for w in shlex.split(rest) if not w.startswith("--")]
            if any(w.startswith("--from=") for w in shlex.split(rest)):
                continue
            pairs += [(src, args[-1]) for src in args[:-1]]
    return pairs


def test_dockerfile_copies_only_files_that_exist() -> None:
    missing = [src for src, _ in copy_sources() if not (ROOT / src).exists()]
    assert missing == [], f"the Dockerfile copies paths that are not in the repository: {missing}"


def test_dockerfile_builds_a_slim_non_root_image_entered_by_meshscope() -> None:
    steps = dockerfile()
    args = dict(rest.split("=", 1) for keyword, rest in steps if keyword == "ARG" and "=" in rest)
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
        for k, rest in steps
        if k == "FROM"
    ]
    assert bases and all(b == "python:3.11-slim" for b in bases), (
        f"every stage should start from python:3.11-slim: {bases}"
    )
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and re.fullmatch(r"[1-9]\d{3,}(:\d+)?", users[-1]), (
        f"the image must run as a numeric non-root uid: {users}"
    )
    entry = [rest for keyword, rest in steps if keyword == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["meshscope"], f'ENTRYPOINT must be ["meshscope"]: {entry}'
    text = (ROOT / "Dockerfile").read_text()
    for target in {t for name in OURS for t in named_volumes(SERVICES[name])}:
        assert f" {target}" in text, f"the image must make {target} (owned by its user) for the volume mounted there"


def test_the_certs_entrypoint_is_the_script_the_image_installs() -> None:
    installed = {dest: src for src, dest in copy_sources()}
    entry = words(SERVICES["certs"]["entrypoint"])[0]
    assert any(Path(dest).name == entry for dest in installed), f"the image installs no {entry}: {installed}"
    assert installed[next(d for d in installed if Path(d).name == entry)] == "deploy/certs.sh"


def test_the_install_step_is_marked_and_not_editable() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    marks = [i for i, line in enumerate(lines) if line.strip() == "# check-deploy: install"]
    assert len(marks) == 1, ".ci/check-deploy needs exactly one '# check-deploy: install' line"
    assert lines[marks[0] + 1].startswith("RUN "), "the '# check-deploy: install' marker must sit right above a RUN"
    install = next(rest for keyword, rest in dockerfile() if keyword == "RUN" and "pip " in rest)
    assert " -e " not in install and "--editable" not in install, "the image installs meshscope, not a link to /src"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context (last matching pattern wins, ! re-includes)."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").strip("/")
        regex = "".join(
            ".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
            for tok in re.split(r"(\*\*|\*|\?)", pattern)
        ).replace(".*/", "(?:.*/)?")
        if any(re.fullmatch(regex, p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_needs_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = ["pyproject.toml", "README.md", *(src for src, _ in copy_sources())]
    needed += [
        p.relative_to(ROOT).as_posix()
        for pkg in (*PACKAGES, "static")
        for p in (ROOT / pkg).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    dropped = [p for p in needed if dockerignored(p, patterns)]
    assert dropped == [], f".dockerignore leaves out files the image build needs: {dropped[:10]}"
    junk = [
        ".git/HEAD",
        ".venv/bin/python",
        ".mypy_cache/x",
        ".ruff_cache/x",
        ".pytest_cache/x",
        "router/__pycache__/relay.cpython-311.pyc",
        ".meshscope/valkey/dump.rdb",
        "artifacts/x.png",
        "meshscope.egg-info/PKG-INFO",
    ]
    kept = [p for p in junk if not dockerignored(p, patterns)]
    assert kept == [], f".dockerignore should leave these out of the build context: {kept}"


# --- the certificate step makes every file the services are pointed at ----------------------------


def run_certs(volumes: Path, rotate: str = "") -> subprocess.CompletedProcess[str]:
    """Run deploy/certs.sh with the certs service's arguments, its volumes under ``volumes``."""
    svc = SERVICES["certs"]
    argv = words(svc["command"])
    for target, volume in named_volumes(svc).items():
        argv = [re.sub(rf"=({re.escape(target)})(?=/|$)", f"={volumes / volume}", a) for a in argv]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["ROTATE"] = rotate
    out = subprocess.run(
        ["sh", str(ROOT / "deploy/certs.sh"), *argv], env=env, capture_output=True, text=True, timeout=scaled(120)
    )
    assert out.returncode == 0, f"deploy/certs.sh failed:\n{out.stdout}\n{out.stderr}"
    return out


def local(service: str, value: str, volumes: Path) -> str:
    """A path inside ``service``'s container, mapped to where the test keeps that volume."""
    for target, volume in named_volumes(SERVICES[service]).items():
        if value == target or value.startswith(target + "/"):
            return str(volumes / volume) + value[len(target) :]
    return value


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("volumes")
    run_certs(root)
    yield root


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_file_a_service_is_pointed_at_exists(volumes: Path) -> None:
    missing = []
    for name in OURS:
        svc = SERVICES[name]
        texts = [*environment(svc).values(), *words((svc.get("healthcheck") or {}).get("test"))]
        for target in named_volumes(svc):
            for text in texts:
                for path in re.findall(rf"{re.escape(target)}/[\w.:-]+", text):
                    if not Path(local(name, path, volumes)).is_file():
                        missing.append(f"{name}: {path}")
    assert missing == [], f"compose.yaml points services at files the certs step does not make: {missing}"


def test_principals_hold_hashes_of_the_tokens_and_the_relays(volumes: Path) -> None:
    certs, ca = volumes / "certs", volumes / "ca"
    text = (certs / "principals.toml").read_text()
    auth = load_principals(str(certs / "principals.toml"))
    tokens = {
        "simulator": certs / "simulator.token",
        "collector": certs / "collector.token",
        "prometheus": certs / "prometheus.token",  # scrapes /metrics (compose profile observability)
        "ops": ca / "ops.token",
    }
    for name, path in tokens.items():
        token = path.read_text().strip()
        assert path.stat().st_mode & 0o777 == 0o600, f"{path.name} must be mode 0600"
        assert token not in text and token_hash(token) in text, f"principals.toml must hold the hash of {name}'s token"
        principal = auth.from_token(token)
        assert principal is not None and principal.name == name
    assert auth.by_name["simulator"].groups == {"producers"}
    assert auth.by_name["ops"].roles == {"viewer", "sql", "admin"}
    for name in RELAYS:
        region = environment(SERVICES[name])["MESHSCOPE_REGION"]
        assert auth.by_name[f"relay:{region}"].region == region
    assert not (certs / "ops.token").exists() and not (certs / "ca.key").exists(), (
        "the CA key and ops token stay private"
    )
    keys = [p.name for p in certs.glob("*.key") if p.stat().st_mode & 0o077]
    assert keys == [], f"keys readable by others: {keys}"


def test_running_the_step_again_changes_nothing_and_rotation_keeps_the_ca(tmp_path: Path) -> None:
    run_certs(tmp_path)
    first = snapshot(tmp_path)
    out = run_certs(tmp_path)
    assert snapshot(tmp_path) == first, f"a second run changed files:\n{out.stdout}"
    run_certs(tmp_path, rotate="tokens")
    tokens = snapshot(tmp_path)
    assert tokens["certs/simulator.token"] != first["certs/simulator.token"]
    assert tokens["certs/principals.toml"] != first["certs/principals.toml"]
    assert tokens["certs/ca.pem"] == first["certs/ca.pem"] and tokens["ca/mesh/ca.key"] == first["ca/mesh/ca.key"]
    run_certs(tmp_path, rotate="certs")
    certs = snapshot(tmp_path)
    stem = "region-" + environment(SERVICES[RELAYS[0]])["MESHSCOPE_REGION"].replace(":", "_")
    assert certs[f"certs/{stem}.key"] != first[f"certs/{stem}.key"] and certs["certs/ca.pem"] == first["certs/ca.pem"]
    assert certs["certs/simulator.token"] == tokens["certs/simulator.token"]
    run_certs(tmp_path, rotate="ca")
    assert snapshot(tmp_path)["certs/ca.pem"] != first["certs/ca.pem"]


# --- the certificates work with meshcore.tls as the services use them -----------------------------


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str | None = None) -> tuple[bytes | None, bytes]:
    """A TLS handshake in memory; (the client's certificate as the server saw it, the server's)."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_hostname=host)
    done = {"s": False, "c": False}
    for _ in range(10):
        for key, obj in (("c", c), ("s", s)):
            if not done[key]:
                try:
                    obj.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            c.write(b"x")  # TLS 1.3: the server judges the client certificate when the client speaks
            s_in.write(c_out.read())
            s.read(1)
            peer = c.getpeercert(binary_form=True)
            assert peer is not None
            return s.getpeercert(binary_form=True), peer
    raise AssertionError("handshake did not finish")


def files(service: str, volumes: Path) -> TlsFiles:
    env = {k: local(service, v, volumes) for k, v in environment(SERVICES[service]).items()}
    tls = TlsFiles.from_env(env)
    assert tls is not None, f"{service} has no TLS configured"
    return tls


def test_relays_authenticate_each_other_by_region_certificate(volumes: Path) -> None:
    a, b = RELAYS[0], RELAYS[1]
    seen_by_a, seen_by_b = handshake(server_context(files(a, volumes)), client_context(files(b, volumes)))
    assert seen_by_a is not None and identity_of(seen_by_a) == Identity(
        "region", environment(SERVICES[b])["MESHSCOPE_REGION"]
    )
    assert identity_of(seen_by_b) == Identity("region", environment(SERVICES[a])["MESHSCOPE_REGION"])


def test_the_simulator_checks_relay_host_names_against_the_mesh_ca(volumes: Path) -> None:
    ca = local("traffic", environment(SERVICES["traffic"])["MESHSCOPE_TLS_CA"], volumes)
    for name in RELAYS:
        handshake(server_context(files(name, volumes)), https_client_context(ca), host=name)


def test_the_dashboard_serves_its_host_names_and_is_no_mesh_identity(volumes: Path) -> None:
    dashboard = files("dashboard", volumes)
    web_ca, mesh_ca = str(volumes / "certs/web-ca.pem"), str(volumes / "certs/ca.pem")
    for host in environment(SERVICES["dashboard"])["MESHSCOPE_DASHBOARD_HOSTS"].split(","):
        handshake(server_context(dashboard), https_client_context(web_ca), host=host)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server_context(dashboard), https_client_context(mesh_ca), host="dashboard")
    with pytest.raises(ssl.SSLError):  # a relay refuses the dashboard's certificate as a client
        handshake(
            server_context(files(RELAYS[0], volumes)),
            client_context(TlsFiles(dashboard.cert, dashboard.key), ca=mesh_ca),
        )


# --- the relays, configured exactly as in compose.yaml, form a mesh -------------------------------


async def test_compose_relays_mesh_over_mutual_tls_and_accept_the_simulator(mesh: Mesh, volumes: Path) -> None:
    socks = {name: bind() for name in RELAYS}
    port = {name: sock.getsockname()[1] for name, sock in socks.items()}
    for name in RELAYS:
        env = {k: local(name, v, volumes) for k, v in environment(SERVICES[name]).items()}
        for k in ("REDIS_URL", "CLICKHOUSE_URL", "MESHSCOPE_HOST", "MESHSCOPE_PORT", "MESHSCOPE_PEERS"):
            env.pop(k)
        peers = tuple(
            re.sub(r"wss://([a-z0-9-]+):\d+", lambda m: f"wss://127.0.0.1:{port[m.group(1)]}", item)
            for item in environment(SERVICES[name])["MESHSCOPE_PEERS"].split(",")
        )
        await mesh.start_one(env["MESHSCOPE_REGION"], sock=socks[name], env=env, peers=peers)
    for region, running in mesh.relays.items():
        await eventually(functools.partial(mesh.all_links_up, region), 10)
        assert {link.security for link in running.relay.links} == {"mtls"}, f"{region} links without mutual TLS"

    token = (volumes / "certs/simulator.token").read_text().strip()
    ca = https_client_context(str(volumes / "certs/ca.pem"))
    event = {"specversion": "1.0", "id": "d-1", "source": "/deploy", "type": "orders.created", "data": {}}
    async with httpx.AsyncClient(verify=ca, timeout=scaled(10)) as client:
        url = f"{mesh.relays[environment(SERVICES[RELAYS[0]])['MESHSCOPE_REGION']].url}/v1/events"
        assert (await client.post(url, json=event)).status_code == 401
        ok = await client.post(url, json=event, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 202, ok.text


def test_every_region_has_its_own_store_and_collector_and_the_dashboard_reads_them_all() -> None:
    stores = {name for name, svc in SERVICES.items() if str(svc.get("image", "")).startswith("valkey/")}
    store_of = {}
    for name in RELAYS:
        env = environment(SERVICES[name])
        host = re.fullmatch(r"redis://([a-z0-9-]+):6379/0", env["REDIS_URL"])
        assert host and host.group(1) in stores, f"{name}: REDIS_URL {env['REDIS_URL']!r} is not a Valkey service"
        assert host.group(1) in (SERVICES[name].get("depends_on") or {}), f"{name} must wait for its store"
        store_of[env["MESHSCOPE_REGION"]] = host.group(1)
    assert len(set(store_of.values())) == len(RELAYS), f"relays share a store: {store_of}"
    homes = {environment(SERVICES[name]).get("MESHSCOPE_GOVERNANCE_HOME") for name in RELAYS}
    assert len(homes) == 1 and homes <= set(store_of), f"every relay must name the same home region: {homes}"
    collectors = [name for name in OURS if SERVICES[name].get("command") == ["collector"]]
    read = {environment(SERVICES[n])["MESHSCOPE_REGION"]: environment(SERVICES[n])["REDIS_URL"] for n in collectors}
    assert read == {r: f"redis://{s}:6379/0" for r, s in store_of.items()}, "one collector per region, on its store"
    alerting = [n for n in collectors if environment(SERVICES[n]).get("MESHSCOPE_ALERTS") == "true"]
    assert len(alerting) == 1, f"the alert rules run in exactly one collector, not {alerting}"
    dashboard = environment(SERVICES["dashboard"])
    listed = dict(item.split("=", 1) for item in dashboard["MESHSCOPE_REGION_STORES"].split(","))
    assert listed == {r: f"redis://{s}:6379/0" for r, s in store_of.items()}, "the dashboard must read every store"
