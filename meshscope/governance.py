"""``meshscope governance apply DIR | show | export DIR``: policies and schemas as files, through a relay's admin API.

``apply`` reads a GitOps directory (policies.toml, schemas/index.toml and the
schema files; see meshcore/governance.py), checks it locally against what is
enforced exactly as the registry will (``next_document``: published versions
unchanged, each new schema version compatible), and PUTs it to a relay's
``/v1/governance`` as the principal of the token: the registry gives it a
version id with that principal as author and every relay enforces it within
seconds. Applying the same directory twice changes nothing.

What would be a disaster from a typo is refused: a directory that does not
exist, one that holds neither policies.toml nor schemas/, and a change that
removes every rule (policy off, or everything denied) or every schema need
``--allow-empty``. ``--dry-run`` prints the change and what would be refused.

``show`` prints the rules and schemas enforced and the change log; ``export
DIR`` writes the enforced document into a new or empty directory in the
layout ``apply`` reads. The relay and credentials default to those of a
``meshscope up`` in the data directory.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshcore.document import GovernanceError, IncompatibleSchema
from meshcore.governance import (
    INDEX_FILE,
    POLICIES_FILE,
    SCHEMAS_DIR,
    GovernanceContent,
    GovernanceDocument,
    diff,
    from_json,
    load_directory,
    next_document,
)
from meshcore.policy import Rule


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


def _current(relay: str, token: str | None, ca: str | None) -> tuple[dict[str, Any], GovernanceDocument | None]:
    answer = _request("GET", relay.rstrip("/") + "/v1/governance", token, ca)
    document = answer.get("document")
    try:
        return answer, from_json(json.dumps(document)) if document else None
    except GovernanceError as exc:
        raise GovernanceCommandError(f"the relay's document does not read back: {exc}") from None


def emptied(before: GovernanceContent | None, after: GovernanceContent) -> list[str]:
    """What the change would remove entirely: every rule (policy off or all denied), every schema."""
    out = []
    if before is not None and before.policies and not after.policies:
        consequence = "policy off: every principal may do everything" if after.policies is None else "all denied"
        out.append(f"it removes every policy rule ({consequence})")
    if before is not None and before.subjects and not after.subjects:
        out.append("it removes every schema (no event is validated)")
    return out


def apply(
    directory: str,
    relay: str,
    token: str | None,
    ca: str | None,
    dry_run: bool = False,
    allow_empty: bool = False,
) -> list[str]:
    """Apply ``directory``; returns the lines to print."""
    root = Path(directory)
    if not root.is_dir():
        raise GovernanceCommandError(f"{directory}: no such directory")
    if not (root / POLICIES_FILE).is_file() and not (root / SCHEMAS_DIR).is_dir() and not allow_empty:
        raise GovernanceCommandError(
            f"{directory} holds neither {POLICIES_FILE} nor {SCHEMAS_DIR}/: is it the governance directory? "
            "(--allow-empty applies it: no policy, no schemas)"
        )
    try:
        content = load_directory(root)
    except GovernanceError as exc:
        raise GovernanceCommandError(f"{directory}: {exc}") from None
    answer, current = _current(relay, token, ca)
    before = current.content if current else None
    change = diff(before, content)
    lines = [f"{directory} against version {answer.get('enforced') or 'none'} at {relay}:"]
    lines += [f"  {line}" for line in change.summary()]
    refusals: list[str] = []
    try:  # the registry's own checks: published versions immutable, new versions compatible
        next_document(current, content, current.author if current else "admin", datetime.now(UTC))
    except IncompatibleSchema as exc:
        refusals += [f"the relay would refuse it (409): {reason}" for reason in exc.reasons]
    except GovernanceError as exc:
        refusals.append(f"the relay would refuse it: {exc}")
    if not allow_empty:
        refusals += [f"refused without --allow-empty: {what}" for what in emptied(before, content)]
    if dry_run:
        return lines + [f"  {r}" for r in refusals]
    if refusals:
        raise GovernanceCommandError("\n".join([*lines, *(f"  {r}" for r in refusals)]))
    if not change:
        return lines
    answer = _request("PUT", relay.rstrip("/") + "/v1/governance", token, ca, content.to_json())
    lines.append(f"applied: version {answer['version']} by {answer['author']}")
    return lines


def show(relay: str, token: str | None, ca: str | None) -> list[str]:
    """The enforced version, every rule and schema, and the latest changes."""
    answer, current = _current(relay, token, ca)
    lines = [f"enforced at {relay}: {answer.get('enforced') or 'none'}"]
    if current is not None:
        lines.append(f"version {current.version_id} by {current.author} at {current.changed_at.isoformat()}")
        rules = current.content.policies
        if rules is None:
            lines.append("policies: none (everything allowed)")
        else:
            lines.append(f"policies: {len(rules)} rules, first match by specificity (deny by default)")
            lines += [f"  {_rule_line(rule)}" for rule in rules]
        subjects = current.content.subjects
        lines.append(f"schemas: {len(subjects)} subjects" if subjects else "schemas: none")
        for subject in subjects:
            lines.append(
                f"  {subject.pattern}: {len(subject.versions)} versions ({subject.compatibility}), "
                f"latest {subject.latest.uri}"
            )
            lines.append(f"    {subject.latest.text}")
    history = answer.get("history", [])[:10]
    if history:
        lines.append("changes, newest first:")
    for change in history:
        lines.append(
            f"  {change['version']} by {change['author']} at {change['changed_at']}: {'; '.join(change['summary'])}"
        )
    return lines


def _rule_line(rule: Rule) -> str:
    regions = f" in {', '.join(rule.regions)}" if rule.regions else ""
    text = (
        f"{rule.id}: {rule.effect} {', '.join(rule.principals)} to {', '.join(str(a) for a in rule.actions)} "
        f"on {', '.join(rule.topics)}{regions}"
    )
    return text + (f" ({rule.description})" if rule.description else "")


def export(directory: str, relay: str, token: str | None, ca: str | None) -> list[str]:
    """Write the enforced document into ``directory`` (new or empty) as ``apply`` reads it."""
    root = Path(directory)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise GovernanceCommandError(f"{directory} is not an empty directory; export writes into a new or empty one")
    answer, current = _current(relay, token, ca)
    if current is None:
        raise GovernanceCommandError(f"{relay} enforces no governance document yet: nothing to export")
    files = layout(current.content)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    try:
        check = load_directory(root)  # what was written reads back as what is enforced
    except GovernanceError as exc:
        raise GovernanceCommandError(f"{directory}: the files written do not read back: {exc}") from None
    if check.digest != current.content.digest:
        raise GovernanceCommandError(f"{directory}: the files written do not read back as version {current.version_id}")
    return [f"version {answer.get('enforced')} written to {directory}: {', '.join(sorted(files))}"]


def layout(content: GovernanceContent) -> dict[str, str]:
    """The files of a GitOps directory holding ``content``: relative path -> text."""
    files: dict[str, str] = {}
    if content.policies is not None:
        rules = "".join(_rule_toml(rule) for rule in content.policies)
        files[POLICIES_FILE] = rules or "# no rule: everything denied\n"
    if content.subjects:
        index = []
        used: set[str] = set()
        for subject in content.subjects:
            folder = re.sub(r"[^A-Za-z0-9_-]+", "_", subject.pattern).strip("_") or "subject"
            while folder in used:
                folder += "_"
            used.add(folder)
            names = []
            for version in subject.versions:
                name = f"{folder}/{version.version}.json"
                files[f"{SCHEMAS_DIR}/{name}"] = json.dumps(version.schema, indent=2, ensure_ascii=False) + "\n"
                names.append(name)
            index.append(
                f"[subjects.{_toml_str(subject.pattern)}]\ncompatibility = {_toml_str(str(subject.compatibility))}\n"
                f"versions = {_toml_list(names)}\n"
            )
        files[f"{SCHEMAS_DIR}/{INDEX_FILE}"] = "\n".join(index)
    return files


def _rule_toml(rule: Rule) -> str:
    lines = [
        "[[rule]]",
        f"id = {_toml_str(rule.id)}",
        f"effect = {_toml_str(str(rule.effect))}",
        f"principals = {_toml_list(rule.principals)}",
        f"actions = {_toml_list([str(a) for a in rule.actions])}",
        f"topics = {_toml_list(rule.topics)}",
    ]
    if rule.regions:
        lines.append(f"regions = {_toml_list(rule.regions)}")
    if rule.description:
        lines.append(f"description = {_toml_str(rule.description)}")
    return "\n".join(lines) + "\n\n"


def _toml_str(value: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")  # TOML also escapes DEL


def _toml_list(values: Any) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"
