"""The command line as a user runs it: real processes, their own embedded ClickHouse."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OTHER_TOKEN, TEST_TOKEN, scaled


def meshscope(
    *args: str, data_dir: Path | None, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "MESHSCOPE_DATA_DIR": str(data_dir)}
    for name in (
        "CLICKHOUSE_URL",
        "MESHSCOPE_TOKEN",
        "MESHSCOPE_TOKEN_FILE",
        *(() if data_dir else ("MESHSCOPE_DATA_DIR",)),
    ):
        environ.pop(name, None)
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "meshscope", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=scaled(120),
        cwd=cwd,
    )


def make_store(data_dir: Path) -> None:
    """An embedded ClickHouse store in ``data_dir``, as a collector leaves one (in a process of its own)."""
    code = (
        "import sys; from collector.clickhouse import make_client, resolve_url; "
        "make_client(resolve_url(None, sys.argv[1])).command('CREATE DATABASE IF NOT EXISTS meshscope')"
    )
    subprocess.run([sys.executable, "-c", code, str(data_dir)], check=True, timeout=scaled(120))


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("csv", "a,b\n1,x\n2,y\n"),
        ("json", '{"a":1,"b":"x"}\n{"a":2,"b":"y"}\n'),
        ("table", "a | b\n--+--\n1 | x\n2 | y\n(2 rows)\n"),
    ],
)
def test_sql_prints_results_in_each_format(tmp_path: Path, fmt: str, expected: str) -> None:
    make_store(tmp_path)
    out = meshscope(
        "sql",
        "SELECT number + 1 AS a, ['x', 'y'][number + 1] AS b FROM numbers(2)",
        "--format",
        fmt,
        data_dir=tmp_path,
        MESHSCOPE_CLICKHOUSE_DATABASE="system",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected


def test_sql_errors_are_clear_and_exit_non_zero(tmp_path: Path) -> None:
    make_store(tmp_path)
    out = meshscope("sql", "SELEC 1", data_dir=tmp_path, MESHSCOPE_CLICKHOUSE_DATABASE="system")
    assert out.returncode == 1
    assert out.stderr.startswith("meshscope sql: ") and "Syntax error" in out.stderr
    writes = meshscope(
        "sql", "CREATE TABLE t (a UInt8) ENGINE = Memory", data_dir=tmp_path, MESHSCOPE_CLICKHOUSE_DATABASE="system"
    )
    assert writes.returncode == 1 and "readonly" in writes.stderr.lower()


def test_sql_reads_and_never_creates_a_store(tmp_path: Path) -> None:
    """A mistyped or empty data directory is an error naming it, and nothing is created anywhere."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    nowhere = tmp_path / "nowhere"
    for args in (("--data-dir", str(nowhere)), ()):
        out = meshscope("sql", "SELECT 1", *args, data_dir=None, cwd=cwd)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert out.stderr.startswith("meshscope sql: no flow history in "), out.stderr
        assert "--data-dir" in out.stderr
    assert not nowhere.exists() and list(cwd.iterdir()) == []
    # a store without flow history (no collector ran there) says so
    make_store(tmp_path / "empty")
    out = meshscope("sql", "SELECT 1", "--data-dir", str(tmp_path / "empty"), data_dir=None, cwd=cwd,
                    MESHSCOPE_CLICKHOUSE_DATABASE="flows_db")  # fmt: skip
    assert out.returncode == 1 and "has no database 'flows_db'" in out.stderr, out.stderr


async def test_sql_data_dir_finds_the_dashboard_of_that_up(stack_factory: Any, tmp_path: Path) -> None:
    """meshscope up --data-dir DIR leaves dashboard.json there; sql --data-dir DIR asks that dashboard."""
    import json

    stack = await stack_factory(["aws:us-east-1"])
    up_dir, cwd = tmp_path / "elsewhere", tmp_path / "cwd"
    up_dir.mkdir()
    cwd.mkdir()
    (up_dir / "sql.token").write_text(TEST_TOKEN + "\n")
    dashboard = {"url": stack.url, "ca": None, "token_file": str(up_dir / "sql.token")}
    (up_dir / "dashboard.json").write_text(json.dumps(dashboard))
    out = await asyncio.to_thread(
        meshscope, "sql", "SELECT 1 AS a", "--format", "csv", "--data-dir", str(up_dir), data_dir=None, cwd=cwd
    )
    assert (out.returncode, out.stdout) == (0, "a\n1\n"), out.stderr
    assert list(cwd.iterdir()) == []


