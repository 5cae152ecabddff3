"""``meshscope governance apply DIR | show``: policies and schemas from files, through a relay's admin API.

``apply`` reads a GitOps directory (policies.toml, schemas/index.toml and the
schema files; see meshcore/governance.py), checks it locally, and PUTs it to a
relay's ``/v1/governance`` as the principal of the token: the registry gives
it a version id with that principal as author, refuses an incompatible schema
version (409, with the reasons) and every relay enforces it within seconds.
Applying the same directory twice changes nothing. The relay and credentials
default to those of a ``meshscope up`` in the data directory.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from meshcore.document import GovernanceError
from meshcore.governance import diff, from_json, load_directory


class GovernanceCommandError(Exception):
    """The command cannot do what was asked; the message says why."""


def defaults(data_dir: str) -> tuple[str | None, str | None, str | None]:
    """(relay URL, token, CA file) of the meshscope up in ``data_dir``, when there is one."""
    try:
        state = json.loads((Path(data_dir) / "up.json").read_text())
        relay = next(iter(state["relays"].values()))
        url = f"{state['scheme']}://127.0.0.1:{relay['port']}"
        token = (Path(state["tokens"]) / "ops.token").read_text().strip()
        return url, token, state.get("ca")
    except (OSError, ValueError, KeyError, StopIteration):
        return None, None, None


def _request(method: str, url: str, token: str | None, ca: str | None, body: Any = None) -> Any:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    context = ssl.create_default_context(cafile=ca) if ca else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read())
        except ValueError:
            answer = {"error": str(exc)}
        reasons = "".join(f"\n  - {r}" for r in answer.get("reasons", []))
        raise GovernanceCommandError(f"{exc.code}: {answer.get('error', exc.reason)}{reasons}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise GovernanceCommandError(f"cannot reach the relay at {url}: {exc}") from None


def apply(directory: str, relay: str, token: str | None, ca: str | None, dry_run: bool = False) -> list[str]:
    """Apply ``directory``; returns the lines to print."""
    try:
        content = load_directory(Path(directory))
    except GovernanceError as exc:
        raise GovernanceCommandError(f"{directory}: {exc}") from None
    current = _request("GET", relay.rstrip("/") + "/v1/governance", token, ca)
    document = current.get("document")
    before = from_json(json.dumps(document)).content if document else None
    change = diff(before, content)
    lines = [f"{directory} against version {current.get('enforced') or 'none'} at {relay}:"]
    lines += [f"  {line}" for line in change.summary()]
    if dry_run or not change:
        return lines
    answer = _request("PUT", relay.rstrip("/") + "/v1/governance", token, ca, content.to_json())
    lines.append(f"applied: version {answer['version']} by {answer['author']}")
    return lines


def show(relay: str, token: str | None, ca: str | None) -> list[str]:
    current = _request("GET", relay.rstrip("/") + "/v1/governance", token, ca)
    document = current.get("document")
    lines = [f"enforced at {relay}: {current.get('enforced') or 'none'}"]
    if document:
        lines.append(
            f"version {document['version']}-{document['digest']} by {document['author']} at {document['changed_at']}"
        )
        policies = document.get("policies")
        lines.append("policies: none (everything allowed)" if policies is None else f"policies: {len(policies)} rules")
        for subject in document.get("subjects", []):
            lines.append(
                f"schema {subject['subject']}: {len(subject['versions'])} versions ({subject['compatibility']})"
            )
    for change in current.get("history", [])[:10]:
        lines.append(
            f"  {change['version']} by {change['author']} at {change['changed_at']}: {'; '.join(change['summary'])}"
        )
    return lines
