"""What ``meshscope up`` leaves on disk is its user's alone, and no log line holds a credential.

A real ``meshscope up`` (Valkey, relays, simulator, dashboard with embedded
ClickHouse) is used with every token it made, the way clients use them: a
browser's ``?token=`` on WebSockets and ``/login``, bearer headers, a wrong
token. Then every file it wrote is checked: directories 0700 and files 0600,
nothing of it readable by another user (``nobody``, through ``setpriv`` as
``.ci/check-deploy`` does), and no byte of any token or session cookie in any
log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from meshcore.auth import new_token
from tests.conftest import free_port, scaled

REGIONS = "aws:us-east-1,gcp:europe-west1"


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    """A directory every user may enter (as a home directory would be), holding the demo's data directory."""
    base = Path(tempfile.mkdtemp(prefix="meshscope-up-"))
    base.chmod(0o755)
    yield base / "demo"
    subprocess.run(["rm", "-rf", str(base)], check=False)


async def use_every_credential(data: Path, port: int) -> list[str]:
    """Sign in, subscribe, stream and publish with the demo's tokens, as clients do; returns what was used."""
    state = json.loads((data / "up.json").read_text())
    context = ssl.create_default_context(cafile=str(data / "certs" / "ca.pem"))
    tokens = {p.stem: p.read_text().strip() for p in (data / "tokens").glob("*.token")}
    ops, wrong = tokens["ops"], new_token()
    relay = state["relays"]["aws:us-east-1"]["port"]
    dashboard = f"https://127.0.0.1:{port}"
    used = [ops, wrong]
    async with httpx.AsyncClient(verify=context, timeout=scaled(20)) as http:
        signed = await http.get(f"{dashboard}/login", params={"token": ops}, headers={"sec-fetch-site": "none"})
        assert signed.status_code == 303
        used.append(http.cookies["__Host-meshscope_session"])
        assert (await http.get(f"{dashboard}/login", params={"token": wrong})).status_code == 401
        published = await http.post(
            f"https://127.0.0.1:{relay}/v1/events",
            headers={"authorization": f"Bearer {tokens['simulator']}", "content-type": "application/cloudevents+json"},
            content=b'{"specversion":"1.0","id":"private-1","source":"/t","type":"orders.x","data":{"n":1,"amount":1}}',
        )
        assert published.status_code == 202, published.text
    for url in (
        f"wss://127.0.0.1:{relay}/v1/subscribe?topic=orders.>&token={ops}",
        f"wss://127.0.0.1:{relay}/v1/subscribe?topic=orders.>&group=private&consumer=c&token={ops}",
        f"wss://127.0.0.1:{relay}/v1/stream?token={tokens['simulator']}",
        f"wss://127.0.0.1:{port}/ws/live?token={ops}",
    ):
        async with connect(url, ssl=context):
            pass
    with pytest.raises(InvalidStatus):
        async with connect(f"wss://127.0.0.1:{relay}/v1/subscribe?topic=orders.>&token={wrong}", ssl=context):
            pass
    return used + list(tokens.values())


def readable_by_nobody(paths: list[Path]) -> list[str]:
    """The paths user nobody can open (or list), tried by a process running as nobody."""
    script = (
        "import os, sys\n"
        "for p in sys.stdin.read().split('\\0')[:-1]:\n"
        "    try:\n"
        "        os.listdir(p) if os.path.isdir(p) else open(p, 'rb').close()\n"
        "        print(p)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", sys.executable, "-I", "-c", script],
        input="".join(f"{p}\0" for p in paths),
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


async def test_up_keeps_its_files_private_and_its_logs_free_of_credentials(demo_dir: Path) -> None:
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "meshscope", "up", "--data-dir", str(demo_dir), "--port", str(port),
         "--regions", REGIONS, "--rate", "20", "--flap-interval", "0", "--redis-port", str(free_port())],
        env={**os.environ, "MESHSCOPE_LOG_LEVEL": "INFO"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + scaled(90)
        while not (demo_dir / "up.json").exists() or not (demo_dir / "dashboard.json").exists():
            assert up.poll() is None, up.stdout.read().decode() if up.stdout else ""
            assert time.monotonic() < deadline, "meshscope up did not come up"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        used = await use_every_credential(demo_dir, port)
        await asyncio.sleep(1.0)  # the relays and the dashboard write their log lines
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(scaled(30))
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        if up.stdout:
            up.stdout.close()
    paths = [demo_dir, *sorted(demo_dir.rglob("*"))]
    kinds = {name: [p for p in paths if name in p.relative_to(demo_dir.parent).parts] for name in
             ("logs", "valkey", "tokens", "certs")}  # fmt: skip
    assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}
    assert any(p.name.endswith(".log") for p in kinds["logs"]) and len(paths) > 20
    # 0700 and 0600: nothing for group or others, also inside chdb's data and Valkey's append-only files
    loose = [
        f"{p} {stat.filemode(p.lstat().st_mode)}" for p in paths if not p.is_symlink() and p.lstat().st_mode & 0o077
    ]
    assert loose == []
    if os.geteuid() == 0:
        assert readable_by_nobody(paths) == []
    # not one credential in any log line (nor anywhere else but the token files)
    logs = [p for p in paths if p.is_file() and p.parent.name == "logs"]
    lines = sum(p.read_bytes().count(b"\n") for p in logs)
    assert lines > 50, f"only {lines} log lines: the run logged too little to prove anything"
    for path in (p for p in paths if p.is_file() and p.parent.name != "tokens"):
        content = path.read_bytes()
        found = [secret[:12] + "…" for secret in used if secret.encode() in content]
        assert found == [], f"{path} holds credentials {found}"
    websocket_lines = [
        line for p in logs for line in p.read_text(errors="replace").splitlines() if '"WebSocket /v1/' in line
    ]
    assert any("token=[redacted]" in line for line in websocket_lines), websocket_lines[:5]
