"""What judges the build is pinned: constraints.txt fixes every package the project installs.

A new release of mypy once turned main red without a line of the project changing. Every requirement
of pyproject.toml (extras included) must be pinned with `==` in constraints.txt, and every command that
installs the project (CI, the README, the Dockerfile) must install through it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints.txt: {line!r} is not pinned with =="
        out[canonical(name)] = version
    return out


def requirement_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    return {canonical(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]) for req in reqs}


def test_every_requirement_and_extra_is_pinned() -> None:
    missing = sorted(requirement_names() - set(pins()))
    assert not missing, f"not pinned in constraints.txt (run .ci/update-constraints): {missing}"


def test_the_tools_that_judge_the_build_are_pinned() -> None:
    assert {"mypy", "ruff"} <= set(pins())


INSTALL = re.compile(r"pip\b.*\binstall\b.*(-e\s+)?['\"]?\.(\[|['\"\s]|$)")


def test_every_install_of_the_project_goes_through_the_constraints() -> None:
    installs = {
        ".ci/run": (ROOT / ".ci/run").read_text(),
        "README.md": (ROOT / "README.md").read_text(),
        "Dockerfile": (ROOT / "Dockerfile").read_text(),
    }
    for where, text in installs.items():
        lines = [line for line in text.splitlines() if INSTALL.search(line)]
        assert lines, f"{where} installs the project nowhere"
        for line in lines:
            assert "-c constraints.txt" in line, f"{where} installs without the constraints: {line.strip()}"
