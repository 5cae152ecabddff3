"""Schema documents: refused with a path when bad, validated fast with a pointer when data is bad, URIs."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.document import InvalidDocument, Limits, SchemaViolation
from meshcore.schemacompat import Compatibility
from meshcore.schemas import (
    DRAFT_2020_12,
    CompiledSchema,
    SchemaRegistry,
    SchemaVersion,
    Subject,
    check_schema,
    make_subject,
    parse_schema_uri,
    parse_subjects,
    schema_uri,
)
from meshcore.topic import validate_pattern

ORDER: dict[str, Any] = {
    "$schema": DRAFT_2020_12,
    "type": "object",
    "additionalProperties": False,
    "required": ["order_id", "amount", "items", "created_at"],
    "properties": {
        "order_id": {"type": "string", "minLength": 1},
        "amount": {"type": "number", "minimum": 0},
        "currency": {"enum": ["EUR", "USD"]},
        "items": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/item"}},
        "created_at": {"type": "string", "format": "date-time"},
    },
    "$defs": {
        "item": {
            "type": "object",
            "required": ["sku", "qty"],
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
        }
    },
}
GOOD = {"order_id": "o-1", "amount": 12.5, "items": [{"sku": "a", "qty": 1}], "created_at": "2025-01-01T10:00:00Z"}


def compiled(schema: Any = ORDER, subject: str = "orders.>", version: int = 3) -> CompiledSchema:
    return CompiledSchema(SchemaVersion(subject, version, check_schema(schema, "schema")))


@pytest.mark.parametrize(
    ("data", "pointer", "words"),
    [
        ({**GOOD, "items": [{"sku": "a", "qty": 0}]}, "/items/0/qty", "less than the minimum of 1"),
        ({k: v for k, v in GOOD.items() if k != "amount"}, "", '"amount" is a required property'),
        ({**GOOD, "currency": "GBP"}, "/currency", "is not one of"),
        ({**GOOD, "created_at": "yesterday"}, "/created_at", "date-time"),
        ({**GOOD, "extra": 1}, "", "Additional properties are not allowed"),
        ({**GOOD, "items": []}, "/items", "less than 1 item"),
        ([GOOD], "", "is not of type"),
        ({**GOOD, "items": [{1: 2}]}, "", "not JSON data"),
    ],
)
def test_a_violation_names_the_place_the_reason_and_the_version(data: Any, pointer: str, words: str) -> None:
    with pytest.raises(SchemaViolation) as caught:
        compiled().validate(data)
    assert caught.value.pointer == pointer
    assert words in caught.value.reason
    assert caught.value.schema_version == "meshscope:schema/orders.%3E/3"


def test_valid_data_passes() -> None:
    compiled().validate(GOOD)


@pytest.mark.parametrize(
    ("schema", "path", "words"),
    [
        ({"type": "objekt"}, "s/type", "not a valid draft 2020-12 schema"),
        ({"properties": {"a": {"minimum": "1"}}}, "s/properties/a/minimum", "not a valid draft 2020-12 schema"),
        ({"$schema": "http://json-schema.org/draft-07/schema#"}, "s/$schema", "only draft 2020-12"),
        ({"$ref": "https://example.com/order.json"}, "s/$ref", "JSON pointer into this schema"),
        ({"$ref": "#/$defs/missing"}, "s/$ref", "does not resolve"),
        ({"$ref": "#item"}, "s/$ref", "JSON pointer"),
        ({"$defs": {"a": {"$dynamicRef": "#x"}}}, "s/$defs/a/$dynamicRef", "not accepted"),
        ({"properties": {"a": {"$id": "https://example.com/a"}}}, "s/properties/a/$id", "root only"),
        ({"pattern": "(unclosed"}, "s", "does not compile"),
        ([{"type": "string"}], "s", "must be a JSON object"),
        ({"const": float("nan")}, "s", "not JSON"),
    ],
)
def test_a_bad_schema_is_refused_with_its_path(schema: Any, path: str, words: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        check_schema(schema, "s")
    assert caught.value.path == path
    assert words in caught.value.reason


def test_schema_size_and_depth_are_bounded() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        deep = {"items": deep}
    with pytest.raises(InvalidDocument, match="nested deeper than 32"):
        check_schema(deep, "s")
    wide = {"properties": {f"p{i}": {"type": "string"} for i in range(200)}}
    with pytest.raises(InvalidDocument, match="larger than 1024 bytes"):
        check_schema(wide, "s", Limits(max_schema_bytes=1024))


def test_properties_named_like_keywords_are_only_names() -> None:
    schema = {"type": "object", "properties": {"$ref": {"type": "string"}, "$id": {"type": "integer"}}}
    compiled(schema).validate({"$ref": "x", "$id": 1})


def test_a_remote_reference_is_never_fetched() -> None:
    # refused by check_schema; and even a compiled validator refuses to fetch
    with pytest.raises(InvalidDocument):
        check_schema({"properties": {"a": {"$ref": "http://127.0.0.1:9/x.json"}}}, "s")


def test_the_dataschema_uri_is_an_absolute_uri_naming_subject_and_version() -> None:
    uri = schema_uri("orders.*.>", 12)
    assert uri == "meshscope:schema/orders.*.%3E/12"
    assert re.fullmatch(r"[a-z][a-z0-9+.-]*:[A-Za-z0-9\-._~!$&'()*+,;=:@/%]+", uri)  # RFC 3986 absolute-URI
    assert parse_schema_uri(uri) == ("orders.*.>", 12)
    for other in (
        "https://example.com/s.json",
        "meshscope:schema/orders/x",
        "meshscope:schema/a%20b/1",
        "meshscope:schema/..%3E/1",
    ):
        assert parse_schema_uri(other) is None


@settings(database=None, max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["orders", "eu", "*", "a-b", "x_y", "~z", "%", "é"]), min_size=1, max_size=4),
    st.booleans(),
    st.integers(1, 10_000),
)
def test_schema_uris_round_trip(tokens: list[str], tail: bool, version: int) -> None:
    subject = ".".join(tokens + ([">"] if tail else []))
    try:
        validate_pattern(subject)
    except ValueError:
        return
    uri = schema_uri(subject, version)
    assert uri.isascii() and " " not in uri
    assert parse_schema_uri(uri) == (subject, version)


def subject(pattern: str, *schemas: Any) -> Subject:
    return make_subject(pattern, Compatibility.NONE, [(f"v{i}", s) for i, s in enumerate(schemas)], pattern, Limits())


def test_the_most_specific_subject_governs_a_topic() -> None:
    registry = SchemaRegistry(
        [
            subject("orders.>", {"type": "object"}),
            subject("orders.eu.*", {"type": "array"}),
            subject("orders.*.paid", True),
        ]
    )
    assert registry.subject_for("orders.eu.created").pattern == "orders.eu.*"  # type: ignore[union-attr]
    assert registry.subject_for("orders.us.paid").pattern == "orders.*.paid"  # type: ignore[union-attr]
    assert registry.subject_for("orders.x").pattern == "orders.>"  # type: ignore[union-attr]
    assert registry.subject_for("weather") is None
    assert registry.validate("weather", {"anything": 1}) is None


def test_an_event_may_name_an_older_version_but_not_another_subject() -> None:
    v1 = {"type": "object", "properties": {"n": {"type": "integer"}}}
    v2 = {"type": "object", "properties": {"n": {"type": "string"}}}
    registry = SchemaRegistry([subject("orders.>", v1, v2), subject("payments.>", True)])
    assert registry.validate("orders.eu", {"n": "x"}) == "meshscope:schema/orders.%3E/2"
    assert registry.validate("orders.eu", {"n": 1}, "meshscope:schema/orders.%3E/1") == "meshscope:schema/orders.%3E/1"
    with pytest.raises(SchemaViolation) as caught:
        registry.validate("orders.eu", {"n": 1})
    assert (caught.value.pointer, caught.value.schema_version) == ("/n", "meshscope:schema/orders.%3E/2")
    for wrong in ("meshscope:schema/orders.%3E/3", "meshscope:schema/payments.%3E/1"):
        with pytest.raises(SchemaViolation, match=r"not a version of subject 'orders\.>'"):
            registry.validate("orders.eu", {"n": "x"}, wrong)
    with pytest.raises(SchemaViolation, match="no schema governs topic 'weather'"):
        registry.validate("weather", {}, "meshscope:schema/orders.%3E/1")
    # a producer's own schema URI is its business: the latest version applies
    assert (
        registry.validate("orders.eu", {"n": "x"}, "https://example.com/order.json") == "meshscope:schema/orders.%3E/2"
    )


def test_compiled_validators_of_unchanged_versions_are_kept_across_registries() -> None:
    first = SchemaRegistry([subject("orders.>", {"type": "object"})])
    kept = first.compiled(first.subjects[0])
    second = SchemaRegistry([subject("orders.>", {"type": "object"}, {"type": "object", "title": "2"})], reuse=first)
    assert second.compiled(second.subjects[0], 1) is kept
    third = SchemaRegistry([subject("orders.>", {"type": "array"})], reuse=second)
    assert third.compiled(third.subjects[0], 1) is not kept


@pytest.mark.parametrize(
    ("raw", "path", "words"),
    [
        ([{"subject": "orders.>", "versions": [{}], "mode": "full"}], "subjects[0].mode", "unknown key 'mode'"),
        ([{"subject": "orders.>", "versions": []}], "subjects[0]", "at least one schema version"),
        ([{"subject": "orders.>.x", "versions": [{}]}], "subjects[0]", "'>' must be the last token"),
        (
            [{"subject": "a", "versions": [{}], "compatibility": "sideways"}],
            "subjects[0].compatibility",
            "must be one of",
        ),
        ([{"subject": "a", "versions": [{"type": 5}]}], "subjects[0].versions[0]/type", "not a valid draft 2020-12"),
        ([{"subject": "a", "versions": [{}]}, {"subject": "a", "versions": [{}]}], "subjects", "listed twice"),
        ({"subject": "a"}, "subjects", "must be a list"),
    ],
)
def test_subjects_are_read_strictly(raw: Any, path: str, words: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        parse_subjects(raw, "subjects")
    assert caught.value.path == path
    assert words in caught.value.reason


def test_subject_versions_are_bounded() -> None:
    with pytest.raises(InvalidDocument, match="the limit is 2"):
        parse_subjects([{"subject": "a", "versions": [{}, {}, {}]}], "subjects", Limits(max_versions=2))
    [parsed] = parse_subjects([{"subject": "a", "versions": [{"type": "string"}, {}]}], "subjects")
    assert (parsed.compatibility, len(parsed.versions), parsed.latest.version) == (Compatibility.BACKWARD, 2, 2)
    assert parse_subjects([parsed.to_json()], "subjects") == (parsed,)