def test_bad_configuration_is_reported(tmp_path: Path) -> None:
    out = meshscope("relay", data_dir=tmp_path, MESHSCOPE_REGION="")
    assert out.returncode == 2 and "MESHSCOPE_REGION is required" in out.stderr
    out = meshscope("relay", "--region", "nowhere", data_dir=tmp_path)
    assert out.returncode == 2 and "must be provider:name" in out.stderr
    out = meshscope("relay", "--region", "onprem:dc1", data_dir=tmp_path)
    assert out.returncode == 2 and "latitude" in out.stderr
    bad_auth = tmp_path / "principals.toml"
    bad_auth.write_text('[principals.svc]\ntoken = "in clear"\n')
    out = meshscope("relay", "--region", "aws:us-east-1", data_dir=tmp_path, MESHSCOPE_AUTH_FILE=str(bad_auth))
    assert out.returncode == 2 and "unknown key" in out.stderr and "token_sha256" in out.stderr
    out = meshscope("relay", "--region", "aws:us-east-1", data_dir=tmp_path, MESHSCOPE_PORT="many")
    assert out.returncode == 2 and "MESHSCOPE_PORT" in out.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--workers", "0"], {}, "--workers 0: give 1 to 64 relay processes"),
        (["--workers", "65"], {}, "--workers 65: give 1 to 64 relay processes"),
        (["--workers", "two"], {}, "invalid int value: 'two'"),
        ([], {"MESHSCOPE_RELAY_WORKERS": "0"}, "MESHSCOPE_RELAY_WORKERS=0 is below the minimum 1"),
        ([], {"MESHSCOPE_RELAY_WORKERS": "65"}, "MESHSCOPE_RELAY_WORKERS=65: at most 64 relay processes"),
        ([], {"MESHSCOPE_RELAY_WORKERS": "-"}, "MESHSCOPE_RELAY_WORKERS='-' is not a whole number"),
        (
            [],
            {"MESHSCOPE_RELAY_WORKERS": "2", "MESHSCOPE_DEDUP_RESTART_S": "0"},
            "MESHSCOPE_RELAY_WORKERS=2 needs MESHSCOPE_DEDUP_RESTART_S above 0",
        ),
        (
            ["--workers", "3"],
            {"MESHSCOPE_DEDUP_RESTART_S": "0"},
            "MESHSCOPE_RELAY_WORKERS=3 needs MESHSCOPE_DEDUP_RESTART_S above 0",
        ),
    ],
)
def test_a_bad_number_of_workers_is_refused(tmp_path: Path, args: list[str], env: dict[str, str], message: str) -> None:
    out = meshscope("relay", "--region", "aws:us-east-1", *args, data_dir=tmp_path, **env)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-500:]


def test_help_lists_every_command(tmp_path: Path) -> None:
    out = meshscope("--help", data_dir=tmp_path)
    for command in (
        "relay",
        "collector",
        "dashboard",
        "up",
        "simulate",
        "bench",
        "sql",
        "certs",
        "token",
        "chaos",
        "governance",
    ):
        assert command in out.stdout


def test_help_says_what_meshscope_is_and_version_is_there(tmp_path: Path) -> None:
    out = meshscope("--help", data_dir=tmp_path)
    assert "composition only" not in out.stdout and "``" not in out.stdout  # no docstring for developers
    assert "meshscope up" in out.stdout and "MESHSCOPE_*" in out.stdout
    version = meshscope("--version", data_dir=tmp_path)
    assert version.returncode == 0 and re.fullmatch(r"meshscope \d+\.\d+\.\d+\S*\n", version.stdout), version.stdout


