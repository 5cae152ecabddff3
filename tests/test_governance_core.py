"""Governance documents: versions, GitOps directories, the JSON form, diffs, and what a relay builds from them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from meshcore.document import IncompatibleSchema, InvalidDocument, Limits
from meshcore.governance import (
    ContentDiff,
    Governance,
    GovernanceContent,
    add_schema_version,
    diff,
    from_json,
    load_directory,
    next_document,
    parse_content,
    to_json,
)
from meshcore.policy import Action, Effect, Rule
from meshcore.schemacompat import Compatibility
from meshcore.schemas import make_subject

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

POLICIES = """
[[rule]]
id = "billing-publishes-orders"
effect = "allow"
principals = ["group:billing"]
actions = ["publish"]
topics = ["orders.>"]
regions = ["aws:us-east-1"]
description = "the billing service writes orders in us-east-1"

[[rule]]
id = "everyone-reads"
effect = "allow"
principals = ["*"]
actions = ["subscribe"]
topics = [">"]
"""
V1 = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"], "additionalProperties": False}
V2 = {**V1, "properties": {"id": {"type": "string"}, "note": {"type": "string", "default": ""}}}
V3_BREAKING = {**V2, "required": ["id", "note"]}


class Who:
    def __init__(self, name: str, *groups: str) -> None:
        self.name = name
        self.groups = frozenset(groups)


def write_tree(root: Path, files: dict[str, Any]) -> Path:
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body if isinstance(body, str) else json.dumps(body, indent=2))
    return root


INDEX = """
[subjects."orders.>"]
compatibility = "backward"
versions = ["orders/1.json", "orders/2.json"]

