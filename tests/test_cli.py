"""The command line as a user runs it: real processes, their own embedded ClickHouse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import scaled


def meshscope(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "MESHSCOPE_DATA_DIR": str(data_dir), **env}
    environ.pop("CLICKHOUSE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "meshscope", *args], env=environ, capture_output=True, text=True, timeout=scaled(120)
    )


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("csv", "a,b\n1,x\n2,y\n"),
        ("json", '{"a":1,"b":"x"}\n{"a":2,"b":"y"}\n'),
        ("table", "a | b\n--+--\n1 | x\n2 | y\n(2 rows)\n"),
    ],
)
def test_sql_prints_results_in_each_format(tmp_path: Path, fmt: str, expected: str) -> None:
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
    out = meshscope("sql", "SELEC 1", data_dir=tmp_path, MESHSCOPE_CLICKHOUSE_DATABASE="system")
    assert out.returncode == 1
    assert out.stderr.startswith("meshscope sql: ") and "Syntax error" in out.stderr
    writes = meshscope(
        "sql", "CREATE TABLE t (a UInt8) ENGINE = Memory", data_dir=tmp_path, MESHSCOPE_CLICKHOUSE_DATABASE="system"
    )
    assert writes.returncode == 1 and "readonly" in writes.stderr.lower()


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


def test_help_lists_every_command(tmp_path: Path) -> None:
    out = meshscope("--help", data_dir=tmp_path)
    for command in ("relay", "collector", "dashboard", "up", "simulate", "bench", "sql"):
        assert command in out.stdout
