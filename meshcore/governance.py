"""Policies and schemas as one versioned document: what every relay enforces, and names when asked.

Policies and schemas change together (a new topic, its schema and who may
publish it) and a relay must be able to say exactly what it enforces, so both
live in one document with one version id: a monotonic integer and a short hash
of the content (``7-3fa2b1c9d0e1``), with the author (a principal name) and the
time of the change that made it. The registry in Valkey stores documents in
the JSON form below; storing them is not this module's business, and nothing
here does I/O except ``load_directory`` reading a Git checkout.

A GitOps directory::

    governance/
      policies.toml         [[rule]] tables, see meshcore.policy (absent: no policy, all allowed;
                            present with no rule: everything denied)
      schemas/
        index.toml          [subjects."orders.>"]
                            compatibility = "backward"        (optional; the default)
                            versions = ["orders/1.json", "orders/2.json"]
        orders/1.json       one JSON Schema (draft 2020-12) per file; paths relative to schemas/

Every ``.json`` file under ``schemas/`` must be listed in the index (a file
left out is a mistake, not a draft), and versions are listed oldest first.

The JSON form: ``{"format": 1, "version": 7, "digest": "3fa2b1c9d0e1",
"author": "alice", "changed_at": "2025-01-01T10:00:00+00:00", "policies":
[rule, ...] | null, "subjects": [{"subject": "orders.>", "compatibility":
"backward", "versions": [schema, ...]}]}``. Reading it checks everything again,
the digest included: whoever can write to the registry is still a user.

``next_document`` is the only way to a new version: it refuses a change to a
published schema version (versions are immutable; add one) and a new version
its subject's compatibility mode refuses, and returns the current document
unchanged when the content is the same (an idempotent GitOps sync).

Every region keeps its own copy of the document, and one authority orders the
versions (``router.authority``). ``compare`` says what a copy that arrives from
elsewhere is to the one held here: newer (take it), the same, older (the sender
is behind), or a fork (the same version number with other content: two
authorities, which is a configuration fault to report, never to settle
silently). ``check_base`` is the compare-and-set of a change: a change computed
on a version that is no longer the newest is refused (``GovernanceConflict``),
so two changes made at once never both win.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshcore.document import DEFAULT_LIMITS, Fields, IncompatibleSchema, InvalidDocument, Limits, child
from meshcore.names import PRINCIPAL
from meshcore.policy import PolicyEngine, Rule, parse_rules
from meshcore.schemacompat import Compatibility, check_compatibility
from meshcore.schemas import SchemaRegistry, Subject, canonical, make_subject, parse_subjects, unique_subjects

FORMAT = 1
POLICIES_FILE = "policies.toml"
SCHEMAS_DIR = "schemas"
INDEX_FILE = "index.toml"


@dataclass(frozen=True, slots=True)
class GovernanceContent:
    """What admins write: policy rules (None: no policy document) and schema subjects."""

    policies: tuple[Rule, ...] | None = None
    subjects: tuple[Subject, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "policies": None if self.policies is None else [r.to_json() for r in self.policies],
            "subjects": [s.to_json() for s in self.subjects],
        }

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical(self.to_json()).encode()).hexdigest()[:12]

    def subject(self, pattern: str) -> Subject | None:
        return next((s for s in self.subjects if s.pattern == pattern), None)


@dataclass(frozen=True, slots=True)
class GovernanceDocument:
    """One version of the content, with who made it and when."""

    version: int
    digest: str
    author: str
    changed_at: datetime
    content: GovernanceContent

    @property
    def version_id(self) -> str:
        return f"{self.version}-{self.digest}"


def next_document(
    current: GovernanceDocument | None, content: GovernanceContent, author: str, at: datetime
) -> GovernanceDocument:
    """The version after ``current`` holding ``content``; ``current`` itself when nothing changed."""
    if not PRINCIPAL.fullmatch(author):
        raise InvalidDocument("author", f"{author!r} is not a principal name")
    if at.tzinfo is None:
        raise InvalidDocument("changed_at", "must carry a time zone")
    digest = content.digest
    if current is not None and current.digest == digest:
        return current
    reasons: list[str] = []
    for subject in content.subjects:
        old = current.content.subject(subject.pattern) if current else None
        published = old.versions if old else ()
        where = child(child("subjects", subject.pattern), "versions")
        if len(subject.versions) < len(published):
            raise InvalidDocument(where, f"version {len(published)} was removed; published versions are immutable")
        for before, after in zip(published, subject.versions, strict=False):
            if before.text != after.text:
                raise InvalidDocument(
                    child(where, before.version - 1),
                    f"version {before.version} of {subject.pattern!r} was changed; published versions are "
                    "immutable: add a new version instead",
                )
        for i in range(max(len(published), 1), len(subject.versions)):
            previous = [v.schema for v in subject.versions[:i]]
            found = check_compatibility(subject.versions[i].schema, previous, subject.compatibility)
            reasons += [f"{subject.pattern} v{i + 1}: {r}" for r in found]
    if reasons:
        raise IncompatibleSchema("subjects", reasons)
    version = current.version + 1 if current else 1
    return GovernanceDocument(version, digest, author, at.astimezone(UTC), content)


NONE = "none"
"""The version id of "no document yet"."""
VERSION_ID = re.compile(r"(?:[1-9][0-9]{0,17})-[0-9a-f]{12}|none")
"""A version id as relays report and compare them: ``7-3fa2b1c9d0e1``, or ``none``."""

NEWER, SAME, OLDER, FORK = "newer", "same", "older", "fork"


class GovernanceConflict(Exception):
    """A change computed on ``base`` while the newest version is ``current`` (409): made elsewhere meanwhile."""

    def __init__(self, base: str, current: str):
        super().__init__(
            f"the governance document changed: this change was made on version {base}, the newest is {current}; "
            "read it and make the change again"
        )
        self.base = base
        self.current = current


def version_id_of(document: GovernanceDocument | None) -> str:
    return document.version_id if document is not None else NONE


def version_number(version_id: str) -> int:
    """The ordering number of a version id (0 for ``none`` or anything unreadable)."""
    head = version_id.partition("-")[0]
    return int(head) if VERSION_ID.fullmatch(version_id) and head.isdigit() else 0


def compare(candidate: GovernanceDocument, held: GovernanceDocument | None) -> str:
    """What ``candidate`` (from a peer or the store) is to the document ``held`` here: NEWER, SAME, OLDER or FORK."""
    if held is None or candidate.version > held.version:
        return NEWER
    if candidate.version < held.version:
        return OLDER
    return SAME if candidate.digest == held.digest else FORK


def check_base(current: GovernanceDocument | None, base: str | None) -> None:
    """Compare-and-set: raise GovernanceConflict unless ``base`` (when given) is the current version."""
    if base is not None and base != version_id_of(current):
        raise GovernanceConflict(base, version_id_of(current))


def to_json(document: GovernanceDocument) -> bytes:
    """The document as the registry stores it (canonical JSON, UTF-8)."""
    return canonical(
        {
            "format": FORMAT,
            "version": document.version,
            "digest": document.digest,
            "author": document.author,
            "changed_at": document.changed_at.isoformat(),
            **document.content.to_json(),
        }
    ).encode()


def from_json(data: bytes | str, limits: Limits = DEFAULT_LIMITS) -> GovernanceDocument:
    """A document read back, every field checked and the digest recomputed."""
    raw = _json(data, "document", limits)
    f = Fields(raw, "", ("format", "version", "digest", "author", "changed_at", "policies", "subjects"))
    if f.raw("format") != FORMAT:
        raise InvalidDocument("format", f"only format {FORMAT} is understood")
    version = f.integer("version", minimum=1)
    digest = f.text("digest", max_length=12)
    author = f.text("author", max_length=128, pattern=PRINCIPAL)
    stamp = f.text("changed_at", max_length=40)
    try:
        changed_at = datetime.fromisoformat(stamp)
    except ValueError:
        raise InvalidDocument("changed_at", f"{stamp!r} is not an ISO 8601 time") from None
    if changed_at.tzinfo is None:
        raise InvalidDocument("changed_at", "must carry a time zone")
    content = parse_content({"policies": f.raw("policies"), "subjects": f.raw("subjects")}, limits)
    if content.digest != digest:
        raise InvalidDocument("digest", f"{digest!r} does not match the content ({content.digest}): altered or damaged")
    return GovernanceDocument(version, digest, author, changed_at.astimezone(UTC), content)


def content_from_json(data: bytes | str, limits: Limits = DEFAULT_LIMITS) -> GovernanceContent:
    """Content from its JSON text (a change forwarded to the authority), as strictly as a document."""
    return parse_content(_json(data, "content", limits), limits)


def parse_content(raw: object, limits: Limits = DEFAULT_LIMITS) -> GovernanceContent:
    """Content from its JSON form (an admin's request body): ``{"policies": [...] | null, "subjects": [...]}``."""
    f = Fields(raw, "", ("policies", "subjects"))
    policies_raw = f.raw("policies", required=False)
    policies = None if policies_raw is None else parse_rules(policies_raw, "policies", limits)
    subjects = parse_subjects(f.raw("subjects", required=False) or [], "subjects", limits)
    return GovernanceContent(policies, subjects)


def add_schema_version(
    content: GovernanceContent,
    pattern: str,
    schema: object,
    compatibility: Compatibility | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> GovernanceContent:
    """``content`` with ``schema`` as the next version of subject ``pattern`` (a new subject: version 1).

    Compatibility is checked by ``next_document``, like any other change.
    """
    old = content.subject(pattern)
    mode = compatibility or (old.compatibility if old else Compatibility.BACKWARD)
    earlier: list[tuple[str, object]] = [(v.uri, v.schema) for v in old.versions] if old else []
    where = child(child("subjects", pattern), "versions")
    subject = make_subject(pattern, mode, [*earlier, (child(where, len(earlier)), schema)], where, limits)
    others = [s for s in content.subjects if s.pattern != pattern]
    if len(others) + 1 > limits.max_subjects:
        raise InvalidDocument("subjects", f"the limit is {limits.max_subjects} subjects")
    return GovernanceContent(content.policies, unique_subjects([*others, subject], "subjects"))


def _json(data: bytes | str, path: str, limits: Limits) -> Any:
    """Strict JSON: bounded size, no duplicate keys, no NaN or Infinity."""
    if len(data) > limits.max_document_bytes:
        raise InvalidDocument(path, f"larger than {limits.max_document_bytes} bytes")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise InvalidDocument(path, f"key {k!r} appears twice in one object")
            out[k] = v
        return out

    def constant(name: str) -> Any:
        raise InvalidDocument(path, f"{name} is not JSON")

    try:
        return json.loads(data, object_pairs_hook=pairs, parse_constant=constant)
    except (ValueError, RecursionError) as exc:  # InvalidDocument from the hooks passes through
        raise InvalidDocument(path, f"not JSON: {exc}") from None


def load_directory(root: Path, limits: Limits = DEFAULT_LIMITS) -> GovernanceContent:
    """The content of a GitOps directory (layout in the module docstring)."""
    policies = None
    policies_path = root / POLICIES_FILE
    if policies_path.is_file():
        f = Fields(_toml(policies_path, POLICIES_FILE, limits), f"{POLICIES_FILE}:", ("rule",))
        policies = parse_rules(f.raw("rule", required=False) or [], child(f.path, "rule"), limits)
    schemas_dir = root / SCHEMAS_DIR
    if not schemas_dir.is_dir():
        return GovernanceContent(policies, ())
    where = f"{SCHEMAS_DIR}/{INDEX_FILE}:"
    listed: set[Path] = set()
    subjects: list[Subject] = []
    tables: object = None
    if (schemas_dir / INDEX_FILE).is_file():
        index = Fields(_toml(schemas_dir / INDEX_FILE, where[:-1], limits), where, ("subjects",))
        tables = index.raw("subjects", required=False)
    tables = {} if tables is None else tables
    if not isinstance(tables, dict):
        raise InvalidDocument(child(where, "subjects"), "must be a table of subjects")
    if len(tables) > limits.max_subjects:
        limit = limits.max_subjects
        raise InvalidDocument(child(where, "subjects"), f"holds {len(tables)} subjects; the limit is {limit}")
    for pattern, table in tables.items():
        path = child(child(where, "subjects"), pattern)
        f = Fields(table, path, ("compatibility", "versions"))
        mode = Compatibility(
            f.text("compatibility", required=False, default="backward", choices=tuple(str(c) for c in Compatibility))
        )
        files = f.texts("versions", max_items=limits.max_versions, max_length=512)
        schemas: list[tuple[str, object]] = []
        for i, name in enumerate(files):
            file = _inside(schemas_dir, name, child(child(path, "versions"), i))
            if file in listed:
                raise InvalidDocument(child(child(path, "versions"), i), f"{name!r} is listed twice in the index")
            listed.add(file)
            label = f"{SCHEMAS_DIR}/{name}"
            schemas.append((label, _json(_read(file, label, limits), label, limits)))
        subjects.append(make_subject(pattern, mode, schemas, path, limits))
    for stray in sorted(schemas_dir.rglob("*.json")):
        if stray.resolve() not in listed:
            raise InvalidDocument(
                f"{SCHEMAS_DIR}/{stray.relative_to(schemas_dir)}", f"not listed in {SCHEMAS_DIR}/{INDEX_FILE}"
            )
    return GovernanceContent(policies, unique_subjects(subjects, where))


def _inside(base: Path, name: str, path: str) -> Path:
    if not name.endswith(".json") or name.startswith("/") or "\\" in name or ".." in name.split("/"):
        raise InvalidDocument(path, f"{name!r} must be a relative path to a .json file under {SCHEMAS_DIR}/")
    file = (base / name).resolve()
    if not file.is_relative_to(base.resolve()) or not file.is_file():
        raise InvalidDocument(path, f"{SCHEMAS_DIR}/{name} does not exist")
    return file


def _read(file: Path, label: str, limits: Limits) -> bytes:
    if file.stat().st_size > limits.max_document_bytes:
        raise InvalidDocument(label, f"larger than {limits.max_document_bytes} bytes")
    return file.read_bytes()


def _toml(file: Path, label: str, limits: Limits) -> dict[str, Any]:
    try:
        return tomllib.loads(_read(file, label, limits).decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidDocument(label, f"not TOML: {exc}") from None


@dataclass(frozen=True, slots=True)
class ContentDiff:
    """What a change does, for the admin who proposes it and the audit log."""

    policy: str  # "unchanged", "enabled" (no policy -> rules) or "disabled" (rules -> no policy)
    rules_added: tuple[str, ...] = ()
    rules_removed: tuple[str, ...] = ()
    rules_changed: tuple[str, ...] = ()
    rules_reordered: bool = False
    subjects_added: tuple[str, ...] = ()
    subjects_removed: tuple[str, ...] = ()
    versions_added: tuple[str, ...] = ()  # "orders.> v3"
    compatibility_changed: tuple[str, ...] = ()  # "orders.>: backward -> full"

    def __bool__(self) -> bool:
        return self != ContentDiff("unchanged")

    def summary(self) -> list[str]:
        """One human line per kind of change."""
        lines = [] if self.policy == "unchanged" else [f"policy {self.policy}"]
        for label, names in (
            ("rules added", self.rules_added),
            ("rules removed", self.rules_removed),
            ("rules changed", self.rules_changed),
            ("subjects added", self.subjects_added),
            ("subjects removed", self.subjects_removed),
            ("schema versions added", self.versions_added),
            ("compatibility changed", self.compatibility_changed),
        ):
            if names:
                lines.append(f"{label}: {', '.join(names)}")
        if self.rules_reordered:
            lines.append("rules reordered (order breaks ties between equally specific rules)")
        return lines or ["no change"]


def diff(old: GovernanceContent | None, new: GovernanceContent) -> ContentDiff:
    old = old or GovernanceContent()
    before = {r.id: r for r in old.policies or ()}
    after = {r.id: r for r in new.policies or ()}
    policy = "unchanged"
    if (old.policies is None) != (new.policies is None):
        policy = "enabled" if old.policies is None else "disabled"
    kept = [i for i in before if i in after]
    subjects_before = {s.pattern: s for s in old.subjects}
    subjects_after = {s.pattern: s for s in new.subjects}
    versions: list[str] = []
    modes: list[str] = []
    for pattern, s in subjects_after.items():
        prior = subjects_before.get(pattern)
        start = len(prior.versions) if prior else 0
        versions += [f"{pattern} v{v.version}" for v in s.versions[start:]]
        if prior and prior.compatibility != s.compatibility:
            modes.append(f"{pattern}: {prior.compatibility} -> {s.compatibility}")
    return ContentDiff(
        policy=policy,
        rules_added=tuple(i for i in after if i not in before),
        rules_removed=tuple(i for i in before if i not in after),
        rules_changed=tuple(i for i in kept if before[i] != after[i]),
        rules_reordered=kept != [i for i in after if i in before],
        subjects_added=tuple(p for p in subjects_after if p not in subjects_before),
        subjects_removed=tuple(p for p in subjects_before if p not in subjects_after),
        versions_added=tuple(versions),
        compatibility_changed=tuple(modes),
    )


class Governance:
    """What a relay enforces: one document version's policy engine and schema registry.

    Build a new one per document version (that is how caches are invalidated); pass the
    previous one so that compiled validators of unchanged schema versions are kept.
    """

    __slots__ = ("document", "policy", "schemas")

    def __init__(self, document: GovernanceDocument | None = None, *, previous: Governance | None = None) -> None:
        self.document: GovernanceDocument | None = document
        content = document.content if document else GovernanceContent()
        self.policy: PolicyEngine = PolicyEngine(content.policies)
        self.schemas: SchemaRegistry = SchemaRegistry(content.subjects, reuse=previous.schemas if previous else None)

    @property
    def version_id(self) -> str:
        """What the relay reports it enforces ("none" before any document)."""
        return self.document.version_id if self.document else "none"