def test_bench_without_its_extra_says_which_to_install(tmp_path: Path) -> None:
    """After the quick start's install (no httpx), bench names the extra instead of a traceback."""
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "httpx.py").write_text("raise ModuleNotFoundError(\"No module named 'httpx'\", name='httpx')\n")
    pythonpath = os.pathsep.join([str(missing), *filter(None, [os.environ.get("PYTHONPATH")])])
    out = meshscope("bench", "--quick", data_dir=tmp_path, PYTHONPATH=pythonpath)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "pip install 'meshscope[bench]'" in out.stderr and "httpx is missing" in out.stderr


async def test_sql_via_a_dashboard_sends_the_token(stack_factory: Any, tmp_path: Path) -> None:
    stack = await stack_factory(["aws:us-east-1"])
    token_file = tmp_path / "sql.token"
    token_file.write_text(TEST_TOKEN + "\n")
    query = ("sql", "SELECT 1 AS a", "--format", "csv", "--via", stack.url)

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return meshscope(*query, data_dir=tmp_path, **env)

    by_file, by_env, viewer, nobody, missing = await asyncio.gather(
        asyncio.to_thread(run, MESHSCOPE_TOKEN_FILE=str(token_file), MESHSCOPE_TOKEN="ms_ignored"),
        asyncio.to_thread(run, MESHSCOPE_TOKEN=TEST_TOKEN),
        asyncio.to_thread(run, MESHSCOPE_TOKEN=OTHER_TOKEN),
        asyncio.to_thread(run),
        asyncio.to_thread(run, MESHSCOPE_TOKEN_FILE=str(tmp_path / "absent.token")),
    )
    assert (by_file.returncode, by_file.stdout) == (0, "a\n1\n"), by_file.stderr
    assert (by_env.returncode, by_env.stdout) == (0, "a\n1\n"), by_env.stderr
    assert viewer.returncode == 1 and "lacks the sql role" in viewer.stderr
    assert nobody.returncode == 1 and "authentication required" in nobody.stderr
    assert "MESHSCOPE_TOKEN_FILE" in nobody.stderr  # says how to fix it
    assert missing.returncode == 1 and "cannot read the token file" in missing.stderr


@pytest.mark.parametrize(
    ("args", "principal", "groups", "roles", "region"),
    [
        (["billing-svc", "--groups", "producers,payments", "--roles", "viewer,sql"], "billing-svc",
         {"producers", "payments"}, {"viewer", "sql"}, None),
        (["relay:aws:us-east-1"], "relay:aws:us-east-1", set(), set(), "aws:us-east-1"),
        (["ops"], "ops", set(), set(), None),
    ],
)  # fmt: skip
def test_token_prints_a_token_and_an_entry_holding_only_its_hash(
    args: list[str], principal: str, groups: set[str], roles: set[str], region: str | None,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import tomllib

    from meshcore.auth import parse_principals
    from meshscope.cli import main

    assert main(["token", *args]) == 0
    out = capsys.readouterr().out
    token = out.splitlines()[0].rsplit(" ", 1)[1]
    assert token not in out.split("\n", 1)[1]  # the entry holds the hash only
    auth = parse_principals(tomllib.loads(out))
    who = auth.from_token(token)
    assert who is not None and who.name == principal
    assert (set(who.groups), set(who.roles), who.region) == (groups, roles, region)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad name"], "principal name"),
        (["ops", "--roles", "root"], "unknown role"),
        (["ops", "--groups", 'a"b'], "principal name"),
        (["relay:not-a-region"], "region"),
    ],
)
def test_token_refuses_bad_names_and_roles(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from meshscope.cli import main

    assert main(["token", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_token_file_is_private_and_the_entry_matches_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    from meshcore.auth import parse_principals
    from meshscope.cli import main

    path = tmp_path / "ops.token"
    assert main(["token", "ops", "--roles", "admin", "--token-file", str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text().strip()
    out = capsys.readouterr().out
    assert token not in out
    who = parse_principals(tomllib.loads(out)).from_token(token)
    assert who is not None and who.roles == frozenset({"admin"})