[subjects."payments.*"]
versions = ["payments.json"]
"""


def tree(tmp_path: Path, **overrides: Any) -> Path:
    files: dict[str, Any] = {
        "policies.toml": POLICIES,
        "schemas/index.toml": INDEX,
        "schemas/orders/1.json": V1,
        "schemas/orders/2.json": V2,
        "schemas/payments.json": {"type": "object"},
    }
    files.update(overrides)
    return write_tree(tmp_path, {k: v for k, v in files.items() if v is not None})


def content(
    *schemas: Any, mode: Compatibility = Compatibility.BACKWARD, policies: tuple[Rule, ...] | None = ()
) -> GovernanceContent:
    subjects = (
        (make_subject("orders.>", mode, [(f"v{i}", s) for i, s in enumerate(schemas)], "s", Limits()),)
        if schemas
        else ()
    )
    return GovernanceContent(policies, subjects)


def test_a_directory_loads_into_content(tmp_path: Path) -> None:
    loaded = load_directory(tree(tmp_path))
    assert loaded.policies is not None
    assert [r.id for r in loaded.policies] == ["billing-publishes-orders", "everyone-reads"]
    assert loaded.policies[0].regions == ("aws:us-east-1",)
    assert [(s.pattern, s.compatibility, len(s.versions)) for s in loaded.subjects] == [
        ("orders.>", Compatibility.BACKWARD, 2),
        ("payments.*", Compatibility.BACKWARD, 1),
    ]
    assert loaded.subject("orders.>").latest.schema == V2  # type: ignore[union-attr]


def test_no_policies_file_means_no_policy_and_an_empty_one_denies(tmp_path: Path) -> None:
    assert load_directory(tree(tmp_path / "a", **{"policies.toml": None})).policies is None
    assert load_directory(tree(tmp_path / "b", **{"policies.toml": "# nothing yet\n"})).policies == ()
    assert load_directory(tmp_path / "c") == GovernanceContent()


@pytest.mark.parametrize(
    ("overrides", "path", "words"),
    [
        ({"policies.toml": POLICIES.replace("actions", "actoins", 1)}, "policies.toml:rule[0].actoins", "unknown key"),
        ({"policies.toml": "[[rule]]\nid = 'x'\n"}, "policies.toml:rule[0].effect", "is required"),
        ({"policies.toml": "rules = []"}, "policies.toml:rules", "unknown key 'rules'"),
        ({"policies.toml": "[[rule]\n"}, "policies.toml", "not TOML"),
        ({"schemas/stray.json": {}}, "schemas/stray.json", "not listed in schemas/index.toml"),
        (
            {"schemas/index.toml": INDEX.replace("orders/2.json", "../escape.json")},
            "schemas/index.toml:subjects.orders.>.versions[1]",
            "relative path",
        ),
        (
            {"schemas/index.toml": INDEX.replace("orders/2.json", "orders/9.json")},
            "schemas/index.toml:subjects.orders.>.versions[1]",
            "does not exist",
        ),
        (
            {"schemas/index.toml": INDEX.replace('["payments.json"]', '["orders/1.json"]')},
            "schemas/index.toml:subjects.payments.*.versions[0]",
            "listed twice",
        ),
        (
            {"schemas/index.toml": INDEX.replace('"backward"', '"sideways"')},
            "schemas/index.toml:subjects.orders.>.compatibility",
            "must be one of",
        ),
        (
            {"schemas/index.toml": INDEX + '\n[subjects."bad.>.x"]\nversions = []\n'},
            "schemas/index.toml:subjects.bad.>.x.versions",
            "at least one",
        ),
        ({"schemas/orders/2.json": '{"type": "object", "type": "array"}'}, "schemas/orders/2.json", "appears twice"),
        ({"schemas/orders/2.json": '{"minimum": NaN}'}, "schemas/orders/2.json", "NaN is not JSON"),
        ({"schemas/orders/2.json": {"type": "objekt"}}, "schemas/orders/2.json/type", "not a valid draft 2020-12"),
    ],
)
def test_a_bad_directory_is_refused_naming_the_file_and_place(
    tmp_path: Path, overrides: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(InvalidDocument) as caught:
        load_directory(tree(tmp_path, **overrides))
    assert caught.value.path == path
    assert words in caught.value.reason


def test_versions_count_up_and_an_unchanged_content_is_the_same_version() -> None:
    first = next_document(None, content(V1), "alice", T0)
    assert (first.version, first.author, first.changed_at) == (1, "alice", T0)
    assert first.version_id == f"1-{first.digest}" and len(first.digest) == 12
    assert next_document(first, content(V1), "bob", T0 + timedelta(hours=1)) is first
    second = next_document(first, content(V1, V2), "bob", T0 + timedelta(hours=1))
    assert (second.version, second.author) == (2, "bob")
    assert second.digest != first.digest


def test_an_incompatible_version_is_refused_with_reasons() -> None:
    first = next_document(None, content(V1, V2), "alice", T0)
    with pytest.raises(IncompatibleSchema) as caught:
        next_document(first, content(V1, V2, V3_BREAKING), "alice", T0)
    assert caught.value.reasons == (
        "orders.> v3: backward against v2: /required: 'note' is required by the new schema but not by the old schema",
    )
    allowed = next_document(first, content(V1, V2, V3_BREAKING, mode=Compatibility.NONE), "alice", T0)
    assert allowed.version == 2


def test_a_new_subject_is_checked_along_its_whole_history() -> None:
    with pytest.raises(IncompatibleSchema, match=r"orders\.> v2"):
        next_document(None, content(V2, V1, mode=Compatibility.FULL), "alice", T0)


def test_published_versions_are_immutable() -> None:
    first = next_document(None, content(V1, V2), "alice", T0)
    with pytest.raises(InvalidDocument, match=r"version 2 of 'orders\.>' was changed"):
        next_document(first, content(V1, {**V2, "title": "edited"}), "alice", T0)
    with pytest.raises(InvalidDocument, match="version 2 was removed"):
        next_document(first, content(V1), "alice", T0)
    assert next_document(first, content(), "alice", T0).content.subjects == ()  # a whole subject may go


def test_the_author_and_time_are_checked() -> None:
    with pytest.raises(InvalidDocument, match="not a principal name"):
        next_document(None, content(V1), "alice smith", T0)
    with pytest.raises(InvalidDocument, match="time zone"):
        next_document(None, content(V1), "alice", datetime(2025, 1, 1))
    later = next_document(None, content(V1), "alice", datetime(2025, 1, 1, 14, tzinfo=timezone(timedelta(hours=2))))
    assert later.changed_at == datetime(2025, 1, 1, 12, tzinfo=UTC)


def test_the_json_form_round_trips(tmp_path: Path) -> None:
    document = next_document(None, load_directory(tree(tmp_path)), "alice", T0)
    data = to_json(document)
    assert from_json(data) == document
    assert from_json(data.decode()) == document
    raw = json.loads(data)
    assert (raw["format"], raw["version"], raw["author"], raw["changed_at"]) == (
        1,
        1,
        "alice",
        "2025-03-01T12:00:00+00:00",
    )
    no_policy = next_document(None, GovernanceContent(None, ()), "alice", T0)
    assert from_json(to_json(no_policy)).content.policies is None


def tampered(change: dict[str, Any]) -> bytes:
    raw = json.loads(to_json(next_document(None, content(V1, policies=None), "alice", T0)))
    raw.update(change)
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        (tampered({"subjects": []}), "digest", "does not match the content"),
        (tampered({"extra": 1}), "extra", "unknown key 'extra'"),
        (tampered({"format": 2}), "format", "only format 1"),
        (tampered({"version": 0}), "version", "between 1 and"),
        (tampered({"version": True}), "version", "must be an integer"),
        (tampered({"changed_at": "yesterday"}), "changed_at", "not an ISO 8601 time"),
        (tampered({"changed_at": "2025-01-01T00:00:00"}), "changed_at", "time zone"),
        (tampered({"policies": [{"id": "x"}]}), "policies[0].effect", "is required"),
        (b'{"format": 1, "format": 1}', "document", "appears twice"),
        (b"[1, 2", "document", "not JSON"),
        (b"[]", "", "must be a table"),
    ],
)
def test_the_json_form_is_read_strictly(data: bytes, path: str, words: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        from_json(data)
    assert caught.value.path == path
    assert words in caught.value.reason


def test_the_document_size_is_bounded() -> None:
    data = to_json(next_document(None, content(V1), "alice", T0))
    with pytest.raises(InvalidDocument, match="larger than 100 bytes"):
        from_json(data, Limits(max_document_bytes=100))


def rule(rule_id: str, topics: str = "orders.>") -> Rule:
    return Rule(rule_id, Effect.ALLOW, ("*",), (Action.PUBLISH,), tuple(topics.split()))


def test_a_diff_says_what_changed() -> None:
    old = content(V1, policies=(rule("a"), rule("b"), rule("c")))
    new = GovernanceContent(
        (rule("c"), rule("b", "orders.eu.>"), rule("d")),
        (
            make_subject("orders.>", Compatibility.FULL, [("1", V1), ("2", V2)], "s", Limits()),
            make_subject("payments.>", Compatibility.NONE, [("1", {})], "s", Limits()),
        ),
    )
    change = diff(old, new)
    assert change == ContentDiff(
        policy="unchanged",
        rules_added=("d",),
        rules_removed=("a",),
        rules_changed=("b",),
        rules_reordered=True,
        subjects_added=("payments.>",),
        versions_added=("orders.> v2", "payments.> v1"),
        compatibility_changed=("orders.>: backward -> full",),
    )
    assert change.summary() == [
        "rules added: d",
        "rules removed: a",
        "rules changed: b",
        "subjects added: payments.>",
        "schema versions added: orders.> v2, payments.> v1",
        "compatibility changed: orders.>: backward -> full",
        "rules reordered (order breaks ties between equally specific rules)",
    ]
    assert diff(None, GovernanceContent((), ())).summary() == ["policy enabled"]
    assert diff(old, GovernanceContent(None, old.subjects)).rules_removed == ("a", "b", "c")
    assert not diff(old, old) and diff(old, old).summary() == ["no change"]


def test_a_relay_builds_what_it_enforces_from_a_document(tmp_path: Path) -> None:
    nothing = Governance()
    assert nothing.version_id == "none"
    assert nothing.policy.decide(Who("anyone"), Action.ADMIN, "policies").allowed
    assert nothing.schemas.validate("orders.x", "anything") is None

    document = next_document(None, load_directory(tree(tmp_path)), "alice", T0)
    governance = Governance(document)
    assert governance.version_id == document.version_id
    billing = Who("billing-svc", "billing")
    assert (
        governance.policy.decide(billing, Action.PUBLISH, "orders.eu", "aws:us-east-1").rule
        == "billing-publishes-orders"
    )
    assert not governance.policy.decide(billing, Action.PUBLISH, "orders.eu", "gcp:europe-west1").allowed
    assert governance.policy.read_gate(Who("reader"))("orders.eu")
    assert governance.schemas.validate("orders.eu", {"id": "1", "note": ""}) == "meshscope:schema/orders.%3E/2"

    compiled = governance.schemas.compiled(governance.schemas.subjects[0])
    following = Governance(next_document(document, document.content, "alice", T0), previous=governance)
    assert following.schemas.compiled(following.schemas.subjects[0]) is compiled


def test_an_admin_request_body_is_content_read_strictly() -> None:
    body = {"policies": [rule("a").to_json()], "subjects": [{"subject": "orders.>", "versions": [V1]}]}
    parsed = parse_content(body)
    assert parsed.policies == (rule("a"),)
    assert parsed.subject("orders.>").latest.schema == V1  # type: ignore[union-attr]
    assert parse_content({}) == GovernanceContent(None, ())
    with pytest.raises(InvalidDocument, match="unknown key 'rules'"):
        parse_content({"rules": []})


def test_a_schema_version_is_added_and_then_checked_like_any_change() -> None:
    first = next_document(None, add_schema_version(GovernanceContent(), "orders.>", V1), "alice", T0)
    second_content = add_schema_version(first.content, "orders.>", V2)
    assert [v.version for v in second_content.subject("orders.>").versions] == [1, 2]  # type: ignore[union-attr]
    second = next_document(first, second_content, "alice", T0)
    assert diff(first.content, second.content).versions_added == ("orders.> v2",)
    with pytest.raises(IncompatibleSchema):
        next_document(second, add_schema_version(second.content, "orders.>", V3_BREAKING), "alice", T0)
    full = add_schema_version(second.content, "orders.>", V3_BREAKING, Compatibility.NONE)
    assert next_document(second, full, "alice", T0).version == 3
    with pytest.raises(InvalidDocument, match=r"subjects\.orders\.>\.versions\[2\]/type"):
        add_schema_version(second.content, "orders.>", {"type": "objekt"})
