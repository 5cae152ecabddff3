"""``meshscope governance`` against a real relay: what a typo would do is refused, dry runs check as the relay does.

Each case says what the operator gets; the relay's version shows that nothing changed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshscope.governance import GovernanceCommandError, apply, export, show
from tests.conftest import TEST_TOKEN, Mesh, eventually, scaled

A = "aws:us-east-1"
ORDER_V1 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"total": {"type": "number"}},
    "required": ["total"],
}
RULES = (
    '[[rule]]\nid = "testers"\neffect = "allow"\nprincipals = ["group:testers"]\nactions = ["publish"]\n'
    'topics = [">"]\ndescription = "the \\"testers\\" publish \\u00e9verything"\n\n'
    '[[rule]]\nid = "reads"\neffect = "allow"\nprincipals = ["*"]\nactions = ["subscribe", "join"]\n'
    'topics = [">"]\nregions = ["aws:us-east-1"]\n'
)


def governance_dir(root: Path, rules: bool = True, versions: tuple[dict[str, Any], ...] = (ORDER_V1,)) -> Path:
    (root / "schemas" / "orders").mkdir(parents=True)
    if rules:
        (root / "policies.toml").write_text(RULES)
    names = []
    for i, schema in enumerate(versions, 1):
        (root / "schemas" / "orders" / f"{i}.json").write_text(json.dumps(schema))
        names.append(f'"orders/{i}.json"')
    (root / "schemas" / "index.toml").write_text(f'[subjects."orders.>"]\nversions = [{", ".join(names)}]\n')
    return root


async def run(*args: Any) -> Any:
    return await asyncio.to_thread(*args)


async def test_apply_refuses_what_a_typo_would_do(mesh: Mesh, tmp_path: Path) -> None:
    await mesh.start([A])
    url = mesh[A].url
    lines = await run(apply, str(governance_dir(tmp_path / "gov")), url, TEST_TOKEN, None)
    assert lines[-1].startswith("applied: version 1-")
    # a directory that does not exist is not an empty one
    with pytest.raises(GovernanceCommandError, match="no such directory"):
        await run(apply, str(tmp_path / "gvo"), url, TEST_TOKEN, None)
    # nor is a directory with nothing of governance in it
    (tmp_path / "empty").mkdir()
    with pytest.raises(GovernanceCommandError, match=r"holds neither policies\.toml nor schemas/"):
        await run(apply, str(tmp_path / "empty"), url, TEST_TOKEN, None)
    # removing every rule (policy off) or every schema needs --allow-empty; the dry run says so
    no_rules = governance_dir(tmp_path / "no-rules", rules=False)
    with pytest.raises(GovernanceCommandError, match=r"--allow-empty: it removes every policy rule \(policy off"):
        await run(apply, str(no_rules), url, TEST_TOKEN, None)
    dry = await run(apply, str(no_rules), url, TEST_TOKEN, None, True)
    assert "  policy disabled" in dry and any("refused without --allow-empty" in line for line in dry)
    (tmp_path / "no-schemas").mkdir()
    (tmp_path / "no-schemas" / "policies.toml").write_text(RULES)
    with pytest.raises(GovernanceCommandError, match="removes every schema"):
        await run(apply, str(tmp_path / "no-schemas"), url, TEST_TOKEN, None)
    assert mesh[A].relay.gov_version.startswith("1-")  # nothing of that was applied
    lines = await run(apply, str(no_rules), url, TEST_TOKEN, None, False, True)
    assert lines[-1].startswith("applied: version 2-")
    await eventually(lambda: mesh[A].relay.gov_version.startswith("2-"), 5)


async def test_dry_run_checks_schema_compatibility_as_the_relay_does(mesh: Mesh, tmp_path: Path) -> None:
    await mesh.start([A])
    url = mesh[A].url
    await run(apply, str(governance_dir(tmp_path / "v1")), url, TEST_TOKEN, None)
    narrower = {**ORDER_V1, "properties": {"total": {"type": "integer"}}}  # backward: old events must still pass
    v2 = governance_dir(tmp_path / "v2", versions=(ORDER_V1, narrower))
    dry = await run(apply, str(v2), url, TEST_TOKEN, None, True)
    assert "  schema versions added: orders.> v2" in dry
    refused = [line for line in dry if "the relay would refuse it (409)" in line]
    assert refused and "orders.> v2" in refused[0], dry
    with pytest.raises(GovernanceCommandError, match=r"would refuse it \(409\)"):
        await run(apply, str(v2), url, TEST_TOKEN, None)
    assert mesh[A].relay.gov_version.startswith("1-")
    # a published version changed in place is refused too, before anything is sent
    changed = governance_dir(tmp_path / "changed", versions=({**ORDER_V1, "required": []},))
    dry = await run(apply, str(changed), url, TEST_TOKEN, None, True)
    assert any("published versions are immutable" in line for line in dry), dry


async def test_show_prints_the_rules_and_schemas_and_export_writes_what_apply_reads(mesh: Mesh, tmp_path: Path) -> None:
    await mesh.start([A])
    url = mesh[A].url
    await run(apply, str(governance_dir(tmp_path / "gov")), url, TEST_TOKEN, None)
    shown = "\n".join(await run(show, url, TEST_TOKEN, None))
    assert 'testers: allow group:testers to publish on > (the "testers" publish éverything)' in shown
    assert "reads: allow * to subscribe, join on > in aws:us-east-1" in shown
    assert "orders.>: 1 versions (backward), latest meshscope:schema/orders.%3E/1" in shown
    assert '"required":["total"]' in shown
    out = tmp_path / "exported"
    lines = await run(export, str(out), url, TEST_TOKEN, None)
    assert lines[0].startswith("version 1-") and "policies.toml" in lines[0]
    again = await run(apply, str(out), url, TEST_TOKEN, None, True)
    assert again[1:] == ["  no change"]  # the export is exactly what is enforced
    with pytest.raises(GovernanceCommandError, match="not an empty directory"):
        await run(export, str(out), url, TEST_TOKEN, None)


async def test_the_command_line_takes_options_and_directory_in_any_order(mesh: Mesh, tmp_path: Path) -> None:
    await mesh.start([A])
    directory = governance_dir(tmp_path / "gov")
    token = tmp_path / "admin.token"
    token.write_text(TEST_TOKEN + "\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshscope", "governance", *args, "--data-dir", str(tmp_path / "no-up")],
            capture_output=True,
            text=True,
            timeout=scaled(60),
        )

    url = mesh[A].url
    first = await asyncio.to_thread(cli, "apply", "--relay", url, "--token-file", str(token), str(directory))
    assert first.returncode == 0 and "applied: version 1-" in first.stdout, first.stderr
    second = await asyncio.to_thread(
        cli, "apply", str(directory), "--dry-run", "--relay", url, "--token-file", str(token)
    )
    assert second.returncode == 0 and "no change" in second.stdout, second.stderr
    missing = await asyncio.to_thread(cli, "apply", "--relay", url)
    assert missing.returncode == 2 and "required: directory" in missing.stderr and "Traceback" not in missing.stderr
    typo = await asyncio.to_thread(cli, "apply", "--relay", url, "--token-file", str(token), str(tmp_path / "gvo"))
    assert typo.returncode == 1 and "no such directory" in typo.stderr
    no_relay = await asyncio.to_thread(cli, "show")
    assert no_relay.returncode == 2 and "--relay" in no_relay.stderr
